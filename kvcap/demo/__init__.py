"""The miniature: tiny real backbones, their pretraining, the synthetic AI-Hub-layout corpus and test clips.

Data preparation only, kept apart from the product: the `demo` preset (`kvcap/configs/demo.yaml`) names
`kvcap.demo.prepare` as its preparation step, and nothing in `modeling_kvcap`, `processing` or the rest of `kvcap`
(`kvcap.metrics` included) imports it.
"""
