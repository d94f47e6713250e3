"""AI-Hub folders → datasets: both layouts, every kind of bad sample counted, CLI, streaming = non-streaming."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path

import datasets
import numpy as np
import pytest

from kvcap.demo.corpus import generate_corpus
from processing import aihub
from processing.video_io import read_video_frames

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    generate_corpus(root, num_train=6, num_val=4, seed=1, size=64, workers=1)
    return root


def _captions(root: Path, split: str) -> dict[str, str]:
    return {
        p.stem: json.loads(p.read_text(encoding="utf-8"))["annotation"]["description_kr"]
        for p in sorted((root / split / "labels").glob("*.json"))
    }


def _aihub_layout(demo: Path, dest: Path) -> Path:
    """The demo corpus rearranged as AI-Hub ships it, nested as in a download, with Korean folder names
    stored decomposed (NFD) as macOS-made archives do."""
    base = dest / "대한민국 배경영상" / "3.개방데이터" / "1.데이터"
    src_nfd = unicodedata.normalize("NFD", "01.원천데이터")
    lab_nfd = unicodedata.normalize("NFD", "02.라벨링데이터")
    for split, top, v, lab in (("train", "Training", "TS", "TL"), ("val", "Validation", "VS", "VL")):
        for i, video in enumerate(sorted((demo / split / "videos").glob("*.mp4"))):
            group = f"{i % 2 + 1:02d}.시가지" if i % 2 else f"{i % 2 + 1:02d}.자연"
            vdir = base / top / src_nfd / f"{v}_{group}" / "clips"
            ldir = base / top / lab_nfd / f"{lab}_{group}"
            vdir.mkdir(parents=True, exist_ok=True)
            ldir.mkdir(parents=True, exist_ok=True)
            shutil.copy(video, vdir / video.name)
            shutil.copy(demo / split / "labels" / f"{video.stem}.json", ldir / f"{video.stem}.json")
    return dest


def test_simple_layout(demo: Path) -> None:
    ds, report = aihub.load_aihub(demo, "train", return_report=True)
    assert isinstance(ds, datasets.Dataset)
    assert set(aihub.COLUMNS) <= set(ds.column_names)
    expected = _captions(demo, "train")
    assert ds["video_id"] == sorted(expected)
    assert dict(zip(ds["video_id"], ds["caption"], strict=True)) == expected
    for row in ds:
        assert Path(row["video_path"]).is_file() and row["split"] == "train"
        meta = json.loads(row["metadata"])
        assert meta["video_id"] == row["video_id"] and row["category"] == meta["attributes"]["category"]
    split = report.splits["train"]
    assert split.num_usable == 6 and split.num_skipped == 0
    assert sum(split.categories.values()) == 6 and split.caption_chars["count"] == 6
    assert len(aihub.load_aihub(demo, "val")) == 4


def test_aihub_layout(demo: Path, tmp_path: Path) -> None:
    root = _aihub_layout(demo, tmp_path)
    for name in ("train", "Training", "training"):
        ds = aihub.load_aihub(root, name)
        assert dict(zip(ds["video_id"], ds["caption"], strict=True)) == _captions(demo, "train")
        assert set(ds["split"]) == {"train"}
    for name in ("val", "validation", "Validation"):
        ds = aihub.load_aihub(root, name)
        assert dict(zip(ds["video_id"], ds["caption"], strict=True)) == _captions(demo, "val")
    simple = aihub.load_aihub(demo, "val")
    assert ds["video_id"] == simple["video_id"] and ds["category"] == simple["category"]
    report = aihub.scan_aihub(root)
    assert {k: s.num_usable for k, s in report.splits.items()} == {"train": 6, "val": 4}
    assert report.splits["train"].split_dirs[0].endswith("Training")


def _write_json(path: Path, obj: dict, encoding: str = "utf-8") -> None:
    path.write_bytes(json.dumps(obj, ensure_ascii=False).encode(encoding))


@pytest.fixture
def messy(demo: Path, tmp_path: Path) -> dict:
    """Three good samples and one of every bad case, in the simple layout."""
    root = tmp_path / "messy"
    vdir, ldir = root / "train" / "videos", root / "train" / "labels"
    vdir.mkdir(parents=True)
    ldir.mkdir(parents=True)
    videos = sorted((demo / "train" / "videos").glob("*.mp4"))
    good = videos[:3]
    for v in good:
        shutil.copy(v, vdir / v.name)
        shutil.copy(demo / "train" / "labels" / f"{v.stem}.json", ldir / f"{v.stem}.json")
    clip = videos[3]

    def pair(stem: str, label: dict | None = None, raw: bytes | None = None, video: bytes | None = None) -> None:
        (vdir / f"{stem}.mp4").write_bytes(clip.read_bytes() if video is None else video)
        if raw is not None:
            (ldir / f"{stem}.json").write_bytes(raw)
        elif label is not None:
            _write_json(ldir / f"{stem}.json", label)

    cp949_caption = "밤 도로 위로 빨간색 원이 지나갑니다. 한글 인코딩은 CP949입니다."
    bom_caption = "맑은 낮의 자연 풍경입니다. 파일 앞에 BOM이 있습니다."
    (ldir / "label_only.json").write_text(json.dumps({"description_kr": "영상 없음"}), encoding="utf-8")
    (vdir / "video_only.mp4").write_bytes(clip.read_bytes())
    pair("bad_json", raw=b'{"annotation": {"description_kr": "\xeb\xb0\xa4"')  # cut off mid-object
    pair("cp949", raw=json.dumps({"caption": {"korean": cp949_caption}}, ensure_ascii=False).encode("cp949"))
    pair("bom", raw=b"\xef\xbb\xbf" + json.dumps({"description_kr": bom_caption}, ensure_ascii=False).encode())
    pair("no_caption", label={"metadata": {"video_id": "no_caption"}, "category": "자연"})
    pair("empty_caption", label={"annotation": {"description_kr": "  \n"}})
    pair("not_video", label={"caption": "자막은 있지만 영상이 아닙니다."}, video=b"<html>404 Not Found</html>")
    # Passes the header check (starts with an ftyp box) but the moov atom is gone: only probing finds it.
    pair("truncated", label={"caption": "잘린 파일입니다."}, video=clip.read_bytes()[:1200])
    return {
        "root": root,
        "good": {v.stem for v in good},
        "cp949": cp949_caption,
        "bom": bom_caption,
        "paths": {
            aihub.LABEL_WITHOUT_VIDEO: [ldir / "label_only.json"],
            aihub.VIDEO_WITHOUT_LABEL: [vdir / "video_only.mp4"],
            aihub.UNREADABLE_JSON: [ldir / "bad_json.json"],
            aihub.NO_CAPTION: [ldir / "no_caption.json"],
            aihub.EMPTY_CAPTION: [ldir / "empty_caption.json"],
            aihub.UNREADABLE_VIDEO: [vdir / "not_video.mp4"],
        },
    }


def test_every_bad_case_counted(messy: dict, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="processing.aihub"):
        ds, report = aihub.load_aihub(messy["root"], "train", return_report=True)
    split = report.splits["train"]
    expected_counts = {r: len(messy["paths"].get(r, [])) for r in aihub.REASONS}
    assert split.counts() == expected_counts
    for reason, paths in messy["paths"].items():
        assert [Path(p).resolve() for p in split.skipped[reason]] == [p.resolve() for p in paths], reason
    assert "starts with" in split.details[str((messy["root"] / "train" / "videos" / "not_video.mp4").resolve())]
    # Good samples, the CP949 and BOM labels and the header-valid truncated file are all kept, intact.
    rows = {r["video_id"]: r for r in ds}
    assert set(rows) == messy["good"] | {"cp949", "bom", "truncated"}
    assert rows["cp949"]["caption"] == messy["cp949"] and rows["bom"]["caption"] == messy["bom"]
    assert split.label_encodings == {"utf-8": 7, "utf-8-bom": 1, "cp949": 1}
    for stem in messy["good"]:
        label = json.loads((messy["root"] / "train" / "labels" / f"{stem}.json").read_text(encoding="utf-8"))
        assert rows[stem]["caption"] == label["annotation"]["description_kr"]
        assert rows[stem]["category"] == label["category"]
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warning) == 1 and "skipped 6" in warning[0] and "unreadable_json=1" in warning[0]


def test_probe_finds_truncated_video(messy: dict) -> None:
    ds, report = aihub.load_aihub(messy["root"], "train", video_check="probe", return_report=True)
    split = report.splits["train"]
    assert split.counts()[aihub.UNREADABLE_VIDEO] == 2
    assert sorted(Path(p).name for p in split.skipped[aihub.UNREADABLE_VIDEO]) == ["not_video.mp4", "truncated.mp4"]
    assert "truncated" not in ds["video_id"] and len(ds) == 5
    none = aihub.load_aihub(messy["root"], "train", video_check="none")
    assert len(none) == 7  # nothing checked: the HTML page and the truncated file both pass


def _cli(*args: str | os.PathLike) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "processing.aihub", *map(str, args)]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def test_cli_report(messy: dict, tmp_path: Path) -> None:
    # A real (tiny) byte-level BPE tokenizer trained on the captions gives token counts.
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from kvcap.demo.corpus import sample_caption_texts

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(sample_caption_texts(200), trainers.BpeTrainer(vocab_size=400, show_progress=False))
    PreTrainedTokenizerFast(tokenizer_object=tok).save_pretrained(tmp_path / "tok")

    proc = _cli(messy["root"], "--split", "train", "--check-videos", "--tokenizer", tmp_path / "tok")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "usable 5" in out and "skipped 7" in out and "video check: probe" in out
    for reason in aihub.REASONS:
        assert reason in out
    assert "label_without_video  1" in out and "unreadable_video     2" in out
    assert "caption chars:" in out and "caption tokens:" in out and "label_only.json" in out
    assert "over the training limit: 0 of 5 captions would be cut (max_caption_tokens 768" in out
    limited = _cli(messy["root"], "--split", "train", "--tokenizer", tmp_path / "tok", "--max-caption-tokens", "3")
    assert "over the training limit: 6 of 6 captions would be cut (max_caption_tokens 3" in limited.stdout

    proc = _cli(messy["root"], "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["splits"]["train"]["num_usable"] == 6 and data["splits"]["val"]["num_usable"] == 0

    empty = tmp_path / "empty"
    empty.mkdir()
    proc = _cli(empty)
    assert proc.returncode != 0 and "no usable samples" in proc.stderr


def test_streaming_matches_non_streaming(demo: Path) -> None:
    table = aihub.load_aihub(demo, "train")
    stream = aihub.load_aihub(demo, "train", streaming=True, num_frames=4, frame_size=32, num_shards=3)
    assert isinstance(stream, datasets.IterableDataset) and stream.n_shards == 3
    samples = list(stream)
    assert [s["video_id"] for s in samples] == table["video_id"]
    assert [s["caption"] for s in samples] == table["caption"]
    assert [s["metadata"] for s in samples] == table["metadata"]
    for s in samples:
        assert s["frames"].shape == (4, 32, 32, 3) and s["frames"].dtype == np.uint8
    np.testing.assert_array_equal(samples[0]["frames"], read_video_frames(table[0]["video_path"], 4, size=32))
    # Undecoded streaming is the same rows as the Arrow table, column for column.
    plain = list(aihub.load_aihub(demo, "train", streaming=True, decode_video=False))
    assert plain == list(table)


def test_streaming_decodes_in_dataloader_workers(demo: Path) -> None:
    import torch

    stream = aihub.load_aihub(demo, "val", streaming=True, num_frames=2, frame_size=16, num_shards=4)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=2)
    seen = {s["video_id"]: s["frames"].shape for s in loader}
    assert set(seen) == set(_captions(demo, "val"))
    assert all(tuple(shape) == (2, 16, 16, 3) for shape in seen.values())


def test_nothing_found(tmp_path: Path) -> None:
    ds, report = aihub.load_aihub(tmp_path, "train", return_report=True)
    assert len(ds) == 0 and report.splits["train"].split_dirs == [] and report.num_usable == 0


def test_duplicate_stems_and_archives_reported(demo: Path, tmp_path: Path) -> None:
    src = sorted((demo / "train" / "videos").glob("*.mp4"))[0]
    base = tmp_path / "Training"
    for group in ("TS_a", "TS_b"):  # the same clip shipped in two archives
        (base / "01.원천데이터" / group).mkdir(parents=True)
        shutil.copy(src, base / "01.원천데이터" / group / src.name)
    (base / "02.라벨링데이터" / "TL_a").mkdir(parents=True)
    shutil.copy(demo / "train" / "labels" / f"{src.stem}.json", base / "02.라벨링데이터" / "TL_a")
    (base / "01.원천데이터" / "TS_c.zip").write_bytes(b"PK\x03\x04")
    ds, report = aihub.load_aihub(tmp_path, "train", return_report=True)
    split = report.splits["train"]
    assert len(ds) == 1 and ds[0]["video_path"].endswith(f"TS_a/{src.name}")  # first in path order is kept
    assert split.counts()[aihub.DUPLICATE_STEM] == 1 and split.skipped[aihub.DUPLICATE_STEM][0].endswith(
        f"TS_b/{src.name}"
    )
    assert split.archives == [str(base / "01.원천데이터" / "TS_c.zip")]
    assert "unextracted archives (1)" in report.format()


def _scan_within(seconds: float, *args, **kwargs):
    """``load_aihub(*args, return_report=True)`` that must finish in ``seconds`` (a blocked open would hang)."""
    import threading

    result: dict = {}

    def scan() -> None:
        try:
            result["value"] = aihub.load_aihub(*args, return_report=True, **kwargs)
        except BaseException as error:  # re-raised in the test's thread
            result["error"] = error

    worker = threading.Thread(target=scan, daemon=True)  # a hung scan must not keep pytest from exiting
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"the corpus scan did not finish in {seconds} s"
    if "error" in result:
        raise result["error"]
    return result["value"]


def _copy_split(demo: Path, dest: Path, split: str = "train") -> tuple[Path, Path]:
    videos, labels = dest / split / "videos", dest / split / "labels"
    shutil.copytree(demo / split / "videos", videos)
    shutil.copytree(demo / split / "labels", labels)
    return videos, labels


def test_named_pipes_and_link_loops_are_skipped_and_named_not_hung_on(demo: Path, tmp_path: Path) -> None:
    videos, labels = _copy_split(demo, tmp_path)
    stems = sorted(p.stem for p in videos.glob("*.mp4"))
    os.mkfifo(videos / "pipe.mp4")
    shutil.copy(labels / f"{stems[0]}.json", labels / "pipe.json")
    (videos / "loop.mp4").symlink_to(videos / "loop2.mp4")
    (videos / "loop2.mp4").symlink_to(videos / "loop.mp4")
    shutil.copy(labels / f"{stems[0]}.json", labels / "loop.json")
    (labels / stems[1]).with_suffix(".json").unlink()
    os.mkfifo(labels / f"{stems[1]}.json")  # a label that is a pipe blocks a read as much as a video
    (tmp_path / "train" / "videos" / "again").symlink_to(videos, target_is_directory=True)  # a folder loop

    for check in ("header", "probe"):
        ds, report = _scan_within(60, tmp_path, "train", video_check=check)
        split = report.splits["train"]
        assert len(ds) == len(stems) - 1
        assert split.details[str(videos / "pipe.mp4")] == "not a regular file (a named pipe)"
        assert split.details[str(videos / "loop.mp4")] == "symbolic link loop"
        assert split.details[str(labels / f"{stems[1]}.json")] == "not a regular file (a named pipe)"
        assert str(labels / f"{stems[1]}.json") in split.skipped[aihub.UNREADABLE_JSON]
        assert {str(videos / "pipe.mp4"), str(videos / "loop.mp4")} <= set(split.skipped[aihub.UNREADABLE_VIDEO])


def test_a_linked_data_folder_is_followed(demo: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "disk2"
    videos, labels = _copy_split(demo, elsewhere)
    (tmp_path / "corpus" / "train").mkdir(parents=True)
    (tmp_path / "corpus" / "train" / "videos").symlink_to(videos, target_is_directory=True)
    (tmp_path / "corpus" / "train" / "labels").symlink_to(labels, target_is_directory=True)
    ds, report = _scan_within(60, tmp_path / "corpus", "train")
    assert len(ds) == len(list(videos.glob("*.mp4"))) and report.splits["train"].num_skipped == 0
    assert ds[0]["video_path"].startswith(str(tmp_path / "corpus" / "train" / "videos"))  # the path as given


def test_a_repeated_stem_pairs_only_within_its_folder(demo: Path, tmp_path: Path) -> None:
    src_video = sorted((demo / "train" / "videos").glob("*.mp4"))[0]
    src_label = demo / "train" / "labels" / f"{src_video.stem}.json"
    base = tmp_path / "train"
    for group in ("city", "nature"):
        (base / "videos" / group).mkdir(parents=True)
        shutil.copy(src_video, base / "videos" / group / "0001.mp4")
    (base / "labels" / "nature").mkdir(parents=True)
    shutil.copy(src_label, base / "labels" / "nature" / "0001.json")
    (base / "videos" / "solo").mkdir()
    shutil.copy(src_video, base / "videos" / "solo" / "0002.mp4")
    (base / "labels" / "elsewhere").mkdir()
    shutil.copy(src_label, base / "labels" / "elsewhere" / "0002.json")  # unique stem: pairs across folders

    ds, report = aihub.load_aihub(tmp_path, "train", return_report=True)
    split = report.splits["train"]
    paired = {row["video_id"]: (row["video_path"], row["label_path"]) for row in ds}
    assert paired["0001"] == (
        str(base / "videos" / "nature" / "0001.mp4"),
        str(base / "labels" / "nature" / "0001.json"),
    )
    assert paired["0002"][0].endswith("solo/0002.mp4")
    assert split.skipped[aihub.DUPLICATE_STEM] == [str(base / "videos" / "city" / "0001.mp4")]
    assert "no single partner in its folder" in split.details[str(base / "videos" / "city" / "0001.mp4")]


def test_unextracted_archives_are_said_by_load_aihub(demo: Path, tmp_path: Path, caplog) -> None:
    _copy_split(demo, tmp_path)
    (tmp_path / "train" / "TS_2.zip").write_bytes(b"PK\x03\x04")
    with caplog.at_level(logging.WARNING, logger="processing.aihub"):
        aihub.load_aihub(tmp_path, "train")
    assert "1 archive(s) not extracted" in caplog.text and "TS_2.zip" in caplog.text


def test_probing_a_large_split_shows_its_progress(demo: Path, tmp_path: Path, capsys) -> None:
    video = sorted((demo / "train" / "videos").glob("*.mp4"))[0]
    label = demo / "train" / "labels" / f"{video.stem}.json"
    (tmp_path / "train" / "videos").mkdir(parents=True)
    (tmp_path / "train" / "labels").mkdir()
    for index in range(120):
        shutil.copy(video, tmp_path / "train" / "videos" / f"clip_{index:03d}.mp4")
        shutil.copy(label, tmp_path / "train" / "labels" / f"clip_{index:03d}.json")
    report = aihub.scan_aihub(tmp_path, "train", video_check="probe")
    assert report.splits["train"].num_usable == 120
    shown = capsys.readouterr().err
    assert "kvcap: probing videos" in shown and "120/120" in shown and "file/s" in shown


def test_qwen3_token_counts_and_the_captions_training_would_cut(demo: Path, tmp_path: Path, qwen3_tokenizer) -> None:
    from kvcap.demo.qwen3_tokenizer import aihub_like_caption

    _, labels = _copy_split(demo, tmp_path)
    captions = []
    for index, path in enumerate(sorted(labels.glob("*.json"))):
        label = json.loads(path.read_text(encoding="utf-8"))
        # AI-Hub-length paragraphs, two of them long enough (> 600 tokens) to pass a 600-token limit.
        label["annotation"]["description_kr"] = aihub_like_caption(index, min_chars=900 if index < 2 else 575)
        captions.append(label["annotation"]["description_kr"])
        _write_json(path, label)
    counts = [len(qwen3_tokenizer(caption, add_special_tokens=False)["input_ids"]) for caption in captions]
    report = aihub.scan_aihub(tmp_path, "train", tokenizer=qwen3_tokenizer, max_caption_tokens=600)
    split = report.splits["train"]
    assert split.caption_tokens == aihub.length_stats(counts)
    assert split.captions_over_limit == sum(count + 1 > 600 for count in counts) == 2
    assert "over the training limit: 2 of 6 captions would be cut (max_caption_tokens 600" in report.format()
    # At the default limit (the generation limit, 768) none of these is cut.
    assert aihub.scan_aihub(tmp_path, "train", tokenizer=qwen3_tokenizer).splits["train"].captions_over_limit == 0
