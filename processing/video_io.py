"""Fast, exact sampling of uniformly spaced RGB frames from a video file (kvcap).

``read_video_frames(path, num_frames)`` returns the same pixels as a plain sequential decode
(``frame.to_ndarray(format="rgb24")`` of every decoded frame, in presentation order) at the frame
indices chosen by transformers' ``default_sample_indices_fn`` (``i * total // num_frames``), but decodes
only what it needs:

* The frame table (presentation timestamps and keyframes) comes from one demux-only pass over the
  packets; no frame is decoded for it, and it never trusts ``fps * time`` or the container's frame count.
* Each target is decoded from the keyframe at or before it: a seek to that keyframe, checked (the
  demuxer must hand back that very packet and the decoder an intra picture at its timestamp), then
  decoding forward only to the target. A new seek happens only when the next target lies past the
  keyframe span being decoded; otherwise decoding goes on.
* Keyframe spans are independent, so they are shared among decoding threads, each with its own demuxer
  (``threads``, default: every CPU the process may use). H.264 pictures that nothing references are
  skipped unless they are targets. With ``size``, swscale scales straight to the output size.
* Files whose timestamps cannot name frames (none at all, duplicates, AVI's invented ones under
  B-frames) or whose decoder disagrees with the table are read by counting decoded frames instead:
  slower (two sequential passes), still exact.

Only numpy and PyAV are needed.

Behaviour worth knowing:

* Rotation: a display matrix (e.g. phone clips) is applied, so frames come out as a player shows them,
  in multiples of 90 degrees. Mirroring in the matrix is not applied.
* Short clips: when the clip has fewer frames than ``num_frames``, the same rule repeats indices
  (5 frames, 8 samples: 0, 0, 1, 1, 2, 3, 3, 4), so the output still has ``num_frames`` frames.
  transformers raises a ``ValueError`` there instead.
* ``size``: the picture is scaled so its shorter displayed edge equals ``size`` (the longer edge is
  ``int(size * long / short)``, as CLIP's image processor computes it), then centre-cropped to
  ``size`` x ``size`` (offsets ``extra // 2``). Scaling is swscale's bicubic filter (``SWS_BICUBIC``), a
  close match, not a bit-exact one, to the PIL/torchvision bicubic that CLIP's processor uses.
* Without ``size``, frames keep the coded size (after rotation); sample aspect ratio is ignored, as
  transformers does. Should the coded size change mid-stream, frames are scaled to the stream's
  declared size so they stack.
* Corruption: files that cannot be opened or demuxed, packets the demuxer flags as corrupt, files
  holding fewer packets or seconds than their header promises (an interrupted download), decoder
  errors and sampled frames the decoder flags as corrupt all raise :class:`VideoReadError`. Damage
  inside frames that are never decoded goes unnoticed.
"""

from __future__ import annotations

import bisect
import errno
import itertools
import logging
import math
import os
import re
import stat
import struct
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from typing import BinaryIO

import av
import numpy as np
from av.video.frame import PictureType
from av.video.reformatter import Interpolation, VideoReformatter

logger = logging.getLogger(__name__)

__all__ = ["VideoInfo", "VideoReadError", "probe_video", "read_video_frames", "sample_frame_indices"]

# Only H.264 marks pictures that no other picture references (nal_ref_idc == 0); HEVC's "non-reference"
# NAL types may still be referenced from higher temporal sub-layers, so skipping them is not safe.
_SKIP_NONREF_CODECS = frozenset({"h264"})
_SCALE_INTERPOLATION = Interpolation.BICUBIC


class VideoReadError(RuntimeError):
    """A video file could not be read; ``path`` names the file and ``reason`` says why."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"cannot read video {self.path!r}: {reason}")

    def __reduce__(self) -> tuple[type[VideoReadError], tuple[str, str]]:
        # Keeps the exception picklable for multiprocessing (datasets.map with num_proc).
        return (type(self), (self.path, self.reason))


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe_video` learns about a file's video stream.

    ``width`` and ``height`` are the displayed size (after ``rotation``), i.e. the size of the frames
    :func:`read_video_frames` returns without ``size``. ``rotation`` is the clockwise angle in degrees
    (0, 90, 180 or 270) applied to decoded pictures to display them. ``num_frames``, ``duration_s`` and
    ``average_fps`` come from the packets' presentation timestamps.
    """

    path: str
    num_frames: int
    width: int
    height: int
    duration_s: float
    average_fps: float
    rotation: int
    codec: str
    pix_fmt: str


@dataclass(frozen=True)
class _FrameTable:
    """Presentation timestamps of the video stream's frames, in stream time base units."""

    pts: list[int]  # ascending; frame i of a sequential decode has pts[i]
    key_pts: list[int]  # ascending pts of keyframes, including any an edit list hides
    key_dts: dict[int, int]  # keyframe pts -> its decode timestamp (MP4 and MPEG-TS seek by these)
    sizes: dict[int, int]  # pts -> packet size of every packet, to notice a demuxer resuming misaligned
    time_base: Fraction
    end_pts: int  # pts just past the last frame
    packet_count: int  # packets holding a frame, with or without a timestamp
    # True when timestamps only grow in decode order: no reordering, or (AVI with B-frames) invented timestamps.
    decode_order_monotonic: bool
    # False when timestamps cannot identify frames (missing or duplicated pts, no leading keyframe):
    # such files are read by counting decoded frames instead.
    seekable: bool


class _TableMismatch(Exception):
    """The decoder's output disagrees with the frame table; read the file sequentially instead."""


def sample_frame_indices(total_frames: int, num_frames: int) -> np.ndarray:
    """Indices of ``num_frames`` uniformly spaced frames out of ``total_frames``: ``i * total // num_frames``.

    Returns an int64 array of shape (num_frames,). Same rule as transformers' ``default_sample_indices_fn``;
    when ``num_frames > total_frames`` the rule repeats indices where transformers raises.
    """
    if total_frames < 1:
        raise ValueError(f"total_frames must be at least 1, got {total_frames}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}")
    return np.arange(num_frames, dtype=np.int64) * total_frames // num_frames


def probe_video(path: str | os.PathLike[str]) -> VideoInfo:
    """Frame count, size, timing and format of the video stream of ``path``.

    The frame table comes from a demux-only pass over the packets, and for MP4/MOV the rotation from the
    track header; other containers expose rotation on decoded frames only, so their first frame is
    decoded. (Opening the file decodes a frame too: FFmpeg's stream probing learns the pixel format so.)
    Raises :class:`VideoReadError` when the file cannot be read.
    """
    with _open(path) as container:
        stream = _video_stream(container, path)
        table = _scan(container, stream, path)
        ctx = stream.codec_context
        codec, width, height, pix_fmt = ctx.name, ctx.width, ctx.height, ctx.pix_fmt
        fallback_fps = float(stream.average_rate or 0)
        is_mp4 = "mp4" in container.format.name.split(",") or "mov" in container.format.name.split(",")
        stream_index = stream.index
    rotation = _mp4_rotation(path, stream_index) if is_mp4 else None
    if rotation is None or not pix_fmt or not width or not height:
        rotation, width, height, pix_fmt = _first_frame_facts(stream_index, path)
    if rotation in (90, 270):
        width, height = height, width
    duration = float((table.end_pts - table.pts[0]) * table.time_base) if table.pts else 0.0
    return VideoInfo(
        path=os.fspath(path),
        num_frames=len(table.pts) if table.seekable else table.packet_count,
        width=width,
        height=height,
        duration_s=duration,
        average_fps=len(table.pts) / duration if duration > 0 else fallback_fps,
        rotation=rotation,
        codec=codec,
        pix_fmt=pix_fmt,
    )


def read_video_frames(
    path: str | os.PathLike[str], num_frames: int = 8, size: int | None = None, *, threads: int | None = None
) -> np.ndarray:
    """``num_frames`` uniformly spaced RGB frames of ``path``, as displayed.

    Returns uint8 of shape (num_frames, H, W, 3): H, W the displayed frame size, or ``size`` x ``size``
    when ``size`` is given (shorter edge scaled to ``size`` with swscale bicubic, then centre crop).
    Frame ``k`` is frame ``k * total // num_frames`` of a sequential decode. ``threads`` caps the CPU
    threads used (default: every CPU this process may run on; pass 1 inside DataLoader workers).
    Raises :class:`VideoReadError` for files that cannot be read.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}")
    if size is not None and size < 1:
        raise ValueError(f"size must be a positive number of pixels, got {size}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    threads = threads or _available_cpus()
    with _open(path) as container:
        stream = _video_stream(container, path)
        table = _scan(container, stream, path)
        if table.seekable:
            indices = sample_frame_indices(len(table.pts), num_frames)
            try:
                return _stack(_read_spans(container, stream, table, indices, size, threads, path), indices)
            except _TableMismatch as exc:
                # The decoder disagrees with the timestamps: count decoded frames instead.
                logger.debug("%s: reading sequentially (%s)", os.fspath(path), exc)
        else:
            logger.debug("%s: reading sequentially (timestamps do not identify frames)", os.fspath(path))
    return _read_sequential(path, num_frames, size, threads)


def _available_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


# ----------------------------------------------------------------------------------------------------
# Opening and scanning


_NOT_FILES = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a named pipe"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a device"),
    (stat.S_ISBLK, "a device"),
)


def file_problem(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` cannot be read as a file (missing, a link loop, a broken link, a named pipe...), or ``None``.

    Checked with ``stat``, which follows links and opens nothing: opening a named pipe blocks until a writer comes.
    """
    try:
        info = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symbolic link loop"
        if os.path.islink(path):
            return f"broken symbolic link (to {os.readlink(path)})"
        return "file not found" if exc.errno == errno.ENOENT else f"cannot stat ({exc.strerror or exc})"
    if stat.S_ISREG(info.st_mode):
        return None
    kind = next((name for test, name in _NOT_FILES if test(info.st_mode)), None)
    return f"not a regular file ({kind})" if kind else "not a regular file"


def _open(path: str | os.PathLike[str], *, fast: bool = False) -> av.container.InputContainer:
    """Open ``path`` for reading. ``fast`` decodes nothing while probing the streams (about 20 ms saved
    on a 1080p H.264 file), at the price of an unknown pixel format and decoder delay: only where frame
    order does not matter. Frame reading opens normally, as a plain sequential decode would.
    """
    name = os.fspath(path)
    problem = file_problem(name)
    if problem is not None:
        raise VideoReadError(name, problem)
    if os.path.getsize(name) == 0:
        raise VideoReadError(name, "empty file (0 bytes)")
    try:
        return av.open(name, mode="r", options={"skip_frame": "all"} if fast else None)
    except av.FFmpegError as exc:
        raise VideoReadError(name, f"not a readable media file ({_ffmpeg_message(exc)})") from exc
    except OSError as exc:
        raise VideoReadError(name, f"cannot open file ({exc})") from exc


def _ffmpeg_message(exc: BaseException) -> str:
    if isinstance(exc, av.FFmpegError) and len(exc.args) >= 2:
        return str(exc.args[1])
    return str(exc)


def _video_stream(container: av.container.InputContainer, path: str | os.PathLike[str]) -> av.video.VideoStream:
    # FFmpeg opens a still image (PNG, JPEG, WebP, ... renamed .mp4) as a one-frame video through its image
    # demuxers; read as a clip, it would be 8 copies of one picture, captioned as if it moved.
    demuxer = container.format.name
    if demuxer.endswith("_pipe") or demuxer in ("image2", "image2pipe"):
        raise VideoReadError(path, f"a still image ({demuxer.removesuffix('_pipe')}), not a video")
    # Cover art in audio files shows up as a one-picture video stream; it is not a video.
    candidates = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
    if not candidates:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        raise VideoReadError(path, f"no video stream (streams: {', '.join(kinds)})")
    stream = candidates[0]
    if stream.codec_context is None or not stream.codec_context.name:
        raise VideoReadError(path, "video stream has no decoder (unknown codec or damaged header)")
    return stream


def _scan(
    container: av.container.InputContainer, stream: av.video.VideoStream, path: str | os.PathLike[str]
) -> _FrameTable:
    """Demux every packet of ``stream`` (no decoding) and build the frame table."""
    pts: list[int] = []
    key_pts: list[int] = []
    key_dts: dict[int, int] = {}
    sizes: dict[int, int] = {}
    durations: dict[int, int] = {}
    first_is_key: bool | None = None
    has_none = False
    packet_count = 0
    stored = 0  # packets in the file, including those an edit list discards
    monotonic = True
    duplicated = False
    last_pts: int | None = None
    try:
        for packet in container.demux(stream):
            if packet.size == 0:  # PyAV's end-of-stream flush packet
                continue
            if packet.is_corrupt:
                raise VideoReadError(path, f"corrupt or truncated data (damaged packet at byte {packet.pos})")
            stored += 1
            if first_is_key is None:
                first_is_key = packet.is_keyframe
            if packet.pts is None:
                has_none = True
                packet_count += not packet.is_discard
                continue
            if last_pts is not None and packet.pts <= last_pts:
                monotonic = False
            last_pts = packet.pts
            if packet.pts in sizes:
                duplicated = True
            sizes[packet.pts] = packet.size
            if packet.is_keyframe:
                # Kept even when an edit list hides the frame (a trimmed copy): decoding starts there.
                key_pts.append(packet.pts)
                key_dts[packet.pts] = packet.dts if packet.dts is not None else packet.pts
            if packet.is_discard:  # outside the edit list: the decoder drops these frames
                continue
            packet_count += 1
            pts.append(packet.pts)
            if packet.duration:
                durations[packet.pts] = packet.duration
    except av.FFmpegError as exc:
        raise VideoReadError(path, f"corrupt or truncated data ({_ffmpeg_message(exc)})") from exc
    except OSError as exc:
        raise VideoReadError(path, f"read error ({exc})") from exc
    if not pts and not has_none:
        raise VideoReadError(path, "the video stream holds no frames")
    if stream.frames and stored < stream.frames:
        raise VideoReadError(path, f"truncated: the header lists {stream.frames} frames, the file holds {stored}")
    pts.sort()
    key_pts.sort()
    time_base = stream.time_base or Fraction(1, 90000)
    end_pts = pts[-1] + _last_duration(pts, durations) if pts else 0
    _check_declared_duration(container, stream, pts, end_pts, time_base, path)
    # Decoders drop what precedes the first keyframe and open-GOP leading pictures of the first keyframe,
    # so timestamps identify frames only when decoding starts on a keyframe at or before the first picture.
    seekable = (
        bool(pts) and not has_none and not duplicated and bool(first_is_key) and bool(key_pts) and key_pts[0] <= pts[0]
    )
    return _FrameTable(
        pts=pts,
        key_pts=key_pts,
        key_dts=key_dts,
        sizes=sizes,
        time_base=time_base,
        end_pts=end_pts,
        packet_count=packet_count,
        decode_order_monotonic=monotonic,
        seekable=seekable,
    )


def _last_duration(pts: list[int], durations: dict[int, int]) -> int:
    if pts[-1] in durations:
        return durations[pts[-1]]
    if len(pts) > 1:
        return int(np.median(np.diff(pts)))
    return 0


_HMS = re.compile(r"^(\d+):(\d{1,2}):(\d{1,2}(?:\.\d+)?)$")


def _check_declared_duration(
    container: av.container.InputContainer,
    stream: av.video.VideoStream,
    pts: list[int],
    end_pts: int,
    time_base: Fraction,
    path: str | os.PathLike[str],
) -> None:
    """Streaming formats (MKV, WebM) demux a cut-off file without complaint; compare with the header.

    Only for files without a frame count (MP4 has one, checked against the packets). Headers disagree on
    whether a duration counts from 0 or from the first timestamp, so the larger reading is compared.
    """
    if stream.frames:
        return
    declared: float | None = None
    if stream.duration:
        declared = float(stream.duration * time_base)
    else:
        tag = next((v for k, v in stream.metadata.items() if k.upper() == "DURATION"), None)
        match = _HMS.match(tag.strip()) if tag else None
        if match:
            declared = int(match[1]) * 3600 + int(match[2]) * 60 + float(match[3])
        elif container.duration and len(container.streams) == 1:
            declared = container.duration / av.time_base
    if not declared or not pts:
        return
    covered = max(float((end_pts - pts[0]) * time_base), float(end_pts * time_base))
    if declared - covered > max(0.5, 0.1 * declared):
        raise VideoReadError(path, f"truncated: the header says {declared:.2f} s, the packets cover {covered:.2f} s")


def _configure_decoder(stream: av.video.VideoStream, threads: int) -> None:
    ctx = stream.codec_context
    if not ctx.is_open:
        # Frame threads as well as slice threads: most encoders write one slice per frame.
        ctx.thread_type = "AUTO"
        ctx.thread_count = threads


def _first_frame_facts(stream_index: int, path: str | os.PathLike[str]) -> tuple[int, int, int, str]:
    """Clockwise rotation, coded width, height and pixel format of the first decodable frame."""
    # A fresh demuxer, because seeking back to the start is not reliable in every format.
    with _open(path, fast=True) as fresh:
        try:
            for frame in fresh.decode(fresh.streams[stream_index]):
                return _clockwise_rotation(frame), frame.width, frame.height, frame.format.name
        except av.FFmpegError as exc:
            raise VideoReadError(path, f"corrupt data ({_ffmpeg_message(exc)})") from exc
    raise VideoReadError(path, "no frame could be decoded")


def _mp4_rotation(path: str | os.PathLike[str], track: int) -> int | None:
    """Clockwise rotation from the ISO-BMFF matrices (movie header times track header) of the ``track``-th
    track, as FFmpeg computes it, without decoding; ``None`` when the boxes cannot be read."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            moov = next((box for box in _boxes(f, 0, size) if box[0] == b"moov"), None)
            if moov is None:
                return None
            movie = np.eye(3)
            traks = []
            for kind, start, end in _boxes(f, moov[1], moov[2]):
                if kind == b"mvhd":
                    movie = _box_matrix(f, start, 36, 48)
                elif kind == b"trak":
                    traks.append((start, end))
            if track >= len(traks):
                return None
            tkhd = next((box for box in _boxes(f, *traks[track]) if box[0] == b"tkhd"), None)
            if tkhd is None:
                return None
            matrix = _box_matrix(f, tkhd[1], 40, 52) @ movie
    except (OSError, ValueError, struct.error):
        return None
    a, b = matrix[0, 0], matrix[0, 1]
    if a == 0 and b == 0:
        return None
    # FFmpeg's av_display_rotation_get is -atan2(b, a) counter-clockwise, i.e. atan2(b, a) clockwise.
    return round(math.degrees(math.atan2(b, a)) / 90) * 90 % 360


def _boxes(f: BinaryIO, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload start, box end) of the ISO-BMFF boxes between byte offsets ``start`` and ``end``."""
    offset = start
    while offset + 8 <= end:
        f.seek(offset)
        size, kind = struct.unpack(">I4s", f.read(8))
        header = 8
        if size == 1:  # 64-bit size follows
            size = struct.unpack(">Q", f.read(8))[0]
            header = 16
        elif size == 0:  # box runs to the end of its parent
            size = end - offset
        if size < header:
            raise ValueError("malformed box")
        yield kind, offset + header, min(offset + size, end)
        offset += size


def _box_matrix(f: BinaryIO, payload: int, offset_v0: int, offset_v1: int) -> np.ndarray:
    """The 3x3 transformation matrix of an mvhd/tkhd box, as floats, laid out as in the file."""
    f.seek(payload)
    version = f.read(1)[0]
    f.seek(payload + (offset_v1 if version == 1 else offset_v0))
    values = struct.unpack(">9i", f.read(36))
    # a, b, c, d, x, y are 16.16 fixed point; u, v, w are 2.30
    scales = (1 << 16, 1 << 16, 1 << 30) * 3
    return np.array([v / scale for v, scale in zip(values, scales, strict=True)]).reshape(3, 3)


def _clockwise_rotation(frame: av.VideoFrame) -> int:
    # PyAV reports the display matrix as counter-clockwise degrees in [-180, 180] (NaN for a degenerate one).
    degrees = frame.rotation
    if not math.isfinite(degrees):
        return 0
    return (-round(degrees / 90) * 90) % 360


# ----------------------------------------------------------------------------------------------------
# Conversion to RGB


class _Converter:
    """Turns decoded frames into displayed RGB arrays, optionally scaled and centre-cropped."""

    def __init__(self, size: int | None, coded_size: tuple[int, int]) -> None:
        self.size = size
        self.reformatter = VideoReformatter()
        self.rotation: int | None = None
        # Fixed per stream, so frames from every decoding thread agree should the coded size change mid-stream.
        self.coded_size = coded_size if min(coded_size) > 0 else None

    def __call__(self, frame: av.VideoFrame) -> np.ndarray:
        """(H, W, 3) uint8 RGB of ``frame`` as displayed; H = W = size when a size is set."""
        if self.rotation is None:
            self.rotation = _clockwise_rotation(frame)
        if self.size is None:
            if self.coded_size is None:
                self.coded_size = (frame.width, frame.height)
            width, height = self.coded_size
            interpolation = None  # as frame.to_ndarray(format="rgb24"), so pixels match a plain decode
        else:
            width, height = _scaled_coded_size(frame.width, frame.height, self.rotation, self.size)
            interpolation = _SCALE_INTERPOLATION
        try:
            rgb = self.reformatter.reformat(
                frame, width=width, height=height, format="rgb24", interpolation=interpolation
            ).to_ndarray()
        except av.FFmpegError as exc:
            raise _ConversionError(_ffmpeg_message(exc)) from exc
        if self.rotation:
            # np.rot90 turns counter-clockwise for positive k.
            rgb = np.rot90(rgb, k=-self.rotation // 90)
        if self.size is not None:
            top = (rgb.shape[0] - self.size) // 2
            left = (rgb.shape[1] - self.size) // 2
            rgb = rgb[top : top + self.size, left : left + self.size]
        return rgb


class _ConversionError(Exception):
    pass


def _scaled_coded_size(width: int, height: int, rotation: int, size: int) -> tuple[int, int]:
    """Coded-orientation (width, height) whose displayed shorter edge is ``size`` (CLIP's rounding)."""
    disp_w, disp_h = (height, width) if rotation in (90, 270) else (width, height)
    if disp_w <= disp_h:
        disp_w, disp_h = size, int(size * disp_h / disp_w)
    else:
        disp_w, disp_h = int(size * disp_w / disp_h), size
    return (disp_h, disp_w) if rotation in (90, 270) else (disp_w, disp_h)


def _stack(pictures: dict[int, np.ndarray], indices: np.ndarray) -> np.ndarray:
    first = pictures[int(indices[0])]
    out = np.empty((len(indices), *first.shape), dtype=np.uint8)
    for k, index in enumerate(indices):
        out[k] = pictures[int(index)]
    return out


# ----------------------------------------------------------------------------------------------------
# Seeking reader


def _read_spans(
    container: av.container.InputContainer,
    stream: av.video.VideoStream,
    table: _FrameTable,
    indices: np.ndarray,
    size: int | None,
    threads: int,
    path: str | os.PathLike[str],
) -> dict[int, np.ndarray]:
    """Pictures for the frame indices ``indices``, keyed by index.

    Targets are grouped by the keyframe they decode from; groups are shared among up to ``threads``
    decoders, each with its own demuxer. Independent keyframe spans decode in parallel without the
    pipeline stalls of frame threading, which a seek flushes every time.
    """
    pts_to_index = {table.pts[i]: int(i) for i in np.unique(indices)}
    shares, decoder_threads = _plan_shares(table, sorted(pts_to_index), threads)
    coded_size = (stream.codec_context.width, stream.codec_context.height)

    def run_share(share: list[int], own_container: bool) -> dict[int, np.ndarray]:
        if not own_container:
            return _decode_targets(container, stream, table, share, _Converter(size, coded_size), decoder_threads, path)
        with _open(path) as other:
            other_stream = other.streams[stream.index]
            return _decode_targets(
                other, other_stream, table, share, _Converter(size, coded_size), decoder_threads, path
            )

    if len(shares) == 1:
        by_pts = run_share(shares[0], own_container=False)
    else:
        with ThreadPoolExecutor(max_workers=len(shares) - 1) as pool:
            futures = [pool.submit(run_share, share, True) for share in shares[1:]]
            by_pts = run_share(shares[0], own_container=False)
            for future in futures:
                by_pts.update(future.result())
    return {pts_to_index[pts]: picture for pts, picture in by_pts.items()}


def _frame_thread_speedup(threads: int) -> float:
    """Rough gain of FFmpeg frame threading over one thread on H.264 whose non-reference B-frames are
    skipped (measured here: 1.1-1.2x with 2 threads; 1.2-1.4x without skipping)."""
    return min(2.5, 1.0 + 0.15 * (threads - 1))


def _plan_shares(table: _FrameTable, targets: list[int], threads: int) -> tuple[list[list[int]], int]:
    """Split target pts into shares of whole keyframe spans, and the decoder threads each share gets.

    Spans in parallel scale well but are uneven (one long span can dominate); frame threading inside
    one decoder gains less but applies to any span. The split minimising the estimated time wins.
    Shares come heaviest first.
    """
    spans: dict[int, list[int]] = {}
    for target in targets:
        spans.setdefault(table.key_pts[bisect.bisect_right(table.key_pts, target) - 1], []).append(target)
    costs = {
        key: bisect.bisect_right(table.pts, members[-1]) - bisect.bisect_left(table.pts, key)
        for key, members in spans.items()
    }
    best: tuple[float, list[list[int]], int] | None = None
    for count in range(1, min(threads, len(spans)) + 1):
        shares: list[list[int]] = [[] for _ in range(count)]
        loads = [0] * count
        for key in sorted(spans, key=costs.__getitem__, reverse=True):  # longest first, onto the lightest
            lightest = loads.index(min(loads))
            shares[lightest].extend(spans[key])
            loads[lightest] += costs[key]
        per_share = threads // count
        estimate = max(loads) / _frame_thread_speedup(per_share)
        if best is None or estimate < best[0]:
            # Heaviest first: the calling thread takes it, as it already has the file open.
            order = sorted(range(count), key=loads.__getitem__, reverse=True)
            best = (estimate, [sorted(shares[i]) for i in order], per_share)
    assert best is not None
    return best[1], best[2]


def _decode_targets(
    container: av.container.InputContainer,
    stream: av.video.VideoStream,
    table: _FrameTable,
    targets: list[int],
    convert: _Converter,
    threads: int,
    path: str | os.PathLike[str],
) -> dict[int, np.ndarray]:
    """Pictures of the frames whose pts are ``targets``, keyed by pts, decoding forward from keyframes."""
    pending = set(targets)
    known_pts = set(table.pts)
    pictures: dict[int, np.ndarray] = {}
    ctx = stream.codec_context
    _configure_decoder(stream, threads)
    # Timestamps that never decrease in decode order mean no reordering (nothing to skip) or invented
    # timestamps (AVI): then B-frames are decoded, so that their appearance exposes the invention.
    may_skip = ctx.name in _SKIP_NONREF_CODECS and not table.decode_order_monotonic
    # The reorder depth that stream probing found; a decoder flushed by a seek must not start below it,
    # or its first pictures come out early, out of order or not at all, unlike in a sequential decode.
    # (Older PyAV releases lack reorder_depth and only say whether there is any reordering.)
    reorder_depth = getattr(ctx, "reorder_depth", None)
    invented_if_b = table.decode_order_monotonic and bool(
        reorder_depth if reorder_depth is not None else ctx.has_b_frames
    )
    skipping = False
    packets: Iterator[av.Packet] | None = None
    span_key = 0  # pts of the latest keyframe packet sent to the decoder
    landed = False  # whether the frame at the keyframe we seeked to has come out
    last_pts = 0
    try:
        for target in sorted(pending):
            if target not in pending:
                continue
            key = table.key_pts[bisect.bisect_right(table.key_pts, target) - 1]
            if packets is None or key > span_key:
                packets = _seek_to_keyframe(container, stream, table, key)
                if reorder_depth is not None and ctx.reorder_depth < reorder_depth:
                    ctx.reorder_depth = reorder_depth
                span_key = key
                landed = False
                last_pts = table.pts[0] - 1
            while target in pending:
                packet = next(packets, None)
                if packet is None:
                    raise _TableMismatch(f"stream ended before frame pts {target}")
                if packet.pts is not None:
                    if packet.size != table.sizes.get(packet.pts):
                        raise _TableMismatch(f"packet at pts {packet.pts} differs from the scan's")
                    if packet.is_keyframe and packet.pts > span_key:
                        span_key = packet.pts
                if may_skip:
                    # A non-reference picture that is not a target is never needed; only H.264 says which.
                    skip = packet.pts is not None and packet.pts not in pending
                    if skip != skipping:
                        ctx.skip_frame = "NONREF" if skip else "DEFAULT"
                        skipping = skip
                for frame in ctx.decode(packet):
                    if frame.pts is None or frame.pts not in known_pts:
                        raise _TableMismatch("decoded frame has a timestamp missing from the packet table")
                    if frame.pts <= last_pts:
                        raise _TableMismatch("decoded frames come out of timestamp order")
                    last_pts = frame.pts
                    if invented_if_b and frame.pict_type == PictureType.B:
                        raise _TableMismatch("B-frames under decode-order timestamps: timestamps are invented")
                    if not landed and frame.pts >= key:
                        # Decoding must resume on an intra picture at the keyframe: demuxers can mislabel
                        # keyframes (MPEG-PS), and a seek past it would lose the target. A keyframe hidden
                        # by an edit list is not output; the first shown frame after it must come first.
                        if key in known_pts:
                            if frame.pts != key or not (frame.key_frame or frame.pict_type == PictureType.I):
                                raise _TableMismatch(f"seek to pts {key} resumed at pts {frame.pts}, not on it")
                        elif frame.pts != table.pts[bisect.bisect_right(table.pts, key)]:
                            raise _TableMismatch(f"seek to hidden keyframe {key} resumed at pts {frame.pts}")
                        landed = True
                    if frame.pts in pending:
                        if frame.is_corrupt:
                            index = bisect.bisect_left(table.pts, frame.pts)
                            raise VideoReadError(path, f"corrupt data: frame {index} decodes damaged")
                        pictures[frame.pts] = convert(frame)
                        pending.discard(frame.pts)
                    elif frame.pts > target and target in pending:
                        raise _TableMismatch(f"decoder skipped frame pts {target}")
    except av.FFmpegError as exc:
        raise VideoReadError(path, f"corrupt data ({_ffmpeg_message(exc)})") from exc
    except _ConversionError as exc:
        raise VideoReadError(path, f"cannot convert frame to RGB ({exc})") from exc
    return pictures


def _seek_to_keyframe(
    container: av.container.InputContainer,
    stream: av.video.VideoStream,
    table: _FrameTable,
    key: int,
) -> Iterator[av.Packet]:
    """Packets from the keyframe with pts ``key`` onwards, the decoder flushed.

    Demuxers seek by their own rules (Matroska by cue pts, MP4 by its index of decode timestamps,
    MPEG-TS by bisecting the file on decode timestamps), so the position is verified: packets before
    the keyframe are dropped undecoded, and landing past it, or on a keyframe packet that differs from
    the scan's, retries from the keyframe's decode timestamp, then from earlier keyframes, then from
    the start.
    """
    position = bisect.bisect_left(table.key_pts, key)
    earlier = [table.key_dts[k] for k in reversed(table.key_pts[max(0, position - 2) : position])]
    offsets = [key, table.key_dts[key], *earlier, min(table.key_dts.values()) - 1]
    for offset in dict.fromkeys(offsets):  # ordered and without repeats
        try:
            container.seek(offset, stream=stream, backward=True, any_frame=False)
        except av.FFmpegError:  # e.g. an offset before the first index entry
            continue
        packets = container.demux(stream)
        for packet in packets:
            if packet.pts is None:
                if packet.size == 0:  # end of stream
                    break
                continue
            if packet.pts == key and packet.is_keyframe:
                if packet.size != table.sizes[key]:
                    break  # MPEG-PS/TS parsers can resume misaligned, one picture off; start earlier
                return itertools.chain((packet,), packets)
            if packet.pts > key:  # landed inside or after the keyframe's span
                break
    raise _TableMismatch(f"could not seek to the keyframe at pts {key}")


# ----------------------------------------------------------------------------------------------------
# Sequential fallback


def _read_sequential(path: str | os.PathLike[str], num_frames: int, size: int | None, threads: int) -> np.ndarray:
    """Count decoded frames, then decode again up to the last sampled one (files without usable timestamps)."""
    try:
        with _open(path) as container:
            stream = _video_stream(container, path)
            _configure_decoder(stream, threads)
            total = sum(1 for _ in container.decode(stream))
        if total == 0:
            raise VideoReadError(path, "no frame could be decoded")
        indices = sample_frame_indices(total, num_frames)
        wanted = set(int(i) for i in indices)
        pictures: dict[int, np.ndarray] = {}
        with _open(path) as container:
            stream = _video_stream(container, path)
            _configure_decoder(stream, threads)
            convert = _Converter(size, (stream.codec_context.width, stream.codec_context.height))
            for i, frame in enumerate(container.decode(stream)):
                if i in wanted:
                    if frame.is_corrupt:
                        raise VideoReadError(path, f"corrupt data: frame {i} decodes damaged")
                    pictures[i] = convert(frame)
                    if len(pictures) == len(wanted):
                        break
    except av.FFmpegError as exc:
        raise VideoReadError(path, f"corrupt data ({_ffmpeg_message(exc)})") from exc
    except _ConversionError as exc:
        raise VideoReadError(path, f"cannot convert frame to RGB ({exc})") from exc
    if len(pictures) < len(wanted):
        raise VideoReadError(path, "fewer frames decoded on the second pass than on the first")
    return _stack(pictures, indices)
