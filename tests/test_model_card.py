"""kvcap.training.model_card: a README the Hub renders as a model page, parsed back with huggingface_hub."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from huggingface_hub import ModelCard

from kvcap.training.model_card import hub_ids, write_model_card
from modeling_kvcap import KVCapConfig, kvcap_generation_config

METRICS = {
    "val_meteor": 0.5838,
    "val_meteor_shuffled_floor": 0.4175,
    "val_unique_ratio": 0.95,
    "val_distinct_1": 0.02,
    "val_distinct_2": 0.062,
    "val_num_clips": 60,
}


TRAINING_ARGS = SimpleNamespace(
    hub_model_id="kim/kvcap-mlp", stage1_learning_rate=1e-3, stage1_epochs=2, stage2_learning_rate=5e-5, stage2_epochs=3
)


def _card(tmp_path: Path, config: KVCapConfig, metrics: dict | None = METRICS) -> ModelCard:
    path = write_model_card(tmp_path, config, kvcap_generation_config(config), TRAINING_ARGS, metrics)
    return ModelCard.load(path)


def test_the_card_carries_hub_metadata_and_a_model_index(tmp_path: Path):
    card = _card(tmp_path, KVCapConfig())
    data = card.data
    assert (data.language, data.license, data.library_name, data.pipeline_tag) == (
        "ko",
        "mit",
        "transformers",
        "video-text-to-text",
    )
    assert {"kvcap", "korean", "video-captioning", "mlp_2l"} <= set(data.tags)
    assert data.base_model == ["Qwen/Qwen3-8B", "openai/clip-vit-large-patch14-336"]
    results = {(result.metric_type, result.metric_name): result.metric_value for result in data.eval_results}
    assert results[("meteor", "Korean METEOR (kiwipiepy morphemes)")] == 0.5838
    assert results[("unique_ratio", "Unique-caption ratio (mode-collapse detector)")] == 0.95
    assert {result.dataset_split for result in data.eval_results} == {"val"}
    assert "model-index" in card.content and data.model_name == "kim/kvcap-mlp"


def test_the_card_body_shows_usage_counts_and_a_quantization_a_hub_user_can_type(tmp_path: Path):
    text = _card(tmp_path, KVCapConfig()).text
    assert 'AutoModel.from_pretrained("kim/kvcap-mlp", trust_remote_code=True)' in text
    assert 'pipeline(model="kim/kvcap-mlp", trust_remote_code=True)' in text  # the one-liner comes first
    assert text.index("pipeline(model=") < text.index("AutoModel.from_pretrained(")
    assert "| val_num_clips | 60 |" in text and "| val_meteor | 0.5838 |" in text
    # No import of this package: the 4-bit setup is spelled out with transformers' own BitsAndBytesConfig.
    assert "BitsAndBytesConfig(" in text and "kvcap_4bit_config" not in text
    assert '"model.multi_modal_projector"' in text and "## Limits" in text


def test_local_backbone_folders_stay_out_of_base_model(tmp_path: Path):
    assert hub_ids("Qwen/Qwen3-8B", str(tmp_path), "outputs/demo-assets/backbones/qwen3", "./x/y", None) == [
        "Qwen/Qwen3-8B"
    ]
    (tmp_path / "org").mkdir()
    (tmp_path / "org" / "model").mkdir()
    local = KVCapConfig(text_model_name_or_path=str(tmp_path / "org" / "model"), vision_model_name_or_path="a/b/c")
    card = _card(tmp_path, local, metrics=None)
    assert card.data.base_model is None and card.data.eval_results is None


def test_a_corpus_with_a_hub_id_is_linked_under_datasets(tmp_path: Path):
    assert _card(tmp_path / "aihub", KVCapConfig()).data.datasets is None  # AI-Hub's corpus has no Hub id
    config = KVCapConfig()
    path = write_model_card(
        tmp_path, config, kvcap_generation_config(config), TRAINING_ARGS, METRICS, "my copy", "kim/aihub-bg-captions"
    )
    data = ModelCard.load(path).data
    assert data.datasets == ["kim/aihub-bg-captions"]
    assert {result.dataset_type for result in data.eval_results} == {"kim/aihub-bg-captions"}
