"""The CPU thread policy of a run: how many threads torch uses, chosen by the user or torch, and said in the log.

The count matters twice on CPU: oversubscribed cores (another job, or several processes each taking every core) make
a run many times slower, and the order of floating-point reductions follows the thread count, so a run's figures
are exact only at the count they were made with.
"""

from __future__ import annotations

import os

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
