"""bitsandbytes' CPU-kernel warning: held back at import, said once by a run that uses 4-bit on CPU."""

from __future__ import annotations

import logging
import subprocess
import sys

from kvcap.bitsandbytes_notice import BITSANDBYTES_CPU_LOGGER, KERNEL_WARNING_PREFIX, note_cpu_4bit

from .conftest import REPO_ROOT


def test_importing_kvcap_then_peft_prints_no_kernel_warning():
    completed = subprocess.run(
        [sys.executable, "-c", "import kvcap.training.run, peft, bitsandbytes"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert KERNEL_WARNING_PREFIX not in completed.stderr


def test_the_warning_is_held_and_said_once_where_4bit_runs_on_cpu(caplog):
    bitsandbytes_logger = logging.getLogger(BITSANDBYTES_CPU_LOGGER)
    with caplog.at_level(logging.WARNING):
        bitsandbytes_logger.warning(f"{KERNEL_WARNING_PREFIX} from kernels-community: No module named 'kernels'.")
        bitsandbytes_logger.warning("another bitsandbytes warning")
    assert [record.getMessage() for record in caplog.records] == ["another bitsandbytes warning"]
    caplog.clear()
    ours = logging.getLogger("kvcap.test")
    with caplog.at_level(logging.WARNING):
        note_cpu_4bit(ours)
        note_cpu_4bit(ours)
    (said,) = [record.getMessage() for record in caplog.records]
    assert "4-bit on CPU runs bitsandbytes' fallback kernel" in said and "No module named 'kernels'" in said
