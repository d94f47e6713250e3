"""SigLIP score: how well each caption matches its clip's frames, under a SigLIP / SigLIP2 dual encoder.

Self-contained so that ``evaluate.load("kvcap/metrics/siglip_score")`` (which copies this one file) works as well as
``from kvcap.metrics.siglip_score.siglip_score import SiglipScore``.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import datasets
import evaluate
import numpy as np
import torch
from PIL import Image

_CITATION = """\
@inproceedings{zhai2023siglip,
  title     = {Sigmoid Loss for Language Image Pre-Training},
  author    = {Zhai, Xiaohua and Mustafa, Basil and Kolesnikov, Alexander and Beyer, Lucas},
  booktitle = {Proceedings of the IEEE/CVF International Conference on Computer Vision (ICCV)},
  year      = {2023},
  pages     = {11975--11986},
}
@article{tschannen2025siglip2,
  title   = {{SigLIP} 2: Multilingual Vision-Language Encoders with Improved Semantic Understanding, Localization,
             and Dense Features},
  author  = {Tschannen, Michael and others},
  journal = {arXiv preprint arXiv:2502.14786},
  year    = {2025},
}
@inproceedings{hessel2021clipscore,
  title     = {{CLIPScore}: A Reference-free Evaluation Metric for Image Captioning},
  author    = {Hessel, Jack and Holtzman, Ari and Forbes, Maxwell and Le Bras, Ronan and Choi, Yejin},
  booktitle = {Proceedings of EMNLP},
  year      = {2021},
  pages     = {7514--7528},
}
"""

_DESCRIPTION = """\
Vision-text alignment of generated captions with their clips under a SigLIP or SigLIP2 model (default
google/siglip2-so400m-patch14-384, multilingual, so it reads Korean). Per clip: the SigLIP score kvcap's seed
reported, the mean over frames of sigmoid(exp(logit_scale) * cos + logit_bias); the mean cosine; and a
CLIPScore-style 2.5 * max(cos, 0) averaged over frames. Texts are padded to 64 tokens as SigLIP was trained;
long captions are truncated there unless `per_sentence=True` scores each sentence and averages. `floor` scores
each clip against another clip's caption (a fixed derangement), the level a caption reaches without seeing its
video.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[str]`): one caption per clip.
    videos (`list`): per clip, frames as a uint8 array (T, H, W, 3), a list of (H, W, 3) arrays or a list of
        PIL images. Passed as a keyword, not stored in evaluate's Arrow cache.
    per_sentence (`bool`, default False): split each caption into sentences (kiwipiepy), score each against the
        clip's frames and average; otherwise the caption is truncated at `max_length` tokens.
    batch_size (`int`, default 32): frames per vision batch. text_batch_size (`int`, default 64): texts per batch.
    max_length (`int`, default 64): text length, padded and truncated to it.
    floor_seed (`int`, default 0): seed of the derangement used for `floor`.
    progress (`bool`, default True): tqdm progress bars.
Init (`evaluate.load("kvcap/metrics/siglip_score", ...)` or `SiglipScore(...)`):
    model_name_or_path (`str`): Hub id or local folder; loaded once per (path, device, dtype) and cached.
    model, processor / image_processor, tokenizer: an already-loaded model (and its preprocessing) instead.
    device (`str`), dtype (`torch.dtype` or `str`): where and how to load the model.
Returns:
    siglip_score (`float`), scores (`list[float]`): mean over frames of sigmoid(scale * cos + bias).
    cosine (`float`), cosines (`list[float]`): mean cosine over frames.
    clip_score (`float`), clip_scores (`list[float]`): mean over frames of 2.5 * max(cos, 0).
    floor (`float` or `None`): siglip_score with each clip paired to another clip's caption.
    floor_scores (`list[float]`): those per-clip scores, for a paired comparison with `scores`.
    truncated_fraction (`float`): share of scored texts longer than `max_length` tokens.
    num_texts (`int`): texts scored (captions, or sentences with `per_sentence`).
Examples:
    >>> siglip = evaluate.load("kvcap/metrics/siglip_score")  # google/siglip2-so400m-patch14-384
    >>> out = siglip.compute(predictions=["바다 위로 배가 지나간다."], videos=[frames])  # frames: (8, H, W, 3) uint8
    >>> out["siglip_score"], out["clip_score"]
"""

DEFAULT_MODEL = "google/siglip2-so400m-patch14-384"
CLIP_SCORE_WEIGHT = 2.5  # Hessel et al. rescale cosines to roughly [0, 1] with w = 2.5
_TEXT_INPUTS = ("input_ids", "attention_mask", "position_ids")


@dataclass
class SiglipBundle:
    """A SigLIP model with the image processor and tokenizer that go with it."""

    model: Any
    image_processor: Any
    tokenizer: Any


_BUNDLES: dict[tuple[str, str, str], SiglipBundle] = {}


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _as_dtype(dtype: Any) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    return getattr(torch, str(dtype).removeprefix("torch."))


def load_preprocessing(name_or_path: str) -> tuple[Any, Any]:
    """(image processor, tokenizer) of a checkpoint: from its processor, else loaded one by one."""
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

    try:
        processor = AutoProcessor.from_pretrained(name_or_path)
    except (OSError, ValueError, TypeError, KeyError):
        processor = None
    image_processor = getattr(processor, "image_processor", None)
    tokenizer = getattr(processor, "tokenizer", None)
    if image_processor is None:
        image_processor = AutoImageProcessor.from_pretrained(name_or_path)
    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    return image_processor, tokenizer


def load_siglip(name_or_path: str = DEFAULT_MODEL, device: str | None = None, dtype: Any = None) -> SiglipBundle:
    """Load (once per path, device and dtype) a SigLIP model in eval mode with its preprocessing."""
    from transformers import AutoModel

    device = device or _default_device()
    dtype = _as_dtype(dtype)
    key = (str(name_or_path), str(device), str(dtype))
    if key not in _BUNDLES:
        kwargs = {"dtype": dtype} if dtype is not None else {}
        model = AutoModel.from_pretrained(name_or_path, **kwargs).to(device).eval()
        _BUNDLES[key] = SiglipBundle(model, *load_preprocessing(str(name_or_path)))
    return _BUNDLES[key]


def clear_cache() -> None:
    """Forget the loaded models (e.g. after overwriting a checkpoint folder in place)."""
    _BUNDLES.clear()


def _frames_of(video: Any) -> list[Image.Image | np.ndarray]:
    """One clip's frames, checked but not copied: PIL images or (H, W, 3) uint8 arrays."""
    if isinstance(video, torch.Tensor):
        video = video.detach().cpu().numpy()
    if isinstance(video, Image.Image):
        video = [video]
    elif isinstance(video, np.ndarray):
        if video.ndim == 3:
            video = video[None]
        if video.ndim != 4 or video.shape[-1] != 3:
            raise ValueError(f"a clip's frames must be (T, H, W, 3), got an array of shape {video.shape}")
        video = list(video)
    frames = []
    for frame in video:
        if not isinstance(frame, Image.Image):
            frame = np.asarray(frame)
            if frame.ndim != 3 or frame.shape[-1] != 3:
                raise ValueError(f"a frame must be (H, W, 3), got shape {frame.shape}")
            if frame.dtype != np.uint8:
                # Normalised floats cast to uint8 would silently become black frames.
                raise ValueError(f"frames must be uint8 RGB, got {frame.dtype}")
        frames.append(frame)
    if not frames:
        raise ValueError("a clip has no frames")
    return frames


def _to_pil(frame: Image.Image | np.ndarray) -> Image.Image:
    # PIL is the input SigLIP's image processors were written for; converted per batch to keep memory flat.
    if isinstance(frame, Image.Image):
        return frame.convert("RGB")
    return Image.fromarray(np.ascontiguousarray(frame))


@functools.lru_cache(maxsize=1)
def _kiwi() -> Any:
    from kiwipiepy import Kiwi

    return Kiwi()


def split_sentences(captions: Sequence[str]) -> list[list[str]]:
    """Korean sentences of each caption (kiwipiepy); a caption without any keeps itself as its one text."""
    split = _kiwi().split_into_sents(list(captions))
    return [
        [sentence.text for sentence in sentences if sentence.text.strip()] or [caption]
        for caption, sentences in zip(captions, split, strict=True)
    ]


def _batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _pooled(output: Any) -> torch.Tensor:
    # transformers 5 returns a BaseModelOutputWithPooling from get_*_features; 4.x returned the tensor.
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _model_device_dtype(model: Any) -> tuple[torch.device, torch.dtype]:
    parameter = next(model.parameters())
    return parameter.device, parameter.dtype


@torch.inference_mode()
def embed_images(
    bundle: SiglipBundle, frames: Sequence[Image.Image | np.ndarray], batch_size: int = 32, progress: bool = True
) -> torch.Tensor:
    """L2-normalised image embeddings (N, D), float32 on CPU."""
    from tqdm.auto import tqdm

    device, dtype = _model_device_dtype(bundle.model)
    chunks = []
    for batch in tqdm(
        list(_batches(frames, batch_size)), desc="siglip: frames", unit="batch", disable=not progress, leave=False
    ):
        inputs = bundle.image_processor(images=[_to_pil(frame) for frame in batch], return_tensors="pt")
        inputs = {
            name: value.to(device=device, dtype=dtype) if value.is_floating_point() else value.to(device)
            for name, value in inputs.items()
        }
        embeds = _pooled(bundle.model.get_image_features(**inputs)).float()
        chunks.append(torch.nn.functional.normalize(embeds, dim=-1).cpu())
    return torch.cat(chunks)


@torch.inference_mode()
def embed_texts(
    bundle: SiglipBundle, texts: Sequence[str], batch_size: int = 64, max_length: int = 64, progress: bool = True
) -> torch.Tensor:
    """L2-normalised text embeddings (N, D), float32 on CPU; texts padded and truncated to ``max_length``."""
    from tqdm.auto import tqdm

    device, _ = _model_device_dtype(bundle.model)
    chunks = []
    for batch in tqdm(
        list(_batches(texts, batch_size)), desc="siglip: texts", unit="batch", disable=not progress, leave=False
    ):
        # SigLIP was trained on texts padded to a fixed length and pools the last position, so pad to max_length.
        inputs = bundle.tokenizer(
            list(batch), padding="max_length", max_length=max_length, truncation=True, return_tensors="pt"
        )
        inputs = {name: inputs[name].to(device) for name in _TEXT_INPUTS if name in inputs}
        embeds = _pooled(bundle.model.get_text_features(**inputs)).float()
        chunks.append(torch.nn.functional.normalize(embeds, dim=-1).cpu())
    return torch.cat(chunks)


# The same pairing as korean_meteor's floor, so both floors score the same mismatched clips. An evaluate module
# loads as a standalone folder and cannot import its sibling, hence the copy (tests check they stay equal).
def derangement(n: int, seed: int = 0) -> list[int]:
    """A permutation with no fixed point (Sattolo's algorithm: one random n-cycle), the same for the same seed."""
    order = list(range(n))
    rng = random.Random(seed)
    for i in range(n - 1, 0, -1):
        j = rng.randrange(i)
        order[i], order[j] = order[j], order[i]
    return order


def siglip_scores(
    bundle: SiglipBundle,
    predictions: Sequence[str],
    videos: Sequence[Any],
    per_sentence: bool = False,
    batch_size: int = 32,
    text_batch_size: int = 64,
    max_length: int = 64,
    floor_seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """The metric without the ``evaluate`` wrapper; see the module's ``_KWARGS_DESCRIPTION``."""
    if len(predictions) != len(videos):
        raise ValueError(f"{len(predictions)} predictions but {len(videos)} videos")
    model = bundle.model
    was_training = model.training
    model.eval()
    try:
        clip_frames = [_frames_of(video) for video in videos]
        frame_owner = [clip for clip, frames in enumerate(clip_frames) for _ in frames]
        texts_per_clip = split_sentences(predictions) if per_sentence else [[caption] for caption in predictions]
        texts = [text for clip_texts in texts_per_clip for text in clip_texts]
        text_owner = [clip for clip, clip_texts in enumerate(texts_per_clip) for _ in clip_texts]
        if not texts:
            return _summary([], [], [], [], 0.0, 0)
        image_embeds = embed_images(bundle, [f for frames in clip_frames for f in frames], batch_size, progress)
        text_embeds = embed_texts(bundle, texts, text_batch_size, max_length, progress)
        scale = model.logit_scale.detach().float().exp().cpu()
        bias = model.logit_bias.detach().float().cpu()
    finally:
        model.train(was_training)

    frame_index = _group(frame_owner, len(predictions))
    text_index = _group(text_owner, len(predictions))

    def score(clip: int, caption_of: int) -> tuple[float, float, float]:
        # Sentences x frames of this clip; every sentence and frame weighs the same.
        cos = text_embeds[text_index[caption_of]] @ image_embeds[frame_index[clip]].T
        sig = torch.sigmoid(cos * scale + bias)
        clip_style = CLIP_SCORE_WEIGHT * cos.clamp(min=0)
        return sig.mean().item(), cos.mean().item(), clip_style.mean().item()

    per_clip = [score(clip, clip) for clip in range(len(predictions))]
    floor_scores: list[float] = []
    if len(predictions) >= 2:
        other = derangement(len(predictions), floor_seed)
        floor_scores = [score(clip, other[clip])[0] for clip in range(len(predictions))]
    lengths = [len(ids) for ids in bundle.tokenizer(texts, truncation=False, verbose=False)["input_ids"]]
    truncated = sum(length > max_length for length in lengths) / len(lengths)
    scores, cosines, clip_scores = (list(column) for column in zip(*per_clip, strict=True))
    return _summary(scores, cosines, clip_scores, floor_scores, truncated, len(texts))


def _group(owners: Sequence[int], count: int) -> list[list[int]]:
    groups: list[list[int]] = [[] for _ in range(count)]
    for index, owner in enumerate(owners):
        groups[owner].append(index)
    return groups


def _summary(
    scores: list[float],
    cosines: list[float],
    clip_scores: list[float],
    floor_scores: list[float],
    truncated: float,
    n: int,
) -> dict[str, Any]:
    def mean(values: list[float]) -> float:
        return float(np.mean(values)) if values else 0.0

    return {
        "siglip_score": mean(scores),
        "scores": scores,
        "cosine": mean(cosines),
        "cosines": cosines,
        "clip_score": mean(clip_scores),
        "clip_scores": clip_scores,
        "floor": mean(floor_scores) if floor_scores else None,
        "floor_scores": floor_scores,
        "truncated_fraction": truncated,
        "num_texts": n,
    }


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class SiglipScore(evaluate.Metric):
    """SigLIP / SigLIP2 caption-video alignment; the model is loaded once and reused across ``compute`` calls."""

    def __init__(
        self,
        model_name_or_path: str | None = None,
        model: Any = None,
        processor: Any = None,
        image_processor: Any = None,
        tokenizer: Any = None,
        device: str | None = None,
        dtype: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.model_name_or_path = model_name_or_path
        self.device = device
        self.dtype = dtype
        self._bundle: SiglipBundle | None = None
        if model is not None:
            image_processor = image_processor or getattr(processor, "image_processor", None)
            tokenizer = tokenizer or getattr(processor, "tokenizer", None)
            if image_processor is None or tokenizer is None:
                # A model from from_pretrained remembers its folder or Hub id; its preprocessing lives there too.
                source = model_name_or_path or getattr(model, "name_or_path", None)
                if not source:
                    raise ValueError("pass the processor (or image_processor and tokenizer) with an in-memory model")
                loaded_image_processor, loaded_tokenizer = load_preprocessing(source)
                image_processor = image_processor or loaded_image_processor
                tokenizer = tokenizer or loaded_tokenizer
            self._bundle = SiglipBundle(model, image_processor, tokenizer)

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string", id="sequence")}),
            reference_urls=[
                "https://arxiv.org/abs/2303.15343",
                "https://arxiv.org/abs/2502.14786",
                "https://huggingface.co/google/siglip2-so400m-patch14-384",
            ],
        )

    @property
    def bundle(self) -> SiglipBundle:
        """The model with its preprocessing, loaded on first use."""
        if self._bundle is None:
            self._bundle = load_siglip(self.model_name_or_path or DEFAULT_MODEL, self.device, self.dtype)
        return self._bundle

    def _download_and_prepare(self, dl_manager: Any) -> None:
        # evaluate.load calls this once: load the model here so that compute calls only score.
        _ = self.bundle

    def _compute(
        self,
        predictions: Sequence[str],
        videos: Sequence[Any],
        per_sentence: bool = False,
        batch_size: int = 32,
        text_batch_size: int = 64,
        max_length: int = 64,
        floor_seed: int = 0,
        progress: bool = True,
    ) -> dict[str, Any]:
        return siglip_scores(
            self.bundle,
            predictions,
            videos,
            per_sentence=per_sentence,
            batch_size=batch_size,
            text_batch_size=text_batch_size,
            max_length=max_length,
            floor_seed=floor_seed,
            progress=progress,
        )
