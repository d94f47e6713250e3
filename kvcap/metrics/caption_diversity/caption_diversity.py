"""Caption diversity: how many different captions a captioner writes, and how different they are.

Self-contained so that ``evaluate.load("kvcap/metrics/caption_diversity")`` (which copies this one file) works as
well as ``from kvcap.metrics.caption_diversity.caption_diversity import CaptionDiversity``.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import datasets
import evaluate

_CITATION = """\
@inproceedings{li2016diversity,
  title     = {A Diversity-Promoting Objective Function for Neural Conversation Models},
  author    = {Li, Jiwei and Galley, Michel and Brockett, Chris and Gao, Jianfeng and Dolan, Bill},
  booktitle = {Proceedings of NAACL-HLT},
  year      = {2016},
  pages     = {110--119},
}
@inproceedings{zhu2018texygen,
  title     = {Texygen: A Benchmarking Platform for Text Generation Models},
  author    = {Zhu, Yaoming and Lu, Sidi and Zheng, Lei and Guo, Jiaxian and Zhang, Weinan and Wang, Jun and Yu, Yong},
  booktitle = {The 41st International ACM SIGIR Conference on Research \\& Development in Information Retrieval},
  year      = {2018},
  pages     = {1097--1100},
}
"""

_DESCRIPTION = """\
Diversity of a set of generated captions, to detect mode collapse (a captioner that writes the same few captions
whatever the video): the unique-caption ratio (unique captions / captions after whitespace normalisation, the
Diversity that kvcap's seed reported), distinct-1 and distinct-2 over Korean morphemes (Li et al., 2016),
Self-BLEU-4 (Zhu et al., 2018: each caption scored with BLEU-4 against all the others; lower is more diverse) and
the vocabulary size. A unique ratio below 0.5 is flagged as collapsed; the most frequent opening (first five words)
and its share show captions that all begin alike. Within each caption, it also counts repeated
word 4-grams: a captioner that loops ("... 움직입니다. 빨간색 원이 왼쪽으로 움직입니다. ...") repeats them.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[str]`): generated captions, one per clip.
    tokenizer (`str`, default `"morpheme"`): `"morpheme"` (kiwipiepy morphemes, punctuation dropped) or
        `"whitespace"` (`str.split()`); used by distinct-n, Self-BLEU and the vocabulary, not by the unique ratio.
    collapse_threshold (`float`, default 0.5): `collapsed` is `unique_ratio < collapse_threshold`.
Returns:
    unique_ratio (`float`): unique captions / captions after whitespace normalisation.
    num_captions (`int`), num_unique (`int`).
    top_share (`float`): share of the most frequent caption.
    distinct_1, distinct_2 (`float`): unique n-grams / n-grams over all captions (n-grams do not cross captions).
    self_bleu_4 (`float` or `None`): mean BLEU-4 of each caption against all the others (`None` for < 2 captions);
        nltk's `sentence_bleu` with uniform weights and smoothing method1 (epsilon 0.1), as Texygen.
    vocab_size (`int`): distinct tokens (lower-cased) over all captions.
    collapsed (`bool`), collapse_threshold (`float`), tokenizer (`str`).
    num_repeating_4gram (`int`): captions in which some word 4-gram occurs more than once (words: whitespace
        tokens, lower-cased, whatever `tokenizer` is; a caption of fewer than 4 words repeats nothing).
    repeating_4gram_ratio (`float`): num_repeating_4gram / captions (0.0 for no captions).
    max_4gram_repeats (`int`): occurrences of the most repeated word 4-gram in any one caption; 0 when no caption
        repeats one.
    top_opening (`str` or `None`): the most frequent opening, a caption's first 5 whitespace words (`None` for no
        captions); top_opening_share (`float`): the share of captions that begin with it. A captioner whose
        captions all open alike ("이 영상은 2017년 이후에 촬영된 …", the seed's) shows it here while its unique ratio
        stays high.
Examples:
    >>> diversity = evaluate.load("kvcap/metrics/caption_diversity")
    >>> out = diversity.compute(predictions=["하늘이 맑다.", "하늘이 맑다.", "바다에 배가 떠 있다."])
    >>> round(out["unique_ratio"], 3), out["collapsed"]
    (0.667, False)
"""

TOKENIZERS = ("morpheme", "whitespace")
# Kiwi tags for punctuation and symbols: a full stop in every caption is not diversity.
_PUNCTUATION_TAGS = frozenset({"SF", "SP", "SS", "SSO", "SSC", "SE", "SO", "SW", "W_EMOJI"})
BLEU_ORDER = 4
# Below this unique-caption ratio the captions count as collapsed (the seed's runs: 6–11 distinct of 97).
COLLAPSE_THRESHOLD = 0.5
BLEU_EPSILON = 0.1  # nltk SmoothingFunction().method1
# Word n-grams repeated within one caption: a caption that loops repeats its 4-grams; fluent Korean rarely does.
REPEAT_ORDER = 4
# A caption's opening: its first words, enough to tell "이 영상은 2017년 이후에 촬영된" from
# "이 영상은 2000년대에 촬영된".
OPENING_WORDS = 5


@functools.lru_cache(maxsize=1)
def _kiwi() -> Any:
    from kiwipiepy import Kiwi

    return Kiwi()


def normalize_caption(caption: str) -> str:
    """Whitespace normalisation used for the unique ratio: runs of whitespace become one space, ends stripped."""
    return " ".join(caption.split())


def tokenize(captions: Sequence[str], tokenizer: str = "morpheme") -> list[list[str]]:
    """Lower-cased tokens per caption."""
    if tokenizer == "morpheme":
        return [
            [token.form.lower() for token in tokens if token.tag not in _PUNCTUATION_TAGS]
            for tokens in _kiwi().tokenize(list(captions))
        ]
    if tokenizer == "whitespace":
        return [caption.lower().split() for caption in captions]
    raise ValueError(f"tokenizer must be one of {TOKENIZERS}, got {tokenizer!r}")


def _ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def repeated_ngrams(caption: str, n: int = REPEAT_ORDER) -> dict[str, int]:
    """The word n-grams occurring more than once in ``caption``, each with its count (overlaps counted).

    Words are whitespace tokens, lower-cased (the ``"whitespace"`` tokenizer; runs of whitespace count as one, as
    :func:`normalize_caption`); an n-gram is its words joined by one space. Most frequent first, then in order of
    first occurrence; empty for a caption of fewer than ``n`` words.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    counts = Counter(" ".join(gram) for gram in _ngrams(caption.lower().split(), n))
    return {gram: count for gram, count in counts.most_common() if count > 1}


def distinct_n(token_lists: Sequence[Sequence[str]], n: int) -> float:
    """Unique n-grams / n-grams, pooled over captions; 0.0 when there is no n-gram at all."""
    grams = [gram for tokens in token_lists for gram in _ngrams(tokens, n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def self_bleu(token_lists: Sequence[Sequence[str]], order: int = BLEU_ORDER) -> list[float]:
    """BLEU of each caption against all the others, equal to nltk's ``sentence_bleu`` with smoothing method1.

    nltk rebuilds every reference's n-gram counts for every hypothesis (quadratic in the number of captions);
    here each n-gram keeps its highest and second-highest count over captions, so "the most any *other* caption
    has" is one look-up and the whole set costs one pass over its n-grams.
    """
    weights = [1.0 / order] * order
    counts = [[Counter(_ngrams(tokens, n)) for n in range(1, order + 1)] for tokens in token_lists]
    best: list[dict[tuple[str, ...], tuple[int, int, int]]] = [{} for _ in range(order)]  # (top, owner, second)
    for owner, per_order in enumerate(counts):
        for n_index, counter in enumerate(per_order):
            table = best[n_index]
            for gram, count in counter.items():
                top, top_owner, second = table.get(gram, (0, -1, 0))
                if count > top:
                    table[gram] = (count, owner, top)
                elif count > second:
                    table[gram] = (top, top_owner, count)
    lengths = Counter(len(tokens) for tokens in token_lists)

    scores = []
    for index, tokens in enumerate(token_lists):
        hyp_len = len(tokens)
        numerators, denominators = [], []
        for n_index, counter in enumerate(counts[index]):
            table = best[n_index]
            clipped = 0
            for gram, count in counter.items():
                top, top_owner, second = table[gram]
                clipped += min(count, second if top_owner == index else top)
            numerators.append(clipped)
            denominators.append(max(1, sum(counter.values())))
        if numerators[0] == 0:
            scores.append(0.0)
            continue
        # The closest other length, ties to the shorter one, as nltk's closest_ref_length.
        lengths[hyp_len] -= 1
        ref_len = min((length for length, k in lengths.items() if k > 0), key=lambda r: (abs(r - hyp_len), r))
        lengths[hyp_len] += 1
        brevity = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
        # Same float operations as nltk: method1 adds epsilon to zero numerators, then exp of the weighted log sum.
        precisions = [
            (num + BLEU_EPSILON) / den if num == 0 else num / den
            for num, den in zip(numerators, denominators, strict=True)
        ]
        log_sum = math.fsum(w * math.log(p) for w, p in zip(weights, precisions, strict=True))
        scores.append(brevity * math.exp(log_sum))
    return scores


def diversity(
    predictions: Sequence[str], tokenizer: str = "morpheme", collapse_threshold: float = COLLAPSE_THRESHOLD
) -> dict[str, Any]:
    """The metric without the ``evaluate`` wrapper; see the module's ``_KWARGS_DESCRIPTION``."""
    total = len(predictions)
    normalised = Counter(normalize_caption(caption) for caption in predictions)
    token_lists = tokenize(list(predictions), tokenizer)
    unique_ratio = len(normalised) / total if total else 0.0
    bleus = self_bleu(token_lists) if total >= 2 else []
    repeats = [repeated_ngrams(caption, REPEAT_ORDER) for caption in predictions]
    num_repeating = sum(bool(grams) for grams in repeats)
    openings = Counter(" ".join(caption.split()[:OPENING_WORDS]) for caption in predictions)
    top_opening, top_opening_count = openings.most_common(1)[0] if total else (None, 0)
    return {
        "unique_ratio": unique_ratio,
        "num_captions": total,
        "num_unique": len(normalised),
        "top_share": normalised.most_common(1)[0][1] / total if total else 0.0,
        "distinct_1": distinct_n(token_lists, 1),
        "distinct_2": distinct_n(token_lists, 2),
        "self_bleu_4": sum(bleus) / len(bleus) if bleus else None,
        "vocab_size": len({token for tokens in token_lists for token in tokens}),
        "collapsed": unique_ratio < collapse_threshold,
        "collapse_threshold": collapse_threshold,
        "tokenizer": tokenizer,
        "num_repeating_4gram": num_repeating,
        "repeating_4gram_ratio": num_repeating / total if total else 0.0,
        "max_4gram_repeats": max((count for grams in repeats for count in grams.values()), default=0),
        "top_opening": top_opening,
        "top_opening_share": top_opening_count / total if total else 0.0,
    }


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class CaptionDiversity(evaluate.Metric):
    """Unique ratio, distinct-1/2, Self-BLEU-4, vocabulary and repeated 4-grams of generated captions."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string", id="sequence")}),
            reference_urls=["https://aclanthology.org/N16-1014", "https://arxiv.org/abs/1802.01886"],
        )

    def _compute(
        self, predictions: Sequence[str], tokenizer: str = "morpheme", collapse_threshold: float = COLLAPSE_THRESHOLD
    ) -> dict[str, Any]:
        return diversity(predictions, tokenizer=tokenizer, collapse_threshold=collapse_threshold)
