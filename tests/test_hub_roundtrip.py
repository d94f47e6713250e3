"""The saved folder is a complete Hub repository: it loads with trust_remote_code where kvcap is not installed."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from .conftest import PROJECTOR_TYPES, random_clips, video_prompt_batch

REPO_ROOT = Path(__file__).resolve().parent.parent

# Runs in `python -I` from an empty folder: no PYTHONPATH, no cwd on sys.path; the editable-install finder is
# removed too, and the script proves the repo's packages cannot be imported before it loads anything.
CLEAN_LOADER = r"""
import importlib.util, json, os, sys
repo, inputs_path, output_path, *folders = sys.argv[1:]
sys.path[:] = [p for p in sys.path if p and not os.path.realpath(p).startswith(repo)]
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in getattr(f, "__module__", "")]
sys.path_hooks[:] = [h for h in sys.path_hooks if "editable" not in getattr(h, "__module__", "")]
sys.path_importer_cache.clear()
for name in ("modeling_kvcap", "processing", "scripts", "tests"):
    assert importlib.util.find_spec(name) is None, f"{name} is importable from {importlib.util.find_spec(name)}"

import torch
from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText

results = {}
for folder in folders:
    inputs = torch.load(os.path.join(inputs_path, os.path.basename(folder) + ".pt"))
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    entry = {"config": json.loads(config.to_json_string(use_diff=False)), "config_class": type(config).__name__}
    for auto_class in (AutoModel, AutoModelForImageTextToText):
        model = auto_class.from_pretrained(folder, trust_remote_code=True).eval()
        assert "modeling_kvcap" not in sys.modules, "the installed package leaked in"
        with torch.no_grad():
            logits = model(**inputs).logits
            generated = model.generate(**inputs, max_new_tokens=10, do_sample=False)
        entry[auto_class.__name__] = {
            "class": f"{type(model).__module__}.{type(model).__name__}",
            "logits": logits.tolist(),
            "generated": generated.tolist(),
        }
    results[folder] = entry
with open(output_path, "w") as handle:
    json.dump(results, handle)
"""


def test_save_pretrained_folder_loads_in_a_clean_interpreter(make_tiny_model, tiny_tokenizer, tmp_path):
    expected, folders = {}, []
    inputs_dir = tmp_path / "inputs"
    inputs_dir.mkdir()
    for projector_type in PROJECTOR_TYPES:
        model = make_tiny_model(projector_type).eval()
        folder = tmp_path / f"kvcap-{projector_type}"
        model.save_pretrained(folder)
        files = {path.name for path in folder.iterdir()}
        assert {"config.json", "model.safetensors", "generation_config.json"} <= files
        assert {"configuration_kvcap.py", "modeling_kvcap.py", "projectors.py"} <= files
        auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
        assert set(auto_map) == {"AutoConfig", "AutoModel", "AutoModelForImageTextToText"}

        inputs = video_prompt_batch(tiny_tokenizer, model.config, ["설명해주세요.", "자세히 설명해주세요."])
        inputs["pixel_values_videos"] = random_clips(model.config, 2)
        torch.save(inputs, inputs_dir / f"{folder.name}.pt")
        with torch.no_grad():
            expected[str(folder)] = {
                "config": json.loads(model.config.to_json_string(use_diff=False)),
                "logits": model(**inputs).logits,
                "generated": model.generate(**inputs, max_new_tokens=10, do_sample=False),
            }
        folders.append(str(folder))

    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    output = tmp_path / "results.json"
    completed = subprocess.run(
        [sys.executable, "-I", "-c", CLEAN_LOADER, str(REPO_ROOT), str(inputs_dir), str(output), *folders],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    results = json.loads(output.read_text())

    for folder, reference in expected.items():
        loaded = results[folder]
        config = dict(loaded["config"])
        original = dict(reference["config"])
        for key in ("_name_or_path", "auto_map"):
            config.pop(key, None), original.pop(key, None)
        assert config == original
        assert loaded["config_class"] == "KVCapConfig"
        for auto_class in ("AutoModel", "AutoModelForImageTextToText"):
            entry = loaded[auto_class]
            assert entry["class"].startswith("transformers_modules."), entry["class"]
            assert entry["class"].endswith("KVCapForConditionalGeneration")
            torch.testing.assert_close(torch.tensor(entry["logits"]), reference["logits"], rtol=0, atol=1e-5)
            assert torch.equal(torch.tensor(entry["generated"]), reference["generated"])
