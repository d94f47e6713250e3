"""kvcap's frame sampler against a plain sequential decode, transformers' sampling rule and broken files.

Clips are generated with PyAV (tests/video_clips.py): every frame has its own colour, a moving square and
its frame number drawn as a binary bar, so a wrong frame cannot pass a pixel comparison.
"""

from __future__ import annotations

import logging
import os
import pickle
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from transformers.image_transforms import get_resize_output_image_size
from transformers.video_utils import VideoMetadata, default_sample_indices_fn, load_video

from kvcap.demo.video_clips import (
    corrupt_copy,
    corrupt_first_keyframe,
    decode_all_rgb,
    frame_number,
    hide_leading_frames,
    make_audio_only,
    make_clip,
    make_empty_file,
    make_json_as_video,
    make_text_file,
    truncate_copy,
)
from processing.video_io import (
    VideoInfo,
    VideoReadError,
    probe_video,
    read_video_frames,
    sample_frame_indices,
)


@dataclass(frozen=True)
class Clip:
    filename: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    hidden: int = 0  # leading frames hidden by an edit list (see hide_leading_frames)

    @property
    def rotation(self) -> int:
        return self.kwargs.get("rotation") or 0

    @property
    def shown(self) -> int:
        """Frames a sequential decode yields."""
        return self.kwargs["num_frames"] - self.hidden

    def numbers(self, num_frames: int) -> list[int]:
        """Frame numbers drawn on the frames read_video_frames should return."""
        return (self.hidden + sample_frame_indices(self.shown, num_frames)).tolist()


BASE = {"width": 96, "height": 64, "num_frames": 40}
CLIPS: dict[str, Clip] = {
    "normal": Clip("normal.mp4", BASE),
    "keyframe_every_6": Clip("gop6.mp4", {**BASE, "width": 128, "height": 72, "num_frames": 60, "gop": 6}),
    "long_gop": Clip("long_gop.mp4", {**BASE, "num_frames": 60, "gop": 250}),
    "bframes_gop5": Clip("bframes.mp4", {**BASE, "num_frames": 50, "gop": 5, "bframes": 3}),
    "no_bframes": Clip("no_bframes.mp4", {**BASE, "gop": 10, "bframes": 0}),
    "vfr": Clip("vfr.mp4", {**BASE, "num_frames": 45, "gop": 10, "vfr": True}),
    "vfr_mkv": Clip("vfr.mkv", {**BASE, "num_frames": 45, "gop": 10, "vfr": True}),
    "rotated_90": Clip("rot90.mp4", {**BASE, "num_frames": 30, "gop": 8, "rotation": 90}),
    "rotated_180": Clip("rot180.mp4", {**BASE, "num_frames": 30, "gop": 8, "rotation": 180}),
    "rotated_270": Clip("rot270.mp4", {**BASE, "num_frames": 30, "gop": 8, "rotation": 270}),
    "rotated_90_mkv": Clip("rot90.mkv", {**BASE, "num_frames": 30, "gop": 8, "rotation": 90}),
    "short_5_frames": Clip("short.mp4", {**BASE, "num_frames": 5}),
    "single_frame": Clip("single.mp4", {**BASE, "num_frames": 1}),
    "odd_size_97x61": Clip("odd.mp4", {**BASE, "width": 97, "height": 61, "num_frames": 30, "pix_fmt": "yuv444p"}),
    "yuv444p": Clip("yuv444.mp4", {**BASE, "num_frames": 30, "gop": 8, "pix_fmt": "yuv444p"}),
    "10bit": Clip("10bit.mp4", {**BASE, "num_frames": 30, "gop": 8, "pix_fmt": "yuv420p10le"}),
    "start_pts_mp4": Clip("start.mp4", {**BASE, "num_frames": 30, "gop": 8, "start_pts": 45}),
    "start_pts_mkv": Clip("start.mkv", {**BASE, "num_frames": 30, "gop": 8, "start_pts": 45}),
    "mkv": Clip("plain.mkv", {**BASE, "num_frames": 45, "gop": 9}),
    "mpegts": Clip("stream.ts", {**BASE, "num_frames": 45, "gop": 9}),
    "faststart_mp4": Clip("faststart.mp4", {**BASE, "gop": 10, "container_options": {"movflags": "faststart"}}),
    "hevc": Clip("hevc.mkv", {**BASE, "num_frames": 30, "gop": 8, "codec": "libx265"}),
    "vp9_webm": Clip("vp9.webm", {**BASE, "num_frames": 30, "gop": 8, "codec": "libvpx-vp9"}),
    "portrait": Clip("portrait.mp4", {**BASE, "width": 64, "height": 112, "num_frames": 24, "gop": 6}),
    # MPEG-PS flags some P-frames as keyframes and its parser resumes one picture off after a seek.
    "mpeg2_ps": Clip("mpeg2.mpg", {**BASE, "num_frames": 30, "gop": 8, "codec": "mpeg2video"}),
    # AVI has no presentation timestamps; FFmpeg invents them in decode order, wrong once B-frames reorder.
    "avi_bframes": Clip("bframes.avi", {**BASE, "num_frames": 30, "gop": 8}),
    "raw_h264_no_timestamps": Clip("raw.h264", {**BASE, "num_frames": 30, "gop": 8, "container_format": "h264"}),
    # A copy trimmed without re-encoding: the GOP's first frames stay in the file behind an edit list.
    "trimmed_edit_list": Clip("trimmed.mp4", {**BASE, "num_frames": 40, "gop": 10}, hidden=5),
}
SEQUENTIAL_ONLY = ("avi_bframes", "raw_h264_no_timestamps")
SIZES = (None, 48)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("video_io_clips")


_made: dict[str, Path] = {}
_decoded: dict[tuple[str, int | None], list[np.ndarray]] = {}


def clip_path(name: str, clip_dir: Path) -> Path:
    if name not in _made:
        clip = CLIPS[name]
        if clip.hidden:
            source = make_clip(clip_dir / f"untrimmed_{clip.filename}", **clip.kwargs)
            _made[name] = hide_leading_frames(source, clip_dir / clip.filename, clip.hidden)
        else:
            _made[name] = make_clip(clip_dir / clip.filename, **clip.kwargs)
    return _made[name]


def expected_frames(name: str, clip_dir: Path, size: int | None) -> list[np.ndarray]:
    """Every frame of a plain sequential decode, as displayed, scaled and cropped like CLIP when ``size``."""
    key = (name, size)
    if key not in _decoded:
        path = clip_path(name, clip_dir)
        clip = CLIPS[name]
        k = -clip.rotation // 90  # np.rot90 turns counter-clockwise; the clip's rotation is clockwise
        if size is None:
            frames = [np.rot90(f, k) for f in decode_all_rgb(path)]
        else:
            coded_w, coded_h = clip.kwargs["width"], clip.kwargs["height"]
            shown_h, shown_w = (coded_w, coded_h) if clip.rotation in (90, 270) else (coded_h, coded_w)
            new_h, new_w = get_resize_output_image_size(
                np.zeros((shown_h, shown_w, 3)), size, default_to_square=False, input_data_format="channels_last"
            )
            scale_w, scale_h = (new_h, new_w) if clip.rotation in (90, 270) else (new_w, new_h)
            top, left = (new_h - size) // 2, (new_w - size) // 2
            frames = [
                np.rot90(f, k)[top : top + size, left : left + size]
                for f in decode_all_rgb(path, width=scale_w, height=scale_h, interpolation="BICUBIC")
            ]
        _decoded[key] = frames
    return _decoded[key]


# ----------------------------------------------------------------------------------------------------
# Exactness


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"size={s}")
@pytest.mark.parametrize("name", list(CLIPS))
def test_frames_match_sequential_decode(name: str, size: int | None, clip_dir: Path) -> None:
    path = clip_path(name, clip_dir)
    reference = expected_frames(name, clip_dir, size)
    for num_frames in (8, 3, 16):
        frames = read_video_frames(path, num_frames=num_frames, size=size)
        indices = sample_frame_indices(len(reference), num_frames)
        expected = np.stack([reference[i] for i in indices])
        assert frames.dtype == np.uint8 and frames.flags.c_contiguous
        assert frames.shape == expected.shape
        np.testing.assert_array_equal(frames, expected, err_msg=f"{name} num_frames={num_frames} size={size}")


@pytest.mark.parametrize("name", [n for n in CLIPS if not CLIPS[n].rotation])
def test_frame_numbers_follow_the_sampling_rule(name: str, clip_dir: Path) -> None:
    path = clip_path(name, clip_dir)
    frames = read_video_frames(path, num_frames=8)
    assert [frame_number(f) for f in frames] == CLIPS[name].numbers(8)


@pytest.mark.parametrize("name", ["normal", "keyframe_every_6", "bframes_gop5", "vfr", "faststart_mp4", "10bit"])
def test_pixel_identical_to_transformers_loader(name: str, clip_dir: Path) -> None:
    path = clip_path(name, clip_dir)
    theirs, _ = load_video(str(path), num_frames=8, backend="pyav")
    np.testing.assert_array_equal(read_video_frames(path, num_frames=8), theirs)


@pytest.mark.parametrize("name", [n for n in CLIPS if n not in SEQUENTIAL_ONLY])
def test_files_with_timestamps_are_read_by_seeking(name: str, clip_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    # The sequential fallback is exact too, but decodes every frame twice; ordinary files must not need it.
    path = clip_path(name, clip_dir)
    with caplog.at_level(logging.DEBUG, logger="processing.video_io"):
        read_video_frames(path, num_frames=16, size=32)
    assert "sequentially" not in caplog.text


@pytest.mark.parametrize("name", SEQUENTIAL_ONLY)
def test_files_without_usable_timestamps_are_counted(
    name: str, clip_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = clip_path(name, clip_dir)
    with caplog.at_level(logging.DEBUG, logger="processing.video_io"):
        frames = read_video_frames(path, num_frames=8)
    assert "sequentially" in caplog.text
    assert [frame_number(f) for f in frames] == CLIPS[name].numbers(8)
    assert probe_video(path).num_frames == 30


@pytest.mark.parametrize("name", ["keyframe_every_6", "bframes_gop5", "mpegts", "vfr_mkv"])
def test_thread_counts_give_identical_frames(name: str, clip_dir: Path) -> None:
    path = clip_path(name, clip_dir)
    one = read_video_frames(path, num_frames=12, threads=1)
    for threads in (2, 5):
        np.testing.assert_array_equal(read_video_frames(path, num_frames=12, threads=threads), one)
    with pytest.raises(ValueError):
        read_video_frames(path, threads=0)


def test_scaled_frames_are_close_to_clip_preprocessing(clip_dir: Path) -> None:
    """swscale's bicubic differs from torchvision's by rounding, not by geometry."""
    import torch
    from transformers import CLIPImageProcessor

    path = clip_path("keyframe_every_6", clip_dir)
    processor = CLIPImageProcessor(size={"shortest_edge": 48}, crop_size={"height": 48, "width": 48})
    full = read_video_frames(path, num_frames=4)
    pixels = processor(images=list(full), do_normalize=False, do_rescale=False, return_tensors="pt")["pixel_values"]
    theirs = pixels.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    ours = read_video_frames(path, num_frames=4, size=48)
    assert ours.shape == theirs.shape == (4, 48, 48, 3)
    assert np.abs(ours.astype(int) - theirs.astype(int)).mean() < 4.0


# ----------------------------------------------------------------------------------------------------
# Sampling rule, short clips, metadata


@pytest.mark.parametrize("num_frames", [1, 2, 3, 7, 8, 16, 32])
@pytest.mark.parametrize("total", [1, 5, 8, 9, 31, 250, 901, 10_007])
def test_indices_equal_transformers_default_rule(total: int, num_frames: int) -> None:
    ours = sample_frame_indices(total, num_frames)
    expected = np.arange(num_frames) * total // num_frames
    if num_frames <= total:
        metadata = VideoMetadata(total_num_frames=total, fps=30.0)
        expected = default_sample_indices_fn(metadata, num_frames=num_frames)
    else:  # transformers raises here; kvcap keeps the rule and repeats frames
        with pytest.raises(ValueError):
            default_sample_indices_fn(VideoMetadata(total_num_frames=total, fps=30.0), num_frames=num_frames)
    assert ours.shape == (num_frames,)
    np.testing.assert_array_equal(ours, expected)
    assert ours.min() >= 0 and ours.max() < total and np.all(np.diff(ours) >= 0)


def test_sample_frame_indices_rejects_empty_requests() -> None:
    with pytest.raises(ValueError):
        sample_frame_indices(0, 8)
    with pytest.raises(ValueError):
        sample_frame_indices(10, 0)


def test_short_clip_repeats_frames_to_fill_num_frames(clip_dir: Path) -> None:
    frames = read_video_frames(clip_path("short_5_frames", clip_dir), num_frames=8)
    assert frames.shape == (8, 64, 96, 3)
    assert [frame_number(f) for f in frames] == [0, 0, 1, 1, 2, 3, 3, 4]
    single = read_video_frames(clip_path("single_frame", clip_dir), num_frames=8, size=32)
    assert single.shape == (8, 32, 32, 3) and all(np.array_equal(f, single[0]) for f in single)


def _tkhd_matrix(path: Path) -> tuple[int, ...]:
    data = path.read_bytes()
    box = data.find(b"tkhd")
    # version-0 tkhd: the 3x3 matrix starts 40 bytes after the box's version/flags word
    return struct.unpack(">9i", data[box + 44 : box + 80])


def test_rotation_is_applied_clockwise_as_players_do(clip_dir: Path) -> None:
    path = clip_path("rotated_90", clip_dir)
    # The ISO-BMFF matrix a phone held upright writes: (a, b, c, d) = (0, 1, -1, 0), i.e. turn 90° clockwise.
    a, b, _, c, d, *_ = _tkhd_matrix(path)
    assert (a, b, c, d) == (0, 1 << 16, -(1 << 16), 0)
    info = probe_video(path)
    assert (info.rotation, info.width, info.height) == (90, 64, 96)
    frames = read_video_frames(path, num_frames=2)
    assert frames.shape == (2, 96, 64, 3)
    # The red marker drawn at the coded picture's top-left corner shows at the top-right once displayed.
    top_right, top_left = frames[0, 3, -4], frames[0, 3, 3]
    assert top_right[0] > 200 and top_right[1] < 60 and top_right[2] < 60
    assert not (top_left[0] > 200 and top_left[1] < 60)
    assert frame_number(np.rot90(frames[1], 1)) == 15


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("normal", {"num_frames": 40, "width": 96, "height": 64, "rotation": 0, "codec": "h264", "pix_fmt": "yuv420p"}),
        ("rotated_270", {"num_frames": 30, "width": 64, "height": 96, "rotation": 270}),
        ("rotated_180", {"width": 96, "height": 64, "rotation": 180}),
        ("rotated_90_mkv", {"num_frames": 30, "width": 64, "height": 96, "rotation": 90}),
        ("mkv", {"num_frames": 45, "codec": "h264"}),
        ("odd_size_97x61", {"width": 97, "height": 61, "pix_fmt": "yuv444p"}),
        ("10bit", {"pix_fmt": "yuv420p10le"}),
        ("vp9_webm", {"num_frames": 30, "codec": "vp9"}),
    ],
)
def test_probe_video_reports_the_stream(name: str, expected: dict[str, Any], clip_dir: Path) -> None:
    info = probe_video(clip_path(name, clip_dir))
    assert isinstance(info, VideoInfo)
    for key, value in expected.items():
        assert getattr(info, key) == value, key
    assert info.path.endswith(CLIPS[name].filename)


def test_trimmed_copy_counts_only_the_frames_shown(clip_dir: Path) -> None:
    path = clip_path("trimmed_edit_list", clip_dir)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        packets = [p for p in container.demux(stream) if p.size]
    assert len(packets) == 40 and sum(p.is_discard for p in packets) == 5
    assert probe_video(path).num_frames == 35
    assert frame_number(read_video_frames(path, num_frames=1)[0]) == 5


def test_frame_count_comes_from_timestamps_not_headers(clip_dir: Path) -> None:
    path = clip_path("mkv", clip_dir)
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames == 0  # what transformers' loader would count
    assert probe_video(path).num_frames == 45


def test_variable_frame_rate_timing(clip_dir: Path) -> None:
    path = clip_path("vfr", clip_dir)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        pts = sorted(p.pts for p in container.demux(stream) if p.size)
        gaps = set(np.diff(pts).tolist())
        start, time_base = pts[0], stream.time_base
    assert len(gaps) > 2, "the clip should really have irregular frame durations"
    info = probe_video(path)
    assert info.num_frames == 45
    # 45 frames of 0.5x to 2x a 1/30 s period last far from 45/30 s; fps * time would pick wrong frames.
    span = float((pts[-1] - start) * time_base)
    assert span < info.duration_s <= span + 2 / 30  # plus the last frame's duration
    assert abs(info.duration_s - 45 / 30) > 0.1
    assert info.average_fps == pytest.approx(45 / info.duration_s)


@pytest.mark.parametrize("name", ["start_pts_mp4", "start_pts_mkv", "mpegts"])
def test_clips_whose_first_timestamp_is_not_zero(name: str, clip_dir: Path) -> None:
    path = clip_path(name, clip_dir)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert min(p.pts for p in container.demux(stream) if p.size) > 0
    frames = read_video_frames(path, num_frames=8)
    assert [frame_number(f) for f in frames] == CLIPS[name].numbers(8)


def test_argument_validation(clip_dir: Path) -> None:
    path = clip_path("normal", clip_dir)
    with pytest.raises(ValueError):
        read_video_frames(path, num_frames=0)
    with pytest.raises(ValueError):
        read_video_frames(path, num_frames=8, size=0)


# ----------------------------------------------------------------------------------------------------
# Bad input


def _bad_file(kind: str, clip_dir: Path, tmp_path: Path) -> Path:
    if kind == "missing":
        return tmp_path / "does_not_exist.mp4"
    if kind == "directory":
        (tmp_path / "folder.mp4").mkdir()
        return tmp_path / "folder.mp4"
    if kind == "zero_bytes":
        return make_empty_file(tmp_path / "empty.mp4")
    if kind == "text_file":
        return make_text_file(tmp_path / "notes.mp4")
    if kind == "json_renamed_mp4":
        return make_json_as_video(tmp_path / "label.mp4")
    if kind == "audio_only":
        return make_audio_only(tmp_path / "voice.m4a")
    if kind == "truncated_mp4":  # index (moov) written last, as PyAV and most encoders do
        return truncate_copy(clip_path("keyframe_every_6", clip_dir), tmp_path / "cut.mp4", 0.6)
    if kind == "truncated_mp4_index_at_end_kept_90pct":
        return truncate_copy(clip_path("keyframe_every_6", clip_dir), tmp_path / "cut90.mp4", 0.98)
    if kind == "truncated_faststart_mp4":
        return truncate_copy(clip_path("faststart_mp4", clip_dir), tmp_path / "cut_fast.mp4", 0.6)
    if kind == "truncated_mkv":
        return truncate_copy(clip_path("mkv", clip_dir), tmp_path / "cut.mkv", 0.5)
    if kind == "corrupt_first_keyframe":
        return corrupt_first_keyframe(clip_path("keyframe_every_6", clip_dir), tmp_path / "damaged.mp4")
    if kind in ("png_renamed_mp4", "jpeg_renamed_mp4"):
        from PIL import Image

        path = tmp_path / f"{kind.split('_')[0]}.mp4"
        Image.new("RGB", (64, 48), (200, 30, 30)).save(path, format=kind.split("_")[0].upper())
        return path
    if kind == "named_pipe":
        os.mkfifo(tmp_path / "pipe.mp4")  # opening it for reading would block until a writer comes
        return tmp_path / "pipe.mp4"
    if kind == "symlink_loop":
        (tmp_path / "loop_a.mp4").symlink_to(tmp_path / "loop_b.mp4")
        (tmp_path / "loop_b.mp4").symlink_to(tmp_path / "loop_a.mp4")
        return tmp_path / "loop_a.mp4"
    if kind == "broken_symlink":
        (tmp_path / "gone.mp4").symlink_to(tmp_path / "nowhere.mp4")
        return tmp_path / "gone.mp4"
    if kind == "corrupt_header":
        source = clip_path("faststart_mp4", clip_dir)
        return corrupt_copy(source, tmp_path / "damaged_header.mp4", start_byte=0, length=256)
    raise ValueError(kind)


BAD_KINDS = [
    "missing",
    "directory",
    "zero_bytes",
    "text_file",
    "json_renamed_mp4",
    "audio_only",
    "truncated_mp4",
    "truncated_mp4_index_at_end_kept_90pct",
    "truncated_faststart_mp4",
    "truncated_mkv",
    "corrupt_first_keyframe",
    "corrupt_header",
    "png_renamed_mp4",
    "jpeg_renamed_mp4",
    "named_pipe",
    "symlink_loop",
    "broken_symlink",
]


@pytest.mark.parametrize("kind", BAD_KINDS)
@pytest.mark.parametrize("reader", ["read_video_frames", "probe_video"])
def test_bad_input_raises_video_read_error(kind: str, reader: str, clip_dir: Path, tmp_path: Path) -> None:
    path = _bad_file(kind, clip_dir, tmp_path)
    if reader == "probe_video" and kind == "corrupt_first_keyframe":
        # probe_video only demuxes: damage inside a frame surfaces when the frame is decoded.
        assert probe_video(path).num_frames == CLIPS["keyframe_every_6"].kwargs["num_frames"]
        reader = "read_video_frames"
    with pytest.raises(VideoReadError) as caught:
        if reader == "read_video_frames":
            read_video_frames(path, num_frames=8)
        else:
            probe_video(path)
    error = caught.value
    assert path.name in str(error)
    assert error.path == str(path) and error.reason and error.reason in str(error)
    assert isinstance(error, RuntimeError)
    copy = pickle.loads(pickle.dumps(error))  # crosses process boundaries, e.g. datasets.map(num_proc=...)
    assert (copy.path, copy.reason, str(copy)) == (error.path, error.reason, str(error))


def test_bad_input_reasons_say_what_is_wrong(clip_dir: Path, tmp_path: Path) -> None:
    reasons = {}
    kinds = ["missing", "zero_bytes", "text_file", "audio_only", "truncated_faststart_mp4", "truncated_mkv"]
    kinds += ["png_renamed_mp4", "jpeg_renamed_mp4", "named_pipe", "symlink_loop", "broken_symlink", "directory"]
    for kind in kinds:
        with pytest.raises(VideoReadError) as caught:
            read_video_frames(_bad_file(kind, clip_dir, tmp_path), num_frames=4)
        reasons[kind] = caught.value.reason
    assert reasons["png_renamed_mp4"] == "a still image (png), not a video"
    assert reasons["jpeg_renamed_mp4"] == "a still image (jpeg), not a video"
    assert reasons["named_pipe"] == "not a regular file (a named pipe)"
    assert reasons["directory"] == "not a regular file (a directory)"
    assert reasons["symlink_loop"] == "symbolic link loop"
    assert reasons["broken_symlink"].startswith("broken symbolic link")
    assert "not found" in reasons["missing"]
    assert "0 bytes" in reasons["zero_bytes"]
    assert "not a readable media file" in reasons["text_file"]
    assert "no video stream" in reasons["audio_only"]
    assert "truncated" in reasons["truncated_faststart_mp4"]
    assert "truncated" in reasons["truncated_mkv"]
