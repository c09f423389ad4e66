"""Multi-scale deformable attention in pure PyTorch (``grid_sample``), with a point count per level.

Each query predicts, per head, ``sum(num_points)`` sampling offsets around its reference box
and one attention weight per point; values are sampled bilinearly from each level's map.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def deformable_attention(
    values: list[torch.Tensor],
    spatial_shapes: list[tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    num_points: list[int],
) -> torch.Tensor:
    """Sample and mix.

    Args:
        values: one tensor per level, ``[B, n_heads, head_dim, H_l * W_l]``.
        spatial_shapes: ``(H_l, W_l)`` per level.
        sampling_locations: ``[B, Lq, n_heads, P, 2]`` in [0, 1] (x, y), ``P = sum(num_points)``,
            points grouped by level.
        attention_weights: ``[B, Lq, n_heads, P]`` (softmax over P).
        num_points: points per level.

    Returns:
        ``[B, Lq, n_heads * head_dim]``.
    """
    bs, n_heads, head_dim, _ = values[0].shape
    lq = sampling_locations.shape[1]
    grids = (2 * sampling_locations - 1).permute(0, 2, 1, 3, 4).flatten(0, 1)
    grids_per_level = grids.split(num_points, dim=-2)
    sampled = []
    for value, (h, w), grid in zip(values, spatial_shapes, grids_per_level):
        value = value.reshape(bs * n_heads, head_dim, h, w)
        sampled.append(
            F.grid_sample(value, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        )
    weights = attention_weights.permute(0, 2, 1, 3).reshape(bs * n_heads, 1, lq, sum(num_points))
    out = (torch.concat(sampled, dim=-1) * weights).sum(-1)
    return out.reshape(bs, n_heads * head_dim, lq).permute(0, 2, 1)


class MSDeformableAttention(nn.Module):
    """Deformable cross-attention around reference boxes.

    ``forward(query [B, Lq, C], reference_boxes [B, Lq, 1, 4] (cx, cy, w, h), values, shapes)``
    → ``[B, Lq, C]``. Offsets are scaled by ``1 / num_points_of_level * box_wh * offset_scale``.
    """

    def __init__(
        self,
        embed_dim: int = 256,
        num_heads: int = 8,
        num_levels: int = 4,
        num_points: int | tuple[int, ...] = 4,
        offset_scale: float = 0.5,
    ) -> None:
        super().__init__()
        if isinstance(num_points, int):
            num_points = (num_points,) * num_levels
        if len(num_points) != num_levels:
            raise ValueError(f"num_points has {len(num_points)} entries for {num_levels} levels")
        if embed_dim % num_heads:
            raise ValueError("embed_dim must be divisible by num_heads")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.offset_scale = offset_scale
        self.num_points_list = list(num_points)
        scale = [1 / n for n in num_points for _ in range(n)]
        self.register_buffer("num_points_scale", torch.tensor(scale, dtype=torch.float32))
        self.total_points = num_heads * sum(num_points)
        self.sampling_offsets = nn.Linear(embed_dim, self.total_points * 2)
        self.attention_weights = nn.Linear(embed_dim, self.total_points)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        nn.init.constant_(self.sampling_offsets.weight, 0)
        thetas = torch.arange(self.num_heads, dtype=torch.float32) * (
            2.0 * math.pi / self.num_heads
        )
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True).values
        grid = grid.reshape(self.num_heads, 1, 2).tile([1, sum(self.num_points_list), 1])
        scaling = torch.concat([torch.arange(1, n + 1) for n in self.num_points_list])
        grid *= scaling.reshape(1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.constant_(self.attention_weights.weight, 0)
        nn.init.constant_(self.attention_weights.bias, 0)

    def sampling(
        self, query: torch.Tensor, reference_boxes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sampling locations ``[B, Lq, heads, P, 2]`` and attention weights ``[B, Lq, heads, P]``."""
        bs, lq = query.shape[:2]
        n_pts = sum(self.num_points_list)
        offsets = self.sampling_offsets(query).reshape(bs, lq, self.num_heads, n_pts, 2)
        weights = self.attention_weights(query).reshape(bs, lq, self.num_heads, n_pts)
        weights = F.softmax(weights, dim=-1)
        if reference_boxes.shape[-1] != 4:
            raise ValueError("reference boxes must be (cx, cy, w, h)")
        scale = self.num_points_scale.to(dtype=query.dtype).unsqueeze(-1)
        offset = offsets * scale * reference_boxes[:, :, None, :, 2:] * self.offset_scale
        locations = reference_boxes[:, :, None, :, :2] + offset
        return locations, weights

    def attend(
        self,
        query: torch.Tensor,
        reference_boxes: torch.Tensor,
        values: list[torch.Tensor],
        spatial_shapes: list[tuple[int, int]],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`forward` that also returns what it sampled: ``(out [B, Lq, C], locations
        [B, Lq, heads, P, 2], weights [B, Lq, heads, P])`` (see :meth:`sampling`)."""
        locations, weights = self.sampling(query, reference_boxes)
        out = deformable_attention(values, spatial_shapes, locations, weights, self.num_points_list)
        return out, locations, weights

    def forward(
        self,
        query: torch.Tensor,
        reference_boxes: torch.Tensor,
        values: list[torch.Tensor],
        spatial_shapes: list[tuple[int, int]],
    ) -> torch.Tensor:
        return self.attend(query, reference_boxes, values, spatial_shapes)[0]
