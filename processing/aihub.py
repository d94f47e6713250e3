"""AI-Hub 대한민국 배경영상 folders → ``datasets`` for kvcap.

Two layouts are recognised, per split, and files are paired by stem (searched recursively):

* ``{root}/{train,val}/{videos,labels}/X.mp4|X.json`` (the layout seen in practice, and the demo corpus);
* AI-Hub's archives: ``{root}/Training|Validation/01.원천데이터/TS_*/…/X.mp4`` and
  ``02.라벨링데이터/TL_*/…/X.json`` (``VS_*``/``VL_*`` for validation), possibly a few folders deeper.

Bad samples never stop a run and are never dropped silently: each is counted under a reason in an
:class:`AIHubReport` (with its path), and one warning line summarises the counts.

Video readability has three levels (``video_check``):

* ``"none"``: the file was listed, nothing more;
* ``"header"`` (default): non-empty and its first bytes are a known container signature (MP4/MOV ``ftyp``
  box, Matroska/WebM EBML, AVI RIFF). One 16-byte read per file, so opening all 9,631 clips takes about a
  second; it catches empty, HTML-error-page and mislabelled files but not truncated ones;
* ``"probe"``: :func:`processing.video_io.probe_video`, a demux-only scan that also catches truncated or
  corrupt files (milliseconds per clip, run on a thread pool). The report command uses it (``--check-videos``).

Usage: ``python -m processing.aihub ROOT [--split train val] [--tokenizer PATH_OR_ID] [--check-videos]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import statistics
import sys
import unicodedata
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import datasets

from .video_io import VideoReadError, file_problem, probe_video, read_video_frames

logger = logging.getLogger(__name__)

VideoCheck = Literal["none", "header", "probe"]

# Reasons a sample is skipped. Each bad file is counted once, under the first check it fails.
LABEL_WITHOUT_VIDEO = "label_without_video"
VIDEO_WITHOUT_LABEL = "video_without_label"
DUPLICATE_STEM = "duplicate_stem"
UNREADABLE_JSON = "unreadable_json"
NO_CAPTION = "no_caption"
EMPTY_CAPTION = "empty_caption"
UNREADABLE_VIDEO = "unreadable_video"
REASONS: tuple[str, ...] = (
    LABEL_WITHOUT_VIDEO,
    VIDEO_WITHOUT_LABEL,
    DUPLICATE_STEM,
    UNREADABLE_JSON,
    NO_CAPTION,
    EMPTY_CAPTION,
    UNREADABLE_VIDEO,
)

CAPTION_KEYS: tuple[tuple[str, ...], ...] = (
    ("annotation", "description_kr"),
    ("description_kr",),
    ("caption", "korean"),
    ("caption",),
)
CATEGORY_KEYS: tuple[tuple[str, ...], ...] = (("annotation", "category"), ("category",), ("metadata", "category"))
VIDEO_EXTENSIONS = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi"})
ARCHIVE_EXTENSIONS = frozenset({".zip", ".tar", ".gz", ".tgz", ".7z"})

_SPLIT_ALIASES: dict[str, frozenset[str]] = {
    "train": frozenset({"train", "training"}),
    "val": frozenset({"val", "valid", "validation"}),
    "test": frozenset({"test", "testing"}),
}
_VIDEO_DIR_NAMES = frozenset({"videos", "video", "clips", "원천데이터"})
_LABEL_DIR_NAMES = frozenset({"labels", "label", "annotations", "라벨링데이터"})
_MAX_SPLIT_DEPTH = 4  # AI-Hub downloads nest Training/ under e.g. "3.개방데이터/1.데이터/"

COLUMNS = ("video_id", "video_path", "label_path", "caption", "category", "metadata", "split")
TEXT_FEATURES = datasets.Features({c: datasets.Value("string") for c in COLUMNS})


# ---------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------
@dataclass
class SplitReport:
    """What one split held: usable samples, skipped files by reason, and caption statistics."""

    split: str
    split_dirs: list[str] = field(default_factory=list)
    video_check: str = "header"
    num_labels: int = 0
    num_videos: int = 0
    num_usable: int = 0
    skipped: dict[str, list[str]] = field(default_factory=lambda: {r: [] for r in REASONS})
    details: dict[str, str] = field(default_factory=dict)  # path -> why (JSON and video errors)
    label_encodings: dict[str, int] = field(default_factory=dict)
    categories: dict[str, int] = field(default_factory=dict)
    caption_chars: dict[str, float] = field(default_factory=dict)
    caption_tokens: dict[str, float] = field(default_factory=dict)
    # With a tokenizer: captions whose target (caption + end-of-turn) exceeds the training limit, and that limit.
    max_caption_tokens: int | None = None
    captions_over_limit: int = 0
    archives: list[str] = field(default_factory=list)  # unextracted archives found next to the data

    def counts(self) -> dict[str, int]:
        """Skipped files per reason (every reason present, zeros included)."""
        return {r: len(self.skipped.get(r, [])) for r in REASONS}

    @property
    def num_skipped(self) -> int:
        return sum(self.counts().values())


@dataclass
class AIHubReport:
    """Per-split :class:`SplitReport` for one corpus root."""

    root: str
    splits: dict[str, SplitReport] = field(default_factory=dict)

    @property
    def num_usable(self) -> int:
        return sum(s.num_usable for s in self.splits.values())

    def counts(self) -> dict[str, dict[str, int]]:
        return {name: s.counts() for name, s in self.splits.items()}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary_line(self) -> str:
        parts = []
        for name, s in self.splits.items():
            bad = ", ".join(f"{r}={n}" for r, n in s.counts().items() if n)
            parts.append(f"{name}: {s.num_usable} usable" + (f", skipped {s.num_skipped} ({bad})" if bad else ""))
        return f"kvcap AI-Hub {self.root}: " + "; ".join(parts)

    def format(self, max_paths: int = 10) -> str:
        """Human-readable report: counts per split and reason, categories, caption lengths, skipped paths."""
        lines = [f"AI-Hub corpus: {self.root}"]
        for name, s in self.splits.items():
            lines.append("")
            where = ", ".join(s.split_dirs) if s.split_dirs else "(no split folder found)"
            lines.append(f"[{name}] {where}")
            lines.append(
                f"  labels {s.num_labels}, videos {s.num_videos}, usable {s.num_usable}, skipped {s.num_skipped}"
                f" (video check: {s.video_check})"
            )
            for reason, n in s.counts().items():
                lines.append(f"    {reason:<20} {n}")
            if s.label_encodings:
                lines.append("  label encodings: " + ", ".join(f"{k} {v}" for k, v in s.label_encodings.items()))
            if s.categories:
                total = sum(s.categories.values())
                cats = ", ".join(f"{k} {v} ({100 * v / total:.1f}%)" for k, v in s.categories.items())
                lines.append(f"  categories: {cats}")
            if s.caption_chars:
                lines.append("  caption chars:  " + _fmt_stats(s.caption_chars))
            if s.caption_tokens:
                lines.append("  caption tokens: " + _fmt_stats(s.caption_tokens))
                lines.append(
                    f"  over the training limit: {s.captions_over_limit} of {s.num_usable} captions would be cut "
                    f"(max_caption_tokens {s.max_caption_tokens}, end-of-turn token included)"
                )
            if s.archives:
                lines.append(f"  unextracted archives ({len(s.archives)}), extract them to use their files:")
                lines.extend(f"    {p}" for p in s.archives[:max_paths])
            for reason, paths in s.skipped.items():
                if not paths:
                    continue
                lines.append(f"  {reason}:")
                for p in paths[:max_paths]:
                    why = s.details.get(p)
                    lines.append(f"    {p}" + (f"  ({why})" if why else ""))
                if len(paths) > max_paths:
                    lines.append(f"    … and {len(paths) - max_paths} more")
        return "\n".join(lines)


def _fmt_stats(st: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in st.items())


# Longest training target in tokens (caption + end-of-turn), the same as the model's generation limit: room for
# the longest of the seed's sample of AI-Hub captions (708 Qwen3 tokens) and some more. Longer ones are cut.
DEFAULT_MAX_CAPTION_TOKENS = 768


def length_stats(values: Sequence[int]) -> dict[str, float]:
    """Count, mean, min, median, 95th percentile (nearest rank) and max of ``values`` ({} when empty)."""
    if not values:
        return {}
    ordered = sorted(values)
    n = len(ordered)
    return {
        "count": n,
        "mean": round(statistics.fmean(ordered), 1),
        "min": ordered[0],
        "p50": ordered[n // 2],
        "p95": ordered[min(n - 1, (95 * n) // 100)],
        "max": ordered[-1],
    }


# ---------------------------------------------------------------------------------------------------------
# Finding files
# ---------------------------------------------------------------------------------------------------------
def _nfc(name: str) -> str:
    # Archives made on macOS store Hangul names decomposed (NFD); compare and pair on the composed form.
    return unicodedata.normalize("NFC", name)


def canonical_split(split: str) -> str:
    """``"Training"``/``"train"`` → ``"train"``; ``"Validation"``/``"validation"``/``"val"`` → ``"val"``."""
    key = _split_key(split)
    for canon, aliases in _SPLIT_ALIASES.items():
        if key in aliases:
            return canon
    return key


def _split_key(name: str) -> str:
    # AI-Hub sometimes numbers its folders ("1.Training"); the number is not part of the name.
    return re.sub(r"^\d+[._ ]", "", _nfc(name)).strip().lower()


def find_split_dirs(root: str | os.PathLike, split: str) -> list[Path]:
    """Folders holding ``split`` under ``root``: the shallowest folders whose name is an alias of it."""
    canon = canonical_split(split)
    aliases = _SPLIT_ALIASES.get(canon, frozenset({canon}))
    root = Path(root)
    level = [root] if root.is_dir() else []
    for _ in range(_MAX_SPLIT_DEPTH):
        found, nxt = [], []
        for d in level:
            try:
                children = sorted(p for p in d.iterdir() if p.is_dir())
            except OSError:
                continue
            for c in children:
                (found if _split_key(c.name) in aliases else nxt).append(c)
        if found:
            return found
        level = nxt
    return []


def _dir_role(name: str) -> str | None:
    n = _nfc(name)
    key = _split_key(n)
    if key in _VIDEO_DIR_NAMES or n.startswith(("TS_", "VS_")) or "원천" in n:
        return "video"
    if key in _LABEL_DIR_NAMES or n.startswith(("TL_", "VL_")) or "라벨" in n:
        return "label"
    return None


def walk_once(root: str | os.PathLike) -> Iterator[tuple[str, list[str]]]:
    """``(folder, file names)`` under ``root``, folders in sorted order. Linked folders are followed (data is
    often linked in), each real folder once, so a link loop ends; a folder that cannot be read is passed over."""
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        try:
            info = os.stat(dirpath)
        except OSError:
            dirnames.clear()
            continue
        if (info.st_dev, info.st_ino) in seen:
            dirnames.clear()
            continue
        seen.add((info.st_dev, info.st_ino))
        dirnames.sort()
        yield dirpath, filenames


def _list_files(split_dir: Path) -> tuple[list[Path], list[Path], list[Path]]:
    """(labels, videos, archives) under ``split_dir``. Inside a labels/videos (or TL_/TS_, 02./01.) subtree
    only that kind counts; if the split has no such subtree, files are taken from anywhere in it."""
    by_role: dict[str | None, tuple[list[Path], list[Path]]] = {None: ([], []), "label": ([], []), "video": ([], [])}
    archives: list[Path] = []
    for dirpath, filenames in walk_once(split_dir):
        rel = Path(dirpath).relative_to(split_dir).parts
        role = next((r for r in map(_dir_role, rel) if r is not None), None)
        jsons, videos = by_role[role]
        for f in sorted(filenames):
            ext = os.path.splitext(f)[1].lower()
            if ext == ".json":
                jsons.append(Path(dirpath, f))
            elif ext in VIDEO_EXTENSIONS:
                videos.append(Path(dirpath, f))
            elif ext in ARCHIVE_EXTENSIONS:
                archives.append(Path(dirpath, f))
    labels = by_role["label"][0] or by_role[None][0]
    videos = by_role["video"][1] or by_role[None][1]
    return labels, videos, archives


# ---------------------------------------------------------------------------------------------------------
# Labels
# ---------------------------------------------------------------------------------------------------------
def read_label(path: str | os.PathLike) -> tuple[dict[str, Any], str]:
    """Parse a label file as UTF-8 (BOM or not), falling back to CP949 (older AI-Hub exports).

    Returns ``(label, encoding)``; raises ``ValueError`` naming the file when neither works.
    """
    raw = Path(path).read_bytes()
    errors = []
    for encoding in ("utf-8-sig", "cp949"):  # utf-8-sig also reads plain UTF-8
        name = encoding.removesuffix("-sig")
        try:
            text = raw.decode(encoding)
        except UnicodeDecodeError as e:
            errors.append(f"{name}: {e.reason} at byte {e.start}")
            continue
        try:
            label = json.loads(text)
        except json.JSONDecodeError as e:
            errors.append(f"{name}: {e.msg} at line {e.lineno} column {e.colno}")
            continue
        if not isinstance(label, dict):
            errors.append(f"{name}: top level is {type(label).__name__}, not an object")
            continue
        if encoding == "utf-8-sig":
            encoding = "utf-8-bom" if raw.startswith(b"\xef\xbb\xbf") else "utf-8"
        return label, encoding
    raise ValueError(f"{path}: unreadable label ({'; '.join(errors)})")


def _get(d: Any, keys: tuple[str, ...]) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def extract_caption(label: dict[str, Any]) -> str | None:
    """The caption by key precedence; ``""`` when keys exist but hold only blank text, ``None`` when none do.

    A key holding a list of strings (several descriptions) yields them joined by a space.
    """
    seen_blank = False
    for keys in CAPTION_KEYS:
        value = _get(label, keys)
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            value = " ".join(v.strip() for v in value if v.strip())
        if isinstance(value, str):
            if value.strip():
                return value.strip()
            seen_blank = True
    return "" if seen_blank else None


def _category(label: dict[str, Any]) -> str | None:
    for keys in CATEGORY_KEYS:
        value = _get(label, keys)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def _metadata_json(label: dict[str, Any]) -> str:
    # Schemas differ between exports, so metadata travels as one JSON string column; without a "metadata"
    # object, everything but the caption keys is kept so nothing in the label is lost.
    meta = label.get("metadata")
    if not isinstance(meta, dict):
        meta = {k: v for k, v in label.items() if k not in ("annotation", "description_kr", "caption")}
    return json.dumps(meta, ensure_ascii=False, sort_keys=True)


# ---------------------------------------------------------------------------------------------------------
# Videos
# ---------------------------------------------------------------------------------------------------------
def _header_problem(path: Path) -> str | None:
    """Cheap container check: why the file is not a video, or ``None`` when its signature looks right."""
    problem = file_problem(path)
    if problem is not None:
        return problem
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as e:
        return f"cannot open: {e.strerror or e}"
    if not head:
        return "empty file"
    if len(head) >= 8 and head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip", b"pnot"):
        return None  # ISO BMFF (mp4/mov/m4v)
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return None  # EBML (mkv/webm)
    if head.startswith(b"RIFF") and head[8:12] == b"AVI ":
        return None
    return f"not a video container (starts with {head[:8]!r})"


def _probe_problem(path: Path) -> str | None:
    try:
        info = probe_video(path)
    except (VideoReadError, OSError) as e:
        return str(getattr(e, "reason", None) or e)
    if not info.num_frames:
        return "no video frames"
    return None


def _video_problems(paths: list[Path], mode: VideoCheck, num_workers: int | None) -> list[str | None]:
    if mode == "none":
        return [None] * len(paths)
    if mode == "header":
        return [_header_problem(p) for p in paths]
    if mode != "probe":
        raise ValueError(f"video_check must be 'none', 'header' or 'probe', not {mode!r}")
    # Header problems first: probing a zero-byte or HTML file only produces a less clear message.
    problems = [_header_problem(p) for p in paths]
    todo = [i for i, p in enumerate(problems) if p is None]
    workers = num_workers or min(8, os.cpu_count() or 1)
    from tqdm.auto import tqdm

    # A probe of the full corpus takes minutes on a slow disk: a bar (files/s, ETA) shows it moving.
    with (
        ThreadPoolExecutor(max_workers=workers) as pool,
        tqdm(total=len(todo), desc="kvcap: probing videos", unit="file", disable=len(todo) < 100) as bar,
    ):
        for i, problem in zip(todo, pool.map(_probe_problem, [paths[i] for i in todo]), strict=True):
            problems[i] = problem
            bar.update()
    return problems


# ---------------------------------------------------------------------------------------------------------
# Scanning
# ---------------------------------------------------------------------------------------------------------
def _pairing_folder(path: Path, split_dir: Path) -> tuple[str, ...]:
    """The folders that tell a clip's group apart, the same for its video and its label: role folders
    (``videos``, ``01.원천데이터``...) dropped, AI-Hub's ``TS_``/``TL_``/``VS_``/``VL_`` prefixes stripped."""
    try:
        parts = path.parent.relative_to(split_dir).parts
    except ValueError:
        parts = path.parent.parts
    kept = []
    for part in map(_nfc, parts):
        if re.match(r"^(TS|TL|VS|VL)_", part):
            kept.append(part[3:])
        elif _dir_role(part) is None:
            kept.append(part)
    return tuple(kept)


def _pair_by_stem(
    labels: list[tuple[Path, Path]], videos: list[tuple[Path, Path]], report: SplitReport
) -> list[tuple[str, Path, Path]]:
    """``(stem, label, video)`` pairs from ``(file, split folder)`` lists; what cannot be paired is reported.

    A stem found once among labels and once among videos pairs as it is. A stem that repeats pairs only within the
    same group folder (``videos/city/0001.mp4`` with ``labels/city/0001.json``), never across groups; the files of
    a repeated stem left without a partner are skipped as ``duplicate_stem``.
    """
    label_groups: dict[str, list[tuple[Path, Path]]] = {}
    video_groups: dict[str, list[tuple[Path, Path]]] = {}
    for groups, found in ((label_groups, labels), (video_groups, videos)):
        for path, split_dir in sorted(found, key=lambda item: (_nfc(item[0].stem), str(item[0]))):
            groups.setdefault(_nfc(path.stem), []).append((path, split_dir))
    pairs = []
    for stem in sorted(label_groups.keys() | video_groups.keys()):
        stem_labels, stem_videos = label_groups.get(stem, []), video_groups.get(stem, [])
        if not stem_videos:
            report.skipped[LABEL_WITHOUT_VIDEO] += [str(path) for path, _ in stem_labels]
            continue
        if not stem_labels:
            report.skipped[VIDEO_WITHOUT_LABEL] += [str(path) for path, _ in stem_videos]
            continue
        if len(stem_labels) == len(stem_videos) == 1:
            pairs.append((stem, stem_labels[0][0], stem_videos[0][0]))
            continue
        by_folder: dict[tuple[str, ...], tuple[list[Path], list[Path]]] = {}
        for kind, found in ((0, stem_labels), (1, stem_videos)):
            for path, split_dir in found:
                by_folder.setdefault(_pairing_folder(path, split_dir), ([], []))[kind].append(path)
        everywhere = ", ".join(str(path) for path, _ in [*stem_labels, *stem_videos])
        for folder_labels, folder_videos in by_folder.values():
            if len(folder_labels) == len(folder_videos) == 1:
                pairs.append((stem, folder_labels[0], folder_videos[0]))
                continue
            for path in [*folder_labels, *folder_videos]:
                report.skipped[DUPLICATE_STEM].append(str(path))
                report.details[str(path)] = f"stem {stem} repeats ({everywhere}); no single partner in its folder"
    return pairs


def _scan_split(
    root: str | os.PathLike,
    split: str,
    video_check: VideoCheck = "header",
    num_workers: int | None = None,
    tokenizer: Any = None,
    max_caption_tokens: int = DEFAULT_MAX_CAPTION_TOKENS,
) -> tuple[list[dict[str, str | None]], SplitReport]:
    canon = canonical_split(split)
    report = SplitReport(split=canon, video_check=video_check)
    labels: list[tuple[Path, Path]] = []
    videos: list[tuple[Path, Path]] = []
    for d in find_split_dirs(root, split):
        report.split_dirs.append(str(d))
        lab, vid, arc = _list_files(d)
        labels += [(path, d) for path in lab]
        videos += [(path, d) for path in vid]
        report.archives += [str(p) for p in arc]
    report.num_labels, report.num_videos = len(labels), len(videos)

    pairs = _pair_by_stem(labels, videos, report)

    encodings: Counter[str] = Counter()
    candidates: list[dict[str, str | None]] = []
    for stem, lpath, vpath in pairs:
        problem = file_problem(lpath)
        if problem is not None:
            report.skipped[UNREADABLE_JSON].append(str(lpath))
            report.details[str(lpath)] = problem
            continue
        try:
            label, enc = read_label(lpath)
        except (ValueError, OSError) as e:
            report.skipped[UNREADABLE_JSON].append(str(lpath))
            report.details[str(lpath)] = str(e).removeprefix(f"{lpath}: ")
            continue
        encodings[enc] += 1
        caption = extract_caption(label)
        if caption is None:
            report.skipped[NO_CAPTION].append(str(lpath))
            continue
        if not caption:
            report.skipped[EMPTY_CAPTION].append(str(lpath))
            continue
        candidates.append(
            {
                "video_id": stem,
                # Absolute, links kept: resolving would fail on a link loop and hide the path the user gave.
                "video_path": os.path.abspath(vpath),
                "label_path": os.path.abspath(lpath),
                "caption": caption,
                "category": _category(label),
                "metadata": _metadata_json(label),
                "split": canon,
            }
        )

    rows = []
    problems = _video_problems([Path(c["video_path"]) for c in candidates], video_check, num_workers)
    for row, problem in zip(candidates, problems, strict=True):
        if problem is None:
            rows.append(row)
        else:
            report.skipped[UNREADABLE_VIDEO].append(row["video_path"])
            report.details[row["video_path"]] = problem

    report.num_usable = len(rows)
    report.label_encodings = dict(encodings)
    report.categories = dict(Counter(r["category"] or "(none)" for r in rows).most_common())
    report.caption_chars = length_stats([len(r["caption"]) for r in rows])
    if tokenizer is not None and rows:
        lengths = caption_token_lengths([r["caption"] for r in rows], tokenizer)
        report.caption_tokens = length_stats(lengths)
        report.max_caption_tokens = max_caption_tokens
        report.captions_over_limit = sum(length + 1 > max_caption_tokens for length in lengths)
    return rows, report


def _load_tokenizer(tokenizer: Any) -> Any:
    if isinstance(tokenizer, (str, os.PathLike)):
        from transformers import AutoTokenizer  # only the token statistics need transformers

        return AutoTokenizer.from_pretrained(str(tokenizer))
    return tokenizer


def caption_token_lengths(texts: Sequence[str], tokenizer: Any) -> list[int]:
    """Tokens per text, without special tokens (a training target adds one end-of-turn token)."""
    texts = list(texts)
    lengths: list[int] = []
    for i in range(0, len(texts), 512):
        ids = tokenizer(texts[i : i + 512], add_special_tokens=False)["input_ids"]
        lengths += [len(x) for x in ids]
    return lengths


def scan_aihub(
    root: str | os.PathLike,
    splits: str | Sequence[str] = ("train", "val"),
    video_check: VideoCheck = "header",
    tokenizer: Any = None,
    num_workers: int | None = None,
    max_caption_tokens: int = DEFAULT_MAX_CAPTION_TOKENS,
) -> AIHubReport:
    """Report on a corpus without building a dataset.

    ``tokenizer`` (a tokenizer object, or a path / Hub id for ``AutoTokenizer``) adds caption token counts and how
    many captions training would cut at ``max_caption_tokens``.
    """
    report = AIHubReport(root=str(root))
    tokenizer = _load_tokenizer(tokenizer)
    for split in [splits] if isinstance(splits, str) else splits:
        _, split_report = _scan_split(root, split, video_check, num_workers, tokenizer, max_caption_tokens)
        report.splits[split_report.split] = split_report
    return report


def _warn(report: SplitReport, root: str | os.PathLike) -> None:
    if report.num_skipped:
        bad = ", ".join(f"{r}={n}" for r, n in report.counts().items() if n)
        logger.warning(
            "kvcap AI-Hub %s [%s]: %d usable, skipped %d (%s); scan_aihub() or `python -m processing.aihub` lists them",
            root,
            report.split,
            report.num_usable,
            report.num_skipped,
            bad,
        )
    if not report.split_dirs:
        logger.warning("kvcap AI-Hub %s: no folder for split %r found", root, report.split)
    if report.archives:
        logger.warning(
            "kvcap AI-Hub %s [%s]: %d archive(s) not extracted (e.g. %s): their clips are not in this split; "
            "extract them where they lie",
            root,
            report.split,
            len(report.archives),
            report.archives[0],
        )


# ---------------------------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------------------------
def _stream_samples(
    shards: list[list[dict[str, str | None]]],
    num_frames: int,
    frame_size: int | None,
    decode: bool,
) -> Iterator[dict[str, Any]]:
    # Runs inside each DataLoader worker on its share of shards, so decoding is spread over the workers.
    for shard in shards:
        for row in shard:
            if not decode:
                yield dict(row)
                continue
            try:
                frames = read_video_frames(row["video_path"], num_frames=num_frames, size=frame_size)
            except (VideoReadError, OSError) as e:
                # The file passed the open-time check but does not decode: skip it loudly, keep going.
                logger.warning("kvcap AI-Hub: skipping %s while streaming: %s", row["video_path"], e)
                continue
            yield {**row, "frames": frames}


def _stream_features(num_frames: int, frame_size: int | None, decode: bool) -> datasets.Features | None:
    if not decode:
        return TEXT_FEATURES
    if frame_size is None:
        return None  # frame sizes differ between clips, so no fixed array type can be declared
    frames = datasets.Array4D(shape=(num_frames, frame_size, frame_size, 3), dtype="uint8")
    return datasets.Features({**TEXT_FEATURES, "frames": frames})


def load_aihub(
    root: str | os.PathLike,
    split: str = "train",
    streaming: bool = False,
    *,
    num_frames: int = 8,
    frame_size: int | None = None,
    decode_video: bool = True,
    video_check: VideoCheck = "header",
    num_shards: int | None = None,
    return_report: bool = False,
    tokenizer: Any = None,
    num_workers: int | None = None,
) -> Any:
    """Load one split as a ``datasets.Dataset`` (paths and text only, in Arrow) or, with ``streaming=True``,
    an ``IterableDataset`` that decodes ``num_frames`` frames per clip lazily into a ``frames`` column
    ((T, H, W, 3) uint8, via ``read_video_frames(size=frame_size)``) so DataLoader workers do the decoding.

    Columns: ``video_id`` (file stem), ``video_path``, ``label_path``, ``caption``, ``category`` (or None),
    ``metadata`` (JSON string: the label's ``metadata`` object), ``split``. Rows are sorted by ``video_id``;
    streaming yields the same rows in the same order (with one worker). ``num_shards`` (default: up to 64)
    sets how many pieces workers can share. ``return_report=True`` returns ``(dataset, AIHubReport)``; with a
    ``tokenizer`` (object, path or Hub id) the report also has caption token counts. ``video_check``: see
    the module docstring (``"header"`` by default: seconds for the full corpus).
    """
    rows, split_report = _scan_split(root, split, video_check, num_workers, _load_tokenizer(tokenizer))
    _warn(split_report, root)
    if streaming:
        n = max(1, min(len(rows), num_shards or 64))
        shards = [rows[i * len(rows) // n : (i + 1) * len(rows) // n] for i in range(n)]
        ds: Any = datasets.IterableDataset.from_generator(
            _stream_samples,
            gen_kwargs={"shards": shards, "num_frames": num_frames, "frame_size": frame_size, "decode": decode_video},
            features=_stream_features(num_frames, frame_size, decode_video),
        )
    else:
        ds = datasets.Dataset.from_dict({c: [r[c] for r in rows] for c in COLUMNS}, features=TEXT_FEATURES)
    if return_report:
        return ds, AIHubReport(root=str(root), splits={split_report.split: split_report})
    return ds


# ---------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """`python -m processing.aihub` and the `kvcap-data` console command: report on a corpus."""
    command = Path(sys.argv[0]).name if argv is None else ""
    parser = argparse.ArgumentParser(
        prog=command if command.startswith("kvcap-") else "python -m processing.aihub",
        description="Report on an AI-Hub video caption corpus for kvcap.",
    )
    parser.add_argument("root", help="corpus folder")
    parser.add_argument("--split", nargs="+", default=["train", "val"], help="splits to scan (default: train val)")
    parser.add_argument("--tokenizer", default=None, help="tokenizer path or Hub id for caption token counts")
    parser.add_argument(
        "--max-caption-tokens",
        type=int,
        default=DEFAULT_MAX_CAPTION_TOKENS,
        help=f"training's caption limit, for the count of captions it would cut (default {DEFAULT_MAX_CAPTION_TOKENS})",
    )
    parser.add_argument(
        "--check-videos", action="store_true", help="probe every video (demux scan) instead of the header check"
    )
    parser.add_argument("--max-paths", type=int, default=10, help="skipped paths listed per reason")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    if not Path(args.root).is_dir():
        parser.error(f"{args.root}: no such folder (give the corpus root, the folder holding train/ and val/)")

    report = scan_aihub(
        args.root,
        args.split,
        video_check="probe" if args.check_videos else "header",
        tokenizer=args.tokenizer,
        max_caption_tokens=args.max_caption_tokens,
    )
    if args.json:
        print(json.dumps(report.to_dict(), ensure_ascii=False, indent=2))
    else:
        print(report.format(max_paths=args.max_paths))
    if report.num_usable == 0:
        print(f"no usable samples found under {args.root}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
