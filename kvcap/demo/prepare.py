"""The demo preset's preparation step: build the tiny backbones and the demo corpus where the preset points.

The `demo` preset (`kvcap/configs/demo.yaml`) names this module (`prepare: {module: kvcap.demo.prepare, ...}`),
so that `python train_hf.py demo` is the one command that runs the demo. Assets are (re)built only when they are
missing or stale: backbones built by another recipe, a corpus of another size or format.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from .corpus import corpus_size, generate_corpus
from .tiny_backbones import RECIPE_VERSION, build_tiny_backbones, built_recipe

logger = logging.getLogger(__name__)


def stale_demo_backbones(vision: Path, text: Path) -> str | None:
    """Why the demo backbones at these paths must be (re)built, or None when they are current."""
    if not (vision.exists() and text.exists()):
        return "missing"
    wanted = {"version": RECIPE_VERSION, "pretrained": True}
    found = built_recipe(vision.parent)
    return None if found == wanted else f"built by recipe {found}, the demo needs {wanted}"


def prepare(model_args: Any, data_args: Any, num_train_clips: int = 1200, num_val_clips: int = 60) -> None:
    """Build the tiny backbones at the preset's model paths and the corpus at its `data_dir`, when needed."""
    vision, text = Path(model_args.vision_model_name_or_path), Path(model_args.text_model_name_or_path)
    if vision.parent != text.parent:
        raise ValueError(
            f"The demo's vision and text backbones must share one folder, got {vision.parent} and {text.parent}."
        )
    reason = stale_demo_backbones(vision, text)
    if reason is not None:
        logger.info(f"Building the tiny backbones in {vision.parent} ({reason}); two to five minutes.")
        built = build_tiny_backbones(vision.parent, pretrain=True)
        logger.info(f"Built tiny backbones in {vision.parent}: {', '.join(map(str, built.values()))}")
    wanted_clips = {"train": num_train_clips, "val": num_val_clips}
    found_clips = corpus_size(Path(data_args.data_dir))
    if found_clips != wanted_clips:
        logger.info(f"Writing the demo corpus to {data_args.data_dir}: found {found_clips} clips, want {wanted_clips}")
        summary = generate_corpus(data_args.data_dir, num_train=num_train_clips, num_val=num_val_clips)
        logger.info(f"Wrote the demo corpus in {summary['seconds']} s.")
