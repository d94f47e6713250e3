"""A full disk is said with the file that could not be written and the space left, in every writer of a run."""

from __future__ import annotations

import errno
import json

import pytest

import train_hf
from kvcap.captioning import CaptionJournal
from kvcap.demo.corpus import generate_corpus
from kvcap.disk import DiskFullError, disk_full_error, is_disk_full
from kvcap.training.arguments import parse_arguments

from .conftest import run_argv


def test_a_full_disk_is_recognised_through_the_errors_libraries_raise():
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed") from inner
    except RuntimeError as outer:
        assert is_disk_full(outer)
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not is_disk_full(ValueError("shape mismatch"))
    error = disk_full_error("/no/such/place/x.arrow", "a feature shard", OSError(errno.ENOSPC, "full"))
    assert isinstance(error, DiskFullError) and error.filename == "/no/such/place/x.arrow"
    assert "writing a feature shard at /no/such/place/x.arrow failed" in str(error) and "MB left there" in str(error)


def test_captions_that_do_not_fit_name_their_file(tiny_disk):
    disk = tiny_disk(64 * 1024)
    journal = CaptionJournal(disk / "captions.jsonl", {"job": "test"})
    journal.append([{"video_path": "a.mp4", "caption": "가" * 1000}])  # fits
    with pytest.raises(DiskFullError, match=r"writing captions at .*captions\.jsonl failed"):
        journal.append([{"video_path": f"{i}.mp4", "caption": "나" * 10_000} for i in range(10)])


@pytest.mark.slow
def test_a_checkpoint_on_a_full_disk_names_its_folder_and_a_resume_passes_over_it(tiny_backbones, tmp_path, tiny_disk):
    corpus = tmp_path / "corpus"
    generate_corpus(corpus, num_train=8, num_val=2, seed=0)
    disk = tiny_disk(2 * 1024 * 1024)
    output_dir = disk / "run"
    argv = run_argv(
        tiny_backbones,
        corpus,
        output_dir,
        feature_cache_dir=tmp_path / "feature-cache",
        save_strategy="steps",
        save_steps=1,
        final_eval=False,
    )
    with pytest.raises(DiskFullError) as raised:
        train_hf.main(argv)
    message = str(raised.value)
    assert "writing a checkpoint at" in message and f"{output_dir}/checkpoint-" in message
    assert "MB left there" in message
    complete = [p.name for p in output_dir.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    partial = [p.name for p in output_dir.glob("checkpoint-*") if not (p / "trainer_state.json").is_file()]
    assert partial, "the checkpoint cut short is left, without its trainer_state.json"
    resume = parse_arguments([*argv, "--resume_from_checkpoint", "true"])[2].resume_from_checkpoint
    if complete:
        last = max(complete, key=lambda name: int(name.split("-")[1]))
        assert resume == str(output_dir / last)
    assert all(name not in (resume or "") for name in partial)
    json.dumps(message)  # one plain line a log can carry
