"""Temporal encodings: what tells a projector where each frame sits in time (``KVCapConfig.temporal_encoding``).

Every encoding maps ``video_features`` of shape ``(batch, num_frames, num_patches, vision_hidden)`` to a tensor of
the same shape, before the projector reads it, so it works with every projector. Without one (``none``, the seed's
configuration), ``linear`` and ``mlp_2l`` hand the language model patch tokens whose only mark of time is their
order; saying which way an object moves then asks the language model to compare its place in early and late
frames by attention alone.

Parameter counts at real size (CLIP-ViT-L/14-336, 1024 wide; 8 frames of 24 × 24 patches), measured by
``tests/test_temporal.py::test_real_size_parameter_counts``:

===================  ==========  ========================================================================
encoding             parameters  design
===================  ==========  ========================================================================
frame_embedding           8,192  a learned embedding per frame, added to each of its patches
trajectory_embedding     10,240  the frame embedding plus (time from -1 to 1) × (the patch's row and column
                                 along two learned directions): an object's tokens sum to its displacement
spatiotemporal_conv   1,080,320  LayerNorm, depthwise 3 × 3 × 3 convolution over (frames, rows, columns),
                                 GELU, linear map (from zero), added back
motion_conv           4,312,064  the same with four filters per channel, one per direction of motion,
                                 starting as oriented differences: motion becomes a feature of each patch
spacetime_attention   4,798,464  LayerNorm plus learned frame and grid-place embeddings, one attention layer
                                 over all 8 × 576 patches (16 heads), linear map (from zero), added back with
                                 the frame embedding
===================  ==========  ========================================================================
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.activations import ACT2FN

from .configuration_kvcap import KVCapConfig


class KVCapFrameEmbedding(nn.Module):
    """A learned embedding per frame, added to every patch feature of that frame.

    8,192 parameters at real size (8 frames × 1,024).
    """

    def __init__(self, config: KVCapConfig):
        super().__init__()
        self.frame_embeddings = nn.Parameter(torch.zeros(config.num_frames, config.vision_config.hidden_size))

    def forward(self, video_features: torch.Tensor) -> torch.Tensor:
        """(B, T, P, D_vision) → (B, T, P, D_vision)."""
        return video_features + self.frame_embeddings[None, :, None, :]


class KVCapTrajectoryEmbedding(nn.Module):
    """The frame embedding plus ``time × place``: each patch gets ``τ_t · (row_p · a + column_p · c)``.

    ``τ_t`` runs from -1 (first frame) to 1 (last) and ``row_p``, ``column_p`` from -1 to 1 across the patch grid;
    ``a`` and ``c`` are learned directions. A sum of the tokens an object covers over the frames, which is what
    attention to that object's colour gathers in one step, then holds ``Σ_t τ_t · place(t)``: its displacement
    from the first frame to the last along ``a`` and ``c``, zero when it stands still. Without it, the direction is
    a product of a token's time and its place that no weighted sum of tokens can form. 10,240 parameters at
    real size.
    """

    def __init__(self, config: KVCapConfig):
        super().__init__()
        hidden_size = config.vision_config.hidden_size
        self.grid = config.patch_grid
        self.frame_embeddings = nn.Parameter(torch.zeros(config.num_frames, hidden_size))
        self.row_direction = nn.Parameter(torch.zeros(hidden_size))
        self.column_direction = nn.Parameter(torch.zeros(hidden_size))

    def forward(self, video_features: torch.Tensor) -> torch.Tensor:
        """(B, T, P, D_vision) → (B, T, P, D_vision)."""
        frames = video_features.shape[1]
        kwargs = {"device": video_features.device, "dtype": video_features.dtype}
        time = torch.linspace(-1.0, 1.0, frames, **kwargs)  # (T,)
        across = torch.linspace(-1.0, 1.0, self.grid, **kwargs)
        rows, columns = across.repeat_interleave(self.grid), across.repeat(self.grid)  # (P,) each, row-major
        place = rows[:, None] * self.row_direction + columns[:, None] * self.column_direction  # (P, D)
        return video_features + self.frame_embeddings[None, :, None] + time[None, :, None, None] * place[None, None]


class KVCapSpatioTemporalConv(nn.Module):
    """A residual depthwise 3 × 3 × 3 convolution over the ``(frames, grid, grid)`` volume of patch features.

    Each channel gets its own filter across neighbouring frames and patches, so a patch token comes to carry how its
    neighbourhood changes over time (an object arriving from the left, leaving upwards) and the language model can
    read motion from the token that names the object, as it reads colour and shape.
    1,080,320 parameters at real size.
    """

    filters_per_channel: int = 1

    def __init__(self, config: KVCapConfig):
        super().__init__()
        hidden_size = config.vision_config.hidden_size
        width = self.filters_per_channel * hidden_size
        self.grid = config.patch_grid
        self.norm = nn.LayerNorm(hidden_size)
        self.conv = nn.Conv3d(hidden_size, width, kernel_size=3, padding=1, groups=hidden_size)
        self.act = ACT2FN["gelu"]
        self.output_proj = nn.Linear(width, hidden_size)

    def forward(self, video_features: torch.Tensor) -> torch.Tensor:
        """(B, T, P, D_vision) → (B, T, P, D_vision)."""
        batch, frames, patches, channels = video_features.shape
        # (B, T, P, C) → (B, C, T, grid, grid): channels first for the convolution.
        volume = self.norm(video_features).permute(0, 3, 1, 2).reshape(batch, channels, frames, self.grid, self.grid)
        responses = self.act(self.conv(volume))  # (B, filters_per_channel · C, T, grid, grid)
        responses = responses.reshape(batch, -1, frames, patches).permute(0, 2, 3, 1)
        return video_features + self.output_proj(responses)


# (frame, row, column) offsets of the 3 × 3 × 3 kernel's taps, for a filter that answers "what was at p - step one
# frame ago is at p + step one frame later": +1 there, -1 for the opposite direction.
MOTION_DIRECTIONS: dict[str, tuple[int, int]] = {
    "left_to_right": (0, 1),
    "right_to_left": (0, -1),
    "top_to_bottom": (1, 0),
    "bottom_to_top": (-1, 0),
}


class KVCapMotionConv(KVCapSpatioTemporalConv):
    """Motion-energy filters: a residual 3 × 3 × 3 convolution with one filter per direction for every channel.

    Every channel is filtered four times, once per direction of motion across the patch grid; each filter starts as
    the oriented difference ``x[t - 1, p - d] + x[t + 1, p + d] - x[t - 1, p + d] - x[t + 1, p - d]``, which is
    positive where a feature (an object's colour) moves along ``d`` and negative where it moves against it. GELU keeps
    the positive part, a linear map mixes the ``4 × D`` responses back to ``D``, starting at zero so a new layer
    leaves the encoder's features as they were. A patch token then carries which way the object covering it moves,
    as it carries its colour and shape. 4,312,064 parameters at real size.
    """

    filters_per_channel = len(MOTION_DIRECTIONS)

    def motion_filters(self) -> torch.Tensor:
        """(4·D, 1, 3, 3, 3): the oriented differences the filters start as (output channel c·4 + k filters input
        channel c in direction k, the grouped convolution's order)."""
        kernel = torch.zeros(self.filters_per_channel, 3, 3, 3)
        for index, (row_step, column_step) in enumerate(MOTION_DIRECTIONS.values()):
            before, after = (1 - row_step, 1 - column_step), (1 + row_step, 1 + column_step)
            kernel[index, 0][before] += 0.5
            kernel[index, 2][after] += 0.5
            kernel[index, 0][after] -= 0.5
            kernel[index, 2][before] -= 0.5
        return kernel.repeat(self.conv.in_channels, 1, 1, 1).unsqueeze(1)


class KVCapSpaceTimeAttention(nn.Module):
    """One residual self-attention layer over every patch of every frame, before the projector.

    A local filter sees one patch step per frame; an object that crosses the picture in eight frames moves further.
    Here each patch token attends to all ``T · P`` tokens, with a learned embedding per frame and per place in the
    patch grid added to what the queries and keys see, so the token that shows an object can gather where that
    object is in the first and the last frames, which is what its direction is. The frame embedding is added to
    each token too, as ``frame_embedding`` does, so a token says its own time before the attention has learned
    anything; the output map starts at zero. 4,798,464 parameters at real size.
    """

    def __init__(self, config: KVCapConfig):
        super().__init__()
        hidden_size = config.vision_config.hidden_size
        self.num_heads = config.vision_config.num_attention_heads
        self.norm = nn.LayerNorm(hidden_size)
        self.frame_embeddings = nn.Parameter(torch.zeros(config.num_frames, hidden_size))
        self.position_embeddings = nn.Parameter(torch.zeros(config.num_patches, hidden_size))
        self.qkv_proj = nn.Linear(hidden_size, 3 * hidden_size)
        self.output_proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, video_features: torch.Tensor) -> torch.Tensor:
        """(B, T, P, D_vision) → (B, T, P, D_vision)."""
        batch, frames, patches, channels = video_features.shape
        hidden = self.norm(video_features) + self.frame_embeddings[None, :, None] + self.position_embeddings[None, None]
        # (B, T·P, 3·D) → 3 × (B, heads, T·P, D / heads)
        query, key, value = (
            self.qkv_proj(hidden.reshape(batch, frames * patches, channels))
            .view(batch, frames * patches, 3, self.num_heads, channels // self.num_heads)
            .permute(2, 0, 3, 1, 4)
        )
        attended = nn.functional.scaled_dot_product_attention(query, key, value)  # (B, heads, T·P, D / heads)
        attended = attended.transpose(1, 2).reshape(batch, frames, patches, channels)
        return video_features + self.frame_embeddings[None, :, None] + self.output_proj(attended)


TEMPORAL_ENCODING_CLASSES: dict[str, type[nn.Module]] = {
    "frame_embedding": KVCapFrameEmbedding,
    "trajectory_embedding": KVCapTrajectoryEmbedding,
    "spatiotemporal_conv": KVCapSpatioTemporalConv,
    "motion_conv": KVCapMotionConv,
    "spacetime_attention": KVCapSpaceTimeAttention,
}


def build_temporal_encoding(config: KVCapConfig) -> nn.Module | None:
    """The module ``config.temporal_encoding`` names, or None for ``none`` (no parameters, token order only)."""
    if config.temporal_encoding == "none":
        return None
    if config.temporal_encoding not in TEMPORAL_ENCODING_CLASSES:
        raise ValueError(
            f"Unknown temporal_encoding {config.temporal_encoding!r}; "
            f"choose one of none, {', '.join(TEMPORAL_ENCODING_CLASSES)}."
        )
    return TEMPORAL_ENCODING_CLASSES[config.temporal_encoding](config)


__all__ = [
    "MOTION_DIRECTIONS",
    "TEMPORAL_ENCODING_CLASSES",
    "KVCapFrameEmbedding",
    "KVCapMotionConv",
    "KVCapSpaceTimeAttention",
    "KVCapSpatioTemporalConv",
    "KVCapTrajectoryEmbedding",
    "build_temporal_encoding",
]
