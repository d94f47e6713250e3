"""The CPU thread policy of a run: how many threads torch uses, chosen by the user or torch, and said in the log.

The count matters twice on CPU: oversubscribed cores (another job, or several processes each taking every core) make
a run many times slower, and the order of floating-point reductions follows the thread count, so a run's figures
are exact only at the count they were made with.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch


def check_cpu_threads(requested: int | None) -> None:
    """Refuse a thread count below 1 (``None``, torch's choice, passes)."""
    if requested is not None and requested < 1:
        raise ValueError(f"--cpu_threads must be at least 1, got {requested}.")


def apply_cpu_threads(requested: int | None) -> str:
    """Set torch's intra-op thread count to ``requested`` (``None`` keeps torch's choice); returns the policy line."""
    check_cpu_threads(requested)
    if requested is not None:
        torch.set_num_threads(requested)
        source = f"cpu_threads {requested}"
    elif os.environ.get("OMP_NUM_THREADS"):
        source = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}"
    else:
        source = "torch's default, one per physical core; --cpu_threads N sets it"
    return (
        f"CPU threads: {torch.get_num_threads()} ({source}; {os.cpu_count()} logical CPUs). CPU results are exact "
        "for this count only."
    )


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block at ``count`` intra-op threads (no more than the machine's CPUs), then restore the caller's."""
    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, min(count, os.cpu_count() or 1)))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def bf16_is_accelerated_on_cpu() -> bool:
    """Whether this CPU multiplies bf16 matrices in oneDNN's kernels (AVX-512 BF16 or AMX).

    Elsewhere (an AVX2-only CPU) torch falls back to a scalar loop: a 512 × 4096 by 4096 × 4096 product measured
    over 100 times slower than in float32, so a bf16 run on such a CPU does not finish in any useful time.
    """
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def cpu_bf16_warning(bf16: bool, on_cpu: bool) -> str | None:
    """A warning for a bf16 run on a CPU without accelerated bf16 matrix products, else None."""
    if not (bf16 and on_cpu) or bf16_is_accelerated_on_cpu():
        return None
    return (
        "bf16 on this CPU (no AVX-512 BF16 or AMX) runs matrix products over 100 times slower than float32: "
        "pass --bf16 false --dtype float32 to train here."
    )
