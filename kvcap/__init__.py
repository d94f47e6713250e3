"""kvcap's library layer: what `train_hf.py` and `eval_hf.py` do, as importable code.

- `kvcap.generation`: loading a saved model and batched captioning.
- `kvcap.evaluation`: one evaluation (records, scores, `predictions.jsonl` / `metrics.json` / `report.html`),
  used by `eval_hf.py` and at the end of training.
- `kvcap.training`: arguments, model building, the two stages, the diversity monitor, the collator, the feature
  cache and the export of the final folder.
- `kvcap.demo`: the miniature's data preparation (tiny backbones, the synthetic corpus); nothing in the product
  imports it.

The Hub-copyable packages `modeling_kvcap` and `processing`, and the `evaluate` modules in `kvcap.metrics`, import
nothing of this layer.
"""

from .bitsandbytes_notice import hold_kernel_warning

# Before peft (and so bitsandbytes) is imported by any kvcap module: see bitsandbytes_notice.
hold_kernel_warning()
