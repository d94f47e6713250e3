"""The four projectors that map frozen CLIP patch features of a clip to language-model embeddings.

Every projector takes ``video_features`` of shape ``(batch, num_frames, num_patches, vision_hidden)`` (the chosen
vision layer, CLS dropped) and returns ``(batch, config.num_video_tokens, text_hidden)``. Each first applies the
temporal encoding ``config.temporal_encoding`` names (``temporal.py``; none by default), which adds its own
parameters to the counts below.

Parameter counts at real size (CLIP-ViT-L/14-336, 1024 → Qwen3-8B, 4096; 8 frames; 64 query tokens), measured by
``tests/test_projectors.py::test_real_size_parameter_counts``:

=============  ==========  ============  ============================================================
projector      parameters  video tokens  design
=============  ==========  ============  ============================================================
linear          4,198,400         4,608  LLaVA-1: one linear map per patch
mlp_2l         20,979,712         4,608  LLaVA-1.5 ``mlp2x_gelu``: Linear-GELU-Linear per patch
perceiver      67,225,600            64  Flamingo resampler: 64 learned latents, 6 layers, 8 heads
c_abstractor   37,406,208            64  Honeybee C-Abstractor: ResNet blocks, adaptive pooling
=============  ==========  ============  ============================================================
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN

from .configuration_kvcap import KVCapConfig
from .temporal import build_temporal_encoding


class KVCapProjector(nn.Module):
    """What every projector shares: the temporal encoding its features pass through first."""

    def __init__(self, config: KVCapConfig):
        super().__init__()
        self.temporal_encoding = build_temporal_encoding(config)

    def encode_time(self, video_features: torch.Tensor) -> torch.Tensor:
        """(B, T, P, D_vision) → (B, T, P, D_vision), marked with time when the config asks for it."""
        return video_features if self.temporal_encoding is None else self.temporal_encoding(video_features)


class KVCapLinearProjector(KVCapProjector):
    """LLaVA-1 projector: a single linear map applied to every patch of every frame.

    4,198,400 parameters at real size; ``num_frames × num_patches`` (4,608) video tokens.
    """

    def __init__(self, config: KVCapConfig):
        super().__init__(config)
        self.linear = nn.Linear(config.vision_config.hidden_size, config.text_config.hidden_size)

    def forward(self, video_features: torch.Tensor) -> torch.Tensor:
        """(B, T, P, D_vision) → (B, T·P, D_text)."""
        return self.linear(self.encode_time(video_features)).flatten(1, 2)


class KVCapMLPProjector(KVCapProjector):
    """LLaVA-1.5 ``mlp2x_gelu`` projector: Linear → GELU → Linear on every patch of every frame.

    20,979,712 parameters at real size; ``num_frames × num_patches`` (4,608) video tokens.
    """

    def __init__(self, config: KVCapConfig):
        super().__init__(config)
        text_hidden = config.text_config.hidden_size
        self.linear_1 = nn.Linear(config.vision_config.hidden_size, text_hidden)
        self.act = ACT2FN[config.projector_hidden_act]
        self.linear_2 = nn.Linear(text_hidden, text_hidden)

    def forward(self, video_features: torch.Tensor) -> torch.Tensor:
        """(B, T, P, D_vision) → (B, T·P, D_text)."""
        hidden_states = self.linear_2(self.act(self.linear_1(self.encode_time(video_features))))
        return hidden_states.flatten(1, 2)


class KVCapPerceiverLayer(nn.Module):
    """One Flamingo resampler layer: latents attend to ``[media; latents]``, then a feed-forward block."""

    def __init__(self, hidden_size: int, num_heads: int, head_dim: int = 64, ff_mult: int = 4):
        super().__init__()
        inner_size = num_heads * head_dim
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.media_norm = nn.LayerNorm(hidden_size)
        self.latents_norm = nn.LayerNorm(hidden_size)
        self.q_proj = nn.Linear(hidden_size, inner_size, bias=False)
        self.kv_proj = nn.Linear(hidden_size, 2 * inner_size, bias=False)
        self.o_proj = nn.Linear(inner_size, hidden_size, bias=False)
        self.ff_norm = nn.LayerNorm(hidden_size)
        self.ff_up = nn.Linear(hidden_size, ff_mult * hidden_size, bias=False)
        self.ff_act = nn.GELU()
        self.ff_down = nn.Linear(ff_mult * hidden_size, hidden_size, bias=False)

    def forward(self, media: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """media (B, M, D), latents (B, Q, D) → latents (B, Q, D)."""
        batch, num_latents, _ = latents.shape
        media = self.media_norm(media)
        normed_latents = self.latents_norm(latents)
        # Flamingo lets latents attend to themselves as well as to the media, so they can exchange information.
        keys_values = self.kv_proj(torch.cat([media, normed_latents], dim=1))
        keys, values = keys_values.chunk(2, dim=-1)

        def split_heads(tensor: torch.Tensor) -> torch.Tensor:
            return tensor.view(batch, -1, self.num_heads, self.head_dim).transpose(1, 2)

        attended = F.scaled_dot_product_attention(
            split_heads(self.q_proj(normed_latents)), split_heads(keys), split_heads(values)
        )
        latents = latents + self.o_proj(attended.transpose(1, 2).reshape(batch, num_latents, -1))
        return latents + self.ff_down(self.ff_act(self.ff_up(self.ff_norm(latents))))


class KVCapPerceiverResampler(KVCapProjector):
    """Flamingo-style Perceiver resampler with learned latents, in the vision width, then a linear map to text.

    A learned per-frame embedding marks time before all ``T × P`` patch features are flattened into one media
    sequence; ``num_query_tokens`` latents cross-attend to it through ``perceiver_depth`` layers.
    67,225,600 parameters at real size (6 layers, 8 heads of 64); ``num_query_tokens`` (64) video tokens.
    """

    def __init__(self, config: KVCapConfig):
        super().__init__(config)
        vision_hidden = config.vision_config.hidden_size
        self.latents = nn.Parameter(torch.zeros(config.num_query_tokens, vision_hidden))
        self.frame_embeddings = nn.Parameter(torch.zeros(config.num_frames, vision_hidden))
        self.layers = nn.ModuleList(
            KVCapPerceiverLayer(vision_hidden, config.perceiver_num_heads) for _ in range(config.perceiver_depth)
        )
        self.norm = nn.LayerNorm(vision_hidden)
        self.output_proj = nn.Linear(vision_hidden, config.text_config.hidden_size)

    def forward(self, video_features: torch.Tensor) -> torch.Tensor:
        """(B, T, P, D_vision) → (B, num_query_tokens, D_text)."""
        media = (self.encode_time(video_features) + self.frame_embeddings[None, :, None, :]).flatten(1, 2)
        latents = self.latents.unsqueeze(0).expand(media.shape[0], -1, -1)
        for layer in self.layers:
            latents = layer(media, latents)
        return self.output_proj(self.norm(latents))


class KVCapLayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel axis of a (N, C, H, W) map."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return super().forward(hidden_states.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class KVCapSqueezeExcite(nn.Module):
    """Channel attention of RegNet blocks: global pool → reduce → SiLU → expand → sigmoid gate."""

    def __init__(self, channels: int, reduced_channels: int):
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced_channels, kernel_size=1)
        self.act = nn.SiLU()
        self.expand = nn.Conv2d(reduced_channels, channels, kernel_size=1)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        gate = self.expand(self.act(self.reduce(hidden_states.mean(dim=(2, 3), keepdim=True))))
        return hidden_states * gate.sigmoid()


class KVCapResBlock(nn.Module):
    """RegNet bottleneck block as Honeybee uses it: 1×1 → depthwise 3×3 → squeeze-excite → 1×1, LayerNorm2d, SiLU."""

    def __init__(self, channels: int, se_ratio: float = 0.25):
        super().__init__()
        self.conv_in = nn.Conv2d(channels, channels, kernel_size=1, bias=False)
        self.norm_in = KVCapLayerNorm2d(channels)
        self.conv_spatial = nn.Conv2d(channels, channels, kernel_size=3, padding=1, groups=channels, bias=False)
        self.norm_spatial = KVCapLayerNorm2d(channels)
        self.squeeze_excite = KVCapSqueezeExcite(channels, int(channels * se_ratio))
        self.conv_out = nn.Conv2d(channels, channels, kernel_size=1, bias=False)
        self.norm_out = KVCapLayerNorm2d(channels)
        self.act = nn.SiLU()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) → (N, C, H, W)."""
        residual = hidden_states
        hidden_states = self.act(self.norm_in(self.conv_in(hidden_states)))
        hidden_states = self.act(self.norm_spatial(self.conv_spatial(hidden_states)))
        hidden_states = self.norm_out(self.conv_out(self.squeeze_excite(hidden_states)))
        return self.act(hidden_states + residual)


class KVCapCAbstractor(KVCapProjector):
    """Honeybee's C-Abstractor over the frames' patch grids: locality-preserving compression by convolution.

    Learned patch-position and frame embeddings are added; ``abstractor_depth`` ResNet blocks run on each frame's
    ``grid × grid`` map; adaptive average pooling turns the ``(T, grid, grid)`` volume into ``(t, s, s)`` cells
    (``config.abstractor_pool_shape``: 4 × 4 × 4 = 64 at real size, so motion across frames survives); another
    ``abstractor_depth`` blocks run on the pooled maps; a two-layer SiLU MLP reads out to the text width.
    37,406,208 parameters at real size; ``num_query_tokens`` (64) video tokens.
    """

    def __init__(self, config: KVCapConfig):
        super().__init__(config)
        vision_hidden = config.vision_config.hidden_size
        text_hidden = config.text_config.hidden_size
        self.grid = config.patch_grid
        self.pool_steps, self.pool_side = config.abstractor_pool_shape
        self.position_embeddings = nn.Parameter(torch.zeros(config.num_patches, vision_hidden))
        self.frame_embeddings = nn.Parameter(torch.zeros(config.num_frames, vision_hidden))
        self.pre_pool_blocks = nn.Sequential(*(KVCapResBlock(vision_hidden) for _ in range(config.abstractor_depth)))
        self.post_pool_blocks = nn.Sequential(*(KVCapResBlock(vision_hidden) for _ in range(config.abstractor_depth)))
        self.readout = nn.Sequential(
            nn.Linear(vision_hidden, text_hidden), nn.SiLU(), nn.Linear(text_hidden, text_hidden)
        )

    def forward(self, video_features: torch.Tensor) -> torch.Tensor:
        """(B, T, P, D_vision) → (B, t·s·s = num_query_tokens, D_text)."""
        batch, frames, _, channels = video_features.shape
        hidden_states = (
            self.encode_time(video_features) + self.position_embeddings + self.frame_embeddings[None, :, None, :]
        )
        # (B, T, P, C) → (B·T, C, grid, grid): each frame is a 2-D map for the convolutions.
        hidden_states = hidden_states.transpose(2, 3).reshape(batch * frames, channels, self.grid, self.grid)
        hidden_states = self.pre_pool_blocks(hidden_states)
        # Pool time and space together: (B, C, T, grid, grid) → (B, C, t, s, s).
        hidden_states = hidden_states.view(batch, frames, channels, self.grid, self.grid).transpose(1, 2)
        hidden_states = F.adaptive_avg_pool3d(hidden_states, (self.pool_steps, self.pool_side, self.pool_side))
        hidden_states = hidden_states.transpose(1, 2).reshape(
            batch * self.pool_steps, channels, *hidden_states.shape[-2:]
        )
        hidden_states = self.post_pool_blocks(hidden_states)
        # (B·t, C, s, s) → (B, t·s·s, C), time-major so the token order follows the clip.
        hidden_states = hidden_states.flatten(2).transpose(1, 2).reshape(batch, -1, channels)
        return self.readout(hidden_states)


PROJECTOR_CLASSES: dict[str, type[nn.Module]] = {
    "linear": KVCapLinearProjector,
    "mlp_2l": KVCapMLPProjector,
    "perceiver": KVCapPerceiverResampler,
    "c_abstractor": KVCapCAbstractor,
}


def build_projector(config: KVCapConfig) -> nn.Module:
    """The projector named by ``config.projector_type``."""
    if config.projector_type not in PROJECTOR_CLASSES:
        raise ValueError(
            f"Unknown projector_type {config.projector_type!r}; choose one of {', '.join(PROJECTOR_CLASSES)}."
        )
    return PROJECTOR_CLASSES[config.projector_type](config)


__all__ = [
    "PROJECTOR_CLASSES",
    "KVCapCAbstractor",
    "KVCapLinearProjector",
    "KVCapMLPProjector",
    "KVCapPerceiverResampler",
    "KVCapProjector",
    "build_projector",
]
