"""caption_attributes: corpus captions score fully, chance and motion rules, the metric class, offline load."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from kvcap.demo import corpus as demo
from kvcap.metrics.caption_attributes import caption_attributes as module
from kvcap.metrics.caption_attributes.caption_attributes import CaptionAttributes, attribute_recall, attribute_report

from .conftest import run_offline_at_repo_root

RED = {
    "objects": [{"color": "빨간색", "shape": "원", "motion": "왼쪽에서 오른쪽으로", "held_out": False}],
    "time_of_day": "낮",
    "time_of_day_words": ["하늘색", "맑은 낮"],
    "category": "자연",
}
BLUE = {
    "objects": [{"color": "파란색", "shape": "사각형", "motion": "위에서 아래로", "held_out": True}],
    "time_of_day": "밤",
    "time_of_day_words": ["남색", "어두운 밤"],
    "category": "시가지",
}
CAPTIONS = ["빨간색 원이 왼쪽에서 오른쪽으로 이동합니다. 자연 풍경입니다.", "초원 위로 파란색 사각형이 보입니다."]


@pytest.fixture(scope="module")
def labels(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """Labels of a small generated demo corpus, train and val (val has held-out pairs)."""
    root = tmp_path_factory.mktemp("demo")
    demo.generate_corpus(root, num_train=16, num_val=8, seed=3, workers=1)
    paths = sorted((root / "train" / "labels").glob("*.json")) + sorted((root / "val" / "labels").glob("*.json"))
    return [json.loads(path.read_text(encoding="utf-8")) for path in paths]


def _references(attribute_sets: list[dict]) -> list[str]:
    return [json.dumps(attrs, ensure_ascii=False) for attrs in attribute_sets]


def test_corpus_captions_state_their_own_attributes(labels: list[dict]) -> None:
    for label in labels:
        text = label["annotation"]["description_kr"]
        attrs = label["metadata"]["attributes"]
        assert attribute_recall(text, attrs)["all"] == 1.0, text
    # A caption of another clip should not score perfectly: the check discriminates.
    train = [lab for lab in labels if lab["metadata"]["split"] == "train"]
    first = train[0]["metadata"]["attributes"]
    other = next(lab for lab in train[1:] if lab["metadata"]["attributes"]["objects"] != first["objects"])
    assert attribute_recall(other["annotation"]["description_kr"], first)["all"] < 1.0


def test_corpus_report_is_perfect_on_its_own_captions_and_lower_by_chance(labels: list[dict]) -> None:
    captions = [label["annotation"]["description_kr"] for label in labels]
    report = attribute_report(captions, [label["metadata"]["attributes"] for label in labels])
    recalls = {key: value for key, value in report.items() if key.startswith("recall_")}
    assert len(recalls) == 8 and set(recalls.values()) == {1.0}
    assert report["num_held_out_objects"] >= 4 and report["held_out_object_recall"] == 1.0
    assert report["chance_object"] < 0.5 and report["chance_all"] < 1.0


def test_time_of_day_is_any_of_the_label_words() -> None:
    def tod(text: str, words: list[str]) -> float:
        return attribute_recall(text, {**RED, "time_of_day_words": words})["time_of_day"]

    assert tod("하늘색 하늘 아래 빨간색 원이 있습니다.", ["하늘색", "맑은 낮"]) == 1.0
    assert tod("맑은 낮의 자연 장면입니다.", ["하늘색", "맑은 낮"]) == 1.0
    assert tod("어두운 밤의 자연 장면입니다.", ["하늘색", "맑은 낮"]) == 0.0
    # The bare time-of-day key is not one of the words; the words come from the label, not from a vocabulary.
    assert tod("낮의 장면입니다.", ["하늘색", "맑은 낮"]) == 0.0
    assert tod("보랏빛 새벽입니다.", ["보랏빛"]) == 1.0


def test_attribute_report_scores_captions_against_their_own_clip_and_against_chance() -> None:
    report = attribute_report(CAPTIONS, [RED, BLUE])
    assert report["recall_colour"] == report["recall_shape"] == report["recall_object"] == 1.0
    assert report["recall_motion"] == report["recall_motion_by_colour"] == 0.5 and report["recall_category"] == 0.5
    # Motion by colour needs the colour, not the shape, in the motion's sentence; another sentence does not count.
    wrong_shape = ["빨간색 막대가 왼쪽에서 오른쪽으로 이동합니다.", "파란색 원이 있습니다. 위에서 아래로 움직입니다."]
    by_colour = attribute_report(wrong_shape, [RED, BLUE])
    assert by_colour["recall_motion"] == 0.0 and by_colour["recall_motion_by_colour"] == 0.5
    # Against each other's clip nothing matches, and "초원" must not count as the shape 원.
    assert report["chance_colour"] == report["chance_shape"] == report["chance_object"] == 0.0
    assert report["held_out_object_recall"] == 1.0 and report["num_held_out_objects"] == 1
    with pytest.raises(ValueError, match="2 predictions for 1 attribute sets"):
        attribute_report(CAPTIONS, [RED])


def test_noun_needs_a_particle_or_boundary_after_it() -> None:
    blue_circle = {**RED, "objects": [{**RED["objects"][0], "color": "파란색"}]}
    assert attribute_recall("파란색 원형이 보입니다.", blue_circle)["object"] == 0.0
    assert attribute_recall("파란색 원, 그리고 풀밭.", blue_circle)["object"] == 1.0


def test_derangement_equals_korean_meteors() -> None:
    # evaluate.load copies one file, so this module keeps its own copy; the chance pairing must stay METEOR's.
    from kvcap.metrics.korean_meteor.korean_meteor import derangement as meteor_derangement

    for n in range(41):
        for seed in (0, 1, 5, 1234):
            assert module.derangement(n, seed) == meteor_derangement(n, seed)
    assert all(i != k for i, k in enumerate(module.derangement(40, 0)))


def test_metric_class_returns_the_report(labels: list[dict]) -> None:
    metric = CaptionAttributes()
    captions = [label["annotation"]["description_kr"] for label in labels]
    # Shift the captions by one so the scores are not all 1.0 and the seed's pairing shows in chance_*.
    shifted = captions[1:] + captions[:1]
    attribute_sets = [label["metadata"]["attributes"] for label in labels]
    for seed in (0, 7):
        out = metric.compute(predictions=shifted, references=_references(attribute_sets), seed=seed)
        assert out == attribute_report(shifted, attribute_sets, seed=seed)
    assert 0.0 < out["recall_all"] < 1.0


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("{not json", r"reference 1 is not a JSON attribute dict"),
        ('"objects"', r"reference 1 is JSON str, not an attribute dict"),
        (json.dumps({"time_of_day_words": ["남색"], "category": "시가지"}), r"reference 1 lacks objects"),
        (json.dumps({"objects": [], "category": "시가지"}), r"reference 1 lacks time_of_day_words"),
    ],
)
def test_bad_reference_is_named_by_index(bad: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CaptionAttributes().compute(predictions=CAPTIONS, references=[_references([RED])[0], bad])


def test_evaluate_load_offline(tmp_path: Path) -> None:
    references = _references([RED, BLUE])
    script = (
        "import json, evaluate\n"
        "m = evaluate.load('kvcap/metrics/caption_attributes')\n"
        f"out = m.compute(predictions={CAPTIONS!r}, references={references!r}, seed=3)\n"
        "print(json.dumps({'out': out, 'citation': m.citation, 'name': type(m).__name__}))\n"
    )
    loaded = run_offline_at_repo_root(script, hf_home=tmp_path / "hf")
    assert loaded["name"] == "CaptionAttributes"
    assert loaded["out"] == attribute_report(CAPTIONS, [RED, BLUE], seed=3)
    assert not math.isnan(loaded["out"]["held_out_object_recall"])
    assert "kvcap_caption_attributes" in loaded["citation"]


def test_attribute_facts_mark_each_fact_stated_missed_or_wrong() -> None:
    from kvcap.metrics.caption_attributes.caption_attributes import attribute_facts, attribute_vocabulary

    vocabulary = attribute_vocabulary([RED, BLUE])
    assert vocabulary == {"colors": ["빨간색", "파란색"], "shapes": ["사각형", "원"]}
    caption = "빨간색 원과 파란색 사각형이 보입니다. 맑은 낮의 풍경입니다."
    facts = attribute_facts(caption, RED, vocabulary)
    assert facts == [
        {"kind": "object", "expected": "빨간색 원", "named": True},
        {"kind": "motion", "expected": "빨간색 원: 왼쪽에서 오른쪽으로", "named": False},
        {"kind": "time_of_day", "expected": "하늘색 / 맑은 낮", "named": True},
        {"kind": "category", "expected": "자연", "named": False},
        {"kind": "wrong_object", "expected": None, "named": "파란색 사각형"},
    ]
    # Without a vocabulary nothing is called wrong, and recall is the share of facts stated, per kind.
    assert [fact["kind"] for fact in attribute_facts(caption, RED)] == ["object", "motion", "time_of_day", "category"]
    expected = {"object": 1.0, "motion": 0.0, "time_of_day": 1.0, "category": 0.0, "all": 0.5}
    assert attribute_recall(caption, RED) == expected
