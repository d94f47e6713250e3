"""Captioning many videos as one resumable job: decoding in DataLoader workers, captions appended as they are made.

:class:`CaptionJournal` is an append-only JSON-lines file with a side file naming the job (model, decoding, what
is captioned), so a killed job resumes where it stopped and a job of other settings is never mixed in.
:func:`caption_files` captions a list of video paths through it: clips are decoded in ``num_workers`` DataLoader
workers while the model generates, at most a few batches ahead (memory stays flat however many files there are);
a file that cannot be read is recorded with why and skipped; one that fails to generate in its batch is retried
alone.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from processing.aihub import VIDEO_EXTENSIONS as CORPUS_VIDEO_EXTENSIONS
from processing.aihub import walk_once

from .disk import naming_a_full_disk
from .generation import GenerationArguments, generate_captions_detailed

logger = logging.getLogger(__name__)

# The corpus scan's video extensions, as a tuple for str.endswith.
VIDEO_EXTENSIONS = tuple(sorted(CORPUS_VIDEO_EXTENSIONS))
# How an error begins when the clip was read but could not be captioned.
GENERATION_FAILED = "generation failed"


class JournalMismatchError(ValueError):
    """The output folder holds captions of another job; the message names both and what to do."""


class CaptionJournal:
    """``path`` (JSON lines, one per clip, appended and flushed as captions are made) and ``path.meta.json``.

    ``identity`` names the job (model, decoding settings, what is captioned). An existing journal of the same
    identity is resumed: :attr:`done` holds its rows by ``key``; one of another identity is refused, since its
    captions would be mixed with this job's. ``resume=False`` deletes an existing one and starts afresh.
    """

    def __init__(self, path: str | os.PathLike, identity: dict[str, Any], key: str = "video_path", resume: bool = True):
        self.path = Path(path)
        self.meta_path = self.path.with_name(self.path.name + ".meta.json")
        self.key = key
        self.identity = json.loads(json.dumps(identity, default=str))  # as it reads back from the side file
        self.done: dict[str, dict[str, Any]] = {}
        self.failed: dict[str, dict[str, Any]] = {}
        if resume:
            self._resume()
        else:
            self.remove()  # a fresh start: what an earlier job left is not this job's

    def _resume(self) -> None:
        if not self.path.exists():
            return
        try:
            found = json.loads(self.meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            found = None
        if found != self.identity:
            differing = sorted(
                key for key in {*(found or {}), *self.identity} if (found or {}).get(key) != self.identity.get(key)
            )
            raise JournalMismatchError(
                f"{self.path} holds captions of another job (differing: {', '.join(differing) or 'unknown'}); "
                "use another output folder, or delete the file to start again."
            )
        raw = self.path.read_bytes()
        if raw and not raw.endswith(b"\n"):
            # A job killed mid-line: drop the cut line, or the next row would be glued onto it and lost too.
            keep = raw.rfind(b"\n") + 1
            with self.path.open("r+b") as handle:
                handle.truncate(keep)
            logger.warning(f"{self.path}: dropped a line cut off when the job stopped ({len(raw) - keep} bytes)")
        with self.path.open(encoding="utf-8") as handle:
            for line_number, line in enumerate(handle, 1):
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    logger.warning(f"{self.path}:{line_number}: not JSON, ignored")
                    continue
                if not isinstance(row, dict) or self.key not in row:
                    continue
                (self.failed if row.get("error") else self.done)[row[self.key]] = row
                if not row.get("error"):
                    self.failed.pop(row[self.key], None)
        if self.done or self.failed:
            logger.info(f"Resuming {self.path}: {len(self.done)} captions made, {len(self.failed)} failed before")

    def append(self, rows: Sequence[dict[str, Any]]) -> None:
        """Append ``rows`` and flush them to disk: a kill after this loses none of them."""
        if not rows:
            return
        with naming_a_full_disk(self.path, "captions", catch=OSError):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not self.meta_path.exists():
                meta = json.dumps(self.identity, ensure_ascii=False, indent=1) + "\n"
                self.meta_path.write_text(meta, encoding="utf-8")
            with self.path.open("a", encoding="utf-8") as handle:
                for row in rows:
                    handle.write(json.dumps(row, ensure_ascii=False) + "\n")
                    (self.failed if row.get("error") else self.done)[row[self.key]] = row
                handle.flush()
                os.fsync(handle.fileno())

    def remove(self) -> None:
        """Delete the journal and its side file (the job's results now live elsewhere)."""
        self.path.unlink(missing_ok=True)
        self.meta_path.unlink(missing_ok=True)


def find_videos(root: str | os.PathLike) -> list[str]:
    """Every file under ``root`` with a video extension, sorted; linked folders followed once (loops end).

    Named pipes and other non-files are listed too: reading them fails with a clear reason, and nothing here
    opens them, so nothing blocks.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"video folder not found: {root}")
    found = []
    for dirpath, filenames in walk_once(root):
        found += [os.path.join(dirpath, name) for name in filenames if name.lower().endswith(VIDEO_EXTENSIONS)]
    return sorted(found)


class _Clips(torch.utils.data.Dataset):
    """Decodes one path per item, in a DataLoader worker: ``(path, frames, None)`` or ``(path, None, why)``."""

    def __init__(self, paths: Sequence[str], processor: Any):
        self.paths = list(paths)
        self.processor = processor
        self.read_error = getattr(processor, "VideoReadError", RuntimeError)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[str, Any, str | None]:
        path = self.paths[index]
        try:
            return path, self.processor.load_frames(path), None
        except self.read_error as error:
            return path, None, str(error)


def _as_list(items: list) -> list:
    return items


@dataclass
class CaptioningSummary:
    """What :func:`caption_files` did: clips captioned now, found done, failed (path → why), and the rate."""

    captioned: int = 0
    resumed: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def clips_per_second(self) -> float | None:
        return self.captioned / self.seconds if self.seconds > 0 else None


def caption_files(
    model: torch.nn.Module,
    processor: Any,
    paths: Sequence[str],
    generation: GenerationArguments,
    *,
    journal: CaptionJournal | None = None,
    num_workers: int = 2,
    progress: bool = True,
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> CaptioningSummary:
    """Caption ``paths`` in batches of ``generation.batch_size``, decoding in ``num_workers`` workers.

    Each clip's row (``video_path``, ``caption``, ``num_tokens``, ``finished``; or ``video_path``, ``error``) goes
    to ``journal`` (when given) and ``on_result`` as soon as its batch is done. Paths the journal already holds
    captions for are skipped; paths that failed before are tried again.
    """
    from tqdm.auto import tqdm

    summary = CaptioningSummary()
    done = journal.done if journal is not None else {}
    todo = [path for path in paths if path not in done]
    summary.resumed = len(paths) - len(todo)
    if not todo:
        return summary
    loader = torch.utils.data.DataLoader(
        _Clips(todo, processor),
        batch_size=generation.batch_size,
        num_workers=num_workers,
        collate_fn=_as_list,
        # A worker decodes ahead by at most two batches: memory does not grow with the number of files.
        prefetch_factor=2 if num_workers > 0 else None,
    )
    kwargs = generation.generate_kwargs()
    started = time.perf_counter()
    with tqdm(
        total=len(paths), initial=summary.resumed, desc="kvcap: captioning", unit="clip", disable=not progress
    ) as bar:
        for batch in loader:
            ready = [(path, frames) for path, frames, why in batch if why is None]
            captioned = {
                row["video_path"]: row for row in caption_decoded(ready, model, processor, generation.prompt, kwargs)
            }
            # In the order of the paths given, unreadable ones in their place.
            rows = [
                {"video_path": path, "error": why} if why is not None else captioned[path] for path, _, why in batch
            ]
            for row in rows:
                if row.get("error"):
                    summary.failed[row["video_path"]] = row["error"]
                else:
                    summary.captioned += 1
                if on_result is not None:
                    on_result(row)
            if journal is not None:
                journal.append(rows)
            bar.update(len(batch))
    summary.seconds = time.perf_counter() - started
    return summary


def caption_decoded(
    ready: Sequence[tuple[str, Any]], model: torch.nn.Module, processor: Any, prompt: str | None, kwargs: dict
) -> list[dict[str, Any]]:
    """Rows, in order, for ``(path, frames)`` of decoded clips: one batched generate, or one clip at a time when
    the batch fails (a clip that fails alone gets an ``error`` row)."""
    if not ready:
        return []
    try:
        results = generate_captions_detailed(
            model, processor, [frames for _, frames in ready], len(ready), prompt=prompt, **kwargs
        )
    except Exception as error:  # one clip that cannot be captioned must not lose the others
        if len(ready) > 1:
            return [row for item in ready for row in caption_decoded([item], model, processor, prompt, kwargs)]
        logger.warning(f"{ready[0][0]}: {GENERATION_FAILED}: {type(error).__name__}: {error}")
        return [{"video_path": ready[0][0], "error": f"{GENERATION_FAILED}: {type(error).__name__}: {error}"}]
    return [
        {"video_path": path, "caption": result.caption, "num_tokens": result.num_tokens, "finished": result.finished}
        for (path, _), result in zip(ready, results, strict=True)
    ]
