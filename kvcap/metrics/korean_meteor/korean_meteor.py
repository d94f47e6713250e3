"""Korean METEOR: nltk's METEOR on Korean morphemes, offline, with a shuffled-reference floor.

Self-contained so that ``evaluate.load("kvcap/metrics/korean_meteor")`` (which copies this one file) works as well as
``from kvcap.metrics.korean_meteor.korean_meteor import KoreanMeteor``.
"""

from __future__ import annotations

import functools
import itertools
import random
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import datasets
import evaluate
import numpy as np

_CITATION = """\
@inproceedings{banarjee2005,
  title     = {{METEOR}: An Automatic Metric for {MT} Evaluation with Improved Correlation with Human Judgments},
  author    = {Banerjee, Satanjeev and Lavie, Alon},
  booktitle = {Proceedings of the {ACL} Workshop on Intrinsic and Extrinsic Evaluation Measures for Machine
               Translation and/or Summarization},
  year      = {2005},
  pages     = {65--72},
  url       = {https://aclanthology.org/W05-0909},
}
@inproceedings{lavie2007,
  title     = {{METEOR}: An Automatic Metric for {MT} Evaluation with High Levels of Correlation with Human
               Judgments},
  author    = {Lavie, Alon and Agarwal, Abhaya},
  booktitle = {Proceedings of the Second Workshop on Statistical Machine Translation},
  year      = {2007},
  pages     = {228--231},
}
"""

_DESCRIPTION = """\
METEOR (Banerjee & Lavie, 2005) as nltk computes it (alpha 0.9, beta 3, gamma 0.5; exact, then stem matching with
nltk's greedy alignment; the best of several references), made usable for Korean and offline: captions are split
into morphemes with kiwipiepy by default, the WordNet synonym stage is off unless a WordNet is supplied (no corpus
download), and every result carries the shuffled-reference floor: each hypothesis scored against another clip's
reference. Korean particles and endings alone reach a METEOR of about 0.2, so a score means little without it.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[str]`): generated captions.
    references (`list[str]` or `list[list[str]]`): one reference, or several, per prediction; several take the max.
    tokenizer (`str`, default `"morpheme"`): `"morpheme"` (kiwipiepy morphemes, punctuation dropped),
        `"whitespace"` (`str.split()`), or `"nltk"` (what the Hub's `meteor` metric does: `nltk.word_tokenize`,
        with an untrained Punkt sentence splitter when the punkt_tab data is not installed).
    stemmer (`str`, default `"porter"`): `"porter"` (nltk's PorterStemmer, as nltk's METEOR; it leaves Hangul
        unchanged), `"korean"` (the lexical stem of a Hangul word from kiwipiepy, Porter for the rest; for the
        whitespace and nltk tokenizers, where a token is a whole word with its particles and endings) or `"none"`.
    wordnet (`None`, `"nltk"` or an object with `synsets(word)`): synonym stage; `None` (default) skips it,
        `"nltk"` uses nltk's WordNet corpus if it is installed (never downloaded).
    alpha, beta, gamma (`float`): nltk's parameters, defaults 0.9, 3.0, 0.5.
    floor_seed (`int`, default 0): seed of the derangement that pairs each hypothesis with another clip's reference.
Returns:
    meteor (`float`): mean sentence METEOR.
    scores (`list[float]`): sentence METEOR per prediction.
    floor (`float` or `None`): mean METEOR against another clip's reference (`None` with fewer than 2 clips).
    floor_scores (`list[float]`): those sentence scores.
    tokenizer (`str`), stemmer (`str`): what ran, with versions where they change the tokens.
Examples:
    >>> meteor = evaluate.load("kvcap/metrics/korean_meteor")
    >>> out = meteor.compute(predictions=["빨간 자동차가 도로를 달린다."],
    ...                      references=["빨간 자동차가 고속도로를 달리고 있다."])
    >>> sorted(out)
    ['floor', 'floor_scores', 'meteor', 'scores', 'stemmer', 'tokenizer']
"""

TOKENIZERS = ("morpheme", "whitespace", "nltk")
STEMMERS = ("porter", "korean", "none")

# Kiwi tags for punctuation and symbols: METEOR counts words, and a full stop in every sentence would otherwise
# match for free.
_PUNCTUATION_TAGS = frozenset({"SF", "SP", "SS", "SSO", "SSC", "SE", "SO", "SW", "W_EMOJI"})
# Kiwi tags that make up a word's lexical stem (irregular variants such as VV-R are matched on their prefix).
# The copula VCP and derivational suffixes (XSV, XSA, XSN) are grammar, so a stem ends before them.
_LEXICAL_TAGS = frozenset(
    {"NNG", "NNP", "NNB", "NR", "NP", "VV", "VA", "VX", "VCN", "MM", "MAG", "MAJ", "IC", "XR", "XPN", "SL", "SH", "SN"}
)
_HANGUL = re.compile(r"[\uac00-\ud7a3\u1100-\u11ff\u3130-\u318f]")


# --------------------------------------------------------------------------------------------- tokenisation


@functools.lru_cache(maxsize=1)
def _kiwi() -> Any:
    from kiwipiepy import Kiwi

    return Kiwi()


def _kiwi_version() -> str:
    import kiwipiepy

    return getattr(kiwipiepy, "__version__", "unknown")


@functools.lru_cache(maxsize=1)
def _nltk_sentence_splitter() -> tuple[Callable[[str], list[str]], str]:
    """nltk's English Punkt model when installed, else an untrained Punkt (no abbreviation list)."""
    from nltk.tokenize import PunktSentenceTokenizer, sent_tokenize

    try:
        sent_tokenize("a. b.")
    except LookupError:
        return PunktSentenceTokenizer().tokenize, "nltk (untrained Punkt: punkt_tab not installed)"
    return sent_tokenize, "nltk (punkt_tab)"


def tokenize(texts: Sequence[str], tokenizer: str = "morpheme") -> list[list[str]]:
    """Split each text into the tokens METEOR matches on."""
    if tokenizer == "morpheme":
        return [
            [token.form for token in tokens if token.tag not in _PUNCTUATION_TAGS]
            for tokens in _kiwi().tokenize(list(texts))
        ]
    if tokenizer == "whitespace":
        return [text.split() for text in texts]
    if tokenizer == "nltk":
        from nltk.tokenize import NLTKWordTokenizer

        split_sentences, _ = _nltk_sentence_splitter()
        word_tokenizer = NLTKWordTokenizer()
        # nltk.word_tokenize: sentences first, because the Treebank rules split a full stop only at the end.
        return [
            [token for sentence in split_sentences(text) for token in word_tokenizer.tokenize(sentence)]
            for text in texts
        ]
    raise ValueError(f"tokenizer must be one of {TOKENIZERS}, got {tokenizer!r}")


def tokenizer_description(tokenizer: str) -> str:
    """Which tokenizer actually runs, with what makes its tokens differ between installs."""
    if tokenizer == "morpheme":
        return f"morpheme (kiwipiepy {_kiwi_version()})"
    if tokenizer == "nltk":
        return _nltk_sentence_splitter()[1]
    return tokenizer


# --------------------------------------------------------------------------------------------- stemming


class _IdentityStemmer:
    def stem(self, word: str) -> str:
        return word


@functools.lru_cache(maxsize=1)
def _porter() -> Any:
    from nltk.stem.porter import PorterStemmer

    return PorterStemmer()


@functools.lru_cache(maxsize=65536)
def _porter_stem(word: str) -> str:
    # Porter is the slowest step of scoring long captions, and caption words repeat a lot.
    return _porter().stem(word)


@functools.lru_cache(maxsize=65536)
def _korean_stem(word: str) -> str:
    if not _HANGUL.search(word):
        return _porter_stem(word)
    morphemes = _kiwi().tokenize(word)
    start = 0
    while start < len(morphemes) and morphemes[start].tag in _PUNCTUATION_TAGS:
        start += 1
    stem = []
    for morpheme in morphemes[start:]:
        if morpheme.tag.split("-")[0] not in _LEXICAL_TAGS:
            break
        stem.append(morpheme.form)
    return "".join(stem) if stem else word


class CachedPorterStemmer:
    """nltk's PorterStemmer (NLTK extensions, lower-casing), memoised; it leaves Hangul unchanged."""

    def stem(self, word: str) -> str:
        return _porter_stem(word)


class KoreanStemmer:
    """Stem of a Hangul word: its leading lexical morphemes (자동차가 → 자동차, 달렸다 → 달리); Porter otherwise.

    Meant for whole words (whitespace or nltk tokens); morphemes from the morpheme tokenizer are stems already.
    """

    def stem(self, word: str) -> str:
        return _korean_stem(word)


def resolve_stemmer(stemmer: str = "porter", tokenizer: str = "morpheme") -> str:
    """The stemmer that runs: ``"korean"`` on morphemes is ``"porter"``, since kiwi already split off the endings."""
    if stemmer not in STEMMERS:
        raise ValueError(f"stemmer must be one of {STEMMERS}, got {stemmer!r}")
    return "porter" if stemmer == "korean" and tokenizer == "morpheme" else stemmer


def make_stemmer(stemmer: str = "porter", tokenizer: str = "morpheme") -> Any:
    """A stemmer object (``.stem(word)``, as nltk's METEOR takes) for the given tokenizer."""
    return {"porter": CachedPorterStemmer, "korean": KoreanStemmer, "none": _IdentityStemmer}[
        resolve_stemmer(stemmer, tokenizer)
    ]()


def wordnet_synonyms(wordnet: Any) -> Callable[[str], frozenset[str]]:
    """Synonyms as nltk's METEOR reads them from a WordNet reader: single-word lemma names of every synset."""

    @functools.lru_cache(maxsize=65536)
    def synonyms(word: str) -> frozenset[str]:
        return frozenset(
            lemma.name() for synset in wordnet.synsets(word) for lemma in synset.lemmas() if "_" not in lemma.name()
        )

    return synonyms


def _resolve_wordnet(wordnet: Any) -> Callable[[str], Iterable[str]] | None:
    if wordnet is None:
        return None
    if wordnet == "nltk":
        import nltk

        try:
            nltk.data.find("corpora/wordnet")
        except LookupError:
            try:
                nltk.data.find("corpora/wordnet.zip")
            except LookupError as error:
                message = "wordnet='nltk' needs nltk's WordNet corpus installed; kvcap never downloads it"
                raise LookupError(message) from error
        from nltk.corpus import wordnet as nltk_wordnet

        return wordnet_synonyms(nltk_wordnet)
    return wordnet_synonyms(wordnet)


# --------------------------------------------------------------------------------------------- scoring

Enumerated = list[tuple[int, str]]


def _match(hypothesis: Enumerated, reference: Enumerated) -> tuple[list[tuple[int, int]], Enumerated, Enumerated]:
    """nltk's greedy matching: from the last hypothesis word back, take the latest unused equal reference word."""
    positions: dict[str, list[int]] = defaultdict(list)
    for j, (_, word) in enumerate(reference):
        positions[word].append(j)
    pairs, used_h, used_r = [], set(), set()
    for i in range(len(hypothesis) - 1, -1, -1):
        candidates = positions.get(hypothesis[i][1])
        if candidates:
            j = candidates.pop()
            used_h.add(i)
            used_r.add(j)
            pairs.append((hypothesis[i][0], reference[j][0]))
    return (
        pairs,
        [pair for i, pair in enumerate(hypothesis) if i not in used_h],
        [pair for j, pair in enumerate(reference) if j not in used_r],
    )


def _synonym_match(
    hypothesis: Enumerated, reference: Enumerated, synonyms: Callable[[str], Iterable[str]]
) -> list[tuple[int, int]]:
    """nltk's synonym stage: a hypothesis word takes the latest unused reference word among its synonyms."""
    positions: dict[str, list[int]] = defaultdict(list)
    for j, (_, word) in enumerate(reference):
        positions[word].append(j)
    pairs = []
    for i in range(len(hypothesis) - 1, -1, -1):
        best_j, best_word = -1, None
        for candidate in set(synonyms(hypothesis[i][1])) | {hypothesis[i][1]}:
            available = positions.get(candidate)
            if available and available[-1] > best_j:
                best_j, best_word = available[-1], candidate
        if best_word is not None:
            positions[best_word].pop()
            pairs.append((hypothesis[i][0], reference[best_j][0]))
    return pairs


def align(
    hypothesis: Sequence[str],
    reference: Sequence[str],
    stemmer: Any = None,
    synonyms: Callable[[str], Iterable[str]] | None = None,
) -> list[tuple[int, int]]:
    """Matched (hypothesis index, reference index) pairs sorted by hypothesis index, after lower-casing."""
    stemmer = stemmer if stemmer is not None else make_stemmer("porter")
    hyp = [(i, word.lower()) for i, word in enumerate(hypothesis)]
    ref = [(j, word.lower()) for j, word in enumerate(reference)]
    exact, hyp, ref = _match(hyp, ref)
    # As in nltk, the leftovers stay stemmed, so the synonym stage looks up stems.
    hyp = [(i, stemmer.stem(word)) for i, word in hyp]
    ref = [(j, stemmer.stem(word)) for j, word in ref]
    stemmed, hyp, ref = _match(hyp, ref)
    # Without synonyms the stage is a no-op: after the stem stage no equal stems are left on both sides.
    by_synonym = _synonym_match(hyp, ref, synonyms) if synonyms is not None and hyp and ref else []
    return sorted(exact + stemmed + by_synonym, key=lambda pair: pair[0])


def count_chunks(matches: Sequence[tuple[int, int]]) -> int:
    """Fewest runs of matches adjacent in both hypothesis and reference (nltk counts 1 for no matches)."""
    chunks = 1
    for previous, current in itertools.pairwise(matches):
        if not (current[0] == previous[0] + 1 and current[1] == previous[1] + 1):
            chunks += 1
    return chunks


def sentence_meteor(
    reference: Sequence[str],
    hypothesis: Sequence[str],
    stemmer: Any = None,
    synonyms: Callable[[str], Iterable[str]] | None = None,
    alpha: float = 0.9,
    beta: float = 3.0,
    gamma: float = 0.5,
) -> float:
    """METEOR of one tokenised hypothesis against one tokenised reference, bit-for-bit as nltk computes it."""
    matches = align(hypothesis, reference, stemmer=stemmer, synonyms=synonyms)
    matches_count = len(matches)
    # Same operations in the same order as nltk.translate.meteor_score.single_meteor_score, so floats agree exactly.
    try:
        precision = float(matches_count) / len(hypothesis)
        recall = float(matches_count) / len(reference)
        fmean = (precision * recall) / (alpha * precision + (1 - alpha) * recall)
        fragmentation = float(count_chunks(matches)) / matches_count
    except ZeroDivisionError:
        return 0.0
    penalty = gamma * fragmentation**beta
    return (1 - penalty) * fmean


def derangement(n: int, seed: int = 0) -> list[int]:
    """A permutation with no fixed point (Sattolo's algorithm: one random n-cycle), the same for the same seed."""
    order = list(range(n))
    rng = random.Random(seed)
    for i in range(n - 1, 0, -1):
        j = rng.randrange(i)
        order[i], order[j] = order[j], order[i]
    return order


def meteor_scores(
    predictions: Sequence[str],
    references: Sequence[str] | Sequence[Sequence[str]],
    tokenizer: str = "morpheme",
    stemmer: str = "porter",
    wordnet: Any = None,
    alpha: float = 0.9,
    beta: float = 3.0,
    gamma: float = 0.5,
    floor_seed: int = 0,
) -> dict[str, Any]:
    """The metric without the ``evaluate`` wrapper; see the module's ``_KWARGS_DESCRIPTION``."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if tokenizer not in TOKENIZERS:
        raise ValueError(f"tokenizer must be one of {TOKENIZERS}, got {tokenizer!r}")
    stem = make_stemmer(stemmer, tokenizer)
    synonyms = _resolve_wordnet(wordnet)
    reference_groups = [[ref] if isinstance(ref, str) else list(ref) for ref in references]
    if any(not group for group in reference_groups):
        raise ValueError("every prediction needs at least one reference")
    hyp_tokens = tokenize(list(predictions), tokenizer)
    flat_refs = tokenize([ref for group in reference_groups for ref in group], tokenizer)
    ref_tokens, start = [], 0
    for group in reference_groups:
        ref_tokens.append(flat_refs[start : start + len(group)])
        start += len(group)

    def best(hypothesis: list[str], refs: list[list[str]]) -> float:
        return max(sentence_meteor(ref, hypothesis, stem, synonyms, alpha, beta, gamma) for ref in refs)

    scores = [best(hyp, refs) for hyp, refs in zip(hyp_tokens, ref_tokens, strict=True)]
    floor_scores: list[float] = []
    if len(scores) >= 2:
        other = derangement(len(scores), floor_seed)
        floor_scores = [best(hyp, ref_tokens[other[i]]) for i, hyp in enumerate(hyp_tokens)]
    return {
        # np.mean, as the Hub's meteor metric averages, so seed numbers reproduce to the last bit.
        "meteor": float(np.mean(scores)) if scores else 0.0,
        "scores": scores,
        "floor": float(np.mean(floor_scores)) if floor_scores else None,
        "floor_scores": floor_scores,
        "tokenizer": tokenizer_description(tokenizer),
        "stemmer": resolve_stemmer(stemmer, tokenizer),
    }


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class KoreanMeteor(evaluate.Metric):
    """METEOR for Korean captions with its shuffled-reference floor."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features(
                    {
                        "predictions": datasets.Value("string", id="sequence"),
                        "references": datasets.Sequence(datasets.Value("string", id="sequence"), id="references"),
                    }
                ),
                datasets.Features(
                    {
                        "predictions": datasets.Value("string", id="sequence"),
                        "references": datasets.Value("string", id="sequence"),
                    }
                ),
            ],
            codebase_urls=["https://github.com/nltk/nltk/blob/develop/nltk/translate/meteor_score.py"],
            reference_urls=["https://aclanthology.org/W05-0909", "https://github.com/bab2min/kiwipiepy"],
        )

    def _compute(
        self,
        predictions: Sequence[str],
        references: Sequence[str] | Sequence[Sequence[str]],
        tokenizer: str = "morpheme",
        stemmer: str = "porter",
        wordnet: Any = None,
        alpha: float = 0.9,
        beta: float = 3.0,
        gamma: float = 0.5,
        floor_seed: int = 0,
    ) -> dict[str, Any]:
        return meteor_scores(
            predictions,
            references,
            tokenizer=tokenizer,
            stemmer=stemmer,
            wordnet=wordnet,
            alpha=alpha,
            beta=beta,
            gamma=gamma,
            floor_seed=floor_seed,
        )
