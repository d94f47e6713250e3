"""korean_meteor: nltk's METEOR as the oracle (WordNet stand-ins), hand-checked values, the floor, offline load."""

from __future__ import annotations

import random
from fractions import Fraction

import pytest
from nltk.tokenize import NLTKWordTokenizer
from nltk.translate.meteor_score import meteor_score, single_meteor_score

from kvcap.metrics.korean_meteor.korean_meteor import KoreanMeteor, KoreanStemmer, derangement, tokenize

from .conftest import run_offline_at_repo_root

# Word lists as strings: one line each reads better than a list literal of Hangul.
NOUNS = "자동차 도로 하늘 바다 산 사람 건물 나무 강 다리 구름 배 공원 거리 신호등 빌딩 햇빛 꽃 기차 버스".split()  # noqa: SIM905
ADJECTIVES = "빨간 파란 높은 넓은 작은 큰 맑은 어두운 밝은 조용한".split()  # noqa: SIM905
ADVERBS = "천천히 빠르게 멀리 가까이 조용히".split()  # noqa: SIM905
PREDICATES = "달린다 달렸다 보인다 보였다 있다 없다 지나간다 흐른다 움직인다 빛난다 걷는다 서 있다".split()  # noqa: SIM905
LATIN = ["CCTV", "buses", "Bus", "cars", "LED"]


class NoSynonymWordNet:
    """WordNet stand-in without synonyms: what kvcap's METEOR does when no WordNet is given."""

    def synsets(self, word: str) -> list:
        return []


class _Lemma:
    def __init__(self, name: str) -> None:
        self._name = name

    def name(self) -> str:
        return self._name


class _Synset:
    def __init__(self, names: list[str]) -> None:
        self._lemmas = [_Lemma(name) for name in names]

    def lemmas(self) -> list[_Lemma]:
        return self._lemmas


class TinyKoreanWordNet:
    """WordNet stand-in with a few Korean synonym sets, to check the synonym stage against nltk's."""

    SETS = (["자동차", "차량", "차"], ["바다", "해양"], ["빌딩", "건물", "고층_건물"], ["걷", "거닐"])

    def synsets(self, word: str) -> list[_Synset]:
        return [_Synset(names) for names in self.SETS if word in names]


def _particle(noun: str, rng: random.Random) -> str:
    has_batchim = (ord(noun[-1]) - 0xAC00) % 28 != 0
    pairs = [("이", "가"), ("을", "를"), ("은", "는"), ("과", "와"), ("에", "에"), ("의", "의"), ("도", "도")]
    with_batchim, without = rng.choice(pairs)
    return with_batchim if has_batchim else without


def _sentence(rng: random.Random, words: int) -> list[str]:
    out = []
    for _ in range(words):
        kind = rng.random()
        if kind < 0.15:
            out.append(rng.choice(ADJECTIVES))
        elif kind < 0.25:
            out.append(rng.choice(ADVERBS))
        elif kind < 0.3:
            out.append(rng.choice(LATIN))
        else:
            noun = rng.choice(NOUNS)
            out.append(noun + _particle(noun, rng))
    out.append(rng.choice(PREDICATES) + rng.choice(["", "", "."]))
    return out


def korean_pairs(count: int, seed: int = 0) -> list[tuple[str, str]]:
    """(hypothesis, reference) pairs: shared words, reorderings, particle changes, lengths, degenerate cases."""
    rng = random.Random(seed)
    pairs = [
        ("", "자동차가 달린다."),
        ("자동차가 달린다.", ""),
        (".", "."),
        ("가", "자동차가 달린다"),
        ("자동차 자동차 자동차", "자동차가 자동차를 본다"),
        ("CCTV가 보인다", "cctv가 보인다"),
        ("buses", "Bus"),
    ]
    while len(pairs) < count:
        reference = _sentence(rng, rng.randint(1, 12))
        mode = rng.randrange(6)
        if mode == 0:  # unrelated
            hypothesis = _sentence(rng, rng.randint(1, 12))
        elif mode == 1:  # words dropped
            hypothesis = [word for word in reference if rng.random() < 0.7] or reference[:1]
        elif mode == 2:  # reordered
            hypothesis = reference[:]
            rng.shuffle(hypothesis)
        elif mode == 3:  # particles and tense changed
            hypothesis = [
                word[:-1] + _particle(word[:-1], rng) if word[:-1] in NOUNS else word.replace("다", "었다", 1)
                for word in reference
            ]
        elif mode == 4:  # extra words on both sides
            hypothesis = _sentence(rng, 2) + reference + _sentence(rng, 1)
        else:  # two sentences, one shared
            hypothesis = reference + _sentence(rng, rng.randint(1, 5))
            reference = _sentence(rng, rng.randint(1, 5)) + reference
        pairs.append((" ".join(hypothesis), " ".join(reference)))
    return pairs


@pytest.fixture(scope="module")
def metric() -> KoreanMeteor:
    return KoreanMeteor()


@pytest.fixture(scope="module")
def pairs() -> list[tuple[str, str]]:
    return korean_pairs(160)


@pytest.mark.parametrize("tokenizer", ["whitespace", "morpheme", "nltk"])
def test_equals_nltk_without_synonyms(metric, pairs, tokenizer):
    hypotheses, references = zip(*pairs, strict=True)
    out = metric.compute(predictions=list(hypotheses), references=list(references), tokenizer=tokenizer)
    hyp_tokens, ref_tokens = tokenize(hypotheses, tokenizer), tokenize(references, tokenizer)
    expected = [
        single_meteor_score(ref, hyp, wordnet=NoSynonymWordNet())
        for hyp, ref in zip(hyp_tokens, ref_tokens, strict=True)
    ]
    assert out["scores"] == expected  # bit for bit, not approximately
    assert out["meteor"] == pytest.approx(sum(expected) / len(expected), rel=1e-12)
    # The pairs exercise the whole range, not only zeros and ones.
    assert sum(0.0 < score < 1.0 for score in expected) > len(expected) // 2
    assert 0.0 in expected


def test_korean_stemmer_equals_nltk_with_the_same_stemmer(metric, pairs):
    hypotheses, references = zip(*pairs, strict=True)
    out = metric.compute(
        predictions=list(hypotheses), references=list(references), tokenizer="whitespace", stemmer="korean"
    )
    hyp_tokens, ref_tokens = tokenize(hypotheses, "whitespace"), tokenize(references, "whitespace")
    stemmer = KoreanStemmer()
    expected = [
        single_meteor_score(ref, hyp, stemmer=stemmer, wordnet=NoSynonymWordNet())
        for hyp, ref in zip(hyp_tokens, ref_tokens, strict=True)
    ]
    assert out["scores"] == expected
    porter = metric.compute(predictions=list(hypotheses), references=list(references), tokenizer="whitespace")
    # Stemming eojeols can only add matches, and here it does (달렸다 ~ 달린다, 자동차가 ~ 자동차를).
    assert all(k >= p for k, p in zip(out["scores"], porter["scores"], strict=True))
    assert out["meteor"] > porter["meteor"]


def test_korean_stems():
    stemmer = KoreanStemmer()
    assert stemmer.stem("자동차가") == "자동차"
    assert stemmer.stem("달렸다.") == stemmer.stem("달린다") == "달리"
    assert stemmer.stem("사람들이") == "사람"  # the plural suffix 들 is grammar
    assert stemmer.stem("buses") == "buse"  # Porter for non-Hangul, as nltk
    assert stemmer.stem("가") == "가"  # no lexical head: the word stays


def test_synonym_stage_equals_nltk_with_a_wordnet_stand_in(metric, pairs):
    extra = [
        ("차량이 해양을 지나간다", "자동차가 바다를 지나간다"),
        ("건물과 빌딩", "빌딩과 고층_건물과 건물"),
        ("차 차 차", "자동차"),
    ]
    hypotheses, references = zip(*(pairs + extra), strict=True)
    wordnet = TinyKoreanWordNet()
    for tokenizer in ("whitespace", "morpheme"):
        out = metric.compute(
            predictions=list(hypotheses), references=list(references), tokenizer=tokenizer, wordnet=wordnet
        )
        hyp_tokens, ref_tokens = tokenize(hypotheses, tokenizer), tokenize(references, tokenizer)
        expected = [
            single_meteor_score(ref, hyp, wordnet=wordnet) for hyp, ref in zip(hyp_tokens, ref_tokens, strict=True)
        ]
        assert out["scores"] == expected
    # On morphemes the synonyms add matches: 차량~자동차, 해양~바다, 차~자동차 (the second pair already matches).
    plain = metric.compute(predictions=list(hypotheses[-3:]), references=list(references[-3:]), tokenizer="morpheme")
    with_synonyms = out["scores"][-3:]
    assert with_synonyms[0] > plain["scores"][0]
    assert with_synonyms[1] == plain["scores"][1]
    assert with_synonyms[2] > plain["scores"][2] == 0.0


def test_english_tokens_follow_nltk_porter_and_lowercasing(metric):
    hypothesis = "It is a guide to action which ensures that the military always obeys the commands of the party"
    reference = "It is a guide to action that ensures that the military will forever heed Party commands"
    out = metric.compute(predictions=[hypothesis], references=[reference], tokenizer="whitespace")
    assert out["scores"] == [single_meteor_score(reference.split(), hypothesis.split(), wordnet=NoSynonymWordNet())]
    # Porter on its own: "commanding" and "commands" share the stem "command".
    stemmed = metric.compute(
        predictions=["Commanding officers"], references=["commands officer"], tokenizer="whitespace"
    )
    assert stemmed["scores"][0] == pytest.approx(1 - 0.5 * (1 / 2) ** 3)


def test_hand_checked_values(metric):
    # whitespace, 3 of 3 hypothesis words matched against 4 reference words:
    #   빨간→0, 자동차가→1 (one chunk), 달린다→3 (a second chunk: the reference skips 도로를)
    #   P = 3/3, R = 3/4, fmean = P·R / (0.9·P + 0.1·R) = 0.75 / 0.975 = 10/13
    #   penalty = 0.5 · (2 chunks / 3 matches)^3 = 4/27, METEOR = (23/27) · (10/13) = 230/351 ≈ 0.65527
    out = metric.compute(
        predictions=["빨간 자동차가 달린다"], references=["빨간 자동차가 도로를 달린다"], tokenizer="whitespace"
    )
    assert out["scores"][0] == pytest.approx(float(Fraction(230, 351)), abs=1e-15)

    # whitespace, every word matched but in two blocks (C D | A B against A B C D):
    #   P = R = 1, fmean = 1; penalty = 0.5 · (2/4)^3 = 1/16; METEOR = 15/16 = 0.9375
    out = metric.compute(
        predictions=["바다가 보인다 하늘이 맑다"], references=["하늘이 맑다 바다가 보인다"], tokenizer="whitespace"
    )
    assert out["scores"][0] == pytest.approx(0.9375, abs=1e-15)

    # morphemes: 자동차 가 달리 ᆫ다 against 자동차 가 달리 었 다 (kiwi restores the stem 달리 in both):
    #   3 matches in one chunk; P = 3/4, R = 3/5, fmean = 0.45 / (0.675 + 0.06) = 30/49
    #   penalty = 0.5 · (1/3)^3 = 1/54; METEOR = (53/54) · (30/49) = 265/441 ≈ 0.60091
    hyp, ref = "자동차가 달린다.", "자동차가 달렸다."
    assert tokenize([hyp, ref], "morpheme") == [["자동차", "가", "달리", "ᆫ다"], ["자동차", "가", "달리", "었", "다"]]
    out = metric.compute(predictions=[hyp], references=[ref])
    assert out["scores"][0] == pytest.approx(float(Fraction(265, 441)), abs=1e-15)

    # The same pair as whole words: with Porter only 자동차가 matches (P = R = 1/2, fmean = 1/2, one chunk
    # per match: penalty 1/2, METEOR = 1/4); the Korean stemmer also matches 달린다. ~ 달렸다. through 달리
    # (P = R = 1, two matches in one chunk: penalty 0.5 · (1/2)^3 = 1/16, METEOR = 15/16).
    out = metric.compute(predictions=[hyp], references=[ref], tokenizer="whitespace")
    assert out["scores"][0] == pytest.approx(0.25, abs=1e-15)
    out = metric.compute(predictions=[hyp], references=[ref], tokenizer="whitespace", stemmer="korean")
    assert out["scores"][0] == pytest.approx(0.9375, abs=1e-15)


@pytest.mark.parametrize("tokenizer", ["whitespace", "morpheme"])
def test_identical_caption_scores_one_minus_the_fragmentation_penalty(metric, tokenizer):
    captions = ["하늘", "맑은 하늘", "넓은 도로 위로 자동차들이 천천히 지나가고 있다.", "배 배 배 배가 떠 있다"]
    out = metric.compute(predictions=captions, references=captions, tokenizer=tokenizer)
    for caption, score in zip(captions, out["scores"], strict=True):
        tokens = tokenize([caption], tokenizer)[0]
        # One chunk of n matches: P = R = 1 and penalty = 0.5 · (1/n)^3.
        assert score == single_meteor_score(tokens, tokens, wordnet=NoSynonymWordNet())
        assert score == pytest.approx(1 - 0.5 / len(tokens) ** 3, abs=1e-15)
        assert score < 1.0


def test_multiple_references_take_the_max(metric):
    hypothesis = "빨간 자동차가 넓은 도로를 천천히 달린다."
    references = ["하늘이 맑다.", "빨간 자동차가 도로를 달린다.", "자동차가 천천히 달린다."]
    out = metric.compute(predictions=[hypothesis], references=[references])
    singles = [metric.compute(predictions=[hypothesis], references=[ref])["scores"][0] for ref in references]
    assert out["scores"][0] == max(singles)
    assert len(set(singles)) == 3
    hyp_tokens, *ref_tokens = tokenize([hypothesis, *references], "morpheme")
    assert out["scores"][0] == meteor_score(ref_tokens, hyp_tokens, wordnet=NoSynonymWordNet())


REALISTIC_REFERENCES = [
    "맑은 날 오후, 도심의 넓은 도로 위로 자동차들이 천천히 지나가고 있다. 높은 빌딩들이 줄지어 서 있다.",
    "해가 질 무렵 하늘은 주황색으로 물들었고, 강 위의 다리에 불이 켜지기 시작한다.",
    "푸른 산등성이 너머로 구름이 천천히 흘러가며, 능선 아래로 초록 숲이 펼쳐져 있다.",
    "잔잔한 바다 위로 작은 배 한 척이 왼쪽에서 오른쪽으로 이동한다.",
    "전통 한옥의 기와지붕이 곡선을 그리며 이어지고, 마당에는 소나무가 서 있다.",
    "밤의 시가지에는 가로등과 네온사인이 밝게 빛나고, 차량의 불빛이 길게 이어진다.",
    "공원의 산책로 양옆으로 나무가 늘어서 있으며, 사람들이 여유롭게 걷고 있다.",
    "눈 덮인 들판 위로 흐린 회색 하늘이 낮게 깔려 있다.",
    "계곡을 따라 맑은 물이 흐르고, 바위 사이로 하얀 물보라가 인다.",
    "보행자들이 횡단보도를 건너며 신호등은 초록색으로 바뀌었다.",
]
REALISTIC_PREDICTIONS = [
    "도심의 도로 위로 자동차들이 지나가고 있다. 빌딩들이 서 있다.",
    "해가 지는 하늘이 주황색으로 물들고 다리에 불이 켜진다.",
    "산 너머로 구름이 흘러가고 아래로 숲이 펼쳐져 있다.",
    "바다 위로 배 한 척이 오른쪽으로 이동한다.",
    "한옥의 기와지붕이 이어지고 마당에 소나무가 있다.",
    "밤의 거리에 가로등이 밝게 빛나고 차량이 지나간다.",
    "공원 산책로에 나무가 있고 사람들이 걷고 있다.",
    "눈 덮인 들판 위로 회색 하늘이 보인다.",
    "계곡을 따라 물이 흐르고 바위 사이로 물보라가 인다.",
    "사람들이 횡단보도를 건너고 신호등이 초록색으로 바뀐다.",
]


def test_floor_is_below_matched_scores_and_well_above_zero(metric):
    out = metric.compute(predictions=REALISTIC_PREDICTIONS, references=REALISTIC_REFERENCES)
    assert out["meteor"] > out["floor"] + 0.2
    # Particles and endings match across unrelated captions: the reason the floor is reported.
    assert out["floor"] > 0.05
    other = derangement(len(REALISTIC_REFERENCES), 0)
    shuffled = metric.compute(predictions=REALISTIC_PREDICTIONS, references=[REALISTIC_REFERENCES[j] for j in other])
    assert out["floor_scores"] == shuffled["scores"]
    assert out["floor"] == metric.compute(predictions=REALISTIC_PREDICTIONS, references=REALISTIC_REFERENCES)["floor"]
    assert metric.compute(predictions=["하늘"], references=["하늘"])["floor"] is None


def test_derangement_has_no_fixed_point_and_is_deterministic():
    for n in range(2, 40):
        order = derangement(n, seed=n)
        assert sorted(order) == list(range(n))
        assert all(order[i] != i for i in range(n))
        assert order == derangement(n, seed=n)
    assert derangement(20, 0) != derangement(20, 1)


def test_tokenizers():
    text = "빨간 자동차가 달린다. 사람들이 “천천히” 걷는다!"
    morphemes = tokenize([text], "morpheme")[0]
    assert morphemes[:4] == ["빨갛", "ᆫ", "자동차", "가"]
    assert not {".", "!", "“", "”"} & set(morphemes)
    assert tokenize([text], "whitespace")[0] == text.split()
    # nltk.word_tokenize splits sentences first, so each sentence's final stop becomes a token of its own.
    words = tokenize(["자동차가 달린다. 사람이 걷는다."], "nltk")[0]
    assert words == ["자동차가", "달린다", ".", "사람이", "걷는다", "."]
    one_sentence = "빨간 자동차가, 도로를 달린다!"
    assert tokenize([one_sentence], "nltk")[0] == NLTKWordTokenizer().tokenize(one_sentence)


def test_bad_arguments(metric):
    with pytest.raises(ValueError, match="tokenizer"):
        metric.compute(predictions=["하늘"], references=["하늘"], tokenizer="jamo")
    with pytest.raises(ValueError, match="stemmer"):
        metric.compute(predictions=["하늘"], references=["하늘"], stemmer="snowball")


def test_evaluate_load_offline(tmp_path, metric):
    script = (
        "import json, evaluate\n"
        "m = evaluate.load('kvcap/metrics/korean_meteor')\n"
        "out = m.compute(predictions=['자동차가 달린다.', '하늘이 맑다.'],\n"
        "                references=['자동차가 달렸다.', '맑은 하늘'])\n"
        "print(json.dumps({'out': out, 'citation': m.citation, 'name': m.name}))\n"
    )
    loaded = run_offline_at_repo_root(script, hf_home=tmp_path / "hf")
    here = metric.compute(
        predictions=["자동차가 달린다.", "하늘이 맑다."], references=["자동차가 달렸다.", "맑은 하늘"]
    )
    assert loaded["out"]["scores"] == here["scores"]
    assert loaded["out"]["floor"] == here["floor"]
    assert "Banerjee" in loaded["citation"]
    assert loaded["name"] == "korean_meteor"
