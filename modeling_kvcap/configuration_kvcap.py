"""kvcap model configuration."""

from __future__ import annotations

import copy

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

PIPELINE_TASK = "video-captioning"
# The pipeline every saved folder names (and carries, in pipeline_kvcap.py): pipeline() imports `impl` from the
# folder and loads the model with `pt`.
CUSTOM_PIPELINES = {
    PIPELINE_TASK: {
        "impl": "pipeline_kvcap.KVCapVideoCaptioningPipeline",
        "pt": ["AutoModel"],
        "tf": [],
        "type": "multimodal",
    }
}
PROJECTOR_TYPES = ("linear", "mlp_2l", "perceiver", "c_abstractor")
# Projectors that keep every patch of every frame as a video token; the others compress a clip to num_query_tokens.
PER_PATCH_PROJECTORS = ("linear", "mlp_2l")
# How time reaches the language model beyond token order (see `temporal.py`): `none` is the seed's configuration.
TEMPORAL_ENCODINGS = (
    "none",
    "frame_embedding",
    "trajectory_embedding",
    "spatiotemporal_conv",
    "motion_conv",
    "spacetime_attention",
)
# What a user chooses when composing kvcap from backbones; everything else follows from the backbones. Training sets
# them, export rebuilds the model from `KVCapConfig.settings()` and config.json keeps them.
MODEL_SETTINGS = (
    "projector_type",
    "num_frames",
    "vision_feature_layer",
    "num_query_tokens",
    "projector_hidden_act",
    "perceiver_depth",
    "perceiver_num_heads",
    "abstractor_depth",
    "temporal_encoding",
)

DEFAULT_VISION_MODEL = "openai/clip-vit-large-patch14-336"
DEFAULT_TEXT_MODEL = "Qwen/Qwen3-8B"
# `<|video_pad|>` in Qwen3's tokenizer.
QWEN3_VIDEO_PAD_TOKEN_ID = 151656

# CLIP-ViT-L/14 at 336 px, as published with `openai/clip-vit-large-patch14-336`.
CLIP_VIT_L_14_336 = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "projection_dim": 768,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "image_size": 336,
    "patch_size": 14,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}

# Qwen3-8B, as published with `Qwen/Qwen3-8B`.
QWEN3_8B = {
    "vocab_size": 151936,
    "hidden_size": 4096,
    "intermediate_size": 12288,
    "num_hidden_layers": 36,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "max_position_embeddings": 40960,
    "rms_norm_eps": 1e-6,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
    "tie_word_embeddings": False,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
}


def c_abstractor_pool_shape(num_frames: int, num_query_tokens: int, patch_grid: int) -> tuple[int, int]:
    """`(t, s)` with `t * s * s == num_query_tokens`, `t` the largest divisor of `num_frames` that allows it."""
    for steps in sorted((d for d in range(1, num_frames + 1) if num_frames % d == 0), reverse=True):
        if num_query_tokens % steps:
            continue
        side = round((num_query_tokens // steps) ** 0.5)
        if side * side * steps == num_query_tokens and side <= patch_grid:
            return steps, side
    raise ValueError(
        f"c_abstractor cannot lay out num_query_tokens={num_query_tokens} over num_frames="
        f"{num_frames} and a {patch_grid}x{patch_grid} patch grid: it needs t * s * s tokens "
        "with t dividing num_frames and s at most the grid side (e.g. 64 = 4 * 4 * 4 for 8 frames)."
    )


class KVCapConfig(PreTrainedConfig):
    r"""
    Configuration of a kvcap video captioner: a frozen CLIP vision tower, a projector and a Qwen3 language model.

    With no arguments it describes the real system (CLIP-ViT-L/14-336, Qwen3-8B, 8 frames, layer -2, `mlp_2l`)
    without downloading anything.

    Args:
        vision_config (`dict` or `CLIPVisionConfig`, *optional*):
            The vision tower's configuration.
        text_config (`dict` or `Qwen3Config`, *optional*):
            The language model's configuration.
        projector_type (`str`, *optional*, defaults to `"mlp_2l"`):
            One of `linear`, `mlp_2l`, `perceiver`, `c_abstractor`.
        num_frames (`int`, *optional*, defaults to 8):
            Frames sampled per clip.
        vision_feature_layer (`int`, *optional*, defaults to -2):
            Index into the vision tower's hidden states whose patch features (CLS dropped) feed the projector.
        num_query_tokens (`int`, *optional*, defaults to 64):
            Video tokens per clip for the `perceiver` and `c_abstractor` projectors.
        video_token_id (`int`, *optional*, defaults to 151656):
            Id of the `<|video_pad|>` placeholder that visual features replace.
        projector_hidden_act (`str`, *optional*, defaults to `"gelu"`):
            Activation of the `mlp_2l` projector.
        perceiver_depth (`int`, *optional*, defaults to 6):
            Resampler layers of the `perceiver` projector.
        perceiver_num_heads (`int`, *optional*, defaults to 8):
            Attention heads of the `perceiver` projector (64 dims each).
        abstractor_depth (`int`, *optional*, defaults to 3):
            ResNet blocks before and after the pooling of the `c_abstractor` projector.
        temporal_encoding (`str`, *optional*, defaults to `"none"`):
            What tells the projector where each frame sits in time, before it reads the patch features: `none`
            (token order only, the seed's configuration), `frame_embedding` (a learned embedding per frame added to
            every patch), `trajectory_embedding` (the same plus time × the patch's place in the grid, so the tokens
            of a moving object sum to its displacement), `spatiotemporal_conv` (a residual depthwise 3 × 3 × 3
            convolution over frames and the patch grid, so each patch token carries how its neighbourhood changes
            from frame to frame), `motion_conv` (the same with one filter per direction of motion for every
            channel) or `spacetime_attention` (one residual attention layer over all patches of all frames). Works
            with every projector.
        vision_model_name_or_path (`str`, *optional*):
            Hub id or path the vision tower was built from.
        text_model_name_or_path (`str`, *optional*):
            Hub id or path the language model was built from.
    """

    model_type = "kvcap"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(
            config_class=AutoConfig, model_type="clip_vision_model", init_kwargs=CLIP_VIT_L_14_336
        ),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="qwen3", init_kwargs=QWEN3_8B),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    projector_type: str = "mlp_2l"
    num_frames: int = 8
    vision_feature_layer: int = -2
    num_query_tokens: int = 64
    video_token_id: int = QWEN3_VIDEO_PAD_TOKEN_ID
    projector_hidden_act: str = "gelu"
    perceiver_depth: int = 6
    perceiver_num_heads: int = 8
    abstractor_depth: int = 3
    temporal_encoding: str = "none"
    vision_model_name_or_path: str | None = DEFAULT_VISION_MODEL
    text_model_name_or_path: str | None = DEFAULT_TEXT_MODEL
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.projector_type not in PROJECTOR_TYPES:
            raise ValueError(
                f"Unknown projector_type {self.projector_type!r}; choose one of {', '.join(PROJECTOR_TYPES)}."
            )
        if self.temporal_encoding not in TEMPORAL_ENCODINGS:
            raise ValueError(
                f"Unknown temporal_encoding {self.temporal_encoding!r}; choose one of {', '.join(TEMPORAL_ENCODINGS)}."
            )
        if self.num_frames < 1:
            raise ValueError(f"num_frames must be at least 1, got {self.num_frames}.")
        num_layers = self.vision_config.num_hidden_layers
        if not -(num_layers + 1) <= self.vision_feature_layer <= num_layers:
            raise ValueError(
                f"vision_feature_layer={self.vision_feature_layer} is outside the vision tower's "
                f"{num_layers + 1} hidden states."
            )
        if self.projector_type in ("perceiver", "c_abstractor") and self.num_query_tokens < 1:
            raise ValueError(f"num_query_tokens must be at least 1, got {self.num_query_tokens}.")
        if self.projector_type == "c_abstractor":
            c_abstractor_pool_shape(self.num_frames, self.num_query_tokens, self.patch_grid)
        # An untied head is what Qwen3-8B ships; follow the text model for smaller Qwen3 variants that tie.
        if not self.tie_word_embeddings and getattr(self.text_config, "tie_word_embeddings", False):
            self.tie_word_embeddings = True
        # Saved into config.json, so that `pipeline(model=folder, trust_remote_code=True)` finds kvcap's pipeline.
        if not getattr(self, "custom_pipelines", None):
            self.custom_pipelines = copy.deepcopy(CUSTOM_PIPELINES)

    @property
    def patch_grid(self) -> int:
        """Patches along one side of a frame (24 for CLIP-ViT-L/14 at 336 px)."""
        return self.vision_config.image_size // self.vision_config.patch_size

    @property
    def num_patches(self) -> int:
        """Patch features per frame after dropping CLS (576 for CLIP-ViT-L/14 at 336 px)."""
        return self.patch_grid**2

    @property
    def num_video_tokens(self) -> int:
        """Placeholder tokens one clip occupies in the language model's input.

        `linear` / `mlp_2l` keep every patch of every frame (8 × 576 = 4,608 at real size); `perceiver` and
        `c_abstractor` compress a clip to `num_query_tokens`.
        """
        if self.projector_type in PER_PATCH_PROJECTORS:
            return self.num_frames * self.num_patches
        return self.num_query_tokens

    def settings(self) -> dict:
        """The `MODEL_SETTINGS` of this config: what rebuilding it from the same backbones needs."""
        return {name: getattr(self, name) for name in MODEL_SETTINGS}

    @property
    def abstractor_pool_shape(self) -> tuple[int, int]:
        """`(t, s)`: the C-Abstractor pools the `(T, grid, grid)` feature volume to `(t, s, s)` cells.

        `t` is the largest divisor of `num_frames` for which `num_query_tokens / t` is a square whose side
        does not exceed the patch grid; it keeps as much temporal order as the token budget allows
        (64 tokens over 8 frames: 4 time steps of 4 × 4).
        """
        return c_abstractor_pool_shape(self.num_frames, self.num_query_tokens, self.patch_grid)


__all__ = ["MODEL_SETTINGS", "PER_PATCH_PROJECTORS", "PROJECTOR_TYPES", "TEMPORAL_ENCODINGS", "KVCapConfig"]
