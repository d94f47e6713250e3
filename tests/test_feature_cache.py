"""Feature cache: hits skip the encoder, key changes miss, crashes resume, bad clips are listed, training reads it.

Encoder calls are counted with a forward hook on the real vision tower, never a mock.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch

from kvcap.demo.corpus import generate_corpus
from kvcap.training.collator import KVCapDataCollator
from kvcap.training.feature_cache import (
    FEATURES_COLUMN,
    FeatureCacheIncomplete,
    cache_video_features,
    feature_cache_key,
    feature_cache_nbytes,
)
from processing.aihub import load_aihub

from .conftest import REPO_ROOT, tiny_processor

# 8 clips in shards of 4 and encoder batches of 2: two shards, two encoder calls each.
SHARD = {"batch_size": 2, "shard_size": 4, "progress": False}


class EncoderCalls:
    """Counts vision-tower forwards and the clips in them; `fail_at` raises on that call to simulate a crash."""

    def __init__(self, model, fail_at: int | None = None):
        self.calls = self.clips = 0
        self.fail_at = fail_at
        self.num_frames = model.config.num_frames
        self.handle = model.model.vision_tower.register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        self.calls += 1
        if self.fail_at is not None and self.calls == self.fail_at:
            raise KeyboardInterrupt("simulated interruption")
        self.clips += args[0].shape[0] // self.num_frames

    def remove(self) -> None:
        self.handle.remove()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    generate_corpus(root, num_train=8, num_val=4, workers=1)
    return root


@pytest.fixture(scope="module")
def train_set(corpus: Path) -> datasets.Dataset:
    # Shuffled, so the cache must put rows back in the dataset's order rather than its own sorted one.
    return load_aihub(corpus, "train").shuffle(seed=3).flatten_indices()


@pytest.fixture
def model(make_tiny_model):
    return make_tiny_model("mlp_2l").eval()


def run_cache(dataset, model, tokenizer, cache_dir, fail_at=None, **kwargs):
    """`(cached dataset, report, encoder clips)` of one cache call; the hook goes away even after a crash."""
    calls = EncoderCalls(model, fail_at)
    try:
        processor = tiny_processor(tokenizer, model.config)
        out, report = cache_video_features(dataset, model, processor, cache_dir=cache_dir, return_report=True, **kwargs)
    finally:
        calls.remove()
    return out, report, calls.clips


def test_second_run_is_a_hit_and_features_equal_the_encoder(train_set, model, tiny_tokenizer, tmp_path):
    first, report, clips = run_cache(train_set, model, tiny_tokenizer, tmp_path, **SHARD)
    assert clips == 8 and report.shards_computed == 2 and report.num_cached == 8
    second, report, clips = run_cache(train_set, model, tiny_tokenizer, tmp_path, **SHARD)
    assert clips == 0 and report.shards_reused == 2 and report.shards_computed == 0

    # Rows keep their order and their other columns.
    assert second["video_id"] == train_set["video_id"] and second["caption"] == train_set["caption"]
    processor = tiny_processor(tiny_tokenizer, model.config)
    with torch.no_grad():
        direct = model.model.get_vision_tower_features(processor.process_videos(train_set["video_path"]))
    cached = torch.stack([second[i][FEATURES_COLUMN] for i in range(len(second))])
    config = model.config
    assert cached.dtype == torch.float16
    assert cached.shape == direct.shape == (8, 8, config.num_patches, config.vision_config.hidden_size)
    assert torch.equal(cached, torch.stack([first[i][FEATURES_COLUMN] for i in range(len(first))]))
    # Within float16 rounding: half an ulp is 2**-11 relative.
    torch.testing.assert_close(cached.float(), direct, rtol=2**-10, atol=1e-6)


def test_frame_count_layer_weights_and_dtype_each_miss(train_set, make_tiny_model, tiny_tokenizer, tmp_path):
    subset = train_set.select(range(4))
    base = make_tiny_model("mlp_2l")
    _, base_report, clips = run_cache(subset, base, tiny_tokenizer, tmp_path, **SHARD)
    assert clips == 4

    perturbed = make_tiny_model("mlp_2l")
    with torch.no_grad():
        perturbed.model.vision_tower.encoder.layers[0].mlp.fc1.weight[0, 0] += 1e-3
    variants = {
        "frames": (make_tiny_model("mlp_2l", num_frames=4), {}),
        "layer": (make_tiny_model("mlp_2l", vision_feature_layer=-1), {}),
        "weights": (perturbed, {}),
        "dtype": (base, {"dtype": torch.float32}),
    }
    keys = {base_report.key}
    for name, (variant, kwargs) in variants.items():
        out, report, clips = run_cache(subset, variant, tiny_tokenizer, tmp_path, **SHARD, **kwargs)
        assert clips == 4 and report.shards_reused == 0, name
        keys.add(report.key)
        if name == "frames":
            assert out[0][FEATURES_COLUMN].shape == (4, base.config.num_patches, base.config.vision_config.hidden_size)
        if name == "dtype":
            assert out[0][FEATURES_COLUMN].dtype == torch.float32
    assert len(keys) == 5
    # And the base model is still a hit afterwards: the variants wrote beside it, not over it.
    assert run_cache(subset, base, tiny_tokenizer, tmp_path, **SHARD)[2] == 0


def test_key_covers_normalisation_image_size_and_sampling(model, tiny_tokenizer, monkeypatch):
    processor = tiny_processor(tiny_tokenizer, model.config)
    key, parts = feature_cache_key(model, processor)
    assert feature_cache_key(model.model, processor)[0] == key  # KVCapModel and the wrapper agree
    assert parts["vision_feature_layer"] == -2 and parts["num_frames"] == 8
    assert parts["image_size"] == model.config.vision_config.image_size

    processor.image_processor.image_std = [0.5, 0.5, 0.5]
    assert feature_cache_key(model, processor)[0] != key
    processor = tiny_processor(tiny_tokenizer, model.config)
    processor.image_processor.crop_size = {"height": 24, "width": 24}  # any size other than the model's
    assert feature_cache_key(model, processor)[0] != key
    processor = tiny_processor(tiny_tokenizer, model.config)
    import kvcap.training.feature_cache as feature_cache

    # A different sampling rule behind the same name (centre of each segment instead of its start) changes the key.
    def centred(total: int, num_frames: int) -> np.ndarray:
        return (np.arange(num_frames) * 2 + 1) * total // (2 * num_frames)

    monkeypatch.setattr(feature_cache, "sample_frame_indices", centred)
    assert feature_cache_key(model, processor)[0] != key
    with pytest.raises(ValueError, match="dtype"):
        feature_cache_key(model, processor, torch.int8)


def test_resume_after_a_crash_computes_only_the_rest(train_set, model, tiny_tokenizer, tmp_path):
    reference, _, _ = run_cache(train_set, model, tiny_tokenizer, tmp_path / "uninterrupted", **SHARD)

    # The crash hits the first encoder call of the second shard (calls 1-2 are the first shard).
    with pytest.raises(KeyboardInterrupt):
        run_cache(train_set, model, tiny_tokenizer, tmp_path / "crashed", fail_at=3, **SHARD)
    (folder,) = (tmp_path / "crashed").iterdir()
    # One finished shard, no marker for the other, and datasets removed its half-written temporary file.
    assert len(list(folder.glob("shard-*.arrow"))) == len(list(folder.glob("shard-*.json"))) == 1
    assert not list(folder.glob("tmp*"))
    resumed, report, clips = run_cache(train_set, model, tiny_tokenizer, tmp_path / "crashed", **SHARD)
    assert clips == 4 and report.shards_reused == 1 and report.shards_computed == 1
    assert resumed["video_id"] == reference["video_id"]
    assert torch.equal(resumed[:][FEATURES_COLUMN], reference[:][FEATURES_COLUMN])

    # A time-boxed run (max_shards) stops with a resumable error; a damaged shard is recomputed, alone.
    with pytest.raises(FeatureCacheIncomplete, match="1 of 2"):
        run_cache(train_set, model, tiny_tokenizer, tmp_path / "boxed", max_shards=1, **SHARD)
    assert run_cache(train_set, model, tiny_tokenizer, tmp_path / "boxed", **SHARD)[2] == 4
    damaged = sorted(folder.glob("shard-*.arrow"))[0]
    with open(damaged, "r+b") as f:
        f.truncate(damaged.stat().st_size // 2)
    again, report, clips = run_cache(train_set, model, tiny_tokenizer, tmp_path / "crashed", **SHARD)
    assert clips == 4 and report.shards_reused == 1
    assert torch.equal(again[:][FEATURES_COLUMN], reference[:][FEATURES_COLUMN])


def test_unreadable_clips_are_counted_listed_and_excluded(train_set, model, tiny_tokenizer, tmp_path, caplog):
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(Path(train_set[0]["video_path"]).read_bytes()[:1500])
    missing = tmp_path / "missing.mp4"
    bad_rows = {c: [train_set[0][c]] * 2 for c in train_set.column_names}
    bad_rows.update(video_id=["truncated", "missing"], video_path=[str(truncated), str(missing)])
    dataset = datasets.concatenate_datasets(
        [train_set.select(range(3)), datasets.Dataset.from_dict(bad_rows, features=train_set.features)]
    )

    with caplog.at_level(logging.WARNING, logger="kvcap.training.feature_cache"):
        out, report, clips = run_cache(dataset, model, tiny_tokenizer, tmp_path / "cache", **SHARD)
    assert clips == 3 and len(out) == 3 and report.num_excluded == 2
    assert set(report.failed) == {str(truncated), str(missing)}
    assert "file not found" in report.failed[str(missing)]
    assert out["video_id"] == train_set["video_id"][:3]
    assert "excluded 2 of 5 rows" in caplog.text and "excluded 2 rows" in report.format()
    # The failures are part of the cache: a rerun lists them again without decoding or encoding anything.
    _, report, clips = run_cache(dataset, model, tiny_tokenizer, tmp_path / "cache", **SHARD)
    assert clips == 0 and set(report.failed) == {str(truncated), str(missing)}


def test_training_reads_cached_features_with_the_loss_of_pixel_values(train_set, model, tiny_tokenizer, tmp_path):
    processor = tiny_processor(tiny_tokenizer, model.config)
    collator = KVCapDataCollator(processor)
    rows = [train_set[i] for i in range(2)]
    with torch.no_grad():
        from_pixels = model(**collator(rows)).loss

    for dtype, tolerance in ((torch.float16, 1e-4), (torch.bfloat16, 1e-3), (torch.float32, 1e-6)):
        cached, _, _ = run_cache(train_set, model, tiny_tokenizer, tmp_path, dtype=dtype, **SHARD)
        batch = collator([cached[i] for i in range(2)])
        assert "pixel_values_videos" not in batch and batch[FEATURES_COLUMN].dtype == dtype
        calls = EncoderCalls(model)
        with torch.no_grad():
            from_cache = model(**batch).loss
        calls.remove()
        assert calls.calls == 0  # the vision tower does not run in training
        torch.testing.assert_close(from_cache, from_pixels, rtol=tolerance, atol=0)


def test_disk_cost_at_real_size():
    per_clip = feature_cache_nbytes(1)
    assert per_clip == 8 * 576 * 1024 * 2 == 9_437_184
    assert round(feature_cache_nbytes(9_631) / 1e9, 1) == 90.9
    assert feature_cache_nbytes(1, dtype=torch.float32) == 2 * per_clip


_RANK_SCRIPT = """
import json, sys
import torch
from processing.aihub import load_aihub
from kvcap.training.feature_cache import cache_video_features
from modeling_kvcap import KVCapForConditionalGeneration
from kvcap.demo.tiny_backbones import load_tokenizer
from tests.conftest import tiny_processor
vision, text, corpus, cache_dir, out = sys.argv[1:]
model = KVCapForConditionalGeneration.from_pretrained_backbones(vision, text, projector_type="linear")
dataset = load_aihub(corpus, "train")
ds, report = cache_video_features(
    dataset, model, tiny_processor(load_tokenizer(), model.config), cache_dir=cache_dir,
    batch_size=2, shard_size=2, progress=False, return_report=True,
)
import torch.distributed as dist
json.dump({"rank": dist.get_rank(), "world": dist.get_world_size(), "computed": report.shards_computed,
           "reused": report.shards_reused, "sum": float(ds[:][\"video_features\"].float().sum())}, open(out, "w"))
dist.destroy_process_group()
"""


def test_two_ranks_share_the_work_then_both_read_everything(
    corpus, tiny_backbones, make_tiny_model, tiny_tokenizer, tmp_path
):
    """Two processes launched as `accelerate launch` / `torchrun` would (RANK, WORLD_SIZE, MASTER_*), on gloo."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2")
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT))
    args = [str(tiny_backbones["clip-vision"]), str(tiny_backbones["qwen3"]), str(corpus), str(tmp_path / "cache")]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _RANK_SCRIPT, *args, str(tmp_path / f"rank{rank}.json")],
            env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(2)
    ]
    for proc in procs:
        output = proc.communicate(timeout=240)[0]
        assert proc.returncode == 0, output[-3000:]
    results = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    assert [r["world"] for r in results] == [2, 2]
    # Four shards of two clips: each rank computed two, nobody reused anything, and both read the same features.
    assert [r["computed"] for r in results] == [2, 2] and [r["reused"] for r in results] == [0, 0]
    assert results[0]["sum"] == results[1]["sum"]

    # The key holds the encoder, not the projector: a perceiver model in one process reads the same cache.
    dataset = load_aihub(corpus, "train")
    kwargs = {"batch_size": 2, "shard_size": 2, "progress": False}
    _, report, clips = run_cache(dataset, make_tiny_model("perceiver"), tiny_tokenizer, tmp_path / "cache", **kwargs)
    assert clips == 0 and report.shards_reused == 4


def _features(cached) -> torch.Tensor:
    return torch.stack([cached[i][FEATURES_COLUMN] for i in range(len(cached))])


def test_a_shard_whose_bytes_changed_is_found_by_its_checksum_and_computed_again(
    train_set, model, tiny_tokenizer, tmp_path, caplog
):
    first, _, _ = run_cache(train_set, model, tiny_tokenizer, tmp_path, **SHARD)
    expected = _features(first).clone()  # `first` maps the shard files: it would see the flipped bytes too
    (folder,) = [path for path in tmp_path.iterdir() if path.is_dir()]
    shard = sorted(folder.glob("shard-*.arrow"))[0]
    size, stat = shard.stat().st_size, shard.stat()
    with shard.open("r+b") as handle:  # flip bytes in the middle of the features, keeping the size
        handle.seek(size // 2)
        chunk = handle.read(64)
        handle.seek(size // 2)
        handle.write(bytes(255 - b for b in chunk))
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # as bit rot would: nothing but the bytes differ
    assert shard.stat().st_size == size

    with caplog.at_level(logging.WARNING, logger="kvcap.training.feature_cache"):
        again, report, clips = run_cache(train_set, model, tiny_tokenizer, tmp_path, **SHARD)
    assert report.shards_damaged == [shard.name] and report.shards_computed == 1 and clips == 4
    assert "checksum mismatch" in caplog.text and "damaged shards computed again" in report.format()
    assert torch.equal(_features(again), expected)


def test_clips_swapped_under_the_same_paths_are_encoded_again_and_named(
    corpus, model, tiny_tokenizer, tmp_path, caplog
):
    videos = tmp_path / "videos"
    videos.mkdir()
    sources = sorted((corpus / "train" / "videos").glob("*.mp4"))[:2]
    a, b = videos / "a.mp4", videos / "b.mp4"
    a.write_bytes(sources[0].read_bytes())
    b.write_bytes(sources[1].read_bytes()[: sources[0].stat().st_size])  # same size, other content
    b.write_bytes(sources[1].read_bytes())
    dataset = datasets.Dataset.from_dict({"video_path": [str(a), str(b)], "caption": ["가", "나"]})
    first, _, _ = run_cache(dataset, model, tiny_tokenizer, tmp_path / "cache", **SHARD)

    swap = videos / "swap.mp4"
    os.replace(a, swap)
    os.replace(b, a)
    os.replace(swap, b)
    with caplog.at_level(logging.WARNING, logger="kvcap.training.feature_cache"):
        again, report, clips = run_cache(dataset, model, tiny_tokenizer, tmp_path / "cache", **SHARD)
    assert clips == 2 and report.clips_changed == [str(a), str(b)]
    assert "2 clips changed since they were cached" in caplog.text
    # Each path now has the features of the content it holds, not of what it held before.
    assert torch.equal(_features(again)[0], _features(first)[1])
    assert torch.equal(_features(again)[1], _features(first)[0])


def test_a_killed_runs_half_written_files_are_removed_and_counted(train_set, model, tiny_tokenizer, tmp_path, caplog):
    run_cache(train_set.select(range(2)), model, tiny_tokenizer, tmp_path, **SHARD)
    (folder,) = [path for path in tmp_path.iterdir() if path.is_dir()]
    stale, fresh = folder / "tmpa1b2c3", folder / "tmpd4e5f6"
    stale.write_bytes(b"\0" * 3_000_000)
    fresh.write_bytes(b"\0" * 10)  # another job may be writing this one right now
    long_ago = time.time() - 3600
    os.utime(stale, (long_ago, long_ago))
    with caplog.at_level(logging.WARNING, logger="kvcap.training.feature_cache"):
        run_cache(train_set.select(range(2)), model, tiny_tokenizer, tmp_path, **SHARD)
    assert not stale.exists() and fresh.exists()
    assert "removed 1 half-written file(s) of interrupted runs (3.0 MB)" in caplog.text


def test_a_full_disk_names_the_shard_that_did_not_fit(train_set, model, tiny_tokenizer, tiny_disk):
    from kvcap.disk import DiskFullError

    _, report, _ = run_cache(train_set, model, tiny_tokenizer, tiny_disk(64 << 20), **SHARD)
    disk = tiny_disk(report.bytes_on_disk // 2)  # room for half the features
    with pytest.raises(DiskFullError, match=r"writing a feature shard at .*shard-[0-9a-f]+\.arrow failed"):
        run_cache(train_set, model, tiny_tokenizer, disk, **SHARD)
