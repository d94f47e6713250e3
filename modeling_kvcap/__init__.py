"""kvcap model package: importing it registers kvcap with the transformers Auto classes.

`AutoModel` resolves to `KVCapForConditionalGeneration` (not the head-less `KVCapModel`), so that the one-line
`AutoModel.from_pretrained(...)` gives a model that can caption.
"""

from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText

from .configuration_kvcap import PROJECTOR_TYPES, KVCapConfig
from .modeling_kvcap import (
    DEFAULT_MAX_NEW_TOKENS,
    KVCapForConditionalGeneration,
    KVCapModel,
    KVCapPreTrainedModel,
    kvcap_4bit_config,
    kvcap_generation_config,
)
from .pipeline_kvcap import KVCapVideoCaptioningPipeline
from .projectors import build_projector

AutoConfig.register(KVCapConfig.model_type, KVCapConfig, exist_ok=True)
AutoModel.register(KVCapConfig, KVCapForConditionalGeneration, exist_ok=True)
AutoModelForImageTextToText.register(KVCapConfig, KVCapForConditionalGeneration, exist_ok=True)

# Written into config.json by save_pretrained, so the saved folder loads with trust_remote_code alone.
KVCapConfig.register_for_auto_class("AutoConfig")
KVCapForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")

__all__ = [
    "DEFAULT_MAX_NEW_TOKENS",
    "PROJECTOR_TYPES",
    "KVCapConfig",
    "KVCapForConditionalGeneration",
    "KVCapModel",
    "KVCapPreTrainedModel",
    "KVCapVideoCaptioningPipeline",
    "build_projector",
    "kvcap_4bit_config",
    "kvcap_generation_config",
]
