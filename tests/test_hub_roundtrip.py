"""The saved folder is a complete Hub repository: it loads with trust_remote_code where kvcap is not installed."""

import json

import pytest
import torch

from modeling_kvcap import PROJECTOR_TYPES

from .conftest import random_clips, run_in_clean_interpreter, video_prompt_batch

CLEAN_LOADER = r"""
import json, os, sys
inputs_path, output_path, *folders = sys.argv[1:]

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


@pytest.mark.parametrize("temporal_encoding", ["none", "spatiotemporal_conv"])
def test_save_pretrained_folder_loads_in_a_clean_interpreter(
    make_tiny_model, tiny_tokenizer, tmp_path, temporal_encoding
):
    expected, folders = {}, []
    inputs_dir = tmp_path / "inputs"
    inputs_dir.mkdir()
    for projector_type in PROJECTOR_TYPES:
        model = make_tiny_model(projector_type, temporal_encoding=temporal_encoding).eval()
        if model.multi_modal_projector.temporal_encoding is not None:
            # Values well away from initialisation, so the logits show whether the folder's code applies them.
            torch.manual_seed(0)
            for param in model.multi_modal_projector.temporal_encoding.parameters():
                torch.nn.init.normal_(param, std=0.2)
        folder = tmp_path / f"kvcap-{projector_type}"
        model.save_pretrained(folder)
        files = {path.name for path in folder.iterdir()}
        assert {"config.json", "model.safetensors", "generation_config.json"} <= files
        assert {"configuration_kvcap.py", "modeling_kvcap.py", "projectors.py", "temporal.py"} <= files
        saved_config = json.loads((folder / "config.json").read_text())
        assert saved_config["temporal_encoding"] == temporal_encoding
        auto_map = saved_config["auto_map"]
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

    output = tmp_path / "results.json"
    run_in_clean_interpreter(CLEAN_LOADER, str(inputs_dir), str(output), *folders, workdir=tmp_path)
    results = json.loads(output.read_text())

    for folder, reference in expected.items():
        loaded = results[folder]
        config = dict(loaded["config"])
        original = dict(reference["config"])
        for key in ("_name_or_path", "auto_map"):
            config.pop(key, None), original.pop(key, None)
        assert config == original
        assert config["temporal_encoding"] == temporal_encoding
        assert loaded["config_class"] == "KVCapConfig"
        for auto_class in ("AutoModel", "AutoModelForImageTextToText"):
            entry = loaded[auto_class]
            assert entry["class"].startswith("transformers_modules."), entry["class"]
            assert entry["class"].endswith("KVCapForConditionalGeneration")
            torch.testing.assert_close(torch.tensor(entry["logits"]), reference["logits"], rtol=0, atol=1e-5)
            assert torch.equal(torch.tensor(entry["generated"]), reference["generated"])
