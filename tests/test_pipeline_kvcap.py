"""modeling_kvcap.pipeline_kvcap: `transformers.pipeline` captions videos from a saved folder in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import pipeline

from kvcap.demo.corpus import generate_corpus
from kvcap.generation import generate_captions

from .conftest import run_in_clean_interpreter, tiny_processor

CLEAN_PIPELINE = r"""
import json, sys
from transformers import pipeline
folder, output, *videos = sys.argv[1:]
pipe = pipeline(model=folder, trust_remote_code=True, device_map="cpu")
one = pipe(videos[0])
many = pipe(videos, batch_size=2)
json.dump({"class": type(pipe).__module__ + "." + type(pipe).__name__, "one": one, "many": many},
          open(output, "w"), ensure_ascii=False)
"""


@pytest.fixture(scope="module")
def saved(make_tiny_model, tiny_tokenizer, tmp_path_factory) -> tuple[Path, list[str], object, object]:
    """A saved folder (model, processor and code) and three demo clips."""
    folder = tmp_path_factory.mktemp("kvcap-folder")
    model = make_tiny_model("perceiver").eval()
    model.generation_config.max_new_tokens = 12
    processor = tiny_processor(tiny_tokenizer, model.config)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    corpus = tmp_path_factory.mktemp("clips")
    generate_corpus(corpus, num_train=0, num_val=3, seed=4, workers=1)
    videos = sorted(str(path) for path in (corpus / "val" / "videos").glob("*.mp4"))
    return folder, videos, model, processor


def test_the_saved_folder_names_and_carries_its_pipeline(saved):
    folder, *_ = saved
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    assert config["custom_pipelines"]["video-captioning"]["impl"] == "pipeline_kvcap.KVCapVideoCaptioningPipeline"
    assert (folder / "pipeline_kvcap.py").is_file()


def test_pipeline_one_liner_captions_where_kvcap_is_not_installed(saved, tmp_path):
    folder, videos, model, processor = saved
    expected = generate_captions(model, processor, videos, batch_size=2)
    output = tmp_path / "pipeline.json"
    run_in_clean_interpreter(CLEAN_PIPELINE, str(folder), str(output), *videos, workdir=tmp_path)
    result = json.loads(output.read_text(encoding="utf-8"))
    assert result["class"].startswith("transformers_modules.") and result["class"].endswith("CaptioningPipeline")
    assert result["one"] == [{"generated_text": expected[0]}]
    # Batched two at a time, with the folder's own decoding policy: the captions of a plain batched generate.
    assert result["many"] == [[{"generated_text": caption}] for caption in expected]


def test_decoded_frames_and_call_time_overrides(saved):
    folder, videos, model, processor = saved
    pipe = pipeline(model=str(folder), trust_remote_code=True)
    assert json.loads(pipe.model.config.to_json_string())["custom_pipelines"]["video-captioning"]["pt"] == ["AutoModel"]
    frames = processor.load_frames(videos[1])
    shorter = pipe(frames, max_new_tokens=3)[0]["generated_text"]
    assert shorter == generate_captions(model, processor, [frames], max_new_tokens=3)[0]
    assert pipe(videos[1])[0]["generated_text"] == generate_captions(model, processor, [frames])[0]
