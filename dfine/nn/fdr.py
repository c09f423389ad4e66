"""Fine-grained Distribution Refinement (FDR): the math that turns per-edge bin logits into boxes.

Each box edge is predicted as a distribution over ``reg_max + 1`` bins. Bin ``n`` stands for
the offset ``W(n)`` (the non-uniform weighting function); the edge offset is the expectation
``sum_n softmax(logits)_n * W(n)``, in units of the reference box size divided by ``reg_scale``.
Edge order everywhere: left, top, right, bottom.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dfine.errors import InvalidArgumentError


def _as_tensor(value: torch.Tensor | float, dtype: torch.dtype) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.reshape(-1)[:1]
    return torch.tensor([value], dtype=dtype)


def check_reg_max(reg_max: int | float) -> int:
    """``reg_max`` as an int, if it is a whole, even number >= 4 (W(n) is symmetric around
    ``reg_max / 2``): the one check every caller (model, analysis, app) goes through."""
    if isinstance(reg_max, bool) or not isinstance(reg_max, (int, float)) or reg_max != reg_max:
        raise InvalidArgumentError(f"reg_max must be an even whole number >= 4, got {reg_max!r}")
    if float(reg_max) != int(reg_max) or int(reg_max) < 4 or int(reg_max) % 2:
        raise InvalidArgumentError(f"reg_max must be an even whole number >= 4, got {reg_max:g}")
    return int(reg_max)


def weighting_function(
    reg_max: int, up: torch.Tensor | float, reg_scale: torch.Tensor | float
) -> torch.Tensor:
    """The non-uniform weighting function W(n), ``[reg_max + 1]`` float32.

    ``W(0) = -2a``, ``W(reg_max) = 2a`` with ``a = |up| * |reg_scale|``; in between the values
    grow geometrically away from ``W(reg_max/2) = 0`` with ratio ``step = (a + 1)^(2/(reg_max-2))``:
    ``W(reg_max/2 ± i) = ±(step^i - 1)``. Computed with the same tensor operations as the
    reference so the result is bit-identical to its eval-mode ``project``.
    """
    reg_max = check_reg_max(reg_max)
    up_t = _as_tensor(up, torch.float32)
    scale_t = _as_tensor(reg_scale, torch.float32)
    upper1 = abs(up_t[0]) * abs(scale_t)
    upper2 = abs(up_t[0]) * abs(scale_t) * 2
    step = (upper1 + 1) ** (2 / (reg_max - 2))
    half = reg_max // 2
    left = [-(step**i) + 1 for i in range(half - 1, 0, -1)]
    right = [step**i - 1 for i in range(1, half)]
    zero = torch.zeros_like(up_t[0][None])
    return torch.cat([-upper2, *left, zero, *right, upper2], 0)


def integral(pred_corners: torch.Tensor, project: torch.Tensor) -> torch.Tensor:
    """Expected edge offsets: ``[..., 4 * (reg_max + 1)]`` bin logits → ``[..., 4]``."""
    bins = project.shape[0]
    prob = F.softmax(pred_corners.reshape(-1, bins), dim=1)
    offsets = F.linear(prob, project.to(prob.device, prob.dtype))
    return offsets.reshape(*pred_corners.shape[:-1], 4)


def distance2bbox(
    points: torch.Tensor, distance: torch.Tensor, reg_scale: torch.Tensor | float
) -> torch.Tensor:
    """Boxes from reference boxes and edge offsets.

    ``points [..., 4]`` reference boxes (cx, cy, w, h); ``distance [..., 4]`` offsets
    (left, top, right, bottom) in units of ``w / reg_scale`` (``h / reg_scale``) measured from
    the half-box ``reg_scale / 2``. Returns ``[..., 4]`` boxes (cx, cy, w, h).
    """
    reg_scale = abs(reg_scale)
    half = 0.5 * reg_scale
    x1 = points[..., 0] - (half + distance[..., 0]) * (points[..., 2] / reg_scale)
    y1 = points[..., 1] - (half + distance[..., 1]) * (points[..., 3] / reg_scale)
    x2 = points[..., 0] + (half + distance[..., 2]) * (points[..., 2] / reg_scale)
    y2 = points[..., 1] + (half + distance[..., 3]) * (points[..., 3] / reg_scale)
    return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], -1)


def translate_gt(
    gt: torch.Tensor, reg_max: int, reg_scale: torch.Tensor | float, up: torch.Tensor | float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Soft bin targets for continuous offsets.

    ``gt`` (any shape, flattened to ``[N]``) → ``(index, weight_right, weight_left)``, each
    ``[N]``: ``index`` is the bin just left of the value (float), and the two weights split the
    value linearly between bins ``index`` and ``index + 1`` (they sum to 1). Values left of
    ``W(0)`` get index 0 with all weight left; values at or right of ``W(reg_max)`` get index
    ``reg_max - 0.1`` with all weight right.
    """
    gt = gt.reshape(-1)
    w = weighting_function(reg_max, up, reg_scale).to(gt.device)
    index = ((w.unsqueeze(0) - gt.unsqueeze(1)) <= 0).sum(dim=1) - 1
    valid = (index >= 0) & (index < reg_max)
    safe = index.clamp(0, reg_max - 1)
    left_diff = (gt - w[safe]).abs()
    right_diff = (w[safe + 1] - gt).abs()
    inside_right = left_diff / (left_diff + right_diff)
    below = index < 0
    weight_right = torch.where(valid, inside_right, torch.where(below, 0.0, 1.0))
    weight_left = torch.where(valid, 1.0 - inside_right, torch.where(below, 1.0, 0.0))
    index_f = torch.where(
        below,
        torch.zeros_like(gt),
        torch.where(index >= reg_max, torch.full_like(gt, reg_max - 0.1), index.to(gt.dtype)),
    )
    return index_f, weight_right, weight_left


def bbox2distance(
    points: torch.Tensor,
    bbox: torch.Tensor,
    reg_max: int,
    reg_scale: torch.Tensor | float,
    up: torch.Tensor | float,
    eps: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of :func:`distance2bbox` into bin space (the FGL target).

    ``points [N, 4]`` reference boxes (cx, cy, w, h), ``bbox [N, 4]`` target boxes (x1, y1, x2,
    y2). Returns ``(target_bins [N*4], weight_right [N*4], weight_left [N*4])`` with
    ``target_bins`` clamped to ``[0, reg_max - eps]``; all detached.
    """
    reg_scale = abs(reg_scale)
    unit_w = points[:, 2] / reg_scale + 1e-16
    unit_h = points[:, 3] / reg_scale + 1e-16
    half = 0.5 * reg_scale
    left = (points[:, 0] - bbox[:, 0]) / unit_w - half
    top = (points[:, 1] - bbox[:, 1]) / unit_h - half
    right = (bbox[:, 2] - points[:, 0]) / unit_w - half
    bottom = (bbox[:, 3] - points[:, 1]) / unit_h - half
    four = torch.stack([left, top, right, bottom], -1)
    index, weight_right, weight_left = translate_gt(four, reg_max, reg_scale, up)
    index = index.clamp(min=0, max=reg_max - eps)
    return index.reshape(-1).detach(), weight_right.detach(), weight_left.detach()
