"""report.html: every clip's facts marked under its caption, and the whole table on a 1400 px screen (Chromium)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from kvcap.demo.corpus import generate_corpus
from kvcap.evaluation import ScoringArguments, evaluate_records, load_split_records
from kvcap.evaluation.report import render_report
from kvcap.evaluation.run import add_report_thumbnails, write_outputs

from .conftest import CHROMIUM_ARGS, needs

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    """A real evaluation's report: demo clips, each captioned with another clip's long reference."""
    root = tmp_path_factory.mktemp("corpus")
    generate_corpus(root, num_train=2, num_val=6, seed=5, workers=1)
    records, _ = load_split_records(str(root), "val")
    for record, other in zip(records, records[1:] + records[:1], strict=True):
        record.prediction = other.reference + " " + other.reference  # long captions, as AI-Hub's are
        record.num_tokens, record.finished = 300, True
    add_report_thumbnails(records, height=60)
    metrics = evaluate_records(records, ScoringArguments())
    out = tmp_path_factory.mktemp("eval")
    return write_outputs(out, records, metrics, title="kvcap · test")["report.html"]


class _FactsParser(HTMLParser):
    """The class of every fact mark, per clip row."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        classes = (dict(attrs).get("class") or "").split()
        if tag == "tr" and "clip" in classes:
            self.rows.append([])
        elif tag == "span" and "fact" in classes and self.rows:
            self.rows[-1].append(next(c for c in classes if c != "fact"))


def test_each_caption_is_followed_by_its_facts_stated_missed_and_wrong(report: Path) -> None:
    parser = _FactsParser()
    parser.feed(report.read_text(encoding="utf-8"))
    lines = (report.parent / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines]
    assert len(parser.rows) == len(rows) == 6
    for marks, row in zip(parser.rows, rows, strict=True):
        facts = row["scores"]["attribute_facts"]
        expected = ["wrong" if f["kind"] == "wrong_object" else "hit" if f["named"] else "miss" for f in facts]
        assert marks == expected
    # Each caption is another clip's, so some of its objects are wrong for this clip, and that is marked.
    assert any("wrong" in marks for marks in parser.rows)
    assert any("miss" in marks for marks in parser.rows)


def test_render_report_marks_nothing_without_labelled_facts() -> None:
    from kvcap.evaluation.records import ClipRecord

    records = [ClipRecord("a", None, "자연", "하늘이 보입니다.", prediction="하늘이 맑습니다.")]
    metrics = evaluate_records(records, ScoringArguments())
    html = render_report(metrics, [{"video_id": "a", "prediction": "x", "reference": "y", "frames": []}])
    assert "class='fact" not in html and "labelled facts" not in html


LAYOUT_PROBE = """
<script>window.addEventListener('load',()=>{const table=document.getElementById('clips');
document.body.setAttribute('data-layout',JSON.stringify({right:table.getBoundingClientRect().right,
viewport:document.documentElement.clientWidth,page:document.documentElement.scrollWidth}));});</script>
"""


def test_the_clip_table_fits_a_1400_pixel_window_in_chromium(report: Path, tmp_path: Path) -> None:
    needs(CHROMIUM is not None, "Debian's chromium (apt-get install chromium)")
    probed = tmp_path / "probed.html"
    probed.write_text(report.read_text(encoding="utf-8").replace("</body>", LAYOUT_PROBE + "</body>"), "utf-8")
    command = [
        CHROMIUM,
        "--headless",
        *CHROMIUM_ARGS,
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1400,900",
        "--virtual-time-budget=5000",
        "--dump-dom",
        probed.as_uri(),
    ]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=120)
    found = re.search(r'data-layout="([^"]+)"', completed.stdout)
    assert found, completed.stderr[-2000:]
    layout = json.loads(found.group(1).replace("&quot;", '"'))
    # Every column, the scores at the right included, is on screen: no sideways scrolling.
    assert layout["right"] <= layout["viewport"] and layout["page"] <= layout["viewport"], layout
