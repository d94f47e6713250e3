"""The wheel as a user installs it: kvcap's top level, the presets and metrics inside it, the console commands."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from kvcap.demo.corpus import generate_corpus

from .conftest import REPO_ROOT

pytestmark = pytest.mark.slow

CONSOLE_COMMANDS = {
    "kvcap-train": "train_hf:cli",
    "kvcap-eval": "eval_hf:main",
    "kvcap-caption": "eval_hf:caption_main",
    "kvcap-data": "processing.aihub:main",
}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(REPO_ROOT), "-w", out],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (found,) = out.glob("kvcap-*.whl")
    return found


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """The wheel installed into a folder of its own (not the editable checkout)."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", target, wheel],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return target


def run_installed(installed: Path, command: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``command`` outside the repository, with the installed wheel ahead of the editable checkout."""
    env = {**os.environ, "PYTHONPATH": str(installed), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    if command[0] in CONSOLE_COMMANDS:
        command = [str(installed / "bin" / command[0]), *command[1:]]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_the_wheel_adds_only_kvcap_and_the_users_packages_to_the_top_level(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top == {"kvcap", "modeling_kvcap", "processing", "train_hf.py", "eval_hf.py"}
    for shipped in (
        "kvcap/configs/demo.yaml",
        "kvcap/configs/mlp_2l.yaml",
        "kvcap/configs/accelerate/single_gpu.yaml",
        "kvcap/metrics/korean_meteor/korean_meteor.py",
        "kvcap/metrics/korean_meteor/README.md",
        "kvcap/demo/assets/tiny-korean-bpe/tokenizer.json",
    ):
        assert shipped in names, shipped
    (entry_points,) = [name for name in names if name.endswith(".dist-info/entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    for command, target in CONSOLE_COMMANDS.items():
        assert f"{command} = {target}" in text


def test_the_installed_package_finds_its_presets_outside_the_repository(installed, tmp_path):
    script = (
        "import kvcap, json\n"
        "from kvcap.training.arguments import PRESETS_DIR, parse_arguments\n"
        "model_args, data_args, _ = parse_arguments(['demo'])\n"
        "print(json.dumps([kvcap.__file__, str(PRESETS_DIR), data_args.prepare['module'], model_args.projector_type]))"
    )
    completed = run_installed(installed, [sys.executable, "-c", script], cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    module_file, presets, prepare, projector = __import__("json").loads(completed.stdout.splitlines()[-1])
    assert Path(module_file).is_relative_to(installed) and Path(presets).is_relative_to(installed)
    assert (prepare, projector) == ("kvcap.demo.prepare", "mlp_2l")


def test_console_commands_group_their_help_and_name_themselves_in_errors(installed, tmp_path):
    train_help = run_installed(installed, ["kvcap-train", "--help"], cwd=tmp_path)
    assert train_help.returncode == 0, train_help.stderr[-2000:]
    for heading in ("model: backbones", "data: corpus", "training: stages"):
        assert heading in train_help.stdout
    eval_help = run_installed(installed, ["kvcap-eval", "--help"], cwd=tmp_path)
    assert "generation: decoding and batching" in eval_help.stdout and "scoring: METEOR" in eval_help.stdout
    caption = run_installed(installed, ["kvcap-caption", "--model_name_or_path", "org/m"], cwd=tmp_path)
    assert caption.returncode == 2 and "kvcap-caption: error: give the videos to caption" in caption.stderr
    data = run_installed(installed, ["kvcap-data", str(tmp_path / "no-corpus")], cwd=tmp_path)
    assert data.returncode == 2 and f"kvcap-data: error: {tmp_path / 'no-corpus'}: no such folder" in data.stderr
    wrong = run_installed(installed, ["kvcap-train", "mlp2l"], cwd=tmp_path)
    assert wrong.returncode == 2 and "kvcap-train: error: 'mlp2l' is neither a YAML file" in wrong.stderr


def test_kvcap_train_runs_the_demo_preset_from_the_installed_package(installed, tiny_backbones, tmp_path):
    corpus = tmp_path / "corpus"
    generate_corpus(corpus, num_train=8, num_val=2, seed=0)
    overrides = {
        "prepare": "null",  # the tiny backbones and corpus are made above, not by the demo's preparation step
        "vision_model_name_or_path": tiny_backbones["clip-vision"],
        "text_model_name_or_path": tiny_backbones["qwen3"],
        "data_dir": corpus,
        "output_dir": tmp_path / "run",
        "feature_cache_dir": tmp_path / "feature-cache",
        "stage1_epochs": 1,
        "stage2_epochs": 1,
        "eval_strategy": "no",
        "save_strategy": "no",
        "diversity_num_samples": 2,
        "generation_max_new_tokens": 8,
        "final_eval": False,
        "disable_tqdm": True,
    }
    argv = [item for key, value in overrides.items() for item in (f"--{key}", str(value))]
    completed = run_installed(installed, ["kvcap-train", "demo", *argv], cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr[-4000:]
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()
    assert "gemm_4bit_forward" not in completed.stderr  # bitsandbytes' kernel warning is held back without 4-bit
