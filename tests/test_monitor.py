"""kvcap.training.monitor: the diversity monitor's metrics on every rank, its log lines on the main one only."""

from __future__ import annotations

import logging
import math
from types import SimpleNamespace

import pytest
from transformers import TrainerControl, TrainerState

from kvcap.training.monitor import DiversityMonitorCallback
from kvcap.training.run import kvcap_log_level

COLLAPSED = ["같은 캡션입니다."] * 3 + ["다른 캡션입니다."]


def _evaluate(monitor: DiversityMonitorCallback, main: bool) -> dict:
    state = TrainerState(is_world_process_zero=main, global_step=7)
    metrics: dict = {}
    monitor.on_evaluate(SimpleNamespace(), state, TrainerControl(), metrics=metrics, model=object())
    return metrics


@pytest.mark.parametrize("main", [True, False])
def test_every_rank_measures_but_only_the_main_one_logs(main, caplog):
    monitor = DiversityMonitorCallback(videos=["a", "b", "c", "d"], caption_fn=lambda model, videos: COLLAPSED)
    with caplog.at_level(logging.INFO, logger="kvcap.training.monitor"):
        metrics = _evaluate(monitor, main)
    assert metrics["eval_unique_ratio"] == 0.5 and len(monitor.history) == 1
    assert ("Caption diversity: 2/4" in caplog.text) is main


def test_a_failed_check_is_logged_and_leaves_nan_for_the_best_checkpoint(caplog):
    def fails(model, videos):
        raise RuntimeError("out of memory")

    monitor = DiversityMonitorCallback(videos=["a"], caption_fn=fails)
    with caplog.at_level(logging.WARNING, logger="kvcap.training.monitor"):
        metrics = _evaluate(monitor, main=True)
    assert "Diversity check skipped at step 7" in caplog.text and "out of memory" in caplog.text
    assert math.isnan(metrics["eval_unique_ratio"]) and monitor.history == []


def test_kvcap_logs_at_log_level_on_the_main_process_and_log_level_replica_elsewhere():
    main = SimpleNamespace(should_log=True, log_level="passive", log_level_replica="warning")
    assert kvcap_log_level(main) == logging.INFO
    assert kvcap_log_level(SimpleNamespace(**{**vars(main), "log_level": "error"})) == logging.ERROR
    replica = SimpleNamespace(should_log=False, log_level="debug", log_level_replica="warning")
    assert kvcap_log_level(replica) == logging.WARNING
    assert kvcap_log_level(SimpleNamespace(**{**vars(replica), "log_level_replica": "passive"})) == logging.WARNING
