"""kvcap: a frozen CLIP vision tower, a projector and a Qwen3 language model that caption videos in Korean."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import (
    AutoModel,
    GenerationConfig,
    GenerationMixin,
    LogitsProcessorList,
    PreTrainedModel,
    RepetitionPenaltyLogitsProcessor,
)
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.generation.utils import GenerateOutput
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import slice_logits_to_keep
from transformers.utils import logging

from .configuration_kvcap import DEFAULT_TEXT_MODEL, DEFAULT_VISION_MODEL, KVCapConfig

# Imported so that save_pretrained copies it beside the model: pipeline(model=folder) loads it from there.
from .pipeline_kvcap import KVCapVideoCaptioningPipeline  # noqa: F401
from .projectors import KVCapCAbstractor, KVCapPerceiverResampler, build_projector
from .temporal import (
    KVCapFrameEmbedding,
    KVCapMotionConv,
    KVCapSpaceTimeAttention,
    KVCapSpatioTemporalConv,
    KVCapTrajectoryEmbedding,
)

logger = logging.get_logger(__name__)

VIDEO_TOKEN = "<|video_pad|>"
# AI-Hub captions average ~575 characters and Qwen3 writes Korean prose at ~1.29 characters per token, so a caption
# takes ~450 tokens on average; 768 covers ~990 characters. Greedy decoding stops earlier, at `<|im_end|>`.
DEFAULT_MAX_NEW_TOKENS = 768
# Penalises tokens already generated in the caption (never the prompt's, see `KVCapForConditionalGeneration.generate`).
DEFAULT_REPETITION_PENALTY = 1.2


def kvcap_generation_config(
    config: KVCapConfig, base: GenerationConfig | None = None, special_token_ids: Sequence[int] = ()
) -> GenerationConfig:
    """kvcap's decoding policy: greedy, `DEFAULT_MAX_NEW_TOKENS` new tokens, repetition penalty 1.2.

    Args:
        config: the kvcap config; its `video_token_id` is suppressed, so a caption can never hold a placeholder.
        base: the language model's own generation config, read for `bos/eos/pad_token_id` only (Qwen3 ends on
            `<|im_end|>` and `<|endoftext|>`); without it they come from `config.text_config`. Its sampling
            settings (Qwen3-8B's temperature 0.6, top-p, top-k) are deliberately not carried over.
        special_token_ids: the tokenizer's special tokens (`<|im_start|>`, `<|vision_start|>`, `<|image_pad|>`, ...):
            suppressed as well, all but the ones that end a caption. A caption is plain text; a generated
            structural token would open a turn or a vision span inside it.
    """
    special_tokens = base if base is not None else config.text_config
    eos = getattr(special_tokens, "eos_token_id", None)
    ends = {eos} if isinstance(eos, int) else set(eos or ())
    suppressed = {int(token) for token in special_token_ids}
    if config.video_token_id is not None:
        suppressed.add(config.video_token_id)
    return GenerationConfig(
        do_sample=False,
        num_beams=1,
        max_new_tokens=DEFAULT_MAX_NEW_TOKENS,
        repetition_penalty=DEFAULT_REPETITION_PENALTY,
        # Left unset so that greedy decoding raises no "sampling flags set while do_sample=False" warning.
        temperature=None,
        top_p=None,
        top_k=None,
        bos_token_id=getattr(special_tokens, "bos_token_id", None),
        eos_token_id=getattr(special_tokens, "eos_token_id", None),
        pad_token_id=getattr(special_tokens, "pad_token_id", None),
        # A generated placeholder would be taken for video input at the next step and fail the placeholder check.
        suppress_tokens=sorted(suppressed - ends) or None,
    )


@dataclass
class KVCapModelOutputWithPast(BaseModelOutputWithPast):
    r"""
    video_hidden_states (`torch.FloatTensor` of shape `(batch_size, num_video_tokens, hidden_size)`, *optional*):
        Projected video features that replaced the placeholder tokens, when a video was given.
    """

    video_hidden_states: torch.FloatTensor | None = None


@dataclass
class KVCapCausalLMOutputWithPast(CausalLMOutputWithPast):
    r"""
    video_hidden_states (`torch.FloatTensor` of shape `(batch_size, num_video_tokens, hidden_size)`, *optional*):
        Projected video features that replaced the placeholder tokens, when a video was given.
    """

    video_hidden_states: torch.FloatTensor | None = None


class KVCapPreTrainedModel(PreTrainedModel):
    config: KVCapConfig
    config_class = KVCapConfig
    base_model_prefix = "model"
    input_modalities = ("video", "text")
    supports_gradient_checkpointing = True
    _skip_keys_device_placement = "cache"
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        std = getattr(self.config.get_text_config(), "initializer_range", 0.02)
        if isinstance(module, KVCapPerceiverResampler):
            init.normal_(module.latents, mean=0.0, std=std)
            init.normal_(module.frame_embeddings, mean=0.0, std=std)
        elif isinstance(module, KVCapCAbstractor):
            init.normal_(module.position_embeddings, mean=0.0, std=std)
            init.normal_(module.frame_embeddings, mean=0.0, std=std)
        elif isinstance(module, KVCapFrameEmbedding):
            init.normal_(module.frame_embeddings, mean=0.0, std=std)
        elif isinstance(module, KVCapTrajectoryEmbedding):
            init.normal_(module.frame_embeddings, mean=0.0, std=std)
            init.normal_(module.row_direction, mean=0.0, std=std)
            init.normal_(module.column_direction, mean=0.0, std=std)
        elif isinstance(module, KVCapSpatioTemporalConv):
            if isinstance(module, KVCapMotionConv):
                init.copy_(module.conv.weight, module.motion_filters().to(module.conv.weight))
                init.zeros_(module.conv.bias)
            # A new layer starts as the identity, so the patch features the projector reads are those of the
            # encoder until training makes motion worth adding.
            init.zeros_(module.output_proj.weight)
        elif isinstance(module, KVCapSpaceTimeAttention):
            init.normal_(module.frame_embeddings, mean=0.0, std=std)
            init.normal_(module.position_embeddings, mean=0.0, std=std)
            init.zeros_(module.output_proj.weight)  # the identity at first, as the convolutions


class KVCapModel(KVCapPreTrainedModel):
    """The vision tower, the projector and the language model, without the language-modelling head."""

    def __init__(self, config: KVCapConfig):
        super().__init__(config)
        self.vision_tower = AutoModel.from_config(config.vision_config)
        self.multi_modal_projector = build_projector(config)
        self.language_model = AutoModel.from_config(config.text_config)
        # The encoder stays frozen: captions are learned in the projector and the language model only.
        self.vision_tower.requires_grad_(False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def train(self, mode: bool = True) -> KVCapModel:
        super().train(mode)
        if not any(param.requires_grad for param in self.vision_tower.parameters()):
            self.vision_tower.eval()
        if mode:
            _keep_cpu_4bit_weights_differentiable(self.language_model)
        return self

    def get_vision_tower_features(self, pixel_values_videos: torch.Tensor) -> torch.Tensor:
        """Frozen-encoder patch features of every frame: what the feature cache stores.

        Args:
            pixel_values_videos: `(batch, num_frames, 3, image_size, image_size)` normalised frames.

        Returns:
            `(batch, num_frames, num_patches, vision_hidden)`: hidden states of `config.vision_feature_layer`,
            CLS dropped.
        """
        self._check_pixel_values(pixel_values_videos)
        batch, frames = pixel_values_videos.shape[:2]
        frozen = not any(param.requires_grad for param in self.vision_tower.parameters())
        # No graph is needed through a frozen encoder; skipping it saves the activations of every layer.
        with torch.no_grad() if frozen else contextlib.nullcontext():
            outputs = self.vision_tower(
                pixel_values_videos.flatten(0, 1).to(dtype=self.vision_tower.dtype), output_hidden_states=True
            )
        patch_features = outputs.hidden_states[self.config.vision_feature_layer][:, 1:]
        return patch_features.reshape(batch, frames, *patch_features.shape[1:])

    def get_video_features(
        self, pixel_values_videos: torch.Tensor | None = None, video_features: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Project a batch of clips into the language model's embedding space.

        Args:
            pixel_values_videos: `(batch, num_frames, 3, image_size, image_size)`, or
            video_features: `(batch, num_frames, num_patches, vision_hidden)` cached encoder features.

        Returns:
            `(batch, config.num_video_tokens, text_hidden)`.
        """
        if (pixel_values_videos is None) == (video_features is None):
            raise ValueError(
                "Pass exactly one of pixel_values_videos (frames) or video_features (cached encoder features); "
                f"got {'both' if video_features is not None else 'neither'}."
            )
        if video_features is None:
            video_features = self.get_vision_tower_features(pixel_values_videos)
        else:
            self._check_video_features(video_features)
        projector_dtype = next(self.multi_modal_projector.parameters()).dtype
        return self.multi_modal_projector(video_features.to(projector_dtype))

    def _check_pixel_values(self, pixel_values_videos: torch.Tensor) -> None:
        size = self.config.vision_config.image_size
        expected = f"(batch, {self.config.num_frames}, 3, {size}, {size})"
        if pixel_values_videos.ndim != 5:
            raise ValueError(f"pixel_values_videos must be {expected}, got shape {tuple(pixel_values_videos.shape)}.")
        if pixel_values_videos.shape[1] != self.config.num_frames:
            raise ValueError(
                f"pixel_values_videos has {pixel_values_videos.shape[1]} frames per clip but the model was built "
                f"for num_frames={self.config.num_frames}; expected {expected}."
            )
        if tuple(pixel_values_videos.shape[2:]) != (3, size, size):
            raise ValueError(f"pixel_values_videos must be {expected}, got shape {tuple(pixel_values_videos.shape)}.")

    def _check_video_features(self, video_features: torch.Tensor) -> None:
        expected_tail = (self.config.num_frames, self.config.num_patches, self.config.vision_config.hidden_size)
        if video_features.ndim != 4 or tuple(video_features.shape[1:]) != expected_tail:
            hint = ""
            if video_features.ndim == 4 and video_features.shape[1] != self.config.num_frames:
                hint = f" ({video_features.shape[1]} frames, but the model was built for {self.config.num_frames})"
            raise ValueError(
                f"video_features must be (batch, {', '.join(map(str, expected_tail))}), got shape "
                f"{tuple(video_features.shape)}{hint}."
            )

    def get_placeholder_mask(
        self, input_ids: torch.LongTensor | None, inputs_embeds: torch.Tensor, video_embeds: torch.Tensor
    ) -> torch.Tensor:
        """Boolean mask `(batch, seq_len, hidden)` of the `<|video_pad|>` positions that `video_embeds` fill.

        Raises `ValueError` stating both counts when placeholders and features differ.
        """
        if input_ids is None:
            video_token_embedding = self.get_input_embeddings()(
                torch.tensor(self.config.video_token_id, dtype=torch.long, device=inputs_embeds.device)
            )
            placeholder_mask = (inputs_embeds == video_token_embedding).all(-1)
        else:
            placeholder_mask = input_ids == self.config.video_token_id
        num_placeholders = int(placeholder_mask.sum())
        num_features = video_embeds.shape[0] * video_embeds.shape[1]
        if num_placeholders != num_features:
            raise ValueError(
                f"The text holds {num_placeholders} {VIDEO_TOKEN} placeholder tokens but the video gives "
                f"{num_features} features ({video_embeds.shape[0]} clips x {video_embeds.shape[1]} tokens per clip, "
                f"projector_type={self.config.projector_type!r}). Build the prompt with the processor of this model."
            )
        return placeholder_mask.unsqueeze(-1).expand_as(inputs_embeds)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values_videos: torch.FloatTensor | None = None,
        video_features: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> KVCapModelOutputWithPast:
        r"""
        Args:
            input_ids: `(batch, seq_len)` token ids with `config.num_video_tokens` `<|video_pad|>` per clip.
            pixel_values_videos: `(batch, num_frames, 3, image_size, image_size)` frames, or
            video_features: `(batch, num_frames, num_patches, vision_hidden)` cached encoder features.
            attention_mask: `(batch, seq_len)`, 1 for real tokens.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        if pixel_values_videos is not None and video_features is not None:
            raise ValueError("Pass either pixel_values_videos or video_features, not both.")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)

        video_embeds = None
        if pixel_values_videos is not None or video_features is not None:
            video_embeds = self.get_video_features(pixel_values_videos, video_features)
            video_embeds = video_embeds.to(inputs_embeds.device, inputs_embeds.dtype)
            placeholder_mask = self.get_placeholder_mask(input_ids, inputs_embeds, video_embeds)
            inputs_embeds = inputs_embeds.masked_scatter(placeholder_mask, video_embeds)
        elif (
            input_ids is not None
            # The prompt only: at a decoding step a placeholder is a token the model generated, embedded like any.
            and (cache is None or cache.get_seq_length() == 0)
            and (num_placeholders := int((input_ids == self.config.video_token_id).sum()))
        ):
            raise ValueError(
                f"input_ids hold {num_placeholders} {VIDEO_TOKEN} placeholder tokens but neither "
                "pixel_values_videos nor video_features was given."
            )

        outputs = self.language_model(
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        return KVCapModelOutputWithPast(
            last_hidden_state=outputs.last_hidden_state,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            video_hidden_states=video_embeds,
        )


class KVCapForConditionalGeneration(KVCapPreTrainedModel, GenerationMixin):
    """kvcap with its language-modelling head: the class to train, generate with and push to the Hub."""

    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}
    # LoRA goes on the language model's attention and MLP projections only (peft matches it with re.fullmatch).
    lora_target_modules = r"model\.language_model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)"

    def __init__(self, config: KVCapConfig):
        super().__init__(config)
        self.model = KVCapModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()
        # `from_pretrained` replaces this with the folder's generation_config.json when there is one.
        self.generation_config = kvcap_generation_config(config)

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Module) -> None:
        self.lm_head = new_embeddings

    def save_pretrained(self, save_directory, *args, **kwargs) -> None:
        # register_for_auto_class records one Auto class per class; AutoModel must resolve to this class as well.
        module_name = type(self).__module__.rsplit(".", 1)[-1]
        auto_map = dict(getattr(self.config, "auto_map", None) or {})
        auto_map["AutoModel"] = f"{module_name}.{type(self).__name__}"
        self.config.auto_map = auto_map
        super().save_pretrained(save_directory, *args, **kwargs)

    @property
    def vision_tower(self) -> nn.Module:
        return self.model.vision_tower

    @property
    def multi_modal_projector(self) -> nn.Module:
        return self.model.multi_modal_projector

    @property
    def language_model(self) -> nn.Module:
        return self.model.language_model

    def get_video_features(
        self, pixel_values_videos: torch.Tensor | None = None, video_features: torch.Tensor | None = None
    ) -> torch.Tensor:
        """`(batch, num_frames, 3, H, W)` frames or `(batch, num_frames, P, D)` features → `(batch, N, hidden)`."""
        return self.model.get_video_features(pixel_values_videos, video_features)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values_videos: torch.FloatTensor | None = None,
        video_features: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        return_full_logits: bool = False,
        **kwargs,
    ) -> KVCapCausalLMOutputWithPast:
        r"""
        Args:
            input_ids: `(batch, seq_len)` token ids with `config.num_video_tokens` `<|video_pad|>` per clip.
            pixel_values_videos: `(batch, num_frames, 3, image_size, image_size)` frames, or
            video_features: `(batch, num_frames, num_patches, vision_hidden)` cached encoder features.
            attention_mask: `(batch, seq_len)`, 1 for real tokens.
            labels: `(batch, seq_len)` target ids, -100 where not supervised; the shift happens inside.
            return_full_logits: with `labels`, also compute the logits where no label follows.

        Returns:
            `logits` `(batch, seq_len or logits_to_keep, vocab)` and, with labels, the mean token `loss`. With
            `labels` (and not `return_full_logits`), `lm_head` runs only where a label follows: `logits` is then
            `(num_supervised, vocab)`, in row-major order of those positions. The loss and its gradients are the
            same; at real size that spares the logits of ~4,600 video and prompt positions per clip (GBs in fp32).
        """
        outputs = self.model(
            input_ids=input_ids,
            pixel_values_videos=pixel_values_videos,
            video_features=video_features,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        loss = None
        if labels is not None and not return_full_logits and not logits_to_keep:
            # Position t predicts token t + 1: only positions followed by a supervised label need the head.
            shift_labels = nn.functional.pad(labels, (0, 1), value=-100)[:, 1:].to(outputs.last_hidden_state.device)
            supervised = shift_labels != -100
            logits = self.lm_head(outputs.last_hidden_state[supervised])  # (num_supervised, vocab)
            loss = self.loss_function(
                logits=logits,
                labels=None,
                shift_labels=shift_labels[supervised],
                vocab_size=self.config.text_config.vocab_size,
                **kwargs,
            )
        else:
            hidden_states = slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep)
            logits = self.lm_head(hidden_states)
            if labels is not None:
                loss = self.loss_function(
                    logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size, **kwargs
                )
        return KVCapCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            video_hidden_states=outputs.video_hidden_states,
        )

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        pixel_values_videos: torch.FloatTensor | None = None,
        video_features: torch.FloatTensor | None = None,
        is_first_iteration: bool | None = False,
        **kwargs,
    ) -> dict:
        # `inputs_embeds` is named here because generate() checks this signature before accepting it.
        model_inputs = super().prepare_inputs_for_generation(
            input_ids, cache=cache, inputs_embeds=inputs_embeds, is_first_iteration=is_first_iteration, **kwargs
        )
        # The video is encoded once, at prefill; later steps read it from the KV cache.
        if is_first_iteration or not kwargs.get("use_cache", True):
            model_inputs["pixel_values_videos"] = pixel_values_videos
            model_inputs["video_features"] = video_features
        return model_inputs

    def generate(
        self,
        inputs: torch.Tensor | None = None,
        generation_config: GenerationConfig | None = None,
        logits_processor: LogitsProcessorList | None = None,
        **kwargs,
    ) -> GenerateOutput | torch.LongTensor:
        r"""[`GenerationMixin.generate`], with the repetition penalty counting generated tokens only.

        Given `input_ids`, transformers penalises every prompt token too, and kvcap's chat prompt holds `<|im_end|>`,
        the token that ends a caption: penalising it makes captions run on. The effective penalty (a
        `repetition_penalty=` argument, else that of `generation_config`, else that of `self.generation_config`) is
        therefore applied by a `RepetitionPenaltyLogitsProcessor` that skips the prompt columns, appended to
        `logits_processor`, while `generate` itself runs with `repetition_penalty=1.0`. A caller's own
        `RepetitionPenaltyLogitsProcessor` in `logits_processor` is used as given, in place of this one.

        Args:
            inputs / input_ids: `(batch, prompt_len)` left-padded prompt ids with the `<|video_pad|>` placeholders;
                the penalty ignores all `prompt_len` columns. With `inputs_embeds` `(batch, prompt_len, hidden)`
                and no ids, the returned ids hold only new tokens, so nothing is skipped.
            pixel_values_videos / video_features: as in `forward`.

        Returns:
            As `GenerationMixin.generate`: `(batch, prompt_len + new_tokens)` ids (only the new tokens when
            generating from `inputs_embeds`), or a `GenerateOutput`.
        """
        if "repetition_penalty" in kwargs:
            penalty = kwargs["repetition_penalty"]
        elif generation_config is not None and generation_config.repetition_penalty is not None:
            penalty = generation_config.repetition_penalty
        else:
            penalty = self.generation_config.repetition_penalty
        processors = LogitsProcessorList(logits_processor or [])
        caller_has_penalty = any(isinstance(processor, RepetitionPenaltyLogitsProcessor) for processor in processors)
        if penalty is not None and penalty != 1.0:
            # 1.0 keeps generate() from building its prompt-wide processor, so there is never a duplicate to merge.
            if generation_config is not None:
                # A config copy rather than a kwarg: generate() warns about a config passed with generation kwargs.
                generation_config = copy.deepcopy(generation_config)
                generation_config.repetition_penalty = 1.0
                kwargs.pop("repetition_penalty", None)
            else:
                kwargs["repetition_penalty"] = 1.0
            if not caller_has_penalty:
                input_ids = inputs if inputs is not None else kwargs.get("input_ids")
                prompt_length = input_ids.shape[-1] if input_ids is not None else 0
                processors.append(RepetitionPenaltyLogitsProcessor(float(penalty), prompt_ignore_length=prompt_length))
        return super().generate(
            inputs, generation_config=generation_config, logits_processor=processors or None, **kwargs
        )

    @classmethod
    def from_pretrained_backbones(
        cls,
        vision_model_name_or_path: str = DEFAULT_VISION_MODEL,
        text_model_name_or_path: str = DEFAULT_TEXT_MODEL,
        *,
        projector_type: str = "mlp_2l",
        quantization_config=None,
        dtype: torch.dtype | None = None,
        projector_dtype: torch.dtype = torch.float32,
        device_map: str | dict | None = None,
        attn_implementation: str | None = None,
        video_token_id: int | None = None,
        **config_kwargs,
    ) -> KVCapForConditionalGeneration:
        """Compose a kvcap model from a pretrained CLIP vision tower and a pretrained Qwen3 causal LM.

        Args:
            vision_model_name_or_path: a CLIP (or CLIP vision) checkpoint, e.g. `openai/clip-vit-large-patch14-336`.
            text_model_name_or_path: a Qwen3 causal LM checkpoint, e.g. `Qwen/Qwen3-8B`.
            projector_type: `linear`, `mlp_2l`, `perceiver` or `c_abstractor`; the projector is freshly initialised.
            quantization_config: e.g. `kvcap_4bit_config()`; applied to the language model only. The vision tower,
                the projector and `lm_head` stay unquantized.
            dtype: dtype of the vision tower and the language model's unquantized weights (e.g. `torch.bfloat16`).
            projector_dtype: dtype of the trainable projector (float32 keeps optimiser updates exact).
            device_map: passed to the language model's `from_pretrained`; the vision tower and projector follow
                the language model's input device.
            video_token_id: id of `<|video_pad|>`; read from the text model's tokenizer when not given.
            config_kwargs: further `KVCapConfig` fields (`num_frames`, `num_query_tokens`, ...).
        """
        from transformers import AutoModelForCausalLM, AutoTokenizer, CLIPVisionModel

        load_kwargs = {"dtype": dtype} if dtype is not None else {}
        if attn_implementation is not None:
            load_kwargs["attn_implementation"] = attn_implementation
        vision_tower = CLIPVisionModel.from_pretrained(vision_model_name_or_path, **load_kwargs)
        causal_lm = AutoModelForCausalLM.from_pretrained(
            text_model_name_or_path, quantization_config=quantization_config, device_map=device_map, **load_kwargs
        )
        tokenizer = AutoTokenizer.from_pretrained(text_model_name_or_path)
        if video_token_id is None:
            video_token_id = tokenizer.convert_tokens_to_ids(VIDEO_TOKEN)
            if video_token_id is None or video_token_id == tokenizer.unk_token_id:
                raise ValueError(f"The tokenizer of {text_model_name_or_path} has no {VIDEO_TOKEN} token.")

        config = KVCapConfig(
            vision_config=vision_tower.config,
            text_config=causal_lm.config,
            projector_type=projector_type,
            video_token_id=video_token_id,
            vision_model_name_or_path=str(vision_model_name_or_path),
            text_model_name_or_path=str(text_model_name_or_path),
            **config_kwargs,
        )
        # Build the shell on the meta device: its random backbones would be replaced at once anyway.
        with torch.device("meta"):
            model = cls(config)
        device = causal_lm.get_input_embeddings().weight.device
        projector = build_projector(config)
        projector.apply(model._init_weights)
        model.model.multi_modal_projector = projector.to(device=device, dtype=projector_dtype)
        model.model.vision_tower = vision_tower.to(device).requires_grad_(False).eval()
        model.model.language_model = causal_lm.model
        model.lm_head = causal_lm.lm_head
        # The language model's config is a chat policy (Qwen3-8B samples at temperature 0.6); keep its special tokens.
        special_token_ids = [index for index, token in tokenizer.added_tokens_decoder.items() if token.special]
        model.generation_config = kvcap_generation_config(config, causal_lm.generation_config, special_token_ids)
        if getattr(causal_lm, "hf_quantizer", None) is not None:
            # Trainer and peft read these to treat the model as a quantized base for adapter training.
            model.hf_quantizer = causal_lm.hf_quantizer
            model.is_loaded_in_4bit = getattr(causal_lm, "is_loaded_in_4bit", False)
            model.is_loaded_in_8bit = getattr(causal_lm, "is_loaded_in_8bit", False)
            model.quantization_method = getattr(causal_lm, "quantization_method", None)
        if getattr(causal_lm, "hf_device_map", None) is not None:
            model.hf_device_map = causal_lm.hf_device_map
        return model


def _keep_cpu_4bit_weights_differentiable(module: nn.Module) -> None:
    """Switch off bitsandbytes' packed CPU layout for 4-bit weights of a model that trains, undoing it where done.

    On CPUs with AVX512-BF16, the first eval-mode forward without gradients through a `Linear4bit` repacks its
    weight for an inference kernel that has no backward, and the layer keeps that layout: every later training step
    would then get no gradient through the base weights (the projector's and most LoRA matrices' gradients vanish).
    Packing back is lossy (the scales are requantised), so a model that has trained once stays on the unpacked path.
    """
    for layer in module.modules():
        if not hasattr(layer, "support_avx512bf16_for_cpu"):
            continue
        layer.support_avx512bf16_for_cpu = False
        state = getattr(layer.weight, "quant_state", None)
        if state is not None and getattr(state, "packing_format_for_cpu", False):
            from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

            layer.weight.data, layer.weight.quant_state = _convert_weight_packed_for_cpu_inverse(
                layer.weight.data, state
            )


def kvcap_4bit_config(compute_dtype: torch.dtype = torch.bfloat16, quant_storage: torch.dtype | None = None):
    """QLoRA's quantization of the language model: NF4 weights, double quantization, bf16 compute.

    ``quant_storage`` is the dtype the packed 4-bit weights are held in; ``None`` keeps bitsandbytes' uint8.
    accelerate's FSDP shards them only when held in a floating dtype (uint8 ones stay whole on every rank), so a
    sharded run holds them as e.g. ``torch.bfloat16``: the same bytes (four 4-bit values per element instead of
    two), the same dequantized weights, the same forward pass.

    The skip list keeps the vision tower, the projector and `lm_head` unquantized also when the config is passed to
    `from_pretrained` of a whole saved kvcap model.
    """
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_quant_storage=quant_storage,  # None: uint8
        # Skip patterns match from the start of a module's full name (or as its suffix), hence both spellings:
        # "vision_tower" in a bare KVCapModel, "model.vision_tower" in KVCapForConditionalGeneration.
        llm_int8_skip_modules=[
            "lm_head",
            "vision_tower",
            "multi_modal_projector",
            "model.vision_tower",
            "model.multi_modal_projector",
        ],
    )


__all__ = [
    "DEFAULT_MAX_NEW_TOKENS",
    "KVCapForConditionalGeneration",
    "KVCapModel",
    "KVCapPreTrainedModel",
    "kvcap_4bit_config",
    "kvcap_generation_config",
]
