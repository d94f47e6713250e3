"""caption_diversity: ordering on constructed sets, hand-checked values, nltk's BLEU as the oracle, offline load,
and repeated 4-grams within a caption."""

from __future__ import annotations

import math
import random

import pytest
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

from kvcap.metrics.caption_diversity.caption_diversity import (
    CaptionDiversity,
    diversity,
    repeated_ngrams,
    self_bleu,
    tokenize,
)

from .conftest import run_offline_at_repo_root

ALL_EQUAL = ["맑은 날 도심의 넓은 도로 위로 자동차들이 천천히 지나가고 있다."] * 8
NEAR_DUPLICATES = [
    "맑은 날 도심의 넓은 도로 위로 자동차들이 천천히 지나가고 있다.",
    "맑은 날 도심의 넓은 도로 위로 자동차들이  천천히 지나가고 있다.",  # whitespace only: the same caption
    "맑은 날 도심의 넓은 도로 위로 자동차들이 빠르게 지나가고 있다.",
    "흐린 날 도심의 넓은 도로 위로 자동차들이 천천히 지나가고 있다.",
    "맑은 날 도심의 좁은 도로 위로 자동차들이 천천히 지나가고 있다.",
    "맑은 날 도심의 넓은 도로 위로 버스들이 천천히 지나가고 있다.",
    " 맑은 날 도심의 넓은 도로 위로 버스들이 천천히 지나가고 있다. ",  # whitespace only
    "맑은 날 도심의 넓은 도로 위로 자동차들이 천천히 지나간다.",
]
VARIED = [
    "맑은 날 도심의 넓은 도로 위로 자동차들이 천천히 지나가고 있다.",
    "해가 질 무렵 하늘은 주황색으로 물들었고, 강 위의 다리에 불이 켜지기 시작한다.",
    "푸른 산등성이 너머로 구름이 흘러가며, 능선 아래로 초록 숲이 펼쳐져 있다.",
    "잔잔한 바다 위로 작은 배 한 척이 왼쪽에서 오른쪽으로 이동한다.",
    "전통 한옥의 기와지붕이 곡선을 그리며 이어지고, 마당에는 소나무가 서 있다.",
    "밤의 시가지에는 가로등과 네온사인이 밝게 빛나고, 차량의 불빛이 길게 이어진다.",
    "공원의 산책로 양옆으로 나무가 늘어서 있으며, 사람들이 여유롭게 걷고 있다.",
    "눈 덮인 들판 위로 흐린 회색 하늘이 낮게 깔려 있다.",
]

PHRASE = "빨간색 원이 왼쪽으로 천천히 움직입니다."
# A captioner looping until max_new_tokens: the same five-word sentence three times, cut mid-sentence.
RUN_ON = f"화면 가운데에 {PHRASE} {PHRASE} {PHRASE} 빨간색"
# Fluent, but one five-word sentence said twice: two 4-grams, each twice.
ONE_REPEAT = "파란색 사각형이 오른쪽으로 움직이고 있다. 잠시 뒤 파란색 사각형이 오른쪽으로 움직이고 있다."


@pytest.fixture(scope="module")
def metric() -> CaptionDiversity:
    return CaptionDiversity()


@pytest.fixture(scope="module")
def results(metric) -> dict[str, dict]:
    return {name: metric.compute(predictions=captions) for name, captions in _SETS.items()}


_SETS = {"all_equal": ALL_EQUAL, "near_duplicates": NEAR_DUPLICATES, "varied": VARIED}


@pytest.mark.parametrize(
    ("key", "direction"),
    [
        ("unique_ratio", "up"),
        ("distinct_1", "up"),
        ("distinct_2", "up"),
        ("vocab_size", "up"),
        ("self_bleu_4", "down"),
        ("top_share", "down"),
    ],
)
def test_every_metric_orders_the_sets(results, key, direction):
    values = [results[name][key] for name in ("all_equal", "near_duplicates", "varied")]
    assert values == sorted(values, reverse=direction == "down")
    assert len(set(values)) == 3, values  # strictly ordered


def test_collapse_flag_and_counts(results):
    assert results["all_equal"]["unique_ratio"] == 1 / 8
    assert results["all_equal"]["self_bleu_4"] == 1.0
    assert results["all_equal"]["collapsed"] is True
    assert results["near_duplicates"]["num_unique"] == 6  # two captions differ from others only in whitespace
    assert results["near_duplicates"]["collapsed"] is False
    assert results["varied"]["unique_ratio"] == 1.0
    assert results["varied"]["collapsed"] is False
    assert all(r["collapse_threshold"] == 0.5 and r["num_captions"] == 8 for r in results.values())


@pytest.mark.parametrize("tokenizer", ["whitespace", "morpheme"])
def test_hand_checked_values(metric, tokenizer):
    if tokenizer == "whitespace":
        captions = ["하늘 이 맑 다", "하늘  이 맑 다 ", "바다 가 맑 다"]
    else:  # kiwi gives the same tokens: 하늘 이 맑 다 / 바다 가 맑 다, the full stop dropped
        captions = ["하늘이 맑다.", "하늘이   맑다.", "바다가 맑다."]
    assert tokenize(captions, tokenizer) == [["하늘", "이", "맑", "다"]] * 2 + [["바다", "가", "맑", "다"]]
    out = metric.compute(predictions=captions, tokenizer=tokenizer)
    # Two captions differ only in whitespace: 2 unique of 3; the most frequent one is 2 of 3.
    assert out["unique_ratio"] == pytest.approx(2 / 3)
    assert out["num_unique"] == 2
    assert out["top_share"] == pytest.approx(2 / 3)
    # Unigrams: 12 in all, 6 distinct (하늘 이 맑 다 바다 가). Bigrams: 9 in all, distinct 하늘이 이맑 맑다 바다가 가맑.
    assert out["distinct_1"] == pytest.approx(6 / 12)
    assert out["distinct_2"] == pytest.approx(5 / 9)
    assert out["vocab_size"] == 6
    # Self-BLEU: each of the two equal captions has an identical other caption: BLEU 1.
    # The third against them: p1 = 2/4 (맑 다), p2 = 1/3 (맑다), p3 = 0/2 → (0 + 0.1)/2, p4 = 0/1 → 0.1/1
    # (method1's epsilon); lengths equal so BP = 1; BLEU = (1/2 · 1/3 · 1/20 · 1/10)^(1/4) = (1/1200)^(1/4).
    third = (1 / 1200) ** 0.25
    assert out["self_bleu_4"] == pytest.approx((1 + 1 + third) / 3, rel=1e-12)
    assert out["collapsed"] is False


def test_self_bleu_equals_nltk_sentence_bleu_with_method1():
    rng = random.Random(0)
    words = ["하늘", "바다", "산", "자동차", "도로", "사람", "건물", "가", "이", "를", "에", "있", "다", "보이"]
    method1 = SmoothingFunction().method1
    checked = 0
    for _ in range(150):
        token_lists = [[rng.choice(words) for _ in range(rng.randint(0, 10))] for _ in range(rng.randint(2, 6))]
        if rng.random() < 0.3:
            token_lists[1] = list(token_lists[0])
        expected = [
            sentence_bleu([t for j, t in enumerate(token_lists) if j != i], tokens, smoothing_function=method1)
            for i, tokens in enumerate(token_lists)
        ]
        assert self_bleu(token_lists) == expected  # bit for bit
        checked += sum(0 < value < 1 for value in expected)
    assert checked > 100
    realistic = tokenize(VARIED + NEAR_DUPLICATES, "morpheme")
    expected = [
        sentence_bleu([t for j, t in enumerate(realistic) if j != i], tokens, smoothing_function=method1)
        for i, tokens in enumerate(realistic)
    ]
    assert self_bleu(realistic) == expected


def test_small_inputs(metric):
    single = metric.compute(predictions=["하늘이 맑다."])
    assert single["self_bleu_4"] is None
    assert single["unique_ratio"] == 1.0
    empty_caption = metric.compute(predictions=["", "하늘이 맑다."])
    assert empty_caption["self_bleu_4"] == 0.0
    assert math.isclose(empty_caption["distinct_1"], 1.0)
    with pytest.raises(ValueError, match="tokenizer"):
        metric.compute(predictions=["하늘"], tokenizer="jamo")


def test_collapse_threshold_is_an_argument(metric):
    out = metric.compute(predictions=NEAR_DUPLICATES, collapse_threshold=0.8)
    assert out["unique_ratio"] == 0.75
    assert out["collapsed"] is True


def test_evaluate_load_offline(tmp_path, metric):
    script = (
        "import json, evaluate\n"
        "m = evaluate.load('kvcap/metrics/caption_diversity')\n"
        f"print(json.dumps({{'out': m.compute(predictions={NEAR_DUPLICATES!r}), 'citation': m.citation}}))\n"
    )
    loaded = run_offline_at_repo_root(script, hf_home=tmp_path / "hf")
    assert loaded["out"] == metric.compute(predictions=NEAR_DUPLICATES)
    assert "Texygen" in loaded["citation"]


def test_repeated_ngrams_counts_a_phrase_repeated_three_times():
    # Words 2-6, 7-11 and 12-16 are the sentence and word 17 starts it again: a 4-gram starting at one of a copy's
    # first three words occurs three times (the last copy's third one ends on word 17), the two after it twice.
    assert repeated_ngrams(RUN_ON) == {
        "빨간색 원이 왼쪽으로 천천히": 3,
        "원이 왼쪽으로 천천히 움직입니다.": 3,
        "왼쪽으로 천천히 움직입니다. 빨간색": 3,
        "천천히 움직입니다. 빨간색 원이": 2,
        "움직입니다. 빨간색 원이 왼쪽으로": 2,
    }
    assert list(repeated_ngrams(RUN_ON).values()) == [3, 3, 3, 2, 2]  # most frequent first
    assert repeated_ngrams(RUN_ON, n=5)["빨간색 원이 왼쪽으로 천천히 움직입니다."] == 3


def test_repeated_ngrams_of_fluent_and_short_captions():
    assert all(repeated_ngrams(caption) == {} for caption in VARIED)
    assert repeated_ngrams(ONE_REPEAT) == {
        "파란색 사각형이 오른쪽으로 움직이고": 2,
        "사각형이 오른쪽으로 움직이고 있다.": 2,
    }
    # Fewer than four words repeats nothing, however often a word comes back; overlaps count from four on.
    assert repeated_ngrams("네 네 네") == {} and repeated_ngrams("") == {}
    assert repeated_ngrams("네 네 네 네") == {}
    assert repeated_ngrams("네 네 네 네 네") == {"네 네 네 네": 2}
    assert repeated_ngrams("네 네 네", n=2) == {"네 네": 2}
    with pytest.raises(ValueError, match="n must be"):
        repeated_ngrams("네 네", n=0)


def test_repeated_ngrams_normalises_whitespace_and_case():
    spaced = "  하늘이   맑고\t바람이 분다.\n하늘이 맑고  바람이\u3000분다. "
    assert repeated_ngrams(spaced) == {"하늘이 맑고 바람이 분다.": 2}
    assert repeated_ngrams("Red circle moves left. red Circle moves LEFT.") == {"red circle moves left.": 2}
    # Words are whitespace tokens: punctuation stays on its word, so 분다 and 분다. differ.
    assert repeated_ngrams("하늘이 맑고 바람이 분다 하늘이 맑고 바람이 분다.") == {}
    assert repeated_ngrams("하늘이 맑고 바람이 분다 하늘이 맑고 바람이 분다.", n=3) == {"하늘이 맑고 바람이": 2}


@pytest.mark.parametrize("tokenizer", ["whitespace", "morpheme"])
def test_diversity_reports_captions_repeating_a_4gram(metric, tokenizer):
    captions = [RUN_ON, ONE_REPEAT, *VARIED[:2], "하늘 하늘 하늘"]
    out = metric.compute(predictions=captions, tokenizer=tokenizer)
    assert out["num_repeating_4gram"] == 2
    assert out["repeating_4gram_ratio"] == pytest.approx(2 / 5)
    assert out["max_4gram_repeats"] == 3
    fluent = diversity(VARIED, tokenizer=tokenizer)
    assert (fluent["num_repeating_4gram"], fluent["repeating_4gram_ratio"], fluent["max_4gram_repeats"]) == (0, 0.0, 0)
    assert diversity([ONE_REPEAT], tokenizer=tokenizer)["max_4gram_repeats"] == 2


def test_diversity_reports_the_most_common_opening_of_captions_that_all_differ(metric):
    # The seed's collapse in small: every caption differs, yet all but one open alike.
    shared = "이 영상은 2017년 이후에 촬영된 것으로 보이며, "
    captions = [shared + rest for rest in VARIED[:3]] + ["  이 영상은  2017년 이후에 촬영된 영상이다."] + VARIED[3:5]
    out = metric.compute(predictions=captions)
    assert out["unique_ratio"] == 1.0 and not out["collapsed"]
    assert out["top_opening"] == "이 영상은 2017년 이후에 촬영된"  # five words, whitespace normalised
    assert out["top_opening_share"] == pytest.approx(4 / 6)
    assert diversity(VARIED)["top_opening_share"] == pytest.approx(1 / len(VARIED))
    assert diversity(ALL_EQUAL)["top_opening_share"] == 1.0
    empty = diversity([])
    assert (empty["top_opening"], empty["top_opening_share"]) == (None, 0.0)
