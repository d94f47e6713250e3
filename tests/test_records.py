"""kvcap.evaluation.records: a predictions file is read whole or refused naming its file and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvcap.evaluation.records import EvaluationInputError, load_prediction_records

GOOD = {"video_id": "a", "prediction": "빨간색 원이 보입니다.", "reference": "빨간색 원이 움직입니다."}


def _write(tmp_path: Path, lines: list[str], encoding: str = "utf-8") -> Path:
    path = tmp_path / "predictions.jsonl"
    path.write_bytes(("\n".join(lines) + "\n").encode(encoding))
    return path


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ("[1, 2]", "a line must be a JSON object, got list"),
        ("3", "a line must be a JSON object, got int"),
        ('{"video_id": "b", "prediction": 7, "reference": "r"}', "prediction must be a string or null, got int"),
        ('{"video_id": "b", "prediction": "p", "reference": 1.5}', "reference must be a string, got float"),
        ('{"video_id": 2, "prediction": "p", "reference": "r"}', "video_id must be a string, got int"),
        ('{"video_id": "b", "reference": "r"}', "missing prediction"),
        ('{"video_id": "b", "prediction": "p"', "not JSON"),
    ],
)
def test_a_bad_line_is_refused_with_its_file_and_line_number(tmp_path: Path, bad_line: str, message: str):
    path = _write(tmp_path, [json.dumps(GOOD, ensure_ascii=False), bad_line])
    with pytest.raises(EvaluationInputError) as raised:
        load_prediction_records(str(path))
    assert str(raised.value).startswith(f"{path}:2: ") and message in str(raised.value)


def test_a_null_prediction_is_kept_as_a_clip_without_a_caption(tmp_path: Path):
    path = _write(tmp_path, [json.dumps(GOOD), json.dumps({**GOOD, "video_id": "b", "prediction": None})])
    first, second = load_prediction_records(str(path))
    assert first.error is None and second.prediction is None
    assert second.error == f"no prediction ({path}:2: null)"


def test_a_cp949_file_is_read_and_an_undecodable_one_named(tmp_path: Path, caplog):
    path = _write(tmp_path, [json.dumps(GOOD, ensure_ascii=False)], encoding="cp949")
    with caplog.at_level("WARNING"):
        (record,) = load_prediction_records(str(path))
    assert record.prediction == GOOD["prediction"] and "read as CP949" in caplog.text
    broken = tmp_path / "broken.jsonl"
    broken.write_bytes(json.dumps(GOOD).encode() + b"\n" + b'{"video_id": "\xff\xfe\xff"}\n')
    with pytest.raises(EvaluationInputError, match=r"broken\.jsonl:2: neither UTF-8 nor CP949"):
        load_prediction_records(str(broken))
