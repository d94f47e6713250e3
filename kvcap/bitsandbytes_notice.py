"""bitsandbytes' CPU-kernel warning, said only by a run that uses 4-bit on CPU.

peft imports bitsandbytes as it is imported, and bitsandbytes then warns (on CPUs with AVX512-BF16) that its fast
CPU 4-bit kernel needs the ``kernels`` package. That warning opened every kvcap run, 4-bit or not, GPU or not.
:func:`hold_kernel_warning` holds it back; :func:`note_cpu_4bit` says what it means, once, where 4-bit runs on CPU.
"""

from __future__ import annotations

import logging

BITSANDBYTES_CPU_LOGGER = "bitsandbytes.backends.cpu.ops"
KERNEL_WARNING_PREFIX = "Failed to load CPU gemm_4bit_forward"

_held: list[str] = []


class _HoldKernelWarning(logging.Filter):
    """Keeps bitsandbytes' kernel warning out of the log; its other records pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith(KERNEL_WARNING_PREFIX):
            _held.append(message)
            return False
        return True


def hold_kernel_warning() -> None:
    """Install the filter (once) on bitsandbytes' CPU-backend logger, before anything imports bitsandbytes."""
    logger = logging.getLogger(BITSANDBYTES_CPU_LOGGER)
    if not any(isinstance(existing, _HoldKernelWarning) for existing in logger.filters):
        logger.addFilter(_HoldKernelWarning())


def note_cpu_4bit(logger: logging.Logger) -> None:
    """Say, once, that 4-bit on CPU runs bitsandbytes' slower fallback kernel, when bitsandbytes warned of it."""
    if _held:
        logger.warning(
            "4-bit on CPU runs bitsandbytes' fallback kernel, which is slower: `pip install kernels` for the fast "
            f"one (bitsandbytes said: {_held[-1]})"
        )
        _held.clear()
