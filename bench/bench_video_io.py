"""Benchmark kvcap's frame sampler against transformers' PyAV loader and a full sequential decode.

Generates (once, cached in ``--clip-dir``) camera-like H.264 clips encoded with frame threading (one slice
per frame, as cameras and x264 write them): 1080p30 30 s with a keyframe every second, 1080p30 30 s with
x264's default interval (250), and 720p30 10 s with the default interval. For each clip it times, in
interleaved runs in one process, ``read_video_frames(path, 8)`` (all CPUs, then ``threads=1``),
``read_video_frames(path, 8, size=336)``, ``transformers.video_utils.load_video(path, num_frames=8,
backend="pyav")``, a full decode of every frame with PyAV's defaults, and ``probe_video``. It reports
wall-clock medians with process CPU time beside them (the honest figure on a shared machine), and checks
that kvcap's frames are pixel-identical to transformers'.

Run from the repository root (encoding the clips takes about 3 minutes on 2 cores, timing all three about
3 more); on a shared machine, time one clip at a time (``--clips NAME``) while it is quiet, as
bench/results/video_io.md records::

    python bench/bench_video_io.py --runs 7 [--clips 1080p_30s_key1s] [--out table.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from kvcap.demo.video_clips import make_clip  # noqa: E402
from processing.video_io import probe_video, read_video_frames  # noqa: E402


@dataclass(frozen=True)
class ClipSpec:
    name: str
    width: int
    height: int
    seconds: int
    gop: int | None  # None: x264's default keyframe interval (250)

    @property
    def filename(self) -> str:
        return f"{self.name}.mp4"


CLIPS = (
    ClipSpec("1080p_30s_key1s", 1920, 1080, 30, 30),
    ClipSpec("1080p_30s_keydefault", 1920, 1080, 30, None),
    ClipSpec("720p_10s_keydefault", 1280, 720, 10, None),
)


def ensure_clip(spec: ClipSpec, clip_dir: Path) -> Path:
    path = clip_dir / spec.filename
    if path.exists() and path.stat().st_size > 0:
        return path
    partial = path.with_suffix(".partial.mp4")
    start = time.perf_counter()
    make_clip(
        partial,
        width=spec.width,
        height=spec.height,
        num_frames=spec.seconds * 30,
        fps=30,
        gop=spec.gop,
        pattern="natural",
        scenecut=True,  # x264's defaults, as a camera or phone encoder would behave
        frame_threads=True,
    )
    partial.rename(path)
    print(f"encoded {path.name} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return path


def load_transformers(path: Path, num_frames: int) -> np.ndarray:
    from transformers.video_utils import load_video

    video, _ = load_video(str(path), num_frames=num_frames, backend="pyav")
    return video


def full_decode(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def timed(
    timings: dict[str, list[tuple[float, float]]], key: str, fn: Callable[..., object], *args: object, **kwargs: object
) -> object:
    """Run ``fn(*args, **kwargs)`` once; append (wall ms, process CPU ms over all threads) to ``timings[key]``."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn(*args, **kwargs)
    timings.setdefault(key, []).append(((time.perf_counter() - wall) * 1000, (time.process_time() - cpu) * 1000))
    return result


def keyframe_interval(path: Path) -> str:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        keys = [p.pts for p in container.demux(stream) if p.size and p.is_keyframe]
    keys.sort()
    if len(keys) < 2:
        return f"{len(keys)} keyframe"
    gaps = np.diff(keys) * float(stream.time_base) * 30
    return f"{len(keys)} keys, median gap {np.median(gaps):.0f} fr"


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import transformers

    return (
        f"{cpu}, {os.cpu_count()} logical CPUs, Python {platform.python_version()}, PyAV {av.__version__} "
        f"(FFmpeg libavcodec {'.'.join(map(str, av.library_versions['libavcodec']))}), numpy {np.__version__}, "
        f"transformers {transformers.__version__}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clip-dir", type=Path, default=Path(tempfile.gettempdir()) / "kvcap_bench_clips")
    parser.add_argument("--runs", type=int, default=7, help="timed runs per method (median reported), at least 5")
    parser.add_argument("--num-frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=336)
    parser.add_argument("--clips", nargs="*", default=[c.name for c in CLIPS], help="subset of clip names")
    parser.add_argument("--out", type=Path, default=None, help="also write the Markdown table here")
    parser.add_argument("--prepare-only", action="store_true", help="encode the clips and stop")
    args = parser.parse_args()
    args.clip_dir.mkdir(parents=True, exist_ok=True)
    specs = [c for c in CLIPS if c.name in args.clips]
    if args.prepare_only:
        for spec in specs:
            ensure_clip(spec, args.clip_dir)
        return

    methods = {
        "kvcap": "kvcap",
        "kvcap_1t": "kvcap threads=1",
        "size": f"kvcap size={args.size}",
        "transformers": "transformers pyav",
        "full": "full decode",
        "probe": "probe_video",
    }
    rows = []
    for spec in specs:
        path = ensure_clip(spec, args.clip_dir)
        load_before = os.getloadavg()[0]
        info = probe_video(path)
        # Warm the page cache and the imports so the first timed run is not penalised.
        reference = load_transformers(path, args.num_frames)
        ours = read_video_frames(path, args.num_frames)
        identical = ours.shape == reference.shape and bool(np.array_equal(ours, reference))
        identical &= bool(np.array_equal(read_video_frames(path, args.num_frames, threads=1), reference))
        read_video_frames(path, args.num_frames, size=args.size)
        timings: dict[str, list[tuple[float, float]]] = {}
        for _ in range(args.runs):
            timed(timings, "kvcap", read_video_frames, path, args.num_frames)
            timed(timings, "kvcap_1t", read_video_frames, path, args.num_frames, threads=1)
            timed(timings, "size", read_video_frames, path, args.num_frames, size=args.size)
            timed(timings, "transformers", load_transformers, path, args.num_frames)
            timed(timings, "full", full_decode, path)
            timed(timings, "probe", probe_video, path)
        wall = {k: statistics.median(w for w, _ in v) for k, v in timings.items()}
        cpu = {k: statistics.median(c for _, c in v) for k, v in timings.items()}
        load = f"{load_before:.1f} → {os.getloadavg()[0]:.1f}"
        rows.append((spec, info, path, wall, cpu, identical, load))
        print(f"{spec.name}: " + ", ".join(f"{k} {v:.0f} ms" for k, v in wall.items()), file=sys.stderr)

    lines = [
        "| clip | keyframes | file | "
        + " | ".join(f"{label} (ms)" for label in methods.values())
        + f" | speed-up | speed-up threads=1 | speed-up size={args.size} | pixel-identical | load avg |",
        "|---|---|---|" + "---:|" * (len(methods) + 3) + "---|---|",
    ]
    for spec, info, path, wall, cpu, identical, load in rows:
        cells = " | ".join(f"{wall[k]:.0f} ({cpu[k]:.0f})" for k in methods)
        lines.append(
            f"| {spec.width}x{spec.height} {spec.seconds} s, {info.num_frames} fr | {keyframe_interval(path)} | "
            f"{os.path.getsize(path) / 2**20:.1f} MiB | {cells} | "
            f"{wall['transformers'] / wall['kvcap']:.1f}x | {wall['transformers'] / wall['kvcap_1t']:.1f}x | "
            f"{wall['transformers'] / wall['size']:.1f}x | {'yes' if identical else 'NO'} | {load} |"
        )
    table = "\n".join(lines)
    footer = (
        f"\nWall-clock median of {args.runs} interleaved runs per method, in ms; in brackets the process CPU time "
        "(all threads). Speed-ups are wall-clock ratios against transformers. Load avg: the 1-minute load average "
        f"when the clip's runs started and ended. Machine: {machine()}.\n"
    )
    print(table + "\n" + footer)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table + "\n" + footer, encoding="utf-8")


if __name__ == "__main__":
    main()
