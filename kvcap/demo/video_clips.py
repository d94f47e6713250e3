"""Generate small, deterministic video clips (and broken files) for kvcap's tests and benchmarks.

Every frame of a clip made by :func:`make_clip` differs from its neighbours, so a reader that returns
the wrong frame is caught by a pixel comparison:

* the background colour is a function of the frame number,
* a white square moves across the picture,
* a bar of black/white blocks along the bottom edge spells the frame number in binary
  (read it back with :func:`frame_number`),
* a red block marks the top-left corner of the *coded* picture, so orientation is visible after rotation.

The ``"natural"`` pattern instead pans slowly over a random multi-scale (cloud-like) landscape with a
moving object and film grain: it compresses and decodes like camera footage (about 3 Mbit/s at 1080p30
with x264's defaults), which the benchmarks need; flat synthetic pictures decode unrealistically fast.

Only numpy and PyAV are needed. Functions take the output path and return it as a :class:`pathlib.Path`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Literal

import av
import numpy as np

__all__ = [
    "CODE_BITS",
    "corrupt_copy",
    "decode_all_rgb",
    "frame_number",
    "hide_leading_frames",
    "make_audio_only",
    "make_clip",
    "make_empty_file",
    "make_json_as_video",
    "make_text_file",
    "render_frame",
    "truncate_copy",
]

Pattern = Literal["square", "natural"]

#: Number of binary blocks in the frame-number bar of the ``"square"`` pattern.
CODE_BITS = 10

_CONTAINER_FORMATS = {
    ".mp4": "mp4",
    ".m4a": "mp4",
    ".mov": "mov",
    ".mkv": "matroska",
    ".webm": "webm",
    ".ts": "mpegts",
    ".mpg": "mpeg",
    ".avi": "avi",
    ".flv": "flv",
    ".h264": "h264",
}


def _background(index: int) -> tuple[int, int, int]:
    # Coprime strides make consecutive frames far apart in colour, so lossy coding cannot blur them together.
    return (40 + (index * 53) % 176, 40 + (index * 97) % 176, 40 + (index * 31) % 176)


def _code_bar_geometry(width: int, height: int) -> tuple[int, int, int]:
    """Top row, block height and block width of the frame-number bar."""
    block_h = max(4, height // 8)
    block_w = max(1, width // CODE_BITS)
    return height - block_h, block_h, block_w


def render_frame(index: int, width: int, height: int) -> np.ndarray:
    """The ``"square"`` pattern's frame ``index`` as a (height, width, 3) uint8 RGB array."""
    rgb = np.empty((height, width, 3), dtype=np.uint8)
    rgb[:] = _background(index)
    side = max(4, min(width, height) // 4)
    span_x, span_y = max(1, width - side), max(1, height - side)
    x0, y0 = (index * 7) % span_x, (index * 5) % span_y
    rgb[y0 : y0 + side, x0 : x0 + side] = 255
    marker = max(4, min(width, height) // 6)
    rgb[:marker, :marker] = (255, 0, 0)
    top, block_h, block_w = _code_bar_geometry(width, height)
    for bit in range(CODE_BITS):
        value = 255 if (index >> bit) & 1 else 0
        rgb[top : top + block_h, bit * block_w : (bit + 1) * block_w] = value
    return rgb


def frame_number(rgb: np.ndarray) -> int:
    """Read back the frame number that :func:`render_frame` drew into an upright (H, W, 3) frame."""
    height, width = rgb.shape[:2]
    top, block_h, block_w = _code_bar_geometry(width, height)
    number = 0
    for bit in range(CODE_BITS):
        block = rgb[top + block_h // 4 : top + block_h - block_h // 4, bit * block_w : (bit + 1) * block_w]
        if block.size and float(block.mean()) > 127.5:
            number |= 1 << bit
    return number


def _box_blur(array: np.ndarray, radius: int, axis: int) -> np.ndarray:
    """Mean over a window of 2 * radius + 1 samples along ``axis`` (edges padded by reflection)."""
    pad = [(0, 0)] * array.ndim
    pad[axis] = (radius + 1, radius)
    sums = np.cumsum(np.pad(array, pad, mode="reflect"), axis=axis, dtype=np.float64)
    length = array.shape[axis]
    upper = np.take(sums, np.arange(2 * radius + 1, 2 * radius + 1 + length), axis=axis)
    lower = np.take(sums, np.arange(0, length), axis=axis)
    return ((upper - lower) / (2 * radius + 1)).astype(np.float32)


class _NaturalFrames:
    """Frames panning over a camera-like random landscape, with a moving object and film grain."""

    def __init__(self, width: int, height: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.width, self.height = width, height
        self.pad = pad = 64
        full_h, full_w = height + pad, width + pad
        # Luminance detail at several scales (sky-like gradients to foliage-like texture) with a gentle,
        # low-frequency colour cast: busy like footage, not like saturated per-pixel noise.
        luma = np.zeros((full_h, full_w), dtype=np.float32)
        for cell, weight in ((128, 0.45), (32, 0.3), (8, 0.17), (2, 0.08)):
            coarse = rng.random((full_h // cell + 2, full_w // cell + 2), dtype=np.float32)
            layer = np.repeat(np.repeat(coarse, cell, axis=0), cell, axis=1)[:full_h, :full_w]
            if cell > 2:
                for axis in (0, 1):
                    layer = _box_blur(layer, radius=cell // 2, axis=axis)
            luma += weight * layer
        luma = (luma - luma.min()) / (np.ptp(luma) + 1e-6) * 200 + 28
        tint = rng.random((full_h // 256 + 2, full_w // 256 + 2, 3), dtype=np.float32)
        tint = np.repeat(np.repeat(tint, 256, axis=0), 256, axis=1)[:full_h, :full_w]
        for axis in (0, 1):
            tint = _box_blur(tint, radius=128, axis=axis)
        self.texture = np.clip(luma[..., None] * (0.75 + 0.5 * tint), 0, 255).astype(np.uint8)
        self.grain = [rng.integers(-4, 5, size=(height, width, 1), dtype=np.int16) for _ in range(7)]

    def frame(self, index: int) -> np.ndarray:
        t = index / 30.0
        ox = int((np.sin(t * 0.7) * 0.5 + 0.5) * self.pad)
        oy = int((np.cos(t * 0.5) * 0.5 + 0.5) * self.pad)
        rgb = self.texture[oy : oy + self.height, ox : ox + self.width].astype(np.int16)
        side = max(8, self.height // 5)
        cx = int((index * 11) % max(1, self.width - side))
        cy = int((np.sin(t * 2.0) * 0.5 + 0.5) * (self.height - side))
        patch = rgb[cy : cy + side, cx : cx + side]
        rgb[cy : cy + side, cx : cx + side] = patch // 2 + np.array(_background(index)) // 2
        rgb += self.grain[index % len(self.grain)]
        return np.clip(rgb, 0, 255).astype(np.uint8)


def _frame_pts(num_frames: int, fps: int, vfr: bool, start_pts: int) -> tuple[list[int], Fraction]:
    """Presentation timestamps and the time base they are expressed in."""
    if not vfr:
        return [start_pts + i for i in range(num_frames)], Fraction(1, fps)
    # Durations of 0.5, 1, 1.5, 2 and 0.75 nominal frame periods, in milliseconds.
    time_base = Fraction(1, 1000)
    pattern = (0.5, 1.0, 1.5, 2.0, 0.75)
    pts, now = [], start_pts
    for i in range(num_frames):
        pts.append(now)
        now += max(1, round(1000 / fps * pattern[i % len(pattern)]))
    return pts, time_base


def make_clip(
    path: str | os.PathLike[str],
    *,
    width: int,
    height: int,
    num_frames: int,
    fps: int = 30,
    pix_fmt: str = "yuv420p",
    codec: str = "libx264",
    gop: int | None = None,
    bframes: int | None = None,
    vfr: bool = False,
    rotation: int | None = None,
    start_pts: int = 0,
    pattern: Pattern = "square",
    crf: int | None = None,
    preset: str | None = None,
    container_format: str | None = None,
    container_options: dict[str, str] | None = None,
    frame_threads: bool = True,
    scenecut: bool = False,
) -> Path:
    """Encode a clip of ``num_frames`` frames of ``pattern`` and return its path.

    Args:
        path: output file; the container is chosen from its suffix (.mp4, .mov, .mkv, .webm, .ts, .mpg,
            .avi, .flv, .h264 for a raw stream) unless ``container_format`` names one.
        width, height: coded size (odd sizes need an encoder and ``pix_fmt`` that accept them,
            e.g. libx264 with yuv444p).
        num_frames: number of frames written.
        fps: nominal frame rate.
        pix_fmt: encoder pixel format, e.g. ``yuv420p``, ``yuv444p``, ``yuv420p10le``.
        codec: encoder name (libx264, libx265, libvpx-vp9, mpeg4, ffv1, ...).
        gop: maximum keyframe interval; ``None`` keeps the encoder's default (250 for x264).
        bframes: maximum consecutive B-frames (x264/x265 only); ``None`` keeps the default (3 for x264).
        vfr: give frames irregular durations (0.5x to 2x the nominal period) in a 1/1000 s time base.
        rotation: clockwise degrees a player turns the picture to display it (0, 90, 180, 270), stored as
            a display matrix; 90 is what a phone held upright writes. ``None`` writes no matrix.
        start_pts: presentation timestamp of the first frame, in the clip's time base
            (1/fps, or 1/1000 s with ``vfr``).
        pattern: ``"square"`` (numbered synthetic frames) or ``"natural"`` (camera-like texture).
        crf: x264/x265 constant rate factor; ``None`` keeps the default.
        preset: x264/x265 preset; ``None`` keeps the default (medium).
        container_format: FFmpeg muxer name overriding the suffix.
        container_options: muxer options, e.g. ``{"movflags": "faststart"}`` to put the MP4 index first
            (as streaming sites do; a truncated copy then still opens).
        frame_threads: encode with frame threading, which gives one slice per frame as real encoders do
            (PyAV's default slice threading splits frames into slices and makes files unusually easy
            to decode in parallel).
        scenecut: let x264 insert extra keyframes at scene cuts. Off by default because the ``"square"``
            pattern changes colour every frame and would otherwise become all keyframes.
    """
    path = Path(path)
    fmt = container_format or _CONTAINER_FORMATS.get(path.suffix.lower())
    pts, time_base = _frame_pts(num_frames, fps, vfr, start_pts)
    options: dict[str, str] = {}
    if gop is not None:
        options["g"] = str(gop)
        options["keyint_min"] = str(min(gop, 25))
    if codec == "libx264" and not scenecut:
        options["sc_threshold"] = "0"
    if codec in ("libx264", "libx265"):
        if crf is not None:
            options["crf"] = str(crf)
        if preset is not None:
            options["preset"] = preset
        if codec == "libx265":
            options["x265-params"] = "log-level=error"
        if bframes is not None:
            options["bf"] = str(bframes)
    elif codec == "libvpx-vp9":
        options.update({"deadline": "realtime", "cpu-used": "8"})
    natural = _NaturalFrames(width, height) if pattern == "natural" else None
    with av.open(str(path), "w", format=fmt, options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=fps, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.codec_context.time_base = time_base
        if frame_threads:
            stream.thread_type = "FRAME"
        if rotation:
            stream.set_display_rotation(-float(rotation))
        for i in range(num_frames):
            rgb = natural.frame(i) if natural is not None else render_frame(i, width, height)
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = pts[i]
            frame.time_base = time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def hide_leading_frames(src: str | os.PathLike[str], dst: str | os.PathLike[str], count: int) -> Path:
    """Remux the MP4 ``src`` so its first ``count`` frames lie before an edit list's start, as a copy trimmed
    with ``ffmpeg -ss ... -c copy`` does: the packets stay in the file (flagged discard on reading) and a
    sequential decode shows frame ``count`` first."""
    dst = Path(dst)
    with av.open(str(src)) as source, av.open(str(dst), "w", format="mp4") as target:
        stream = source.streams.video[0]
        packets = [p for p in source.demux(stream) if p.size]
        shift = sorted(p.pts for p in packets)[count]
        out_stream = target.add_stream_from_template(stream)
        for packet in packets:
            # Negative timestamps make the MP4 muxer write an edit list that starts at 0.
            packet.pts -= shift
            packet.dts -= shift
            packet.stream = out_stream
            target.mux(packet)
    return dst


def decode_all_rgb(path: str | os.PathLike[str], **to_ndarray_kwargs: object) -> Iterator[np.ndarray]:
    """Plain sequential decode: every frame in output order as ``frame.to_ndarray(format="rgb24", ...)``.

    This is the reference that kvcap's reader must match pixel for pixel. Extra keyword arguments go to
    ``to_ndarray`` (e.g. ``width``, ``height``, ``interpolation``). Rotation metadata is not applied.
    """
    kwargs = {"format": "rgb24", **to_ndarray_kwargs}
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            yield frame.to_ndarray(**kwargs)


def make_audio_only(path: str | os.PathLike[str], seconds: float = 0.5, rate: int = 16000) -> Path:
    """An .mp4/.m4a/.mkv file holding only an AAC sine tone (no video stream)."""
    path = Path(path)
    fmt = _CONTAINER_FORMATS.get(path.suffix.lower(), "mp4")
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream("aac", rate=rate)
        stream.layout = "mono"
        samples = max(1, round(seconds * rate / 1024)) * 1024  # whole AAC frames
        t = np.arange(samples) / rate
        tone = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None, :]
        for start in range(0, samples, 1024):
            chunk = np.ascontiguousarray(tone[:, start : start + 1024])
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
            frame.sample_rate = rate
            frame.pts = start
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def make_empty_file(path: str | os.PathLike[str]) -> Path:
    """A zero-byte file."""
    path = Path(path)
    path.write_bytes(b"")
    return path


def make_text_file(path: str | os.PathLike[str]) -> Path:
    """A UTF-8 text file (any suffix, e.g. .mp4 to pose as a video)."""
    path = Path(path)
    path.write_text("이것은 동영상이 아닙니다. This is not a video.\n" * 20, encoding="utf-8")
    return path


def make_json_as_video(path: str | os.PathLike[str]) -> Path:
    """An AI-Hub-style label JSON saved under a video name, a common mix-up in scraped corpora."""
    path = Path(path)
    label = {"annotation": {"description_kr": "빨간 공이 왼쪽에서 오른쪽으로 굴러간다."}, "metadata": {"fps": 30}}
    path.write_text(json.dumps(label, ensure_ascii=False), encoding="utf-8")
    return path


def truncate_copy(src: str | os.PathLike[str], dst: str | os.PathLike[str], keep_fraction: float) -> Path:
    """Copy the first ``keep_fraction`` of ``src``'s bytes to ``dst`` (an interrupted download)."""
    data = Path(src).read_bytes()
    dst = Path(dst)
    dst.write_bytes(data[: int(len(data) * keep_fraction)])
    return dst


def corrupt_copy(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    length: int,
    start_byte: int | None = None,
    start_fraction: float | None = None,
    seed: int = 0,
) -> Path:
    """Copy ``src`` to ``dst`` with ``length`` bytes replaced by noise.

    The damage starts at ``start_byte``, or at ``start_fraction`` of the file's size. To damage a given
    frame, take its packet's ``pos`` and ``size`` from a demux pass.
    """
    if (start_byte is None) == (start_fraction is None):
        raise ValueError("give exactly one of start_byte and start_fraction")
    data = bytearray(Path(src).read_bytes())
    start = start_byte if start_byte is not None else int(len(data) * start_fraction)
    noise = np.random.default_rng(seed).integers(0, 256, size=max(0, min(length, len(data) - start)), dtype=np.uint8)
    data[start : start + len(noise)] = noise.tobytes()
    dst = Path(dst)
    dst.write_bytes(bytes(data))
    return dst


def corrupt_first_keyframe(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Path:
    """Copy ``src`` to ``dst`` with its first keyframe's packet replaced by noise: the file demuxes (a probe
    passes, every frame is counted) but does not decode."""
    with av.open(os.fspath(src)) as container:
        packets = container.demux(container.streams.video[0])
        key = next((packet for packet in packets if packet.size and packet.is_keyframe), None)
        if key is None:
            raise ValueError(f"{src}: no keyframe")
        # The whole packet: x264 puts a long text SEI first, and noise confined to it harms nothing.
        position, size = key.pos, key.size
    return corrupt_copy(src, dst, start_byte=position, length=size)
