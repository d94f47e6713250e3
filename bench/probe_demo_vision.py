"""What the demo's pretrained tiny vision tower makes readable: linear probes on its patch features.

The projector reads layer -2 of the vision tower, CLS dropped. This fits a linear probe per patch for the colour and
the shape of the object covering it, on rendered scenes of train colour x shape pairs, and scores it on other scenes
of train pairs and on scenes of the held-out pairs only: a shape that is readable apart from its colour is read on
held-out pairs too. A third probe reads an object's shape, and a fourth its colour, from the mean of the patches it
covers in all frames, as the language model may gather them; a fifth reads each object's motion from where it is in
each frame (its patches, from the scene's own object map), the information the language model has to gather to say
which way it moves.
With ``--through-mp4`` the scored scenes are encoded as the corpus' clips are and decoded as the demo reads them
(x264 yuv420p, then swscale's bicubic resize to the tower's size) while the probes are still fitted on rendered frames:
whatever the video path loses shows as the gap to the run without it.
About a minute on one thread. Run from the repository root, after the demo has built its assets::

    python bench/probe_demo_vision.py outputs/demo-assets/backbones/clip-vision [--through-mp4]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from transformers import CLIPVisionModel

from kvcap.demo.corpus import COLORS, HELD_OUT_PAIRS, MOTIONS, SHAPES, TRAIN_PAIRS, sample_training_scenes, write_mp4
from kvcap.demo.pretrain import _clip_pixels, patch_targets
from processing.video_io import read_video_frames

NUM_FRAMES = 8


def rendered_scenes(count: int, seed: int, pairs, image_size: int) -> list[tuple[np.ndarray, dict]]:
    """``count`` scenes whose objects are drawn from ``pairs``, rendered at twice the tower's size as the demo is.

    Seeds from 10 up: the vision pretraining draws its scenes from seed 0 of the same stream.
    """
    scenes = sample_training_scenes(count, seed=seed, size=image_size * 2, num_frames=NUM_FRAMES, pairs=pairs)
    return [(frames, scene) for frames, _, scene in scenes]


def clip_features(vision: CLIPVisionModel, clips: np.ndarray) -> torch.Tensor:
    """(N, T, P, D): the layer -2 patch features the projector reads, of (N, T, S, S, 3) uint8 frames (S a multiple of
    the tower's size, box-averaged down to it)."""
    with torch.no_grad():
        pixels = _clip_pixels(clips.reshape(-1, *clips.shape[2:]), vision.config.image_size)
        hidden = vision(pixel_values=pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
    return hidden.reshape(clips.shape[0], clips.shape[1], hidden.shape[1], -1)


def patch_features(vision: CLIPVisionModel, scenes: list[tuple[np.ndarray, dict]]) -> torch.Tensor:
    """(N, T, P, D) of the rendered frames."""
    return clip_features(vision, np.stack([clip for clip, _ in scenes]))


def decoded_patch_features(vision: CLIPVisionModel, scenes: list[tuple[np.ndarray, dict]]) -> torch.Tensor:
    """(N, T, P, D) as `patch_features`, from each scene written as the corpus writes a clip and read back as the
    demo reads one (decoded and resized to the tower's size while decoding)."""
    clips = []
    with tempfile.TemporaryDirectory() as folder:
        for index, (frames, _) in enumerate(scenes):
            path = Path(folder) / f"scene_{index}.mp4"
            write_mp4(path, frames, fps=8)
            clips.append(read_video_frames(path, num_frames=NUM_FRAMES, size=vision.config.image_size, threads=1))
    return clip_features(vision, np.stack(clips))


def fit_probe(train: tuple[torch.Tensor, torch.Tensor], classes: int) -> torch.nn.Linear:
    """A linear softmax probe fitted on ``train`` (features (N, D), classes (N,)) by full-batch Adam."""
    torch.manual_seed(0)
    probe = torch.nn.Linear(train[0].shape[-1], classes)
    optimizer = torch.optim.Adam(probe.parameters(), lr=1e-2)
    for _ in range(400):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(probe(train[0]), train[1]).backward()
        optimizer.step()
    return probe


def fit_and_score(
    train: tuple[torch.Tensor, torch.Tensor], tests: list[tuple[torch.Tensor, torch.Tensor]], classes: int
):
    """Accuracy on each of ``tests`` of a linear softmax probe fitted on ``train``."""
    probe = fit_probe(train, classes)
    with torch.no_grad():
        return [float((probe(x).argmax(-1) == y).float().mean()) for x, y in tests]


def object_patches(features: torch.Tensor, targets: torch.Tensor, attribute: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The features and the class of every patch an object covers."""
    covered = targets[..., attribute] > 0
    return features[covered], targets[..., attribute][covered]


def covered_by(obj: dict, scene_targets: torch.Tensor) -> torch.Tensor:
    """(T, P) bool: the patches the object covers, found by its colour (a scene's objects differ in colour)."""
    return scene_targets[..., 0] == list(COLORS).index(obj["color"]) + 1


def motion_examples(scenes, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per object: which patches its colour covers in each frame (T · P zeros and ones), and its motion class."""
    motions = list(MOTIONS)
    where, labels = [], []
    for index, (_, scene) in enumerate(scenes):
        for obj in scene["objects"]:
            where.append(covered_by(obj, targets[index]).float().flatten())
            labels.append(motions.index(obj["motion_id"]))
    return torch.stack(where), torch.tensor(labels)


def object_features(
    scenes, features: torch.Tensor, targets: torch.Tensor, attribute: str = "shape"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per object: the mean feature of the patches it covers over all frames, and its class of ``attribute``
    (``"shape"`` or ``"color"``, numbered from 1 in the vocabulary's order).

    What the language model could gather by attending to one object's tokens; an object that covers no patch is left
    out.
    """
    pooled, labels = [], []
    for index, (_, scene) in enumerate(scenes):
        for obj in scene["objects"]:
            covered = covered_by(obj, targets[index])
            if covered.any():
                pooled.append(features[index][covered].mean(0))
                labels.append((SHAPES if attribute == "shape" else list(COLORS)).index(obj[attribute]) + 1)
    return torch.stack(pooled), torch.tensor(labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("vision_tower", help="a saved CLIPVisionModel folder, e.g. the demo's")
    parser.add_argument(
        "--through-mp4", action="store_true", help="score on scenes encoded and decoded as the demo's clips are"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    vision = CLIPVisionModel.from_pretrained(args.vision_tower).eval()
    size, grid = vision.config.image_size, vision.config.image_size // vision.config.patch_size
    splits = {
        "fit": rendered_scenes(1500, 10, TRAIN_PAIRS, size),
        "train pairs": rendered_scenes(400, 11, TRAIN_PAIRS, size),
        "held-out pairs": rendered_scenes(400, 12, HELD_OUT_PAIRS, size),
    }
    features = {name: patch_features(vision, scenes) for name, scenes in splits.items()}
    if args.through_mp4:
        features.update({name: decoded_patch_features(vision, splits[name]) for name in splits if name != "fit"})
        print("Scored on the scenes as mp4 clips, decoded as the demo reads them; fitted on rendered frames.")
    targets = {
        name: torch.from_numpy(np.stack([patch_targets(scene, size * 2, NUM_FRAMES, grid) for _, scene in scenes]))
        for name, scenes in splits.items()
    }
    print(f"| probe | {' | '.join(name for name in splits if name != 'fit')} |\n|---|---:|---:|")
    for attribute, name, classes in (
        (0, "colour of the patch", len(COLORS) + 1),
        (1, "shape of the patch", len(SHAPES) + 1),
    ):
        scores = fit_and_score(
            object_patches(features["fit"], targets["fit"], attribute),
            [object_patches(features[split], targets[split], attribute) for split in ("train pairs", "held-out pairs")],
            classes,
        )
        print(f"| {name} | " + " | ".join(f"{score:.0%}" for score in scores) + " |")
    scores = fit_and_score(
        object_features(splits["fit"], features["fit"], targets["fit"]),
        [
            object_features(splits[split], features[split], targets[split])
            for split in ("train pairs", "held-out pairs")
        ],
        len(SHAPES) + 1,
    )
    print("| shape of an object, from the mean of its patches | " + " | ".join(f"{s:.0%}" for s in scores) + " |")
    colour_probe = fit_probe(object_features(splits["fit"], features["fit"], targets["fit"], "color"), len(COLORS) + 1)
    recalls = []
    for split in ("train pairs", "held-out pairs"):
        x, y = object_features(splits[split], features[split], targets[split], "color")
        with torch.no_grad():
            right = colour_probe(x).argmax(-1) == y
        # The weakest colour too: one colour confused with another hides in the mean.
        worst = min((float(right[y == k + 1].float().mean()), colour) for k, colour in enumerate(COLORS))
        recalls.append(f"{float(right.float().mean()):.0%} (weakest: {worst[1]} {worst[0]:.0%})")
    print("| colour of an object, from the mean of its patches | " + " | ".join(recalls) + " |")
    scores = fit_and_score(
        motion_examples(splits["fit"], targets["fit"]),
        [motion_examples(splits[split], targets[split]) for split in ("train pairs", "held-out pairs")],
        len(MOTIONS),
    )
    print("| motion of an object, from its patches in each frame | " + " | ".join(f"{s:.0%}" for s in scores) + " |")


if __name__ == "__main__":
    main()
