"""kvcap.corpus: opening a split refuses a missing folder or an empty split, naming folder, split and findings."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

import train_hf
from kvcap.corpus import EmptySplitError, open_split
from kvcap.demo.corpus import generate_corpus

from .test_train_hf import run_argv


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    generate_corpus(root, num_train=3, num_val=2, seed=0)
    return root


def test_a_split_with_clips_opens_with_its_report(corpus: Path):
    dataset, report = open_split(corpus, "val", decode_video=False)
    assert len(dataset) == 2 and report.num_usable == 2


def test_a_missing_folder_is_named(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="no/such"):
        open_split(tmp_path / "no" / "such", "train")


def test_an_empty_split_names_folder_split_and_what_was_found(corpus: Path, tmp_path: Path):
    with pytest.raises(EmptySplitError, match=r"split 'test' under .* \(no split folder\)"):
        open_split(corpus, "test")
    # Labels whose videos are missing: the split exists, every sample is skipped, and the reason is counted.
    root = tmp_path / "labels-only"
    (root / "val" / "labels").mkdir(parents=True)
    (root / "val" / "videos").mkdir()
    label = json.loads(next((corpus / "val" / "labels").glob("*.json")).read_text(encoding="utf-8"))
    (root / "val" / "labels" / "a.json").write_text(json.dumps(label, ensure_ascii=False), encoding="utf-8")
    with zipfile.ZipFile(root / "val" / "videos" / "VS_clips.zip", "w") as archive:
        archive.writestr("a.mp4", b"")
    with pytest.raises(EmptySplitError) as raised:
        open_split(root, "val")
    message = str(raised.value)
    assert "'val'" in message and str(root) in message and "label_without_video" in message
    assert "1 unextracted archives" in message


def test_training_names_an_empty_split_before_building_the_model(tiny_backbones, corpus, tmp_path, monkeypatch):
    def must_not_build(*args, **kwargs):
        raise AssertionError("the model was built before the data was checked")

    monkeypatch.setattr("kvcap.training.run.build_model", must_not_build)
    argv = run_argv(tiny_backbones, corpus, tmp_path / "run", eval_split="test")
    with pytest.raises(EmptySplitError, match="split 'test'"):
        train_hf.prepare_run(argv)
    with pytest.raises(FileNotFoundError, match="no-corpus"):
        train_hf.prepare_run(run_argv(tiny_backbones, tmp_path / "no-corpus", tmp_path / "run"))
