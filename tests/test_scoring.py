"""kvcap.evaluation.scoring: a seed target passes only when its score is above the target and clearly above its
shuffled floor; how captions ended and which repeat a 4-gram, in metrics.json, the printed headline and the report."""

from __future__ import annotations

import numpy as np
import pytest

from kvcap.evaluation.records import ClipRecord
from kvcap.evaluation.report import render_report
from kvcap.evaluation.run import headline
from kvcap.evaluation.scoring import above_floor, compute_metrics, seed_targets, summarize

LOOP = "빨간색 원이 왼쪽으로 움직입니다. " * 3 + "빨간색 원이"  # cut at the token limit mid-loop
ONE_REPEAT = "파란색 사각형이 오른쪽으로 움직입니다. 잠시 뒤 파란색 사각형이 오른쪽으로 움직입니다."
FLUENT = ["초록색 삼각형이 위로 올라갑니다.", "노란색 원이 화면 가운데에 멈춰 있습니다."]


def _records(scores: np.ndarray, floors: np.ndarray, key: str, floor_key: str) -> list[ClipRecord]:
    records = []
    for index, (score, floor) in enumerate(zip(scores, floors, strict=True)):
        record = ClipRecord(f"c{index}", None, None, "참조", prediction="캡션")
        record.scores = {key: float(score), floor_key: float(floor)}
        records.append(record)
    return records


def _overall(meteor: float | None, meteor_floor: float | None, siglip=None, siglip_floor=None) -> dict:
    return {
        "meteor": meteor,
        "meteor_floor": meteor_floor,
        "siglip_score": siglip,
        "siglip_floor": siglip_floor,
        "diversity": {"unique_ratio": 0.9},
    }


def test_above_floor_is_the_lower_bound_of_the_paired_margin():
    rng = np.random.default_rng(0)
    floors = rng.uniform(0.3, 0.5, 60)
    assert above_floor(floors + 0.1 + rng.normal(0, 0.02, 60), floors) > 0.09
    # Scores that are the floors give or take noise have a margin whose lower bound is not above zero.
    assert above_floor(floors + rng.normal(0, 0.05, 60), floors) < 0.0
    assert above_floor([0.5], [0.4]) is None


def test_a_siglip_score_at_its_floor_does_not_pass_even_above_the_target():
    # The demo's case: SigLIP 0.516 against a floor of 0.514, well over the 0.10 target.
    rng = np.random.default_rng(1)
    floors = rng.normal(0.514, 0.01, 60)
    scores = floors + 0.002 + rng.normal(0, 0.01, 60)
    records = _records(scores, floors, "siglip_score", "siglip_floor")
    targets = seed_targets(_overall(None, None, float(scores.mean()), float(floors.mean())), None, records)
    siglip = targets["siglip_score"]
    assert siglip["value"] > siglip["target"] and siglip["passed"] is False
    assert siglip["clearly_above_floor"] is False and "not clearly above its shuffled floor" in siglip["note"]


def test_a_meteor_clearly_above_its_floor_and_the_target_passes():
    rng = np.random.default_rng(2)
    floors = rng.normal(0.43, 0.03, 60)
    scores = floors + 0.15 + rng.normal(0, 0.03, 60)
    records = _records(scores, floors, "meteor", "meteor_floor")
    meteor = seed_targets(_overall(float(scores.mean()), float(floors.mean())), None, records)["meteor"]
    assert meteor["passed"] is True and meteor["clearly_above_floor"] is True
    assert 0.13 < meteor["above_floor_lower_95"] < 0.15 and "note" not in meteor
    # Below the target it fails whatever the floor says.
    low = _records(scores - 0.3, floors - 0.3, "meteor", "meteor_floor")
    assert seed_targets(_overall(float((scores - 0.3).mean()), 0.13), None, low)["meteor"]["passed"] is False


def test_without_a_floor_a_score_over_its_target_is_not_judged():
    targets = seed_targets(_overall(0.5, None), None, [])
    assert targets["meteor"]["passed"] is None and targets["meteor"]["clearly_above_floor"] is None
    assert "no shuffled floor" in targets["meteor"]["note"]
    assert seed_targets(_overall(0.3, None), None, [])["meteor"]["passed"] is False  # below the target: failed
    assert targets["diversity"]["passed"] is True and "floor" not in targets["diversity"]  # it has no floor


def _captioned(finished: list[bool | None], predictions: list[str] | None = None) -> list[ClipRecord]:
    """Clips captioned with a loop, a caption repeating one sentence and two fluent ones, plus an unreadable clip."""
    predictions = predictions or [LOOP, ONE_REPEAT, *FLUENT]
    records = [
        ClipRecord(f"c{i}", None, "도시" if i % 2 else "자연", "빨간색 원이 보입니다.", prediction=text, finished=done)
        for i, (text, done) in enumerate(zip(predictions, finished, strict=True))
    ]
    return [*records, ClipRecord("broken", None, "자연", "참조", error="unreadable")]


def test_summarize_shares_of_captions_ended_and_cut_among_the_known():
    mixed = summarize(_captioned([False, True, True, None]))
    assert mixed["num_clips"] == 4  # the unreadable clip has no caption
    assert mixed["ended_at_end_of_turn"] == pytest.approx(2 / 3)
    assert mixed["cut_at_max_new_tokens"] == pytest.approx(1 / 3)
    assert (mixed["num_ended_at_end_of_turn"], mixed["num_cut_at_max_new_tokens"]) == (2, 1)
    unknown = summarize(_captioned([None] * 4))
    assert unknown["ended_at_end_of_turn"] is None and unknown["cut_at_max_new_tokens"] is None
    assert (unknown["num_ended_at_end_of_turn"], unknown["num_cut_at_max_new_tokens"]) == (0, 0)
    assert summarize(_captioned([True] * 4))["ended_at_end_of_turn"] == 1.0


def test_each_clip_scores_its_repeated_4grams_and_the_summary_counts_the_captions():
    records = _captioned([False, True, True, True])
    metrics = compute_metrics(records)
    # The loop repeats its sentence and the three 4-grams across copies; the other caption its one sentence.
    assert [r.scores.get("repeated_4grams") for r in records] == [4, 1, 0, 0, None]
    diversity = metrics["overall"]["diversity"]
    assert (diversity["num_repeating_4gram"], diversity["repeating_4gram_ratio"]) == (2, 0.5)
    assert diversity["max_4gram_repeats"] == 3
    assert metrics["overall"]["ended_at_end_of_turn"] == 0.75
    assert metrics["per_category"]["자연"]["ended_at_end_of_turn"] == 0.5  # c0 (cut) and c2
    assert metrics["per_category"]["도시"]["diversity"]["num_repeating_4gram"] == 1  # c1


@pytest.mark.parametrize(
    ("finished", "expected"),
    [
        (
            [False, True, True, True],
            "caption endings: 3/4 at <|im_end|> (75%), 1 cut at the token limit | captions repeating a 4-gram: 2/4 "
            "(most repeats of one 4-gram: 3)",
        ),
        (
            [False, True, None, True],
            "caption endings: 2/3 at <|im_end|> (66.7%), 1 cut at the token limit, 1 unknown | captions repeating a "
            "4-gram: 2/4 (most repeats of one 4-gram: 3)",
        ),
        (
            [None] * 4,
            "caption endings unknown (predictions without finished) | captions repeating a 4-gram: 2/4 "
            "(most repeats of one 4-gram: 3)",
        ),
    ],
    ids=["mixed", "some_unknown", "all_unknown"],
)
def test_headline_says_how_captions_ended_and_how_many_repeat_a_4gram(finished, expected):
    lines = headline(compute_metrics(_captioned(finished)))
    assert lines[0].startswith("clips 4 | METEOR ") and "| unique captions 4/4 (ratio 1.00) | distinct-2 " in lines[0]
    assert lines[1:] == [expected]


def test_headline_without_repeats_or_finished_counts():
    metrics = compute_metrics(_captioned([True, True], FLUENT))
    assert headline(metrics)[1] == (
        "caption endings: 2/2 at <|im_end|> (100%), 0 cut at the token limit | captions repeating a 4-gram: 0/2"
    )
    # metrics.json written before these counts existed: the endings are unknown, the repeat count left out.
    for key in ("num_ended_at_end_of_turn", "num_cut_at_max_new_tokens"):
        del metrics["overall"][key]
    del metrics["overall"]["diversity"]["num_repeating_4gram"]
    assert headline(metrics)[1] == "caption endings unknown (predictions without finished)"


def _report_clips(records: list[ClipRecord]) -> list[dict]:
    """The report's view of the captioned clips, without frames."""
    return [
        {
            "video_id": r.video_id,
            "prediction": r.prediction,
            "reference": r.reference,
            "scores": r.scores,
            "finished": r.finished,
            "frames": [],
        }
        for r in records
        if r.prediction is not None
    ]


def test_headline_warns_when_half_the_captions_share_their_opening():
    opening = "이 영상은 2017년 이후에 촬영된 것으로 보이며, "
    alike = [opening + caption for caption in [*FLUENT, ONE_REPEAT]] + [LOOP]
    records = _captioned([True, True, True, False], alike)
    lines = headline(compute_metrics(records))
    assert lines[2] == (
        'WARNING: shared opening: 3/4 captions begin "이 영상은 2017년 이후에 촬영된" '
        "(the language model's prior, not the video, writes it)"
    )
    html = render_report(compute_metrics(records), _report_clips(records))
    assert "<b>Shared opening:</b> 75% of the captions begin &ldquo;이 영상은 2017년 이후에 촬영된&rdquo;" in html
    varied = _captioned([True] * 4)
    assert not any("shared opening" in line for line in headline(compute_metrics(varied)))
    assert "Shared opening" not in render_report(compute_metrics(varied), _report_clips(varied))


def test_the_report_notes_captions_repeating_a_4gram():
    records = _captioned([False, True, True, True])
    metrics = compute_metrics(records)
    clips = _report_clips(records)
    html = render_report(metrics, clips)
    assert "2 of 4 captions repeat a word 4-gram (looping); the most repeated one occurs 3 times" in html
    assert html.count("'>4 repeated 4-grams</span>") == 1 and html.count("'>1 repeated 4-gram</span>") == 1
    fluent = compute_metrics(_captioned([True, True], FLUENT))
    assert "repeat a word 4-gram" not in render_report(fluent, clips[2:])


@pytest.mark.parametrize(
    ("num_held_out", "expected_end"),
    [
        (4, "; objects of held-out colour x shape pairs 75% of 4"),
        (0, "; no objects of held-out colour x shape pairs (a split without them, e.g. train)"),
    ],
    ids=["val", "train"],
)
def test_headline_names_held_out_pairs_only_where_the_split_has_them(num_held_out, expected_end):
    metrics = compute_metrics(_captioned([True, True], FLUENT))
    metrics["attributes"] = {
        "recall_colour": 0.5,
        "chance_colour": 0.25,
        "held_out_object_recall": 0.75 if num_held_out else float("nan"),
        "num_held_out_objects": num_held_out,
    }
    assert headline(metrics)[0] == "attributes named (chance in brackets): colour 50% (25%)" + expected_end
