"""A short pretraining that makes the tiny backbones behave like the real ones on the demo corpus.

Random tiny backbones know nothing: a random language model cannot write Korean, and stage 1 of kvcap trains the
projector only. The real system starts from a CLIP that has seen images with text and a Qwen3 that writes
Korean, so the miniature gets the same head start, in two to five minutes at two threads (by CPU):

- the vision tower is trained contrastively as CLIP is (image–text InfoNCE, with a tiny CLIP text tower that is
  thrown away afterwards) on single frames of rendered scenes from the train distribution only: held-out
  colour × shape pairs are never shown, so they stay novel for the whole system. The text is what one frame
  shows (each object's colour and shape, the sky, the ground), not the templated caption, in which objects are
  a few words among many. Contrast alone is won on colours and the sky, so an auxiliary loss asks every patch
  token the projector reads for the colour and, separately, the shape of the object covering it, and for the
  token's own place in the patch grid. Four scenes in five have their objects repainted in random colours
  outside the vocabulary (their text then names the shape only), so that shape is learned apart from colour;
- the language model learns the corpus language: chat-formatted captions after kvcap's prompt (no video).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from transformers import CLIPConfig, CLIPModel, CLIPVisionModel, PreTrainedTokenizerBase, Qwen3ForCausalLM

from processing.processing_kvcap import DEFAULT_PROMPT

logger = logging.getLogger(__name__)

CLIP_MEAN = np.asarray([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
CLIP_STD = np.asarray([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)


def _downsample(frames: np.ndarray, size: int) -> np.ndarray:
    """(N, S, S, 3) uint8 → (N, size, size, 3) float32 by box averaging (S a multiple of size)."""
    factor = frames.shape[1] // size
    blocks = frames.reshape(frames.shape[0], size, factor, size, factor, 3).astype(np.float32)
    return blocks.mean(axis=(2, 4))


def _clip_pixels(frames: np.ndarray, size: int) -> torch.Tensor:
    pixels = (_downsample(frames, size) / 255.0 - CLIP_MEAN) / CLIP_STD
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(0, 3, 1, 2)))


def visible_facts(scene: dict) -> str:
    """What a single frame shows, e.g. "빨간색 원, 파란색 사각형. 주황색 하늘. 자연" (a repainted object: its shape)."""
    objects = ", ".join(
        obj["shape"] if obj.get("repainted") else f"{obj['color']} {obj['shape']}" for obj in scene["objects"]
    )
    return f"{objects}. {scene['sky_color']} 하늘. {scene['category']}"


IGNORE = -100  # cross_entropy's ignore_index: a repainted object's colour is none of the vocabulary's
# Smallest L1 distance in RGB from a repainted object's colour to every vocabulary and sky colour: close enough that
# shape is learned in colours near the vocabulary's too (at 120 the probe read fewer held-out shapes), and no frame
# shows a vocabulary colour on a repainted object.
REPAINT_MIN_DISTANCE = 40


def repaint_objects(frames: np.ndarray, scene: dict, rng: np.random.Generator) -> None:
    """Paint every object of a rendered scene in place in a random colour far from the vocabulary's and the sky's.

    A shape seen only in the vocabulary's colours, four of five shapes per colour, is learned as a colour x shape
    pattern: a linear probe then read the shape of held-out pairs right 6 % of the time. A real CLIP has seen every
    shape in countless colours; repainting gives the tiny one shapes that the colour cannot predict, while no frame
    shows a held-out pair.
    """
    from kvcap.demo.corpus import COLORS, TIMES_OF_DAY, object_maps

    avoid = np.asarray(list(COLORS.values()) + [tod["rgb"] for tod in TIMES_OF_DAY.values()], dtype=np.float32)
    owners = object_maps(scene, frames.shape[1], frames.shape[0])  # (T, S, S)
    for k, obj in enumerate(scene["objects"]):
        rgb = rng.integers(0, 256, size=3)
        while np.abs(avoid - rgb).sum(-1).min() <= REPAINT_MIN_DISTANCE:
            rgb = rng.integers(0, 256, size=3)
        frames[owners == k + 1] = rgb
        obj["repainted"] = True


def patch_targets(scene: dict, frame_size: int, num_frames: int, grid: int) -> np.ndarray:
    """(T, grid * grid, 2) int64: the colour and shape class of the object that fills most of each patch.

    Class 0 is "no object" (one covering under a tenth of the patch counts as none); colours and shapes are
    numbered from 1 in the corpus vocabulary's order, separately, so held-out colour x shape pairs stay composable.
    A repainted object's colour is ``IGNORE``: it is none of the vocabulary's.
    """
    from kvcap.demo.corpus import COLORS, SHAPES, object_maps

    owners = object_maps(scene, frame_size, num_frames)  # (T, S, S)
    cell = frame_size // grid
    blocks = owners.reshape(num_frames, grid, cell, grid, cell).transpose(0, 1, 3, 2, 4)
    blocks = blocks.reshape(num_frames, grid * grid, cell * cell)  # (T, P, pixels of the patch)
    counts = np.stack([(blocks == k + 1).sum(-1) for k in range(len(scene["objects"]))], axis=-1)  # (T, P, K)
    owner = np.where(counts.max(-1) * 10 >= cell**2, counts.argmax(-1) + 1, 0)
    colour_ids = np.asarray(
        [0] + [IGNORE if obj.get("repainted") else list(COLORS).index(obj["color"]) + 1 for obj in scene["objects"]]
    )
    shape_ids = np.asarray([0] + [SHAPES.index(obj["shape"]) + 1 for obj in scene["objects"]])
    return np.stack([colour_ids[owner], shape_ids[owner]], axis=-1).astype(np.int64)


def pretrain_vision_tower(
    vision: CLIPVisionModel,
    tokenizer: PreTrainedTokenizerBase,
    steps: int = 2000,
    batch_size: int = 64,
    num_scenes: int = 4000,
    learning_rate: float = 2e-3,
    seed: int = 0,
    object_loss_weight: float = 8.0,
    repaint_share: float = 0.8,
) -> list[float]:
    """Train `vision` in place, CLIP-style, against a throwaway tiny text tower; returns the loss per step.

    `repaint_share` of the scenes have their objects repainted (`repaint_objects`). The defaults were chosen with
    `bench/probe_demo_vision.py` (`bench/results/demo_learning.md`): at a share of 0.5 and an object-loss weight of
    2 (repaint distance 120) an object's shape was readable for 36 % of held-out colour x shape pairs, at 0.8 and 8
    (distance 40) for 96 %.

    One to three minutes at 2 threads with the defaults (by CPU), and 0.9 GB for the rendered frames.
    """
    from kvcap.demo.corpus import COLORS, SHAPES, sample_training_scenes

    generator = np.random.default_rng(seed)
    torch.manual_seed(seed)
    image_size = vision.config.image_size
    frames_per_scene = 8
    logger.info(f"Rendering {num_scenes} scenes of {frames_per_scene} frames for the vision tower's pretraining")
    scenes = sample_training_scenes(num_scenes, seed=seed, size=image_size * 2, num_frames=frames_per_scene)
    for clip, _, scene in scenes:
        if generator.random() < repaint_share:
            repaint_objects(clip, scene, generator)
    frames = np.stack([clip for clip, _, _ in scenes])  # (N, T, S, S, 3)
    captions = [visible_facts(scene) + tokenizer.eos_token for _, _, scene in scenes]
    encoded = tokenizer(captions, padding=True, return_tensors="pt", add_special_tokens=False)

    config = CLIPConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": vision.config.hidden_size,
            "intermediate_size": vision.config.intermediate_size,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": max(128, encoded.input_ids.shape[1]),
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.pad_token_id,
        },
        vision_config=vision.config.to_dict(),
        projection_dim=vision.config.projection_dim,
    )
    clip = CLIPModel(config)
    clip.vision_model.load_state_dict(vision.state_dict())
    # Contrast alone can be won on colours and the sky. Per-patch colour and shape labels make every object's
    # shape count too, in the patch tokens the projector reads; being factored they keep held-out colour x shape
    # pairs composable.
    grid = image_size // vision.config.patch_size
    targets = torch.from_numpy(
        np.stack([patch_targets(scene, image_size * 2, frames_per_scene, grid) for _, _, scene in scenes])
    )  # (N, T, P, 2)
    clip.colour_head = torch.nn.Linear(vision.config.hidden_size, len(COLORS) + 1)
    clip.shape_head = torch.nn.Linear(vision.config.hidden_size, len(SHAPES) + 1)
    # A real ViT's patch tokens know where they are. Nothing above needs it, so the tiny one's lost it (a linear
    # probe read 30 % of places), and the language model, which sees no patch index, could not tell left from
    # right.
    clip.position_head = torch.nn.Linear(vision.config.hidden_size, grid * grid)
    positions = torch.arange(grid * grid).repeat(batch_size)

    def batch_loss() -> torch.Tensor:
        # Distinct scenes per batch: two copies of one caption would be contradictory negatives.
        picks = generator.choice(len(scenes), size=batch_size, replace=False)
        frame_index = generator.integers(frames.shape[1], size=batch_size)
        outputs = clip(
            input_ids=encoded.input_ids[picks],
            attention_mask=encoded.attention_mask[picks],
            pixel_values=_clip_pixels(frames[picks, frame_index], image_size),
            return_loss=True,
            output_hidden_states=True,
        )
        # The patch features kvcap's projector reads: layer -2, CLS dropped.
        patches = outputs.vision_model_output.hidden_states[-2][:, 1:]  # (B, P, D)
        labels = targets[picks, frame_index]  # (B, P, 2)
        object_loss = torch.nn.functional.cross_entropy(
            clip.colour_head(patches).flatten(0, 1), labels[..., 0].flatten()
        ) + torch.nn.functional.cross_entropy(clip.shape_head(patches).flatten(0, 1), labels[..., 1].flatten())
        object_loss = object_loss + torch.nn.functional.cross_entropy(
            clip.position_head(patches).flatten(0, 1), positions
        )
        return outputs.loss + object_loss_weight * object_loss

    losses = _fit(clip, batch_loss, steps, learning_rate, "pretraining the vision tower")
    vision.load_state_dict(clip.vision_model.state_dict())
    vision.eval()
    return losses


def pretrain_language_model(
    language_model: Qwen3ForCausalLM,
    tokenizer: PreTrainedTokenizerBase,
    steps: int = 600,
    batch_size: int = 32,
    num_captions: int = 4000,
    learning_rate: float = 3e-3,
    seed: int = 0,
) -> list[float]:
    """Train `language_model` in place on chat-formatted captions; returns the loss per step."""
    from kvcap.demo.corpus import sample_caption_texts

    generator = np.random.default_rng(seed)
    torch.manual_seed(seed)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": DEFAULT_PROMPT}]}],
        tokenize=False,
        add_generation_prompt=True,
        enable_thinking=False,
    ).replace("<|video_pad|>", "")
    prompt_length = len(tokenizer(prompt, add_special_tokens=False).input_ids)
    texts = [prompt + caption + tokenizer.eos_token for caption in sample_caption_texts(num_captions, seed=seed)]
    encoded = tokenizer(texts, padding=True, return_tensors="pt", add_special_tokens=False)
    labels = encoded.input_ids.masked_fill(encoded.attention_mask == 0, -100)
    labels[:, :prompt_length] = -100  # learn to answer, as kvcap's training will ask

    text_lengths = encoded.attention_mask.sum(-1)  # (N,)

    def batch_loss() -> torch.Tensor:
        picks = torch.from_numpy(generator.choice(len(texts), size=batch_size, replace=False))
        # Padding is on the right: the batch is cut to its longest text, not the corpus' longest.
        length = int(text_lengths[picks].max())
        return language_model(
            input_ids=encoded.input_ids[picks, :length],
            attention_mask=encoded.attention_mask[picks, :length],
            labels=labels[picks, :length],
        ).loss

    losses = _fit(language_model, batch_loss, steps, learning_rate, "pretraining the language model")
    language_model.eval()
    return losses


def _fit(
    model: torch.nn.Module, batch_loss, steps: int, learning_rate: float, description: str = "pretraining"
) -> list[float]:
    """AdamW with a one-cycle schedule and grad-norm clipping over `steps` batches; returns the losses.

    A progress bar (steps/s, ETA, the loss) shows it is moving: minutes on a free CPU, much longer on a busy one.
    `TQDM_DISABLE=1` turns it off.
    """
    from tqdm.auto import tqdm

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=learning_rate, total_steps=steps, pct_start=0.1)
    losses = []
    bar = tqdm(range(steps), desc=f"kvcap demo: {description}", unit="step", mininterval=2.0)
    for step in bar:
        if step and step % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}", refresh=False)
        loss = batch_loss()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses
