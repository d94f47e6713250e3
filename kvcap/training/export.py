"""The final, self-contained model folder: LoRA merged into unquantized weights, with the processor and the code.

Why merged: the folder then loads with one line, `AutoModel.from_pretrained(dir, trust_remote_code=True)`,
with no base checkpoint to fetch and no PEFT at inference; users who want 4-bit pass `kvcap_4bit_config()` as
`quantization_config` when loading. The LoRA update is merged into a freshly loaded *unquantized* copy of the
base language model (not into dequantized NF4 weights, which would bake quantization error into the release).
The price is size: at real size the folder holds Qwen3-8B in bf16 (~16.4 GB) + CLIP-L (~0.6 GB) + projector,
against ~0.2 GB for the adapter and projector alone, which `adapter/` keeps as well for those who have the
base checkpoints.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

from modeling_kvcap import KVCapForConditionalGeneration

from ..disk import naming_a_full_disk


def trained_projector(model: torch.nn.Module) -> torch.nn.Module:
    """The projector as trained: PEFT's trained copy when the projector was a `modules_to_save` module."""
    projector = (
        model.get_base_model().multi_modal_projector if isinstance(model, PeftModel) else model.multi_modal_projector
    )
    if hasattr(projector, "modules_to_save"):
        return projector.modules_to_save[projector.active_adapter]
    return projector


def gather_trained_state(model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """Under FSDP, the trained tensors (LoRA and the projector's trained copy) in full, on every rank.

    A collective: every process calls it, in the same order. ``None`` when the model is not sharded, so the export
    reads the model itself.
    """
    from torch.distributed.tensor import DTensor

    state = model.state_dict()
    if not any(isinstance(value, DTensor) for value in state.values()):
        return None
    trained = {}
    for name, value in state.items():
        if ".lora_" in name or ".modules_to_save." in name:
            trained[name] = (value.full_tensor() if isinstance(value, DTensor) else value).detach().cpu()
    return trained


def export_merged_model(
    trained: PeftModel,
    output_dir: str | Path,
    processor,
    dtype: torch.dtype = torch.bfloat16,
    trained_state: dict[str, torch.Tensor] | None = None,
) -> KVCapForConditionalGeneration:
    """Rebuild kvcap from the base checkpoints unquantized, load the trained projector, merge LoRA, save.

    ``trained_state``: the trained tensors gathered from a sharded model (`gather_trained_state`); without it they
    are read from ``trained``. Returns the merged model (in `dtype`).
    """
    config = trained.get_base_model().config
    merged = KVCapForConditionalGeneration.from_pretrained_backbones(
        config.vision_model_name_or_path,
        config.text_model_name_or_path,
        dtype=dtype,
        projector_dtype=dtype,
        video_token_id=config.video_token_id,
        **config.settings(),
    )
    # The trained model's decoding policy (e.g. a run's max_new_tokens) is the released folder's.
    merged.generation_config = copy.deepcopy(trained.get_base_model().generation_config)
    projector = trained_projector(trained)
    if trained_state is None:
        projector_state = projector.state_dict()
    else:
        prefix = next(name for name, module in trained.named_modules() if module is projector) + "."
        projector_state = {key[len(prefix) :]: value for key, value in trained_state.items() if key.startswith(prefix)}
    merged.multi_modal_projector.load_state_dict(projector_state)

    adapter_config = trained.peft_config[trained.active_adapter]
    lora = LoraConfig(
        r=adapter_config.r,
        lora_alpha=adapter_config.lora_alpha,
        lora_dropout=0.0,
        target_modules=adapter_config.target_modules,
        bias=adapter_config.bias,
    )
    adapter_state = {
        key: value
        for key, value in get_peft_model_state_dict(trained, state_dict=trained_state).items()
        if "multi_modal_projector" not in key
    }
    with_adapter = get_peft_model(merged, lora)
    result = set_peft_model_state_dict(with_adapter, adapter_state)
    if result.unexpected_keys:
        raise RuntimeError(f"LoRA weights did not match the rebuilt model: {result.unexpected_keys[:5]}")
    merged = with_adapter.merge_and_unload().eval()

    output_dir = Path(output_dir)
    with naming_a_full_disk(output_dir, "the final model folder"):
        merged.save_pretrained(output_dir)
        processor.save_pretrained(output_dir)
        trained.save_pretrained(output_dir / "adapter", state_dict=trained_state)
    return merged


class HubPushError(RuntimeError):
    """The exported folder could not be pushed as asked; raised before training whenever that can be known."""


def check_hub_push(repo_id: str, token: str | None = None, private: bool | None = None) -> None:
    """Fail now, not after hours of training, when the final folder could not be pushed to ``repo_id`` as asked.

    Checks that the Hub is reachable (not offline), that the token works and may write to the repository's
    namespace, and that an existing repository is private when ``private`` asks for it.
    """
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import RepositoryNotFoundError

    where = f"--push_to_hub to {repo_id}"
    if constants.HF_HUB_OFFLINE:
        raise HubPushError(f"{where}: the Hub is switched off (HF_HUB_OFFLINE=1); unset it or drop --push_to_hub.")
    api = HfApi(token=token)
    try:
        identity = api.whoami()
    except Exception as error:  # no token, an expired one, or no network: all mean the push would fail
        raise HubPushError(
            f"{where}: the Hub does not accept the token ({error}); log in with `hf auth login` or pass --hub_token."
        ) from error
    role = identity.get("auth", {}).get("accessToken", {}).get("role")
    if role == "read":
        raise HubPushError(f"{where}: the token of {identity['name']} is read-only; use a token with write access.")
    namespace = repo_id.split("/")[0] if "/" in repo_id else identity["name"]
    writable = {identity["name"], *(org["name"] for org in identity.get("orgs", []))}
    if namespace not in writable:
        raise HubPushError(
            f"{where}: {identity['name']} cannot create repositories under {namespace!r} "
            f"(the token reaches {', '.join(sorted(writable))})."
        )
    try:
        info = api.repo_info(repo_id, repo_type="model")
    except RepositoryNotFoundError:
        return  # created at push time, private as asked
    if private and not info.private:
        raise HubPushError(
            f"{where}: the repository exists and is public, but --hub_private_repo asks for a private one; "
            "make it private on the Hub or push elsewhere."
        )


def push_folder(folder: str | Path, repo_id: str, token: str | None = None, private: bool | None = None) -> str:
    """Upload the exported folder as a model repository (created ``private`` when it does not exist); returns the
    commit URL. ``private=None`` leaves the visibility to the Hub account's default."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, exist_ok=True, private=private)
    return api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message="Upload kvcap model").commit_url
