"""kvcap.captioning: a folder of videos captioned as one resumable job, bad files skipped and named."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from kvcap.captioning import CaptionJournal, JournalMismatchError, caption_files, find_videos
from kvcap.demo.corpus import generate_corpus
from kvcap.generation import GenerationArguments, generate_captions

from .conftest import tiny_processor

GENERATION = GenerationArguments(batch_size=2, max_new_tokens=8)


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    """A user's folder: five clips in subfolders, a text file named .mp4, a named pipe, a linked folder loop."""
    corpus = tmp_path_factory.mktemp("corpus")
    generate_corpus(corpus, num_train=5, num_val=0, seed=2, workers=1)
    root = tmp_path_factory.mktemp("archive")
    clips = sorted((corpus / "train" / "videos").glob("*.mp4"))
    for index, clip in enumerate(clips):
        folder = root / ("2024" if index < 3 else "2025")
        folder.mkdir(exist_ok=True)
        shutil.copy(clip, folder / clip.name)
    (root / "2025" / "notes.mp4").write_text("not a video", encoding="utf-8")
    os.mkfifo(root / "2025" / "pipe.mp4")
    (root / "2025" / "again").symlink_to(root, target_is_directory=True)
    (root / "readme.txt").write_text("ignored: not a video extension", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def model_and_processor(make_tiny_model, tiny_tokenizer):
    model = make_tiny_model("mlp_2l").eval()
    return model, tiny_processor(tiny_tokenizer, model.config)


def test_find_videos_lists_video_names_once_through_linked_folders(archive: Path):
    found = find_videos(archive)
    assert [Path(path).name for path in found if "demo" in path] == sorted(
        path.name for path in archive.rglob("kvcap_demo_*.mp4") if "again" not in path.parts
    )
    assert {Path(path).name for path in found} - {p.name for p in archive.glob("*/kvcap_demo_*.mp4")} == {
        "notes.mp4",
        "pipe.mp4",
    }
    with pytest.raises(FileNotFoundError, match="video folder not found"):
        find_videos(archive / "nope")


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_folder_is_captioned_with_bad_files_named_and_good_ones_as_a_plain_generate(
    archive: Path, model_and_processor, tmp_path: Path, num_workers: int
):
    model, processor = model_and_processor
    paths = find_videos(archive)
    journal = CaptionJournal(tmp_path / "captions.jsonl", {"job": "test"})
    shown = []
    summary = caption_files(
        model,
        processor,
        paths,
        GENERATION,
        journal=journal,
        num_workers=num_workers,
        progress=False,
        on_result=shown.append,
    )
    good = [path for path in paths if "kvcap_demo" in path]
    assert summary.captioned == 5 and summary.resumed == 0
    assert set(summary.failed) == set(paths) - set(good)
    assert "not a regular file (a named pipe)" in summary.failed[str(archive / "2025" / "pipe.mp4")]
    assert [row["video_path"] for row in shown] == paths  # in the order given, as they are made
    rows = [json.loads(line) for line in journal.path.read_text(encoding="utf-8").splitlines()]
    assert rows == shown
    expected = generate_captions(model, processor, good, batch_size=1, max_new_tokens=8)
    assert [row["caption"] for row in rows if "caption" in row] == expected


def test_a_killed_job_resumes_with_only_the_rest_and_a_cut_line_ignored(
    archive: Path, model_and_processor, tmp_path: Path, caplog
):
    model, processor = model_and_processor
    paths = [path for path in find_videos(archive) if "kvcap_demo" in path]
    complete = caption_files(
        model,
        processor,
        paths,
        GENERATION,
        journal=CaptionJournal(tmp_path / "all.jsonl", {"job": "t"}),
        num_workers=0,
        progress=False,
    )
    assert complete.captioned == 5
    full = (tmp_path / "all.jsonl").read_text(encoding="utf-8").splitlines()
    # A job killed after two captions, mid-way through writing the third line.
    killed = tmp_path / "captions.jsonl"
    killed.write_text("\n".join(full[:2]) + "\n" + full[2][:17], encoding="utf-8")
    shutil.copy(tmp_path / "all.jsonl.meta.json", tmp_path / "captions.jsonl.meta.json")

    with caplog.at_level("WARNING", logger="kvcap.captioning"):
        journal = CaptionJournal(killed, {"job": "t"})
    assert len(journal.done) == 2 and "dropped a line cut off when the job stopped" in caplog.text
    summary = caption_files(model, processor, paths, GENERATION, journal=journal, num_workers=0, progress=False)
    assert (summary.resumed, summary.captioned) == (2, 3)
    rows = [json.loads(line) for line in killed.read_text(encoding="utf-8").splitlines()]  # every line whole
    assert len(rows) == 5
    expected = {json.loads(line)["video_path"]: json.loads(line)["caption"] for line in full}
    assert {row["video_path"]: row["caption"] for row in rows} == expected
    # Done means done: nothing is generated again.
    again = caption_files(model, processor, paths, GENERATION, journal=CaptionJournal(killed, {"job": "t"}))
    assert (again.resumed, again.captioned) == (5, 0)


def test_a_journal_of_another_job_is_refused_naming_what_differs(tmp_path: Path):
    journal = CaptionJournal(tmp_path / "captions.jsonl", {"model": "a", "decoding": {"max_new_tokens": 8}})
    journal.append([{"video_path": "x.mp4", "caption": "가"}])
    with pytest.raises(JournalMismatchError, match=r"another job \(differing: decoding\)"):
        CaptionJournal(tmp_path / "captions.jsonl", {"model": "a", "decoding": {"max_new_tokens": 16}})
    assert CaptionJournal(tmp_path / "captions.jsonl", {"model": "a", "decoding": {"max_new_tokens": 8}}).done


def test_a_fresh_start_deletes_what_an_earlier_job_left(tmp_path: Path):
    CaptionJournal(tmp_path / "c.jsonl", {"model": "old"}).append([{"video_path": "x.mp4", "caption": "가"}])
    fresh = CaptionJournal(tmp_path / "c.jsonl", {"model": "new"}, resume=False)
    assert fresh.done == {} and not (tmp_path / "c.jsonl").exists()
