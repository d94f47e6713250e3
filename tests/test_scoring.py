"""kvcap.evaluation.scoring: a seed target passes only when its score is above the target and clearly above its
shuffled floor."""

from __future__ import annotations

import numpy as np

from kvcap.evaluation.records import ClipRecord
from kvcap.evaluation.scoring import above_floor, seed_targets


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
