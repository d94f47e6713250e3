"""The synthetic demo corpus: deterministic, AI-Hub layout, held-out pairs, captions that match the pictures."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from kvcap.demo import corpus as demo
from processing.video_io import probe_video, read_video_frames

REPO = Path(__file__).resolve().parents[1]
NUM_TRAIN, NUM_VAL = 30, 12


@pytest.fixture(scope="module")
def corpora(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    """The same corpus twice: once in-process, once through the command line."""
    a = tmp_path_factory.mktemp("demo_a")
    b = tmp_path_factory.mktemp("demo_b")
    summary = demo.generate_corpus(a, num_train=NUM_TRAIN, num_val=NUM_VAL, seed=3)
    cmd = [sys.executable, "kvcap/demo/corpus.py", "--out", str(b)]
    cmd += ["--num-train", str(NUM_TRAIN), "--num-val", str(NUM_VAL), "--seed", "3", "--workers", "1"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return a, b, summary


def _labels(root: Path, split: str) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in sorted((root / split / "labels").glob("*.json"))}


def test_layout_and_schema(corpora: tuple[Path, Path, dict]) -> None:
    root, _, summary = corpora
    for split, n in (("train", NUM_TRAIN), ("val", NUM_VAL)):
        videos = sorted(p.stem for p in (root / split / "videos").glob("*.mp4"))
        labels = _labels(root, split)
        assert len(videos) == n and videos == sorted(labels)
        for stem, label in labels.items():
            ann, meta = label["annotation"], label["metadata"]
            assert isinstance(ann["description_kr"], str) and len(ann["description_kr"]) > 60
            assert ann["category"] == label["category"] in demo.CATEGORIES
            assert meta["video_id"] == stem and meta["split"] == split
            assert (meta["width"], meta["height"], meta["fps"], meta["num_frames"]) == (96, 96, 8, 16)
            attrs = meta["attributes"]
            assert attrs["category"] == label["category"] and attrs["time_of_day"] in demo.TIMES_OF_DAY
            tod = demo.TIMES_OF_DAY[attrs["time_of_day"]]
            assert attrs["time_of_day_words"] == [tod["sky"], tod["phrase"]]
            assert 1 <= attrs["num_objects"] == len(attrs["objects"]) <= 2
            for o in attrs["objects"]:
                assert o["color"] in demo.COLORS and o["shape"] in demo.SHAPES
                assert demo.MOTIONS[o["motion_id"]] == o["motion"]
    info = probe_video(root / "train" / "videos" / "kvcap_demo_train_00000.mp4")
    assert (info.num_frames, info.width, info.height) == (16, 96, 96)
    assert summary["splits"]["train"]["num_clips"] == NUM_TRAIN
    saved = json.loads((root / "demo_corpus.json").read_text(encoding="utf-8"))
    assert saved["held_out_pairs"] == [list(p) for p in demo.HELD_OUT_PAIRS]
    assert saved["version"] == demo.CORPUS_VERSION == 4
    assert "보라색 사각형" in (root / "README.md").read_text(encoding="utf-8")


def test_deterministic(corpora: tuple[Path, Path, dict]) -> None:
    a, b, _ = corpora
    for split in ("train", "val"):
        assert _labels(a, split) == _labels(b, split)
        for va in sorted((a / split / "videos").glob("*.mp4")):
            vb = b / split / "videos" / va.name
            assert va.read_bytes() == vb.read_bytes(), va.name
            np.testing.assert_array_equal(read_video_frames(va, num_frames=8), read_video_frames(vb, num_frames=8))
    assert demo.sample_caption_texts(20, seed=5) == demo.sample_caption_texts(20, seed=5)
    assert demo.sample_caption_texts(20, seed=5) != demo.sample_caption_texts(20, seed=6)


def test_categories_follow_real_ratio(corpora: tuple[Path, Path, dict]) -> None:
    _, _, summary = corpora
    cats = summary["splits"]["train"]["categories"]
    for cat, weight in zip(demo.CATEGORIES, demo.CATEGORY_WEIGHTS, strict=True):
        assert abs(cats[cat] - weight * NUM_TRAIN) <= 1


def test_val_holds_out_pairs_absent_from_train(corpora: tuple[Path, Path, dict]) -> None:
    root, _, summary = corpora
    held = set(demo.HELD_OUT_PAIRS)
    train_pairs = {(o["color"], o["shape"]) for lab in _labels(root, "train").values() for o in _objects(lab)}
    val_pairs = {(o["color"], o["shape"]) for lab in _labels(root, "val").values() for o in _objects(lab)}
    assert not train_pairs & held
    assert held <= val_pairs  # every held-out pair is tested at least once
    # Every colour and every shape is still seen in train, so only the combination is new.
    assert {c for c, _ in train_pairs} == set(demo.COLORS) and {s for _, s in train_pairs} == set(demo.SHAPES)
    assert summary["splits"]["val"]["clips_with_held_out_pair"] >= NUM_VAL // 2
    for lab in _labels(root, "val").values():
        attrs = lab["metadata"]["attributes"]
        assert attrs["has_held_out"] == any((o["color"], o["shape"]) in held for o in attrs["objects"])


def _objects(label: dict) -> list[dict]:
    return label["metadata"]["attributes"]["objects"]


def test_captions_state_the_attributes(corpora: tuple[Path, Path, dict]) -> None:
    root, _, _ = corpora
    for split in ("train", "val"):
        for label in _labels(root, split).values():
            text = label["annotation"]["description_kr"]
            attrs = label["metadata"]["attributes"]
            # The caption names the time of day with a word its label lists (full recall: test_caption_attributes).
            assert any(word in text for word in attrs["time_of_day_words"]), text
            # No colour is named that is not on screen (sky and ground words are not object colours).
            named = {c for c in demo.COLORS if c in text}
            assert named == {o["color"] for o in attrs["objects"]}, text
            for obj in attrs["objects"]:
                # The object's motion is stated in the sentence that names it, as the attribute metric reads it.
                sentences = [s for s in text.split(".") if f"{obj['color']} {obj['shape']}" in s]
                assert sentences and all(obj["motion"] in s for s in sentences), text
            _assert_unsupported_facts_match(text, attrs)


def _assert_unsupported_facts_match(text: str, attrs: dict) -> None:
    """A sentence the frames cannot support is in the caption exactly when the label records it."""
    assert (attrs["filming_time"] is not None) == ("촬영된" in text), text
    if attrs["filming_time"] is not None:
        assert f"{attrs['filming_time']}에 촬영된" in text, text
    assert (attrs["sign"] is not None) == ("'" in text), text
    if attrs["sign"] is not None:
        assert f"'{attrs['sign']}'" in text, text
    assert (attrs["season"] is not None) == ("계절은" in text), text


def test_captions_are_ai_hub_like_paragraphs() -> None:
    """Several sentences and a few hundred characters each, in varied wording, with the unsupportable sentences
    in the shares the corpus states."""
    pairs = demo.sample_captions(2000, seed=1)
    texts = [text for text, _ in pairs]
    sentence_counts = [text.count(". ") + 1 for text in texts]
    lengths = [len(text) for text in texts]
    assert min(sentence_counts) >= 6 and max(sentence_counts) <= 12
    assert 250 <= np.mean(lengths) <= 350 and min(lengths) >= 150 and max(lengths) <= 500
    assert len(set(texts)) == len(texts)
    # Varied wording: no sentence is shared by more than a quarter of the captions, and openings vary.
    sentence_share = Counter(s for text in texts for s in set(text.split(". ")))
    assert max(sentence_share.values()) < 0.25 * len(texts), sentence_share.most_common(1)
    assert len({text.split(" ")[0] for text in texts}) >= 6
    for kind, share in (
        ("filming_time", demo.FILMING_TIME_SHARE),
        ("sign", demo.SIGNAGE_SHARE),
        ("season", demo.SEASON_SHARE),
    ):
        stated = np.mean([attrs[kind] is not None for _, attrs in pairs])
        assert abs(stated - share) < 0.04, (kind, stated)
    for text, attrs in pairs[:300]:
        _assert_unsupported_facts_match(text, attrs)


def test_no_caption_repeats_a_word_4gram() -> None:
    """A caption that says the same four words twice teaches the loop the seed's runs fell into; two objects
    moving alike, or both described, never take the same wording."""
    from kvcap.metrics.caption_diversity.caption_diversity import repeated_ngrams

    pairs = demo.sample_captions(3000, seed=2)
    repeating = [text for text, _ in pairs if repeated_ngrams(text, 4)]
    assert not repeating, repeating[:3]
    # The sample holds the cases that used to repeat: two objects of one motion, and two detail sentences.
    alike = [attrs["objects"] for _, attrs in pairs if attrs["num_objects"] == 2]
    assert sum(first["motion_id"] == second["motion_id"] for first, second in alike) > 100


def test_wording_choice_never_takes_the_avoided_one() -> None:
    rng = np.random.default_rng(0)
    for count in (2, 3, 5):
        for avoid in range(count):
            picks = {demo._pick_index(rng, count, avoid) for _ in range(200)}
            assert picks == set(range(count)) - {avoid}
        assert {demo._pick_index(rng, count) for _ in range(200)} == set(range(count))


def test_summary_counts_the_unsupported_sentences(corpora: tuple[Path, Path, dict]) -> None:
    root, _, summary = corpora
    for split in ("train", "val"):
        labels = _labels(root, split).values()
        for kind in demo.UNSUPPORTED_FACTS:
            expected = sum(label["metadata"]["attributes"][kind] is not None for label in labels)
            assert summary["splits"][split]["captions_stating"][kind] == expected


def test_sample_caption_texts_cover_vocabulary() -> None:
    texts = demo.sample_caption_texts(400, seed=0)
    assert len(texts) == 400 and len(set(texts)) > 350
    joined = "\n".join(texts)
    for word in [*demo.COLORS, *demo.CATEGORIES, *demo.SKY_COLORS, *demo.MOTIONS.values()]:
        assert word in joined, word
    for color, shape in demo.ALL_PAIRS:
        assert re.search(f"{color} {shape}[이가은는 ]", joined), (color, shape)


def test_clips_show_what_labels_say(corpora: tuple[Path, Path, dict]) -> None:
    """Decoded pixels: the sky has its colour, and each lone object its colour, along its stored path."""
    root, _, _ = corpora
    names = list(demo.COLORS)
    palette = np.array([demo.COLORS[n] for n in names], dtype=np.float64)
    for split in ("train", "val"):
        for stem, label in _labels(root, split).items():
            frames = read_video_frames(root / split / "videos" / f"{stem}.mp4", num_frames=16)
            assert frames.shape == (16, 96, 96, 3) and frames.dtype == np.uint8
            attrs = label["metadata"]["attributes"]
            sky = np.array(demo.TIMES_OF_DAY[attrs["time_of_day"]]["rgb"], dtype=np.float64)
            assert np.abs(frames[:, 1, 1].astype(np.float64) - sky).max() < 24, stem
            if attrs["num_objects"] != 1:
                continue  # two objects may cross and hide each other's centre for a frame
            obj = attrs["objects"][0]
            (x0, y0), (x1, y1) = obj["path"]["start"], obj["path"]["end"]
            for t in range(16):
                a = t / 15
                x, y = round(x0 + a * (x1 - x0)), round(y0 + a * (y1 - y0))
                pixel = frames[t, y, x].astype(np.float64)
                assert names[int(np.abs(palette - pixel).sum(axis=1).argmin())] == obj["color"], (stem, t)


def test_refuses_to_overwrite_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "keep.txt").write_text("not ours")
    with pytest.raises(FileExistsError):
        demo.generate_corpus(tmp_path, num_train=2, num_val=1)
    assert (tmp_path / "train" / "keep.txt").exists()


def test_regenerating_replaces_previous_corpus(tmp_path: Path) -> None:
    demo.generate_corpus(tmp_path, num_train=4, num_val=2, workers=1)
    demo.generate_corpus(tmp_path, num_train=2, num_val=1, workers=1)
    assert len(os.listdir(tmp_path / "train" / "videos")) == 2
    assert len(os.listdir(tmp_path / "val" / "labels")) == 1


def test_corpus_size_reads_the_summary_of_this_version_only(corpora: tuple[Path, Path, dict], tmp_path: Path) -> None:
    root, _, _ = corpora
    assert demo.corpus_size(root) == {"train": NUM_TRAIN, "val": NUM_VAL}
    assert demo.corpus_size(tmp_path) is None  # no summary
    saved = json.loads((root / demo.SUMMARY_FILE).read_text(encoding="utf-8"))
    for name, summary in (
        ("older", {**saved, "version": 1}),
        ("unversioned", {k: v for k, v in saved.items() if k != "version"}),
    ):
        (tmp_path / name).mkdir()
        (tmp_path / name / demo.SUMMARY_FILE).write_text(json.dumps(summary), encoding="utf-8")
        assert demo.corpus_size(tmp_path / name) is None, name
    (tmp_path / demo.SUMMARY_FILE).write_text("{truncated", encoding="utf-8")
    assert demo.corpus_size(tmp_path) is None


def test_regenerating_an_older_corpus_writes_the_current_version(tmp_path: Path) -> None:
    demo.generate_corpus(tmp_path, num_train=2, num_val=1, workers=1)
    summary_path = tmp_path / demo.SUMMARY_FILE
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    summary["version"] = 1
    summary_path.write_text(json.dumps(summary), encoding="utf-8")
    assert demo.corpus_size(tmp_path) is None
    # An older corpus is still recognised as ours, so the caller can rebuild it in place.
    demo.generate_corpus(tmp_path, num_train=3, num_val=1, workers=1)
    assert demo.corpus_size(tmp_path) == {"train": 3, "val": 1}
    label = json.loads(next((tmp_path / "val" / "labels").glob("*.json")).read_text(encoding="utf-8"))
    assert len(label["metadata"]["attributes"]["time_of_day_words"]) == 2
