"""kvcap.demo.prepare: the demo preset's preparation step rebuilds stale backbones and corpora, and only those."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from kvcap.demo import prepare as demo_prepare
from kvcap.demo.corpus import corpus_size, generate_corpus
from kvcap.demo.tiny_backbones import RECIPE_FILE, RECIPE_VERSION, built_recipe


def test_demo_backbones_are_rebuilt_when_missing_or_built_by_another_recipe(tiny_backbones, tmp_path):
    vision, text = tiny_backbones["clip-vision"], tiny_backbones["qwen3"]
    # The shared test backbones are random, not pretrained: not what the demo needs.
    assert built_recipe(vision.parent) == {"version": RECIPE_VERSION, "pretrained": False}
    assert "pretrained" in demo_prepare.stale_demo_backbones(vision, text)
    assert demo_prepare.stale_demo_backbones(tmp_path / "clip-vision", tmp_path / "qwen3") == "missing"

    current = tmp_path / "current"
    for name in ("clip-vision", "qwen3"):
        (current / name).mkdir(parents=True)
    (current / RECIPE_FILE).write_text(json.dumps({"version": RECIPE_VERSION, "pretrained": True}))
    assert demo_prepare.stale_demo_backbones(current / "clip-vision", current / "qwen3") is None
    (current / RECIPE_FILE).write_text(json.dumps({"version": RECIPE_VERSION - 1, "pretrained": True}))
    assert "recipe" in demo_prepare.stale_demo_backbones(current / "clip-vision", current / "qwen3")
    (current / RECIPE_FILE).unlink()
    assert "None" in demo_prepare.stale_demo_backbones(current / "clip-vision", current / "qwen3")


def test_prepare_writes_the_corpus_only_when_its_size_differs(tmp_path, monkeypatch):
    backbones = tmp_path / "backbones"
    for name in ("clip-vision", "qwen3"):
        (backbones / name).mkdir(parents=True)
    (backbones / RECIPE_FILE).write_text(json.dumps({"version": RECIPE_VERSION, "pretrained": True}))
    model_args = SimpleNamespace(
        vision_model_name_or_path=str(backbones / "clip-vision"), text_model_name_or_path=str(backbones / "qwen3")
    )
    data_args = SimpleNamespace(data_dir=str(tmp_path / "corpus"))
    writes = []

    def counting_generate(*args, **kwargs):
        writes.append(kwargs)
        return generate_corpus(*args, **kwargs)

    monkeypatch.setattr(demo_prepare, "generate_corpus", counting_generate)
    demo_prepare.prepare(model_args, data_args, num_train_clips=4, num_val_clips=2)
    assert corpus_size(tmp_path / "corpus") == {"train": 4, "val": 2} and len(writes) == 1
    demo_prepare.prepare(model_args, data_args, num_train_clips=4, num_val_clips=2)
    assert len(writes) == 1  # current: nothing rebuilt
    demo_prepare.prepare(model_args, data_args, num_train_clips=6, num_val_clips=2)
    assert corpus_size(tmp_path / "corpus") == {"train": 6, "val": 2} and len(writes) == 2


def test_prepare_refuses_backbones_in_two_folders(tmp_path):
    model_args = SimpleNamespace(
        vision_model_name_or_path=str(tmp_path / "a" / "clip-vision"), text_model_name_or_path=str(tmp_path / "b" / "q")
    )
    with pytest.raises(ValueError, match="share one folder"):
        demo_prepare.prepare(model_args, SimpleNamespace(data_dir=str(tmp_path / "corpus")))
