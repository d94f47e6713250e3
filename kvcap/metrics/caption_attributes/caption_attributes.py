"""Caption attributes: how often a caption names its clip's visible facts, against chance.

Built for kvcap's synthetic demo corpus, whose labels store what each clip shows (coloured shapes, their motion, the
time of day, the category) as structured attributes. Self-contained so that
``evaluate.load("kvcap/metrics/caption_attributes")`` (which copies this one file) works as well as
``from kvcap.metrics.caption_attributes.caption_attributes import attribute_recall, attribute_report``.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from typing import Any

import datasets
import evaluate
import numpy as np

_CITATION = """\
@misc{kvcap_caption_attributes,
  title  = {Caption attributes: fact recall of generated captions on the kvcap demo corpus, with a chance floor},
  author = {{kvcap contributors}},
  note   = {kvcap repository, kvcap/metrics/caption_attributes},
}
"""

_DESCRIPTION = """\
Fact recall of generated Korean captions on kvcap's synthetic demo corpus. Each clip's label lists what is on
screen: one or two objects (colour, shape, motion), the time of day (the words `time_of_day_words`: sky colour
and time phrase) and the category. A caption is checked for each fact by plain string matching: colour + shape
as one phrase ("빨간색 원") followed by a particle, space or sentence end; the object's motion phrase in a
sentence that names the object; any time-of-day word; the category word. Colour, shape and motion-by-colour
are also scored on their own. Every recall comes with its chance level: each caption scored against another
clip's attributes (a seeded derangement, the same pairing as korean_meteor's shuffled-reference floor).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[str]`): generated captions, one per clip.
    references (`list[str]`): per clip, its attribute dict as a JSON string (the corpus label's
        `metadata.attributes`): `objects` (each with `color`, `shape`, `motion` and optionally `held_out`),
        `time_of_day_words` and `category`.
    seed (`int`, default 0): seed of the derangement that pairs each caption with another clip's attributes.
Returns:
    recall_object, recall_motion, recall_time_of_day, recall_category, recall_all (`float`): mean per-caption
        fraction of the facts named (`all`: the mean of the four).
    recall_colour, recall_shape, recall_motion_by_colour (`float`): colour and shape named anywhere, motion named
        in a sentence naming the object's colour.
    chance_* (`float`): the same, each caption scored against another clip's attributes.
    held_out_object_recall (`float`): share of held-out colour x shape objects named (`nan` when there are none).
    num_held_out_objects (`int`).
Examples:
    >>> attributes = evaluate.load("kvcap/metrics/caption_attributes")
    >>> red = {"objects": [{"color": "빨간색", "shape": "원", "motion": "왼쪽에서 오른쪽으로"}],
    ...        "time_of_day_words": ["하늘색", "맑은 낮"], "category": "자연"}
    >>> out = attributes.compute(predictions=["맑은 낮, 빨간색 원이 왼쪽에서 오른쪽으로 갑니다."],
    ...                          references=[json.dumps(red, ensure_ascii=False)])
    >>> out["recall_object"], out["recall_category"]
    (1.0, 0.0)
"""

# What the scoring reads from every attribute set; the metric class checks for them to name a bad reference.
REQUIRED_KEYS = ("objects", "time_of_day_words", "category")
# Characters that may follow a noun phrase: a particle, a space, a comma or nothing. A bare substring test would
# accept "파란색 원" inside "파란색 원형".
_NOUN_FOLLOWERS = ("", " ", ",", "이", "가", "은", "는", "을", "를", "과", "와", "도", "의")


def derangement(n: int, seed: int = 0) -> list[int]:
    """A permutation with no fixed point (Sattolo's algorithm: one random n-cycle), the same for the same seed."""
    order = list(range(n))
    rng = random.Random(seed)
    for i in range(n - 1, 0, -1):
        j = rng.randrange(i)
        order[i], order[j] = order[j], order[i]
    return order


def attribute_facts(
    text: str, attributes: dict[str, Any], vocabulary: dict[str, Sequence[str]] | None = None
) -> list[dict[str, Any]]:
    """Each ground-truth fact and whether the caption states it, as the report marks them.

    One ``{"kind", "expected", "named"}`` per fact: per object ``object`` (its colour + shape phrase, "빨간색 원") and
    ``motion`` (its motion phrase in a sentence naming the object), then ``time_of_day`` and ``category``. With a
    ``vocabulary`` (``{"colors": [...], "shapes": [...]}``, e.g. every label's), colour + shape phrases the caption
    states that are not in the clip follow as ``{"kind": "wrong_object", "expected": None, "named": phrase}``.
    """
    sentences = _sentences(text)
    facts: list[dict[str, Any]] = []
    for obj in attributes["objects"]:
        noun = f"{obj['color']} {obj['shape']}"
        found = [sentence for sentence in sentences if _mentions_noun(sentence, noun)]
        facts.append({"kind": "object", "expected": noun, "named": bool(found)})
        facts.append(
            {"kind": "motion", "expected": f"{noun}: {obj['motion']}", "named": any(obj["motion"] in s for s in found)}
        )
    words = attributes["time_of_day_words"]
    facts.append(
        {
            "kind": "time_of_day",
            "expected": " / ".join(words),
            "named": any(word in text for word in words),
        }
    )
    facts.append({"kind": "category", "expected": attributes["category"], "named": attributes["category"] in text})
    if vocabulary:
        present = {f"{obj['color']} {obj['shape']}" for obj in attributes["objects"]}
        for colour in vocabulary.get("colors", ()):
            for shape in vocabulary.get("shapes", ()):
                phrase = f"{colour} {shape}"
                if phrase not in present and _mentions_noun_anywhere(text, phrase):
                    facts.append({"kind": "wrong_object", "expected": None, "named": phrase})
    return facts


def attribute_vocabulary(attributes: Sequence[dict[str, Any]]) -> dict[str, list[str]]:
    """Every colour and shape the labels hold, longest first (so "연두색" is tried before a shorter colour)."""
    colours = {obj["color"] for attrs in attributes for obj in attrs["objects"]}
    shapes = {obj["shape"] for attrs in attributes for obj in attrs["objects"]}
    return {
        "colors": sorted(colours, key=lambda word: (-len(word), word)),
        "shapes": sorted(shapes, key=lambda word: (-len(word), word)),
    }


def attribute_recall(text: str, attributes: dict[str, Any]) -> dict[str, float]:
    """Fraction of the ground-truth facts a caption states (see :func:`attribute_facts`): per-object colour+shape
    (as the adjacent phrase "빨간색 원"), per-object motion (its phrase in the same sentence as the object), time of
    day (any of ``time_of_day_words``: sky colour word or time phrase), and category. Returns values in [0, 1] plus
    their mean under ``"all"``."""
    return recall_of_facts(attribute_facts(text, attributes))


def recall_of_facts(facts: Sequence[dict[str, Any]]) -> dict[str, float]:
    """:func:`attribute_recall` from facts :func:`attribute_facts` already found (``wrong_object`` ones aside)."""
    scores = {}
    for kind in ("object", "motion", "time_of_day", "category"):
        named = [bool(fact["named"]) for fact in facts if fact["kind"] == kind]
        scores[kind] = sum(named) / len(named)
    scores["all"] = sum(scores.values()) / len(scores)
    return scores


def attribute_report(predictions: list[str], attributes: list[dict[str, Any]], seed: int = 0) -> dict[str, float]:
    """How often captions name their clip's attributes, against chance.

    ``recall_*``: mean :func:`attribute_recall` per fact, plus colour, shape and motion-by-colour on their own
    (see ``_part_recall``); ``held_out_object_recall``: the same for objects of
    held-out colour x shape pairs only (never seen in training); ``chance_*``: each caption scored against
    another clip's attributes (a seeded derangement), i.e. what naming attributes without looking scores.
    """
    if len(predictions) != len(attributes):
        raise ValueError(f"{len(predictions)} predictions for {len(attributes)} attribute sets.")
    scores = [attribute_recall(text, attrs) for text, attrs in zip(predictions, attributes, strict=True)]
    # The same pairing as METEOR's shuffled-reference floor: no caption is scored against its own clip.
    order = derangement(len(predictions), seed)
    chance = [attribute_recall(predictions[i], attributes[k]) for i, k in enumerate(order)]
    for score, text, attrs in zip(scores, predictions, attributes, strict=True):
        score.update(_part_recall(text, attrs))
    for score, index, other in zip(chance, range(len(order)), order, strict=True):
        score.update(_part_recall(predictions[index], attributes[other]))
    held_out_hits = [
        _mentions_noun_anywhere(text, f"{obj['color']} {obj['shape']}")
        for text, attrs in zip(predictions, attributes, strict=True)
        for obj in attrs["objects"]
        if obj.get("held_out")
    ]
    report: dict[str, float] = {}
    for key in scores[0] if scores else ():
        report[f"recall_{key}"] = float(np.mean([score[key] for score in scores]))
        report[f"chance_{key}"] = float(np.mean([score[key] for score in chance]))
    report["held_out_object_recall"] = float(np.mean(held_out_hits)) if held_out_hits else float("nan")
    report["num_held_out_objects"] = len(held_out_hits)
    return report


def _part_recall(text: str, attributes: dict[str, Any]) -> dict[str, float]:
    """Colour and shape of each object named anywhere, separately (a shape word must stand as a word), and its
    motion named in a sentence that names its colour (which tells the objects of a clip apart), shape or not."""
    objects = attributes["objects"]
    sentences = _sentences(text)
    colours = sum(obj["color"] in text for obj in objects)
    shapes = sum(bool(re.search(rf"(^|\s){obj['shape']}(이|가|은|는|을|를|과|와|\s|$)", text)) for obj in objects)
    motions = sum(any(obj["color"] in s and obj["motion"] in s for s in sentences) for obj in objects)
    return {
        "colour": colours / len(objects),
        "shape": shapes / len(objects),
        "motion_by_colour": motions / len(objects),
    }


def _sentences(text: str) -> list[str]:
    return [s for s in text.replace("!", ".").replace("?", ".").split(".") if s.strip()]


def _mentions_noun_anywhere(text: str, noun: str) -> bool:
    return any(_mentions_noun(sentence, noun) for sentence in _sentences(text))


def _mentions_noun(sentence: str, noun: str) -> bool:
    start = sentence.find(noun)
    while start >= 0:
        nxt = sentence[start + len(noun) : start + len(noun) + 1]
        if nxt in _NOUN_FOLLOWERS:
            return True
        start = sentence.find(noun, start + 1)
    return False


def parse_references(references: Sequence[str]) -> list[dict[str, Any]]:
    """Attribute dicts from their JSON strings; ``ValueError`` naming the index of the first bad one."""
    parsed = []
    for index, reference in enumerate(references):
        try:
            attributes = json.loads(reference)
        except (TypeError, json.JSONDecodeError) as error:
            raise ValueError(f"reference {index} is not a JSON attribute dict: {error}") from error
        if not isinstance(attributes, dict):
            raise ValueError(f"reference {index} is JSON {type(attributes).__name__}, not an attribute dict")
        missing = [key for key in REQUIRED_KEYS if key not in attributes]
        if missing:
            # An attribute set without time_of_day_words comes from a corpus older than version 2.
            raise ValueError(f"reference {index} lacks {', '.join(missing)} (needs {', '.join(REQUIRED_KEYS)})")
        parsed.append(attributes)
    return parsed


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class CaptionAttributes(evaluate.Metric):
    """Recall of the demo corpus' visible attributes in generated captions, with its chance level."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            # References travel as JSON strings: nested attribute dicts with optional keys have no stable
            # Arrow schema, and evaluate writes every feature to its cache.
            features=datasets.Features(
                {
                    "predictions": datasets.Value("string", id="sequence"),
                    "references": datasets.Value("string", id="sequence"),
                }
            ),
        )

    def _compute(self, predictions: Sequence[str], references: Sequence[str], seed: int = 0) -> dict[str, Any]:
        return attribute_report(list(predictions), parse_references(references), seed=seed)
