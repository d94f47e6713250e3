"""siglip_score with the tiny SigLIP: the formula against the model's own forward, a trained model that separates
matching from mismatched captions, model reuse, input forms, offline load.

Uses the session fixture ``tiny_backbones`` (tests/conftest.py: ``build_tiny_backbones`` into a temp folder).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, SiglipModel

from kvcap.metrics.siglip_score import siglip_score as siglip_module
from kvcap.metrics.siglip_score.siglip_score import SiglipScore, load_preprocessing, split_sentences

from .conftest import run_offline_at_repo_root

COLOURS = {
    "빨간색": (220, 30, 30),
    "초록색": (30, 200, 40),
    "파란색": (30, 40, 220),
    "노란색": (230, 220, 30),
    "검은색": (10, 10, 10),
    "흰색": (245, 245, 245),
}
CAPTIONS = [f"{name} 화면이다." for name in COLOURS]


def solid_frames(rgb: tuple[int, int, int], rng: np.random.Generator, count: int, size: int = 40) -> np.ndarray:
    """(count, size, size, 3) uint8 frames of one colour with pixel noise."""
    noise = rng.integers(-25, 26, (count, size, size, 3))
    return np.clip(np.array(rgb, dtype=np.int16) + noise, 0, 255).astype(np.uint8)


def colour_clips(seed: int, frames: int = 4) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [solid_frames(rgb, rng, frames) for rgb in COLOURS.values()]


@pytest.fixture(scope="module")
def colour_siglip(tiny_backbones, tmp_path_factory) -> Path:
    """The tiny SigLIP trained for a few dozen steps with its own sigmoid loss on colour frames vs colour words."""
    source = tiny_backbones["siglip"]
    torch.manual_seed(0)
    model = SiglipModel.from_pretrained(source)
    image_processor, tokenizer = load_preprocessing(str(source))
    with torch.no_grad():  # SigLIP's initialisation: t' = log 10, b = -10
        model.logit_scale.fill_(math.log(10.0))
        model.logit_bias.fill_(-10.0)
    text = tokenizer(CAPTIONS, padding="max_length", max_length=64, truncation=True, return_tensors="pt")
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(0)
    model.train()
    for _ in range(40):
        frames = [Image.fromarray(solid_frames(rgb, rng, 1)[0]) for rgb in COLOURS.values()]
        pixel_values = image_processor(images=frames, return_tensors="pt")["pixel_values"]
        loss = model(**text, pixel_values=pixel_values, return_loss=True).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    out = tmp_path_factory.mktemp("colour-siglip")
    model.eval().save_pretrained(out)
    image_processor.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def direct_scores(path: Path, captions_per_clip: list[list[str]], clips: list[np.ndarray]) -> dict[str, list[float]]:
    """The seed's formula from the model's own forward: sigmoid of logits_per_image, averaged over frames."""
    model = SiglipModel.from_pretrained(path).eval()
    processor = AutoProcessor.from_pretrained(path)
    result = {"scores": [], "cosines": [], "clip_scores": []}
    for captions, clip in zip(captions_per_clip, clips, strict=True):
        inputs = processor(
            text=captions,
            images=[Image.fromarray(frame) for frame in clip],
            padding="max_length",
            max_length=64,
            truncation=True,
            return_tensors="pt",
        )
        with torch.no_grad():
            out = model(**inputs)
        cos = out.image_embeds @ out.text_embeds.T  # (frames, sentences), embeddings already normalised
        logits = cos * model.logit_scale.exp() + model.logit_bias
        torch.testing.assert_close(logits, out.logits_per_image)
        result["scores"].append(torch.sigmoid(out.logits_per_image).mean().item())
        result["cosines"].append(cos.mean().item())
        result["clip_scores"].append((2.5 * cos.clamp(min=0)).mean().item())
    return result


@pytest.mark.parametrize("trained", [False, True])
def test_formula_equals_direct_computation(tiny_backbones, colour_siglip, trained):
    path = colour_siglip if trained else tiny_backbones["siglip"]
    clips = colour_clips(seed=3)
    captions = CAPTIONS[::-1]  # some matching nothing, so the values spread
    out = SiglipScore(model_name_or_path=str(path)).compute(predictions=captions, videos=clips, progress=False)
    expected = direct_scores(path, [[caption] for caption in captions], clips)
    for key in ("scores", "cosines", "clip_scores"):
        np.testing.assert_allclose(out[key], expected[key], rtol=1e-5, atol=1e-6)
    assert out["siglip_score"] == pytest.approx(np.mean(expected["scores"]), rel=1e-5)
    assert out["cosine"] == pytest.approx(np.mean(expected["cosines"]), rel=1e-5, abs=1e-6)
    assert out["clip_score"] == pytest.approx(np.mean(expected["clip_scores"]), rel=1e-5, abs=1e-6)
    assert out["num_texts"] == len(captions)


def test_per_sentence_averages_sentence_scores(colour_siglip):
    captions = ["빨간색 화면이다. 파란색 화면이다.", "초록색 화면이다. 초록색 화면이다. 흰색 화면이다."]
    sentences = split_sentences(captions)
    assert sentences == [
        ["빨간색 화면이다.", "파란색 화면이다."],
        ["초록색 화면이다.", "초록색 화면이다.", "흰색 화면이다."],
    ]
    clips = colour_clips(seed=4)[:2]
    out = SiglipScore(model_name_or_path=str(colour_siglip)).compute(
        predictions=captions, videos=clips, per_sentence=True, progress=False
    )
    expected = direct_scores(colour_siglip, sentences, clips)
    np.testing.assert_allclose(out["scores"], expected["scores"], rtol=1e-5, atol=1e-6)
    assert out["num_texts"] == 5
    # Half of the first caption and a third of the second name another colour: the score sits in between.
    assert 0.2 < out["scores"][0] < 0.6
    assert 0.4 < out["scores"][1] < 0.8


def test_trained_model_scores_matching_frames_above_mismatched(colour_siglip):
    metric = SiglipScore(model_name_or_path=str(colour_siglip))
    clips = colour_clips(seed=1)
    matched = metric.compute(predictions=CAPTIONS, videos=clips, progress=False)
    mismatched = metric.compute(predictions=CAPTIONS[1:] + CAPTIONS[:1], videos=clips, progress=False)
    for key in ("scores", "cosines", "clip_scores"):
        assert all(m > x for m, x in zip(matched[key], mismatched[key], strict=True)), key
    assert matched["siglip_score"] > 0.5 > mismatched["siglip_score"]
    # The floor pairs each clip with another clip's caption: as low as a mismatch.
    assert matched["floor"] < 0.1
    assert matched["floor"] == metric.compute(predictions=CAPTIONS, videos=clips, progress=False)["floor"]


def test_model_loaded_once_and_in_memory_models(colour_siglip):
    siglip_module.clear_cache()
    first = SiglipScore(model_name_or_path=str(colour_siglip))
    second = SiglipScore(model_name_or_path=str(colour_siglip))
    clips = colour_clips(seed=2)
    out = first.compute(predictions=CAPTIONS, videos=clips, progress=False)
    second.compute(predictions=CAPTIONS, videos=clips, progress=False)
    assert first.bundle.model is second.bundle.model
    assert len(siglip_module._BUNDLES) == 1

    model = SiglipModel.from_pretrained(colour_siglip).train()  # the metric scores in eval mode and restores
    from_object = SiglipScore(model=model).compute(predictions=CAPTIONS, videos=clips, progress=False)
    assert model.training
    np.testing.assert_allclose(from_object["scores"], out["scores"], rtol=1e-6)
    image_processor, tokenizer = load_preprocessing(str(colour_siglip))
    explicit = SiglipScore(model=model, image_processor=image_processor, tokenizer=tokenizer)
    np.testing.assert_allclose(
        explicit.compute(predictions=CAPTIONS, videos=clips, progress=False)["scores"], out["scores"], rtol=1e-6
    )


def test_frame_forms_give_the_same_scores(colour_siglip):
    metric = SiglipScore(model_name_or_path=str(colour_siglip))
    clips = colour_clips(seed=5, frames=3)[:3]
    as_arrays = metric.compute(predictions=CAPTIONS[:3], videos=clips, progress=False, batch_size=4)
    forms = [
        [Image.fromarray(frame) for frame in clips[0]],  # PIL images
        list(clips[1]),  # (H, W, 3) arrays
        torch.from_numpy(clips[2]),  # a (T, H, W, 3) tensor
    ]
    mixed = metric.compute(predictions=CAPTIONS[:3], videos=forms, progress=True, batch_size=2, text_batch_size=1)
    np.testing.assert_allclose(mixed["scores"], as_arrays["scores"], rtol=1e-6)
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\)"):
        metric.compute(predictions=["빨간색"], videos=[np.zeros((2, 3, 8, 8), dtype=np.uint8)], progress=False)
    with pytest.raises(ValueError, match="uint8"):  # normalised floats are not frames
        metric.compute(predictions=["빨간색"], videos=[clips[0] / 255.0], progress=False)


def test_long_captions_are_truncated_unless_scored_per_sentence(colour_siglip):
    metric = SiglipScore(model_name_or_path=str(colour_siglip))
    long_caption = " ".join(["빨간색 화면이다."] * 40)
    clips = colour_clips(seed=6)[:1]
    whole = metric.compute(predictions=[long_caption], videos=clips, progress=False)
    split = metric.compute(predictions=[long_caption], videos=clips, per_sentence=True, progress=False)
    assert whole["truncated_fraction"] == 1.0
    assert split["truncated_fraction"] == 0.0
    assert split["num_texts"] == 40
    assert split["scores"][0] > 0.5


def test_evaluate_load_offline(colour_siglip, tmp_path):
    script = (
        "import json, sys, numpy as np, evaluate\n"
        "m = evaluate.load('kvcap/metrics/siglip_score', model_name_or_path=sys.argv[1], device='cpu')\n"
        "clips = list(np.load(sys.argv[2]))\n"
        "out = m.compute(predictions=sys.argv[3:], videos=clips, progress=False)\n"
        "print(json.dumps({'out': out, 'citation': m.citation}))\n"
    )
    clips = colour_clips(seed=7)
    np.save(tmp_path / "clips.npy", np.stack(clips))
    loaded = run_offline_at_repo_root(
        script, str(colour_siglip), str(tmp_path / "clips.npy"), *CAPTIONS, hf_home=tmp_path / "hf", timeout=180
    )
    here = SiglipScore(model_name_or_path=str(colour_siglip)).compute(
        predictions=CAPTIONS, videos=clips, progress=False
    )
    np.testing.assert_allclose(loaded["out"]["scores"], here["scores"], rtol=1e-6)
    assert "Sigmoid Loss" in loaded["citation"]


def test_floor_pairs_the_same_clips_as_the_meteor_floor():
    from kvcap.metrics.korean_meteor.korean_meteor import derangement as meteor_derangement

    for n in (2, 3, 17, 60):
        for seed in (0, 1, 5):
            assert siglip_module.derangement(n, seed) == meteor_derangement(n, seed)
