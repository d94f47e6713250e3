"""The CPU thread policy: set when asked, left to torch otherwise, and always said."""

from __future__ import annotations

import pytest
import torch

from kvcap.cpu_threads import apply_cpu_threads, bf16_is_accelerated_on_cpu, cpu_bf16_warning
from kvcap.training.arguments import parse_arguments


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_a_requested_count_is_set_and_named(restore_threads):
    line = apply_cpu_threads(1)
    assert torch.get_num_threads() == 1
    assert line.startswith("CPU threads: 1 (cpu_threads 1;")


def test_without_a_request_torch_keeps_its_count_and_the_line_says_where_it_came_from(restore_threads, monkeypatch):
    torch.set_num_threads(2)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    line = apply_cpu_threads(None)
    assert torch.get_num_threads() == 2 and "CPU threads: 2 (torch's default" in line
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert "(OMP_NUM_THREADS=2;" in apply_cpu_threads(None)
    with pytest.raises(ValueError, match="at least 1"):
        apply_cpu_threads(0)


def test_the_demo_preset_runs_on_two_threads_and_the_real_presets_leave_it_to_torch(capsys):
    assert parse_arguments(["demo"])[2].cpu_threads == 2
    assert parse_arguments(["mlp_2l", "--data_dir", "/d", "--bf16", "false"])[2].cpu_threads is None
    with pytest.raises(SystemExit):
        parse_arguments(["demo", "--cpu_threads", "0"])
    assert "--cpu_threads must be at least 1" in capsys.readouterr().err


def test_bf16_on_a_cpu_without_accelerated_bf16_products_is_warned_of():
    # Only a bf16 run on the CPU can hit the slow path; this machine's own answer decides the third case.
    assert cpu_bf16_warning(bf16=False, on_cpu=True) is None
    assert cpu_bf16_warning(bf16=True, on_cpu=False) is None
    if torch.backends.cpu.get_cpu_capability() in ("DEFAULT", "AVX2"):
        assert not bf16_is_accelerated_on_cpu(), "without AVX-512 there are no oneDNN bf16 kernels"
    warning = cpu_bf16_warning(bf16=True, on_cpu=True)
    assert (warning is None) == bf16_is_accelerated_on_cpu()
    if warning is not None:
        assert "--bf16 false --dtype float32" in warning
