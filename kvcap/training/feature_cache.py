"""kvcap's frozen vision features computed once and kept in Arrow files, so training never runs the encoder.

``cache_video_features(dataset, model, processor)`` decodes every clip of ``dataset["video_path"]``, runs the
frozen vision tower (``get_vision_tower_features``: layer ``config.vision_feature_layer``, CLS dropped) with
``datasets.map`` and returns the dataset with a ``video_features`` column of shape ``(T, P, D)``, read back as
torch tensors that ``KVCapDataCollator`` stacks and the model takes instead of pixel values.

Cache key. One SHA-256 over: the encoder's class, architecture config and a content hash of its state dict
(names, dtypes, shapes and bytes: about 1 s per GB), ``vision_feature_layer``, the frame count, the sampling rule
(its description and a hash of ``sample_frame_indices`` outputs, so a changed rule changes the key), the frame
reader's resize rule, the image size, the image processor's resize / rescale / normalisation settings, and the
stored dtype. It names the folder ``{cache_dir}/{key[:24]}`` (``key.json`` in it lists the parts). Within it,
clips are sorted by path and cut into shards of ``shard_size``; a shard's file name hashes the key with its
clips' paths, file sizes and modification times (nanoseconds). Shuffled rows or other text columns therefore
reuse every shard, a subset reuses the shards whose clips are unchanged, and a file that changed (re-downloaded
after a truncated download, or swapped with another clip of the same size) is encoded again. ``clips.json``
keeps each cached clip's size and time, so a run says which clips changed. Captions are not in the key: features
depend on the clip alone.

Shards and resuming. Each shard is one ``datasets.map`` call with ``cache_file_name=`` its own Arrow file (an
in-memory dataset would otherwise not be cached at all) and ``new_fingerprint=`` the shard hash (so ``datasets``
never tries to hash a closure holding the model, and the name is the same in every process). ``datasets`` writes
a temporary file and renames it when the shard is done (a killed process can leave a ``tmp*`` file behind: the
next run deletes those untouched for 15 minutes, and says so), followed by a small ``.json`` marker naming its row
count, file size, checksum and failed clips.
On a later run a shard counts as done only when its marker, file size, SHA-256 checksum (in the marker; about
1.2 GB/s here, each rank checking its share), row count and paths check out; everything else is recomputed, with
the reason logged. An interrupted run therefore loses at most the shard in progress on each process.

Several processes. Under ``accelerate launch`` / ``torchrun`` (an initialised ``torch.distributed`` group, or
``WORLD_SIZE`` > 1, in which case ``accelerate.PartialState`` sets the group up) every rank checks which shards
are missing, a barrier makes them agree, rank ``r`` computes missing shards ``r, r + world, ...``, a second
barrier waits for all, then every rank memory-maps all shards. Without a process group it is one process.

Unreadable clips. A clip whose decoding raises ``VideoReadError`` (or ``OSError``) is stored as a row with null
features and its reason, so a rerun does not decode it again; it is left out of the returned dataset, logged
with its count, and listed in the ``FeatureCacheReport`` (``return_report=True``).

Storage dtype. Arrow has no bfloat16. The default is float16: CLIP activations lie far inside float16's range
(±65,504; an overflow raises instead of storing inf), and float16 keeps 11 significant bits against bfloat16's 8,
so every bfloat16 value in float16's normal range (|x| ≥ 6.1e-5) is stored exactly. ``dtype=torch.bfloat16``
therefore rounds to bfloat16 (the values a bf16 encoder run gives), stores those as float16 and reads them back
as bfloat16, bit-identical apart from magnitudes below 6.1e-5 (absolute error under 3e-8).
``dtype=torch.float32`` stores the encoder's float32 output exactly, at twice the disk.

Disk. A clip is ``T x P x D`` values: 8 x 576 x 1024 = 4,718,592 at real size (CLIP-ViT-L/14-336), 9.44 MB in
float16 (Arrow adds about 0.2 % of list offsets), about 91 GB (84.6 GiB) for the 9,631-clip AI-Hub corpus.
Nothing smaller gives the same results: every projector (linear, mlp_2l, perceiver, c_abstractor) reads every
patch of every frame, and the low mantissa byte of a float16 activation is close to noise. Measured on the tiny
encoder's features: zstd saves 9 %, zstd after splitting high and low bytes 28 % (15 % on Gaussian float16),
Parquet zstd 5 %, with byte-stream-split 15 %; but ``datasets`` memory-maps only uncompressed Arrow (it turns
Parquet back into Arrow in its cache), so such files serve archiving and transfer, or a compressing file system.
Without the disk, pass rows with ``video_path`` to ``KVCapDataCollator`` instead: it decodes the clips and the
model encodes them on the fly, every step.

Do not ``.map`` over the returned dataset: that would write the features again. It is a memory-mapped view
(shards concatenated, text columns alongside, row order restored by an indices mapping).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch

from processing.video_io import VideoReadError, sample_frame_indices

from ..disk import naming_a_full_disk

logger = logging.getLogger(__name__)

__all__ = [
    "FEATURES_COLUMN",
    "FeatureCacheIncomplete",
    "FeatureCacheReport",
    "cache_video_features",
    "default_cache_dir",
    "feature_cache_key",
    "feature_cache_nbytes",
]

FEATURES_COLUMN = "video_features"
ERROR_COLUMN = "decode_error"
# Bump when the shard layout or the stored values change meaning, so old folders are never read as new ones.
CACHE_FORMAT = "kvcap-video-features/1"
SAMPLING_RULE = "sample_frame_indices: frame i * total // num_frames of a sequential decode, repeats for short clips"
FRAME_READER = "read_video_frames(size=image_size): swscale bicubic, shorter edge to size, centre crop"
# A few frame counts, short and long, whose sampled indices stand for the rule in the key.
_SAMPLING_PROBE_TOTALS = (1, 2, 3, 5, 7, 8, 9, 15, 16, 17, 30, 31, 64, 100, 241, 1000, 9999)
_STORAGE = {torch.float16: "float16", torch.bfloat16: "float16", torch.float32: "float32"}
# Config fields that do not change what the encoder computes; everything else in its config is in the key.
_CONFIG_NOISE = frozenset(
    {
        "transformers_version",
        "architectures",
        "output_hidden_states",
        "output_attentions",
        "return_dict",
        "dtype",
        "torch_dtype",
        "id2label",
        "label2id",
        "problem_type",
        "chunk_size_feed_forward",
        "is_encoder_decoder",
        "initializer_range",
        "initializer_factor",
        "use_cache",
    }
)
_PREPROCESSING_FIELDS = (
    "size",
    "crop_size",
    "do_resize",
    "resample",
    "do_center_crop",
    "do_rescale",
    "rescale_factor",
    "do_normalize",
    "image_mean",
    "image_std",
    "do_convert_rgb",
)
# Rows per Arrow record batch are capped by bytes: datasets' default of 1,000 rows would buffer 9 GB at real size.
_WRITER_BYTES = 256 << 20


class FeatureCacheIncomplete(RuntimeError):
    """Raised when a run stops before every shard is cached (``max_shards``); rerun to compute the rest."""

    def __init__(self, remaining: int, total: int, cache_dir: str):
        self.remaining, self.total, self.cache_dir = remaining, total, cache_dir
        super().__init__(f"{remaining} of {total} feature shards in {cache_dir} are not computed yet; rerun to resume.")


@dataclass
class FeatureCacheReport:
    """What a ``cache_video_features`` call found, computed and left out.

    ``failed`` maps each clip that could not be decoded to the reason; its rows are not in the returned dataset.
    ``shards_computed`` and ``clips_encoded`` count this process's work only.
    """

    cache_dir: str
    key: str
    num_rows: int
    num_cached: int
    num_shards: int
    shards_reused: int
    shards_computed: int
    clips_encoded: int
    stored_dtype: str
    read_dtype: str
    bytes_on_disk: int
    seconds: float
    failed: dict[str, str] = field(default_factory=dict)
    clips_changed: list[str] = field(default_factory=list)  # cached before, but their size or time differs now
    shards_damaged: list[str] = field(default_factory=list)  # checksum or size no longer matches: recomputed

    @property
    def num_excluded(self) -> int:
        return self.num_rows - self.num_cached

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "num_excluded": self.num_excluded}

    def format(self, max_paths: int = 10) -> str:
        lines = [
            f"kvcap feature cache {self.cache_dir}",
            f"  {self.num_cached} of {self.num_rows} rows have features ({self.read_dtype}, "
            f"stored {self.stored_dtype}, {self.bytes_on_disk / 1e6:,.1f} MB on disk)",
            f"  shards: {self.num_shards} ({self.shards_reused} reused, {self.shards_computed} computed here, "
            f"{self.clips_encoded} clips encoded) in {self.seconds:.1f} s",
        ]
        if self.clips_changed:
            lines.append(f"  {len(self.clips_changed)} clips changed since they were cached, encoded again:")
            lines += [f"    {path}" for path in self.clips_changed[:max_paths]]
        if self.shards_damaged:
            damaged = ", ".join(self.shards_damaged)
            lines.append(f"  {len(self.shards_damaged)} damaged shards computed again: {damaged}")
        if self.failed:
            lines.append(f"  excluded {self.num_excluded} rows: {len(self.failed)} clips cannot be decoded")
            lines += [f"    {path}: {reason}" for path, reason in list(self.failed.items())[:max_paths]]
            if len(self.failed) > max_paths:
                lines.append(f"    ... and {len(self.failed) - max_paths} more")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# Cache key
# ---------------------------------------------------------------------------------------------------------
def _feature_encoder(model: Any) -> Any:
    """The head-less kvcap model (with ``get_vision_tower_features``) inside ``model``.

    ``model`` is a ``KVCapModel``, a ``KVCapForConditionalGeneration`` (its ``.model``) or a PEFT wrapper of either.
    """
    if callable(getattr(model, "get_base_model", None)):
        model = model.get_base_model()
    for candidate in (model, getattr(model, "model", None)):
        if callable(getattr(candidate, "get_vision_tower_features", None)) and hasattr(candidate, "vision_tower"):
            return candidate
    raise TypeError(
        f"{type(model).__name__} has no get_vision_tower_features() with a vision_tower, nor a .model that has one; "
        "pass a KVCapModel, a KVCapForConditionalGeneration or a PEFT wrapper of one."
    )


def _state_dict_sha256(module: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        if tensor.device.type == "meta":
            raise ValueError(f"The vision tower's {name} is on the meta device: load its weights first.")
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        # Raw bytes, so bfloat16 (which numpy cannot hold) hashes like any other dtype.
        digest.update(tensor.detach().reshape(-1).contiguous().view(torch.uint8).cpu().numpy())
    return digest.hexdigest()


def _architecture(config: Any) -> dict[str, Any]:
    as_dict = config.to_dict() if hasattr(config, "to_dict") else dict(vars(config))
    return {k: v for k, v in sorted(as_dict.items()) if not k.startswith("_") and k not in _CONFIG_NOISE}


def _preprocessing(image_processor: Any) -> dict[str, Any]:
    as_dict = image_processor.to_dict() if hasattr(image_processor, "to_dict") else dict(vars(image_processor))
    return {k: as_dict.get(k) for k in _PREPROCESSING_FIELDS}


def _sampling_probe(num_frames: int) -> str:
    indices = [sample_frame_indices(total, num_frames).tolist() for total in _SAMPLING_PROBE_TOTALS]
    return hashlib.sha256(json.dumps(indices).encode()).hexdigest()


def _check_dtype(dtype: torch.dtype) -> str:
    if dtype not in _STORAGE:
        raise ValueError(f"dtype must be torch.float16, torch.bfloat16 or torch.float32, got {dtype}.")
    return str(dtype).removeprefix("torch.")


def feature_cache_key(model: Any, processor: Any, dtype: torch.dtype = torch.float16) -> tuple[str, dict[str, Any]]:
    """The cache key (a SHA-256 hex digest) and the parts it hashes, as written to ``key.json``.

    ``model``: a kvcap model (or anything with ``get_vision_tower_features``, ``vision_tower`` and a config with
    ``vision_feature_layer``); ``processor``: a ``KVCapProcessor`` (``num_frames``, ``image_size``,
    ``image_processor``).
    """
    encoder = _feature_encoder(model)
    num_frames = int(processor.num_frames)
    model_frames = getattr(encoder.config, "num_frames", num_frames)
    if model_frames != num_frames:
        raise ValueError(f"The processor samples {num_frames} frames but the model was built for {model_frames}.")
    parts = {
        "format": CACHE_FORMAT,
        "encoder": {
            "class": type(encoder.vision_tower).__name__,
            "config": _architecture(encoder.vision_tower.config),
            "weights_sha256": _state_dict_sha256(encoder.vision_tower),
        },
        "vision_feature_layer": int(encoder.config.vision_feature_layer),
        "num_frames": num_frames,
        "sampling": {"rule": SAMPLING_RULE, "probe_sha256": _sampling_probe(num_frames)},
        "frame_reader": FRAME_READER,
        "image_size": int(processor.image_size),
        "preprocessing": _preprocessing(processor.image_processor),
        "dtype": _check_dtype(dtype),
        "stored_dtype": _STORAGE[dtype],
    }
    canonical = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest(), parts


def feature_cache_nbytes(
    num_clips: int, num_frames: int = 8, num_patches: int = 576, hidden_size: int = 1024, dtype=torch.float16
) -> int:
    """Bytes of feature values for ``num_clips`` clips (Arrow adds ~0.2 %); 9,631 real clips in fp16 → ~90.9 GB."""
    itemsize = 4 if _STORAGE[dtype] == "float32" else 2
    return num_clips * num_frames * num_patches * hidden_size * itemsize


# ---------------------------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------------------------
def _distributed() -> tuple[int, int]:
    """``(rank, world_size)``: from an initialised process group, else from an ``accelerate``/``torchrun`` launch."""
    import torch.distributed as dist

    initialised = dist.is_available() and dist.is_initialized()
    if not initialised and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Launched with several processes but no group yet: PartialState creates it, as Accelerator would. Its own
        # counts can say one process (e.g. CPU launches without accelerate's config), so the group is asked below.
        from accelerate import PartialState

        state = PartialState()
        initialised = dist.is_available() and dist.is_initialized()
        if not initialised:
            return state.process_index, state.num_processes
    if initialised:
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if dist.get_world_size() > 1:
            dist.barrier()
    elif int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        PartialState().wait_for_everyone()


# ---------------------------------------------------------------------------------------------------------
# Shards
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Shard:
    index: int
    key: str
    paths: tuple[str, ...]

    def arrow(self, folder: Path) -> Path:
        return folder / f"shard-{self.key}.arrow"

    def marker(self, folder: Path) -> Path:
        return folder / f"shard-{self.key}.json"


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    # Write-then-rename, so a reader (or a rerun after a kill) never sees half a file; pid keeps ranks apart.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, ensure_ascii=False, indent=1, default=str), encoding="utf-8")
    os.replace(tmp, path)


def _file_size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return -1


def _clip_identity(path: str) -> tuple[int, int]:
    """``(size, mtime_ns)``: what tells a changed clip from the cached one without reading it."""
    try:
        info = os.stat(path)
    except OSError:
        return (-1, -1)
    return (info.st_size, info.st_mtime_ns)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(16 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _plan_shards(paths: Sequence[str], key: str, shard_size: int) -> tuple[list[int], list[_Shard]]:
    """Row order sorted by path (ties by row), and the shards over that order."""
    order = sorted(range(len(paths)), key=lambda i: (paths[i], i))
    shards = []
    for index, start in enumerate(range(0, len(order), shard_size)):
        chunk = tuple(paths[i] for i in order[start : start + shard_size])
        # Size and time make a re-downloaded, repaired or swapped file a new clip; repeated paths are distinct rows.
        content = json.dumps([key, [(p, *_clip_identity(p)) for p in chunk]], ensure_ascii=False)
        shards.append(_Shard(index, hashlib.sha256(content.encode()).hexdigest()[:32], chunk))
    return order, shards


def _verify_shard(shard: _Shard, folder: Path) -> str | None:
    """Check a finished shard's bytes against its marker's checksum; a damaged shard loses its marker (so every
    rank then sees it missing and it is computed again). Returns why it was damaged, or ``None``."""
    marker, arrow = shard.marker(folder), shard.arrow(folder)
    try:
        meta = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # not finished (or unreadable): _load_shard reports it
    if meta.get("shard_key") != shard.key:
        return None
    if not meta.get("arrow_sha256"):
        problem = "written before shards carried checksums"
    elif _file_size(str(arrow)) != meta.get("arrow_bytes"):
        problem = "missing, or of another size than written"
    elif _sha256(arrow) != meta["arrow_sha256"]:
        problem = "its bytes changed since it was written (checksum mismatch)"
    else:
        return None
    logger.warning("kvcap feature cache: shard %s: %s; computing it again", arrow.name, problem)
    marker.unlink(missing_ok=True)
    return problem


def _load_shard(shard: _Shard, folder: Path) -> tuple[datasets.Dataset, dict[str, str]] | None:
    """The shard's dataset and failed clips when its files are complete and match its clips, else ``None``."""
    marker, arrow = shard.marker(folder), shard.arrow(folder)
    try:
        meta = json.loads(marker.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        logger.warning("kvcap feature cache: marker %s is unreadable (%s); computing the shard again", marker.name, e)
        return None
    if meta.get("shard_key") != shard.key or meta.get("num_rows") != len(shard.paths):
        return None
    if _file_size(str(arrow)) != meta.get("arrow_bytes"):
        logger.warning("kvcap feature cache: shard %s is missing or has the wrong size; computing it again", arrow.name)
        return None
    try:
        shard_ds = datasets.Dataset.from_file(str(arrow))
    except Exception as e:  # pyarrow has its own error types for damaged files
        logger.warning("kvcap feature cache: shard %s cannot be read (%s); computing it again", arrow.name, e)
        return None
    if len(shard_ds) != len(shard.paths) or tuple(list(shard_ds["video_path"])) != shard.paths:
        logger.warning("kvcap feature cache: shard %s does not hold its clips; computing it again", arrow.name)
        return None
    return shard_ds, dict(meta.get("failed") or {})


class _FramePrefetcher:
    """Decodes clips on a thread pool one batch ahead, so decoding overlaps the encoder (PyAV releases the GIL)."""

    def __init__(self, paths: Sequence[str], load: Callable[[str], torch.Tensor], batch_size: int, workers: int):
        self.paths, self.load, self.batch_size = paths, load, batch_size
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kvcap-decode")
        self.futures: dict[int, Future] = {}

    def _decode(self, path: str) -> tuple[torch.Tensor | None, str | None]:
        try:
            return self.load(path), None
        except (VideoReadError, OSError) as e:
            return None, str(getattr(e, "reason", None) or e)

    def _submit(self, start: int, stop: int) -> None:
        for i in range(start, min(stop, len(self.paths))):
            if i not in self.futures:
                self.futures[i] = self.pool.submit(self._decode, self.paths[i])

    def get(self, indices: Sequence[int]) -> list[tuple[torch.Tensor | None, str | None]]:
        self._submit(indices[0], indices[-1] + 1)
        self._submit(indices[-1] + 1, indices[-1] + 1 + self.batch_size)
        return [self.futures.pop(i).result() for i in indices]

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.futures.clear()


def _to_storage(features: torch.Tensor, dtype: torch.dtype) -> np.ndarray:
    """`(B, T, P, D)` encoder output → the stored numpy values (float16, or float32)."""
    # One min/max pass (NaN propagates through it) instead of isfinite over the float16 copy, which is slow on CPU.
    low, high = (value.to(dtype) for value in torch.aminmax(features))
    extreme = max(abs(low.item()), abs(high.item()))
    if not np.isfinite(extreme):
        raise ValueError("The vision tower returned non-finite features (NaN or inf).")
    if _STORAGE[dtype] == "float16" and extreme > torch.finfo(torch.float16).max:
        raise OverflowError(
            f"Vision features reach {extreme:.4g}, beyond float16's 65504: cache them with dtype=torch.float32."
        )
    # bfloat16: round as a bf16 encoder run would, then keep those values in float16 (exact in its normal range).
    stored = features.to(dtype).to(torch.float16) if dtype == torch.bfloat16 else features.to(dtype)
    return stored.cpu().numpy()


def _encode_shard(
    shard: _Shard,
    folder: Path,
    encode: Callable[[dict[str, list], list[int]], dict[str, list]],
    features: datasets.Features,
    batch_size: int,
    writer_batch_size: int,
) -> datasets.Dataset:
    """One ``datasets.map`` call writing the shard's Arrow file (see the module docstring)."""
    return datasets.Dataset.from_dict({"video_path": list(shard.paths)}).map(
        encode,
        batched=True,
        batch_size=batch_size,
        with_indices=True,
        features=features,
        cache_file_name=str(shard.arrow(folder)),
        new_fingerprint=shard.key,
        load_from_cache_file=False,
        writer_batch_size=writer_batch_size,
    )


def _compute_shard(
    shard: _Shard,
    folder: Path,
    encoder: Any,
    processor: Any,
    features: datasets.Features,
    *,
    dtype: torch.dtype,
    batch_size: int,
    writer_batch_size: int,
    decode_workers: int,
    progress_bar: Any,
) -> tuple[datasets.Dataset, dict[str, str]]:
    shard.marker(folder).unlink(missing_ok=True)
    device = next(encoder.vision_tower.parameters()).device

    def load(path: str) -> torch.Tensor:
        return processor.preprocess_frames(processor.load_frames(path))

    prefetcher = _FramePrefetcher(shard.paths, load, batch_size, decode_workers)

    def encode(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        decoded = prefetcher.get(indices)
        ok = [i for i, (pixels, _) in enumerate(decoded) if pixels is not None]
        rows: list[np.ndarray | None] = [None] * len(indices)
        if ok:
            pixel_values = torch.stack([decoded[i][0] for i in ok]).to(device)
            with torch.inference_mode():
                stored = _to_storage(encoder.get_vision_tower_features(pixel_values), dtype)
            for j, i in enumerate(ok):
                rows[i] = stored[j]
        progress_bar.update(len(indices))
        return {FEATURES_COLUMN: rows, ERROR_COLUMN: [error for _, error in decoded]}

    try:
        with naming_a_full_disk(shard.arrow(folder), "a feature shard"):
            shard_ds = _encode_shard(shard, folder, encode, features, batch_size, writer_batch_size)
    finally:
        prefetcher.close()
    errors = zip(list(shard_ds["video_path"]), list(shard_ds[ERROR_COLUMN]), strict=True)
    failed = {path: error for path, error in errors if error is not None}
    _write_json(
        shard.marker(folder),
        {
            "shard_key": shard.key,
            "index": shard.index,
            "num_rows": len(shard_ds),
            "arrow_bytes": shard.arrow(folder).stat().st_size,
            "arrow_sha256": _sha256(shard.arrow(folder)),
            "failed": failed,
            "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    )
    return shard_ds, failed


# ---------------------------------------------------------------------------------------------------------
# Public entry point
# ---------------------------------------------------------------------------------------------------------
def default_cache_dir() -> Path:
    """``$HF_DATASETS_CACHE/kvcap_video_features``: next to the other ``datasets`` Arrow caches."""
    return Path(datasets.config.HF_DATASETS_CACHE) / "kvcap_video_features"


def _feature_shape(encoder: Any, num_frames: int) -> tuple[int, int, int]:
    config = encoder.config
    vision = config.vision_config
    num_patches = getattr(config, "num_patches", None) or (vision.image_size // vision.patch_size) ** 2
    return num_frames, int(num_patches), int(vision.hidden_size)


def cache_video_features(
    dataset: datasets.Dataset,
    model: Any,
    processor: Any,
    *,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 8,
    dtype: torch.dtype = torch.float16,
    shard_size: int = 128,
    decode_workers: int | None = None,
    max_shards: int | None = None,
    progress: bool = True,
    return_report: bool = False,
) -> datasets.Dataset | tuple[datasets.Dataset, FeatureCacheReport]:
    """Frozen vision-tower features of every clip of ``dataset``, computed once and read from Arrow afterwards.

    Args:
        dataset: rows with ``video_path`` (e.g. ``load_aihub(root, split)``); other columns are kept.
        model: ``KVCapForConditionalGeneration`` or ``KVCapModel`` (anything whose ``get_vision_tower_features``
            maps `(B, T, 3, S, S)` to `(B, T, P, D)`), on the device to encode with.
        processor: ``KVCapProcessor``: frame count, image size and normalisation come from it.
        cache_dir: parent folder of the cache (default ``$HF_DATASETS_CACHE/kvcap_video_features``).
        batch_size: clips per encoder call.
        dtype: ``torch.float16`` (default), ``torch.bfloat16`` (stored as float16, read as bf16) or
            ``torch.float32``; see the module docstring.
        shard_size: clips per Arrow file: the most work an interruption can lose per process.
        decode_workers: threads decoding clips ahead of the encoder (default ``min(4, cpu_count)``). Threads, not
            ``datasets``' ``num_proc`` processes: one encoder stays on its device in this process.
        max_shards: compute at most this many missing shards per process, then raise ``FeatureCacheIncomplete``
            (time-boxed jobs); a rerun resumes.
        progress: show a progress bar over the clips being encoded.
        return_report: also return a ``FeatureCacheReport``.

    Returns:
        The rows whose clip decoded, in ``dataset``'s order, with ``video_features`` `(T, P, D)` read as torch
        tensors of ``dtype``; with ``return_report``, ``(dataset, report)``.
    """
    start = time.perf_counter()
    if "video_path" not in dataset.column_names:
        raise ValueError(f"The dataset needs a video_path column; it has {dataset.column_names}.")
    if len(dataset) == 0:
        raise ValueError("The dataset is empty: there is nothing to encode.")
    if batch_size < 1 or shard_size < 1:
        raise ValueError(f"batch_size and shard_size must be positive, got {batch_size} and {shard_size}.")
    encoder = _feature_encoder(model)
    key, parts = feature_cache_key(model, processor, dtype)
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder = folder / key[:24]
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "key.json").exists():
        _write_json(folder / "key.json", {"key": key, **parts})

    shape = _feature_shape(encoder, parts["num_frames"])
    storage = _STORAGE[dtype]
    features = datasets.Features(
        {
            "video_path": datasets.Value("string"),
            FEATURES_COLUMN: datasets.Array3D(shape=shape, dtype=storage),
            ERROR_COLUMN: datasets.Value("string"),
        }
    )
    bytes_per_clip = int(np.prod(shape)) * np.dtype(storage).itemsize
    writer_batch_size = max(1, min(batch_size, _WRITER_BYTES // bytes_per_clip))

    paths = [str(p) for p in dataset["video_path"]]
    order, shards = _plan_shards(paths, key, shard_size)
    rank, world_size = _distributed()
    if rank == 0:
        _remove_stale_temporaries(folder)
    changed = _changed_clips(folder, paths)
    # Each rank checks the checksums of its share; a damaged shard loses its marker before anyone looks.
    damaged = [shard.arrow(folder).name for shard in shards[rank::world_size] if _verify_shard(shard, folder)]
    _barrier()
    loaded = {shard.index: _load_shard(shard, folder) for shard in shards}
    # Every rank has looked before any rank writes, so all agree on which shards are missing.
    _barrier()
    missing = [shard for shard in shards if loaded[shard.index] is None]
    mine = missing[rank::world_size]
    if max_shards is not None:
        mine = mine[: max(0, max_shards)]

    from tqdm.auto import tqdm

    bar = tqdm(
        total=sum(len(s.paths) for s in mine),
        desc=f"kvcap vision features{f' [rank {rank}]' if world_size > 1 else ''}",
        unit="clip",
        disable=not progress or not mine,
        position=rank if world_size > 1 else None,
    )
    # One bar over all clips instead of datasets' bar per shard.
    bars_were_disabled = datasets.utils.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        for shard in mine:
            loaded[shard.index] = _compute_shard(
                shard,
                folder,
                encoder,
                processor,
                features,
                dtype=dtype,
                batch_size=batch_size,
                writer_batch_size=writer_batch_size,
                decode_workers=decode_workers or min(4, os.cpu_count() or 1),
                progress_bar=bar,
            )
        _barrier()
        for shard in shards:
            if loaded[shard.index] is None:
                loaded[shard.index] = _load_shard(shard, folder)
        remaining = sum(1 for shard in shards if loaded[shard.index] is None)
        if remaining:
            if max_shards is not None:
                raise FeatureCacheIncomplete(remaining, len(shards), str(folder))
            raise RuntimeError(
                f"{remaining} of {len(shards)} feature shards in {folder} are missing after all ranks ran."
            )
        failed: dict[str, str] = {}
        for shard in shards:
            failed.update(loaded[shard.index][1])
        result = _assemble(dataset, [loaded[shard.index][0] for shard in shards], order, failed)
        if rank == 0:
            _record_clips(folder, paths)
    finally:
        bar.close()
        if not bars_were_disabled:
            datasets.enable_progress_bars()
    result.set_format("torch", columns=[FEATURES_COLUMN], output_all_columns=True, dtype=dtype)

    report = FeatureCacheReport(
        cache_dir=str(folder),
        key=key,
        num_rows=len(dataset),
        num_cached=len(result),
        num_shards=len(shards),
        shards_reused=len(shards) - len(missing),
        shards_computed=len(mine),
        clips_encoded=sum(len(s.paths) for s in mine),
        stored_dtype=storage,
        read_dtype=parts["dtype"],
        bytes_on_disk=sum(shard.arrow(folder).stat().st_size for shard in shards),
        seconds=time.perf_counter() - start,
        failed=failed,
        clips_changed=changed,
        shards_damaged=damaged,
    )
    if changed:
        logger.warning(
            "kvcap feature cache: %d clips changed since they were cached (size or modification time), encoded "
            "again, e.g. %s",
            len(changed),
            ", ".join(changed[:3]),
        )
    if failed:
        logger.warning(
            "kvcap feature cache: excluded %d of %d rows whose clip cannot be decoded (%d clips), e.g. %s",
            report.num_excluded,
            report.num_rows,
            len(failed),
            "; ".join(f"{p}: {r}" for p, r in list(failed.items())[:3]),
        )
    return (result, report) if return_report else result


STALE_TEMPORARY_SECONDS = 15 * 60


def _remove_stale_temporaries(folder: Path) -> None:
    """Delete the half-written files of killed runs (``datasets``' ``tmp*``, up to a shard's size; our ``.*.tmp``)
    that nothing has written to for 15 minutes, so a kill does not cost the disk forever; says what went."""
    now = time.time()
    stale = []
    for path in [*folder.glob("tmp*"), *folder.glob(".*.tmp")]:
        try:
            info = path.stat()
        except OSError:
            continue
        if path.is_file() and now - info.st_mtime > STALE_TEMPORARY_SECONDS:
            stale.append((path, info.st_size))
    for path, _ in stale:
        path.unlink(missing_ok=True)
    if stale:
        logger.warning(
            "kvcap feature cache: removed %d half-written file(s) of interrupted runs (%.1f MB) in %s",
            len(stale),
            sum(size for _, size in stale) / 1e6,
            folder,
        )


def _changed_clips(folder: Path, paths: Sequence[str]) -> list[str]:
    """The clips cached before under the same path whose size or modification time differs now."""
    try:
        cached = json.loads((folder / "clips.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return sorted({path for path in paths if path in cached and tuple(cached[path]) != _clip_identity(path)})


def _record_clips(folder: Path, paths: Sequence[str]) -> None:
    """``clips.json``: the size and time of every clip now cached (those of earlier runs kept)."""
    try:
        cached = json.loads((folder / "clips.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cached = {}
    cached.update({path: list(_clip_identity(path)) for path in paths})
    _write_json(folder / "clips.json", cached)


def _assemble(
    dataset: datasets.Dataset, shard_sets: list[datasets.Dataset], order: list[int], failed: dict[str, str]
) -> datasets.Dataset:
    """Text columns beside the memory-mapped features, back in ``dataset``'s row order, failed clips left out."""
    cached = datasets.concatenate_datasets(shard_sets).select_columns([FEATURES_COLUMN])
    text = dataset.remove_columns([c for c in (FEATURES_COLUMN, ERROR_COLUMN) if c in dataset.column_names])
    # The text goes into the features' (sorted) order and is materialised: a horizontal concatenation with an
    # indices mapping on either side would copy the features.
    text = text.select(order).flatten_indices(keep_in_memory=True)
    combined = datasets.concatenate_datasets([text, cached], axis=1)
    position = np.empty(len(order), dtype=np.int64)
    position[np.asarray(order, dtype=np.int64)] = np.arange(len(order))
    paths = list(dataset["video_path"])
    keep = [int(position[row]) for row in range(len(dataset)) if paths[row] not in failed]
    return combined.select(keep)
