"""Synthetic kvcap demo corpus in the AI-Hub split layout.

Every clip is a small mp4 (default 96x96, 16 frames at 8 fps, libx264 yuv420p) showing one or two coloured
shapes moving over a background whose sky colour gives the time of day and whose ground band gives the
category. The Korean caption (a short paragraph from one of four templates) states exactly what is visible,
and the label stores the same facts as structured attributes, so the ``kvcap/metrics/caption_attributes`` metric can
check whether a generated caption names the right colour, shape, motion, time of day and category.

Layout written (the one ``processing.aihub`` reads)::

    OUT/train/videos/kvcap_demo_train_00000.mp4   OUT/train/labels/kvcap_demo_train_00000.json
    OUT/val/videos/...                             OUT/val/labels/...
    OUT/demo_corpus.json                           (summary: format version, vocabulary, held-out pairs, counts)
    OUT/README.md

Val holds out colour x shape pairs (``HELD_OUT_PAIRS``) that never occur in train: even-numbered val clips
always show one, so compositional generalisation can be measured apart from in-distribution accuracy.

Usage: ``python kvcap/demo/corpus.py --out DIR [--num-train 1200 --num-val 60 --seed 0]``.
Output is deterministic: each clip draws from its own RNG seeded by (seed, split, index) and x264 runs
single-threaded, so the same arguments give the same bytes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

# ---------------------------------------------------------------------------------------------------------
# Vocabulary. The Korean words here appear verbatim in captions, so other code can look for them.
# RGB values are far apart in luma or chroma (and from every sky colour) so they survive yuv420 at 64 px.
# ---------------------------------------------------------------------------------------------------------
COLORS: dict[str, tuple[int, int, int]] = {
    "빨간색": (220, 30, 30),
    "파란색": (30, 70, 235),
    "초록색": (20, 175, 40),
    "노란색": (250, 220, 0),
    "흰색": (250, 250, 250),
    "보라색": (145, 40, 195),
}
SHAPES: tuple[str, ...] = ("원", "사각형", "삼각형", "마름모", "막대")
# Motion id -> phrase that every caption of that motion contains verbatim.
MOTIONS: dict[str, str] = {
    "left_to_right": "왼쪽에서 오른쪽으로",
    "right_to_left": "오른쪽에서 왼쪽으로",
    "top_to_bottom": "위에서 아래로",
    "bottom_to_top": "아래에서 위로",
    "stationary": "제자리에 멈춰",
}
# Time of day -> sky colour word, sky RGB, and the phrases captions use for it (all contain the key or sky word).
TIMES_OF_DAY: dict[str, dict[str, Any]] = {
    "낮": {"sky": "하늘색", "rgb": (125, 195, 245), "phrase": "맑은 낮", "sky_desc": "맑은 하늘색 하늘"},
    "밤": {"sky": "남색", "rgb": (15, 20, 75), "phrase": "어두운 밤", "sky_desc": "별 없는 남색 하늘"},
    "노을": {
        "sky": "주황색",
        "rgb": (235, 130, 50),
        "phrase": "노을이 지는 저녁",
        "sky_desc": "노을로 물든 주황색 하늘",
    },
    "흐린 날": {"sky": "회색", "rgb": (135, 135, 140), "phrase": "흐린 날", "sky_desc": "구름이 낀 회색 하늘"},
}
SKY_COLORS: tuple[str, ...] = tuple(v["sky"] for v in TIMES_OF_DAY.values())
# Category is shown by the ground band; sampling follows the real AI-Hub ratio (40.3 / 34.3 / 25.3 %).
CATEGORIES: tuple[str, ...] = ("시가지", "자연", "건축물")
CATEGORY_WEIGHTS: tuple[float, ...] = (0.403, 0.343, 0.253)
GROUNDS: dict[str, str] = {
    "시가지": "흰 차선이 그려진 아스팔트 도로",
    "자연": "풀이 무성한 초원",
    "건축물": "붉은 벽돌로 지은 건물 외벽",
}
# Colour x shape pairs that appear only in val: one per shape, no colour twice, so every colour and every
# shape is still seen in train (with 4 and 5 partners respectively).
HELD_OUT_PAIRS: tuple[tuple[str, str], ...] = (
    ("빨간색", "삼각형"),
    ("파란색", "원"),
    ("초록색", "막대"),
    ("노란색", "마름모"),
    ("보라색", "사각형"),
)
ALL_PAIRS: tuple[tuple[str, str], ...] = tuple((c, s) for c in COLORS for s in SHAPES)
TRAIN_PAIRS: tuple[tuple[str, str], ...] = tuple(p for p in ALL_PAIRS if p not in HELD_OUT_PAIRS)
_SPLIT_IDS = {"train": 0, "val": 1, "grammar": 2, "pretrain": 3}


# ---------------------------------------------------------------------------------------------------------
# Korean particles: the choice depends on whether the last syllable has a final consonant (batchim).
# ---------------------------------------------------------------------------------------------------------
def _has_batchim(word: str) -> bool:
    code = ord(word[-1]) - 0xAC00
    return 0 <= code <= 11171 and code % 28 != 0


def _josa(word: str, with_batchim: str, without: str) -> str:
    return word + (with_batchim if _has_batchim(word) else without)


# ---------------------------------------------------------------------------------------------------------
# Scene sampling
# ---------------------------------------------------------------------------------------------------------
def _sample_objects(
    rng: np.random.Generator, pairs: tuple[tuple[str, str], ...], forced: tuple[str, str] | None
) -> list[dict[str, Any]]:
    n = 1 + int(rng.random() < 0.5)
    chosen: list[tuple[str, str]] = [forced] if forced is not None else []
    while len(chosen) < n:
        pair = pairs[int(rng.integers(len(pairs)))]
        # Distinct colours keep "the red one" unambiguous when two shapes share the screen.
        if all(pair[0] != c for c, _ in chosen):
            chosen.append(pair)
    motion_ids = list(MOTIONS)
    objects = []
    for color, shape in chosen:
        motion_id = motion_ids[int(rng.integers(len(motion_ids)))]
        objects.append(
            {
                "color": color,
                "shape": shape,
                "motion": MOTIONS[motion_id],
                "motion_id": motion_id,
                "held_out": (color, shape) in HELD_OUT_PAIRS,
            }
        )
    return objects


def _sample_scene(
    rng: np.random.Generator,
    category: str,
    pairs: tuple[tuple[str, str], ...],
    forced: tuple[str, str] | None = None,
) -> dict[str, Any]:
    tods = list(TIMES_OF_DAY)
    tod = tods[int(rng.integers(len(tods)))]
    objects = _sample_objects(rng, pairs, forced)
    return {
        "time_of_day": tod,
        "sky_color": TIMES_OF_DAY[tod]["sky"],
        # The words a caption may name the time of day with, so the attribute metric needs no copy of TIMES_OF_DAY.
        "time_of_day_words": [TIMES_OF_DAY[tod]["sky"], TIMES_OF_DAY[tod]["phrase"]],
        "category": category,
        "ground": GROUNDS[category],
        "num_objects": len(objects),
        "objects": objects,
        "has_held_out": any(o["held_out"] for o in objects),
        # What the caption states that no frame shows (None: not stated).
        "filming_time": _pick(rng, FILMING_TIMES) if rng.random() < FILMING_TIME_SHARE else None,
        "sign": _pick(rng, SIGNS) if rng.random() < SIGNAGE_SHARE else None,
        "season": _pick(rng, SEASONS) if rng.random() < SEASON_SHARE else None,
    }


# ---------------------------------------------------------------------------------------------------------
# Captions: AI-Hub-like paragraphs. Each slot has several wordings, so no two captions need share a sentence; the
# visual facts (colour + shape as one phrase, its motion phrase in the same sentence, a time-of-day word, the
# category word) appear verbatim, and some sentences state what no frame can show, as AI-Hub's labels do.
# ---------------------------------------------------------------------------------------------------------
# Shares of captions with a sentence the frames cannot support. No AI-Hub label is at hand here to count; the seed's
# collapsed runs all opened with the filming-time sentence ("이 영상은 2017년 이후에 촬영된 것으로…"), so it is
# the common case, and quoted signage is rarer. Arguments of generate_corpus, to be set from counts of real labels.
FILMING_TIME_SHARE = 0.6
SIGNAGE_SHARE = 0.25
SEASON_SHARE = 0.3
# The scene keys of the facts captions state that no frame shows.
UNSUPPORTED_FACTS = ("filming_time", "sign", "season")
FILMING_TIMES = ("1990년대 후반", "2000년대 초반", "2000년대", "2010년대", "2010년대 중반", "2017년 이후", "2020년대")
SIGNS = ("중앙 식당", "시장 입구", "약국", "관광 안내소", "버스 정류장", "행복 마트")
SEASONS = ("늦은 봄으로", "초여름으로", "한여름으로", "가을로", "초겨울로")
MOODS = ("차분한", "평화로운", "고요한", "단정한", "한적한")
# Category -> sentences about the ground band that say more than its name (what the frames do show of it).
GROUND_DETAILS: dict[str, tuple[str, ...]] = {
    "시가지": (
        "도로 가운데에는 흰 차선이 일정한 간격으로 끊어지며 그려져 있다.",
        "아스팔트 표면은 짙은 회색이고, 차선 외에 다른 표시는 보이지 않는다.",
    ),
    "자연": (
        "초원에는 짙은 풀이 군데군데 뭉쳐 자라 있어 표면이 고르지 않다.",
        "풀밭은 화면 아래쪽 끝까지 이어지며 짙은 풀포기가 점점이 흩어져 있다.",
    ),
    "건축물": (
        "벽돌은 밝은 줄눈을 사이에 두고 엇갈리게 쌓여 있다.",
        "외벽의 벽돌은 크기가 고르고 줄눈이 가지런하게 이어져 있다.",
    ),
}
LIGHT_SENTENCES: dict[str, tuple[str, ...]] = {
    "낮": ("햇빛이 밝아 화면 전체가 선명하게 보인다.", "밝은 빛 아래에서 색이 또렷하게 드러난다."),
    "밤": ("빛이 적어 배경은 어둡지만 도형은 분명하게 보인다.", "어두운 배경 덕분에 도형이 더 밝게 두드러진다."),
    "노을": ("해가 지며 하늘이 붉게 물들어 따뜻한 느낌을 준다.", "저녁 햇빛이 비스듬히 비쳐 하늘빛이 따뜻하다."),
    "흐린 날": ("구름에 가려 빛이 부드럽고 그림자가 거의 없다.", "흐린 하늘 아래에서 색이 다소 차분하게 보인다."),
}


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _pick_index(rng: np.random.Generator, count: int, avoid: int | None = None) -> int:
    """An index below ``count``, uniformly, never ``avoid`` (None: any)."""
    if avoid is None:
        return int(rng.integers(count))
    index = int(rng.integers(count - 1))
    return index + (index >= avoid)


def _object_sentence(
    obj: dict[str, Any], rng: np.random.Generator, lead: str = "", avoid: int | None = None
) -> tuple[str, int]:
    """One sentence naming the object's colour + shape and its motion phrase (what the attribute metric checks),
    and the index of its wording; ``avoid`` is a wording it must not take (the other object's, same motion)."""
    noun = f"{obj['color']} {obj['shape']}"
    subject = _josa(noun, "이", "가")
    topic = _josa(noun, "은", "는")
    motion = obj["motion"]
    if obj["motion_id"] == "stationary":
        options = [
            f"{topic} 움직이지 않고 제자리에 멈춰 있다.",
            f"{subject} 화면 한 곳에서 제자리에 멈춰 있다.",
            f"{topic} 영상이 끝날 때까지 제자리에 멈춰 서 있다.",
            f"{subject} 처음부터 끝까지 제자리에 멈춰 있는 모습이다.",
        ]
    else:
        verbs = {
            "top_to_bottom": ("내려온다", "떨어진다"),
            "bottom_to_top": ("올라간다", "떠오른다"),
        }.get(obj["motion_id"], ("이동한다", "지나간다", "움직인다"))
        verb = _pick(rng, verbs)
        options = [
            f"{subject} {motion} {verb}.",
            f"{motion} 움직이는 {subject} 눈에 띈다.",
            f"{topic} 일정한 속도로 {motion} {verb}.",
            f"{subject} 화면 {motion} 천천히 {verb}.",
            f"{topic} 영상 내내 {motion} 미끄러지듯 {verb}.",
        ]
    wording = _pick_index(rng, len(options), avoid)
    return lead + options[wording], wording


def _object_detail(obj: dict[str, Any], rng: np.random.Generator, avoid: int | None = None) -> tuple[str, int]:
    """A sentence about the object's look that names neither colour nor motion, and the index of its wording;
    ``avoid`` is a wording it must not take (the other object's)."""
    shape = obj["shape"]
    options = [
        f"{_josa(shape, '은', '는')} 윤곽이 또렷하고 크기는 끝까지 변하지 않는다.",
        f"{_josa(shape, '의', '의')} 가장자리는 매끄럽고 그림자는 보이지 않는다.",
        "도형의 표면에는 무늬가 없고 색이 고르게 칠해져 있다.",
    ]
    wording = _pick_index(rng, len(options), avoid)
    return options[wording], wording


def _caption(scene: dict[str, Any], rng: np.random.Generator) -> str:
    """A paragraph of six to twelve sentences (about 170-420 characters) describing the scene."""
    tod = TIMES_OF_DAY[scene["time_of_day"]]
    cat, ground = scene["category"], scene["ground"]
    phrase, sky_desc, sky = tod["phrase"], tod["sky_desc"], tod["sky"]
    filming_time, sign, season = scene["filming_time"], scene["sign"], scene["season"]
    if filming_time is not None:
        opening = _pick(
            rng,
            [
                f"이 영상은 {filming_time}에 촬영된 것으로 보이며, {phrase}의 {cat} 풍경을 담고 있다.",
                f"{filming_time}에 촬영된 것으로 추정되는 이 영상은 {cat} 배경의 {phrase} 장면을 보여준다.",
                f"화질과 색감으로 보아 {filming_time}에 촬영된 영상으로 보이며, {phrase}의 {cat} 모습이 담겨 있다.",
            ],
        )
    else:
        opening = _pick(
            rng,
            [
                f"{phrase}의 {cat} 풍경을 담은 영상이다.",
                f"이 영상은 {cat} 배경에서 {phrase}에 촬영되었다.",
                f"{cat}의 {phrase} 장면을 고정된 시점에서 보여주는 영상이다.",
            ],
        )
    background = _pick(
        rng,
        [
            f"화면 위쪽에는 {sky_desc}이 넓게 펼쳐져 있고, 아래쪽에는 {_josa(ground, '이', '가')} 길게 이어져 있다.",
            f"배경의 하늘은 {sky}이고, 화면 아래쪽은 {_josa(ground, '이', '가')} 채우고 있다.",
            f"{ground} 위로 {sky_desc}이 보이며, 배경은 영상이 끝날 때까지 변하지 않는다.",
            f"하늘은 {sky}으로 물들어 있고, 그 아래로 {_josa(ground, '이', '가')} 자리 잡고 있다.",
        ],
    )
    two = scene["num_objects"] == 2
    count = _pick(
        rng,
        ["화면에는 도형이 두 개 등장한다.", "화면 안에는 모두 두 개의 도형이 있다.", "두 개의 도형이 화면에 나타난다."]
        if two
        else [
            "화면에는 도형이 하나 등장한다.",
            "화면 안에는 도형 하나만 보인다.",
            "화면에 나타나는 도형은 하나뿐이다.",
        ],
    )
    setting = [background, _pick(rng, GROUND_DETAILS[cat])]
    if rng.random() < 0.5:
        setting.append(_pick(rng, LIGHT_SENTENCES[scene["time_of_day"]]))
    sentences = [opening, *setting, count] if rng.random() < 0.5 else [opening, count, *setting]
    leads = ["", _pick(rng, ["한편 ", "그와 동시에 ", "다른 하나인 "])]
    # The second object never takes the first one's wording (of its motion sentence when both move alike, of its
    # detail sentence always): the same wording twice repeats a word 4-gram, a loop the model would learn.
    motion_wording: int | None = None
    detail_wording: int | None = None
    for k, obj in enumerate(scene["objects"]):
        same_motion = k > 0 and obj["motion_id"] == scene["objects"][0]["motion_id"]
        sentence, wording = _object_sentence(obj, rng, leads[k], motion_wording if same_motion else None)
        sentences.append(sentence)
        motion_wording = wording
        if rng.random() < 0.4:
            sentence, detail_wording = _object_detail(obj, rng, detail_wording)
            sentences.append(sentence)
    if sign is not None:
        sentences.append(
            _pick(
                rng,
                [
                    f"멀리 보이는 건물에는 '{sign}'이라고 적힌 간판이 걸려 있는 것으로 보인다.",
                    f"화면 밖 가까운 곳에 '{sign}' 안내판이 있는 것으로 보인다.",
                ],
            )
        )
    if season is not None:
        sentences.append(f"계절은 {season} 보인다.")
    sentences.append(
        _pick(
            rng,
            [
                f"전체적으로 {_pick(rng, MOODS)} 분위기의 영상이다.",
                f"{_pick(rng, MOODS)} 분위기 속에서 도형의 움직임이 이어지는 장면이다.",
                "카메라는 고정되어 있어 도형의 움직임이 뚜렷하게 드러난다.",
                "카메라의 흔들림 없이 같은 구도가 끝까지 유지된다.",
                "특별한 사건 없이 도형의 움직임만으로 이루어진 짧은 영상이다.",
                "영상의 길이는 짧고, 장면의 전환 없이 한 화면으로 이어진다.",
            ],
        )
    )
    return " ".join(sentences)


def sample_captions(count: int, seed: int = 0) -> list[tuple[str, dict[str, Any]]]:
    """``(caption, scene attributes)`` pairs from the corpus grammar, without rendering video.

    Draws from every colour x shape pair, held-out ones included, so the vocabulary is complete.
    """
    rng = np.random.default_rng([seed, _SPLIT_IDS["grammar"]])
    pairs = []
    for _ in range(count):
        category = CATEGORIES[int(rng.choice(len(CATEGORIES), p=_category_probs()))]
        scene = _sample_scene(rng, category, ALL_PAIRS)
        pairs.append((_caption(scene, rng), scene))
    return pairs


def sample_caption_texts(count: int, seed: int = 0) -> list[str]:
    """Captions from the corpus grammar (e.g. to train a Korean BPE tokenizer or pretrain the language model)."""
    return [caption for caption, _ in sample_captions(count, seed)]


def sample_training_scenes(
    count: int,
    seed: int = 0,
    size: int = 96,
    num_frames: int = 16,
    pairs: tuple[tuple[str, str], ...] = TRAIN_PAIRS,
) -> list[tuple[np.ndarray, str, dict[str, Any]]]:
    """Rendered scenes of the train distribution (held-out colour x shape pairs never appear), with captions.

    Returns ``(frames (T, size, size, 3) uint8, caption, attributes)`` triples without encoding video: the
    material for pretraining the tiny vision tower, drawn from a stream disjoint from the corpus clips. ``pairs``
    other than the train pairs (``HELD_OUT_PAIRS``) serve probes of what the tower generalises to.
    """
    rng = np.random.default_rng([seed, _SPLIT_IDS["pretrain"]])
    scenes = []
    for _ in range(count):
        category = CATEGORIES[int(rng.choice(len(CATEGORIES), p=_category_probs()))]
        scene = _sample_scene(rng, category, pairs)
        frames = render_frames(scene, size, num_frames, rng)
        scenes.append((frames, _caption(scene, rng), scene))
    return scenes


def _category_probs() -> np.ndarray:
    w = np.asarray(CATEGORY_WEIGHTS, dtype=np.float64)
    return w / w.sum()


def _category_quota(n: int, rng: np.random.Generator) -> list[str]:
    """Exact category counts by largest remainder, shuffled, so even small corpora match the real ratio."""
    raw = _category_probs() * n
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    cats = [c for c, k in zip(CATEGORIES, counts, strict=True) for _ in range(k)]
    return [cats[i] for i in rng.permutation(n)]


# ---------------------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------------------
def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    if shape == "원":
        return dx * dx + dy * dy <= r * r
    if shape == "사각형":
        return (np.abs(dx) <= 0.85 * r) & (np.abs(dy) <= 0.85 * r)
    if shape == "삼각형":  # apex up, base at the bottom
        return (dy >= -r) & (dy <= 0.8 * r) & (np.abs(dx) <= (dy + r) * 0.62)
    if shape == "마름모":
        return np.abs(dx) + np.abs(dy) <= 1.15 * r
    if shape == "막대":  # horizontal bar
        return (np.abs(dx) <= 1.3 * r) & (np.abs(dy) <= 0.38 * r)
    raise ValueError(f"unknown shape {shape!r}")


def _background(scene: dict[str, Any], h: int, w: int, sky_h: int, rng: np.random.Generator) -> np.ndarray:
    img = np.empty((h, w, 3), dtype=np.uint8)
    img[:sky_h] = TIMES_OF_DAY[scene["time_of_day"]]["rgb"]
    band = img[sky_h:]
    bh = h - sky_h
    cat = scene["category"]
    if cat == "시가지":  # asphalt with a dashed white lane line
        band[:] = (55, 55, 62)
        y = bh // 2
        period = max(8, w // 8)
        offset = int(rng.integers(period))
        for x0 in range(-offset, w, period):
            band[y - 1 : y + 1, max(0, x0) : max(0, x0 + period // 2)] = (225, 225, 225)
    elif cat == "자연":  # grass with darker tufts
        band[:] = (70, 125, 45)
        tufts = rng.random((bh, w)) < 0.18
        band[tufts] = (40, 85, 30)
    else:  # brick wall: running bond with light mortar
        band[:] = (150, 72, 50)
        brick_h, brick_w = max(4, bh // 4), max(8, w // 8)
        ys, xs = np.mgrid[0:bh, 0:w]
        row = ys // brick_h
        mortar = (ys % brick_h == 0) | (((xs + (row % 2) * (brick_w // 2)) % brick_w) == 0)
        band[mortar] = (205, 195, 175)
    return img


def _paths(scene: dict[str, Any], w: int, sky_h: int, r: float, rng: np.random.Generator) -> list[dict[str, Any]]:
    """Start/end centres per object. With two objects each keeps to its own half (rows for horizontal motion,
    columns for vertical) so neither hides the other for long."""
    ext = math.ceil(1.3 * r) + 1  # farthest extent of any shape from its centre
    n = scene["num_objects"]
    out = []
    for k, obj in enumerate(scene["objects"]):
        if n == 1:
            (lo_y, hi_y), (lo_x, hi_x) = (ext, sky_h - ext), (ext, w - ext)
        elif k == 0:
            (lo_y, hi_y), (lo_x, hi_x) = (ext, sky_h // 2 - ext), (ext, w // 2 - ext)
        else:
            (lo_y, hi_y), (lo_x, hi_x) = (sky_h // 2 + ext, sky_h - ext), (w // 2 + ext, w - ext)
        lane_y = float(rng.uniform(lo_y, max(lo_y, hi_y)))
        lane_x = float(rng.uniform(lo_x, max(lo_x, hi_x)))
        j = float(rng.uniform(0, 2))
        mid = obj["motion_id"]
        if mid == "left_to_right":
            start, end = (ext + j, lane_y), (w - 1 - ext - j, lane_y)
        elif mid == "right_to_left":
            start, end = (w - 1 - ext - j, lane_y), (ext + j, lane_y)
        elif mid == "top_to_bottom":
            start, end = (lane_x, ext + j), (lane_x, sky_h - 1 - ext - j)
        elif mid == "bottom_to_top":
            start, end = (lane_x, sky_h - 1 - ext - j), (lane_x, ext + j)
        else:
            start = end = (lane_x, lane_y)
        out.append({"start": [round(start[0], 2), round(start[1], 2)], "end": [round(end[0], 2), round(end[1], 2)]})
    return out


def _sky_height(height: int) -> int:
    # Objects stay in the sky so the ground band (the category cue) is never covered.
    return round(0.75 * height)


def render_frames(scene: dict[str, Any], size: int, num_frames: int, rng: np.random.Generator) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB frames for a scene; fills ``path`` and ``radius_px`` into its objects."""
    h = w = size
    sky_h = _sky_height(h)
    r = max(4.0, round(0.14 * size, 1))  # large enough that shape survives downscaling to the tiny 48 px
    bg = _background(scene, h, w, sky_h, rng)
    for obj, path in zip(scene["objects"], _paths(scene, w, sky_h, r, rng), strict=True):
        obj["path"] = path
        obj["radius_px"] = r
    frames = np.repeat(bg[None], num_frames, axis=0)
    owners = object_maps(scene, size, num_frames)
    for k, obj in enumerate(scene["objects"]):
        frames[owners == k + 1] = COLORS[obj["color"]]
    return frames


def object_maps(scene: dict[str, Any], size: int, num_frames: int) -> np.ndarray:
    """(T, H, W) uint8: which object covers each pixel (k + 1 for ``scene["objects"][k]``, 0 for background).

    Reads the paths :func:`render_frames` stored in the scene; a later object covers an earlier one, as drawn.
    """
    h = w = size
    sky_h = _sky_height(h)
    owners = np.zeros((num_frames, h, w), dtype=np.uint8)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    for k, obj in enumerate(scene["objects"]):
        (x0, y0), (x1, y1) = obj["path"]["start"], obj["path"]["end"]
        for t in range(num_frames):
            a = t / max(1, num_frames - 1)
            cx, cy = x0 + a * (x1 - x0), y0 + a * (y1 - y0)
            mask = _shape_mask(obj["shape"], xs - cx, ys - cy, obj["radius_px"])
            mask[sky_h:] = False
            owners[t][mask] = k + 1
    return owners


def write_mp4(path: str | os.PathLike, frames: np.ndarray, fps: int) -> None:
    """Encode RGB frames as H.264 yuv420p mp4, bit-reproducibly (one x264 thread, bitexact muxing)."""
    import av  # local import: sample_caption_texts must work without PyAV

    with av.open(str(path), "w", format="mp4", options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        # crf 14 keeps flat colours close to their RGB values at tiny sizes. Repeatable bytes need threads=1
        # and mbtree=0: with macroblock-tree rate control x264 gave differing bitstreams for identical input
        # when several encoders ran at once (measured here at 96x96).
        stream.options = {"crf": "14", "preset": "fast", "threads": "1", "g": str(2 * fps), "x264-params": "mbtree=0"}
        for i, arr in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24").reformat(format="yuv420p")
            frame.pts = i  # explicit, so timestamps never depend on the encoder's defaults
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


# ---------------------------------------------------------------------------------------------------------
# Corpus
# ---------------------------------------------------------------------------------------------------------
def _clip_job(args: tuple[str, int, str, str, int, int, int, int, bool]) -> dict[str, Any]:
    """Render, encode and label one clip. Its RNG depends only on (seed, split, index): order-independent."""
    out_dir, index, split, category, seed, size, num_frames, fps, force_held_out = args
    rng = np.random.default_rng([seed, _SPLIT_IDS[split], index])
    if split == "train":
        scene = _sample_scene(rng, category, TRAIN_PAIRS)
    else:
        forced = HELD_OUT_PAIRS[(index // 2) % len(HELD_OUT_PAIRS)] if force_held_out else None
        scene = _sample_scene(rng, category, ALL_PAIRS, forced)
    frames = render_frames(scene, size, num_frames, rng)
    caption = _caption(scene, rng)
    video_id = f"kvcap_demo_{split}_{index:05d}"
    split_dir = Path(out_dir) / split
    write_mp4(split_dir / "videos" / f"{video_id}.mp4", frames, fps)
    label = {
        "annotation": {"description_kr": caption, "category": category},
        "category": category,
        "metadata": {
            "video_id": video_id,
            "file_name": f"{video_id}.mp4",
            "split": split,
            "width": size,
            "height": size,
            "fps": fps,
            "num_frames": num_frames,
            "duration_s": num_frames / fps,
            "attributes": scene,
        },
    }
    with open(split_dir / "labels" / f"{video_id}.json", "w", encoding="utf-8") as f:
        json.dump(label, f, ensure_ascii=False, indent=2)
        f.write("\n")
    return {"video_id": video_id, "split": split, "category": category, "caption": caption, "attributes": scene}


SUMMARY_FILE = "demo_corpus.json"
# Format of the labels and summary; raised whenever labels change, so callers rebuild an older corpus. Version 2
# added ``time_of_day_words`` to every label's attributes (version 1 wrote no ``version`` into the summary);
# version 3 has paragraph captions with filming time, signage and season (``filming_time``, ``sign``, ``season``);
# in version 4 no caption repeats a word 4-gram.
CORPUS_VERSION = 4


def _prepare_out_dir(out: Path) -> None:
    """Remove a previous demo corpus (recognised by its marker file) so stale clips never linger; refuse to
    write into split folders that hold anything else."""
    out.mkdir(parents=True, exist_ok=True)
    ours = (out / SUMMARY_FILE).is_file()
    for split in ("train", "val"):
        d = out / split
        if d.exists() and any(d.iterdir()):
            if not ours:
                raise FileExistsError(f"{d} is not empty and {out} holds no {SUMMARY_FILE}; refusing to overwrite")
            shutil.rmtree(d)
        (d / "videos").mkdir(parents=True, exist_ok=True)
        (d / "labels").mkdir(parents=True, exist_ok=True)


def generate_corpus(
    out_dir: str | os.PathLike,
    num_train: int = 1200,
    num_val: int = 60,
    seed: int = 0,
    size: int = 96,
    num_frames: int = 16,
    fps: int = 8,
    workers: int | None = None,
) -> dict[str, Any]:
    """Write the demo corpus to ``out_dir`` and return its summary (also saved as ``demo_corpus.json``).

    ``workers`` processes encode in parallel (default: up to 2, the clip count permitting); the result does
    not depend on it.
    """
    t0 = time.perf_counter()
    out = Path(out_dir)
    _prepare_out_dir(out)
    jobs = []
    for split, n in (("train", num_train), ("val", num_val)):
        cats = _category_quota(n, np.random.default_rng([seed, _SPLIT_IDS[split], 1 << 30]))
        for i in range(n):
            jobs.append((str(out), i, split, cats[i], seed, size, num_frames, fps, split == "val" and i % 2 == 0))
    if workers is None:
        workers = min(2, os.cpu_count() or 1) if len(jobs) >= 32 else 1
    from tqdm.auto import tqdm

    def progress(clips):
        return tqdm(clips, total=len(jobs), desc="kvcap demo: writing the corpus", unit="clip", mininterval=2.0)

    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(progress(pool.map(_clip_job, jobs, chunksize=8)))
    else:
        results = [_clip_job(j) for j in progress(jobs)]

    summary: dict[str, Any] = {
        "name": "kvcap demo corpus",
        "version": CORPUS_VERSION,
        "seed": seed,
        "size": size,
        "num_frames": num_frames,
        "fps": fps,
        "splits": {},
        "held_out_pairs": [list(p) for p in HELD_OUT_PAIRS],
        "vocabulary": {
            "colors": list(COLORS),
            "shapes": list(SHAPES),
            "motions": MOTIONS,
            "times_of_day": {k: v["sky"] for k, v in TIMES_OF_DAY.items()},
            "categories": list(CATEGORIES),
            "grounds": GROUNDS,
        },
    }
    for split in ("train", "val"):
        rows = [r for r in results if r["split"] == split]
        lengths = [len(r["caption"]) for r in rows]
        pairs = Counter((o["color"], o["shape"]) for r in rows for o in r["attributes"]["objects"])
        summary["splits"][split] = {
            "num_clips": len(rows),
            "categories": {c: sum(r["category"] == c for r in rows) for c in CATEGORIES},
            "times_of_day": {t: sum(r["attributes"]["time_of_day"] == t for r in rows) for t in TIMES_OF_DAY},
            "clips_with_held_out_pair": sum(r["attributes"]["has_held_out"] for r in rows),
            "held_out_pair_counts": {f"{c} {s}": pairs[(c, s)] for c, s in HELD_OUT_PAIRS},
            "caption_chars": {
                "mean": round(float(np.mean(lengths)), 1) if lengths else 0.0,
                "min": min(lengths, default=0),
                "max": max(lengths, default=0),
            },
            # Captions with a sentence no frame supports, by kind.
            "captions_stating": {
                kind: sum(r["attributes"][kind] is not None for r in rows) for kind in UNSUPPORTED_FACTS
            },
        }
    (out / SUMMARY_FILE).write_text(json.dumps(summary, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    (out / "README.md").write_text(_readme(summary), encoding="utf-8")
    summary["out_dir"] = str(out)
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    return summary


def corpus_size(data_dir: str | os.PathLike) -> dict[str, int] | None:
    """Clips per split (``{"train": n, "val": m}``) of the demo corpus in ``data_dir``, read from its summary.

    None when there is no summary, or it is unreadable or of another ``CORPUS_VERSION``: such a corpus has to be
    regenerated (``generate_corpus`` replaces it in place).
    """
    path = Path(data_dir) / SUMMARY_FILE
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None
    if not isinstance(summary, dict) or summary.get("version") != CORPUS_VERSION:
        return None
    return {split: summary["splits"][split]["num_clips"] for split in ("train", "val")}


def _readme(summary: dict[str, Any]) -> str:
    held = ", ".join(f"{c} {s}" for c, s in HELD_OUT_PAIRS)
    lines = [
        "# kvcap demo corpus (synthetic)",
        "",
        (
            "Generated by `kvcap/demo/corpus.py` "
            f"(seed {summary['seed']}, {summary['size']}x{summary['size']}, {summary['num_frames']} frames at "
            f"{summary['fps']} fps, libx264 yuv420p). Layout: `{{train,val}}/{{videos,labels}}/ID.mp4|ID.json`."
        ),
        "",
        (
            "Each clip shows one or two coloured shapes over a background: sky colour = time of day, ground band = "
            "category (asphalt road = 시가지, grass = 자연, brick wall = 건축물). The Korean caption states what is "
            "visible; `metadata.attributes` in each label holds the same facts as structured data."
        ),
        "",
        f"Held-out colour x shape pairs (never in train; every even-numbered val clip shows one): {held}.",
        "",
        "| split | clips | 시가지 | 자연 | 건축물 | clips with a held-out pair |",
        "|---|---|---|---|---|---|",
    ]
    for split, s in summary["splits"].items():
        c = s["categories"]
        lines.append(
            f"| {split} | {s['num_clips']} | {c.get('시가지', 0)} | {c.get('자연', 0)} | {c.get('건축물', 0)} "
            f"| {s['clips_with_held_out_pair']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output folder (train/ and val/ are created in it)")
    parser.add_argument("--num-train", type=int, default=1200)
    parser.add_argument("--num-val", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=96, help="frame width and height in pixels")
    parser.add_argument("--num-frames", type=int, default=16)
    parser.add_argument("--fps", type=int, default=8)
    parser.add_argument("--workers", type=int, default=None, help="encoding processes (default: up to 2)")
    args = parser.parse_args(argv)
    summary = generate_corpus(
        args.out, args.num_train, args.num_val, args.seed, args.size, args.num_frames, args.fps, args.workers
    )
    print(json.dumps({k: summary[k] for k in ("out_dir", "seconds", "splits")}, ensure_ascii=False, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
