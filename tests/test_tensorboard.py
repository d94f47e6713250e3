"""TensorBoard gets the monitor's captions at every evaluation and the final evaluation's figures and captions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import train_hf
from kvcap.demo.corpus import generate_corpus
from kvcap.training.tensorboard import captions_markdown

from .conftest import run_argv

pytestmark = pytest.mark.slow


def test_captions_markdown_is_one_row_per_clip_with_pipes_escaped():
    rows = [
        {"video_id": "a", "prediction": "빨간색 | 원\n입니다", "reference": "r"},
        {"video_id": "b", "prediction": None},
    ]
    table = captions_markdown(rows)
    assert table.splitlines() == [
        "| clip | caption | reference |",
        "|---|---|---|",
        "| a | 빨간색 \\| 원 입니다 | r |",
        "| b |  |  |",
    ]
    assert captions_markdown([{"video_id": "a", "prediction": "x"}]).splitlines()[0] == "| clip | caption |"


def _events(log_root: Path) -> EventAccumulator:
    (folder,) = {path.parent for path in log_root.rglob("events.out.tfevents.*")}
    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def _text(accumulator: EventAccumulator, tag: str) -> list[tuple[int, str]]:
    events = accumulator.Tensors(f"{tag}/text_summary")  # how add_text stores its text
    return [(event.step, event.tensor_proto.string_val[0].decode()) for event in events]


def test_a_run_reporting_to_tensorboard_logs_captions_and_final_figures(tiny_backbones, tmp_path, capsys):
    corpus = tmp_path / "corpus"
    generate_corpus(corpus, num_train=8, num_val=4, seed=0)
    output_dir = tmp_path / "run"
    argv = run_argv(
        tiny_backbones,
        corpus,
        output_dir,
        report_to="tensorboard",
        eval_strategy="steps",
        eval_steps=2,
        final_eval=True,
        per_device_train_batch_size=4,
    )
    metrics = train_hf.main(argv)
    # --disable_tqdm (as run_argv passes it) reaches the feature cache's bar too, as it does the Trainer's.
    assert "kvcap vision features" not in capsys.readouterr().err
    events = _events(output_dir)
    steps = sorted({event.step for event in events.Scalars("train/loss")})
    final_step = max(steps)

    monitor = _text(events, "eval/monitor_captions")
    assert [step for step, _ in monitor] == [2, 4]  # 2 optimizer steps per epoch, an evaluation every 2 steps
    assert all(text.count("\n") == 2 + 1 for _, text in monitor)  # header, rule, the two monitored clips

    final = {tag: events.Scalars(tag)[-1] for tag in events.Tags()["scalars"] if tag.startswith("final/")}
    assert final["final/meteor"].step == final_step
    assert final["final/meteor"].value == pytest.approx(metrics["overall"]["meteor"])
    assert final["final/num_clips"].value == 4 and "final/recall_colour" in final
    ((step, table),) = _text(events, "final/captions")
    rows = [json.loads(line) for line in (output_dir / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert step == final_step and len(table.splitlines()) == 2 + len(rows)
    assert " ".join(rows[0]["prediction"].split()) in table and rows[0]["reference"] in table
