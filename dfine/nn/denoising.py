"""Contrastive denoising (CDN) queries for training.

Ground-truth boxes are copied into ``2 * num_group`` noisy queries per object: a positive copy
(box jittered inside half its size) and a negative copy (jittered by between 1 and 2 half
sizes), with some labels flipped. Queries of different groups cannot attend to each other and
matching queries cannot see any denoising query.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dfine.box_ops import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh
from dfine.nn.common import inverse_sigmoid


def contrastive_denoising_group(
    targets: list[dict[str, torch.Tensor]],
    num_classes: int,
    num_queries: int,
    class_embed: nn.Embedding,
    num_denoising: int = 100,
    label_noise_ratio: float = 0.5,
    box_noise_scale: float = 1.0,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, dict[str, Any] | None]:
    """Build denoising queries.

    Args:
        targets: per image ``{"labels": [n_i] int64, "boxes": [n_i, 4] cxcywh in [0, 1]}``.

    Returns:
        ``(content [B, D, C], boxes_unact [B, D, 4], attn_mask [D+Q, D+Q] bool, dn_meta)`` where
        ``D = 2 * num_group * max_gt`` and True in ``attn_mask`` blocks attention; all None
        (meta aside) when there is nothing to denoise.
    """
    if num_denoising <= 0:
        return None, None, None, None
    num_gts = [len(t["labels"]) for t in targets]
    device = targets[0]["labels"].device
    max_gt = max(num_gts)
    if max_gt == 0:
        meta = {"dn_positive_idx": None, "dn_num_group": 0, "dn_num_split": [0, num_queries]}
        return None, None, None, meta

    num_group = max(num_denoising // max_gt, 1)
    bs = len(num_gts)
    query_class = torch.full([bs, max_gt], num_classes, dtype=torch.int32, device=device)
    query_box = torch.zeros([bs, max_gt, 4], device=device)
    pad_mask = torch.zeros([bs, max_gt], dtype=torch.bool, device=device)
    for i, n in enumerate(num_gts):
        if n > 0:
            query_class[i, :n] = targets[i]["labels"]
            query_box[i, :n] = targets[i]["boxes"]
            pad_mask[i, :n] = True

    query_class = query_class.tile([1, 2 * num_group])
    query_box = query_box.tile([1, 2 * num_group, 1])
    pad_mask = pad_mask.tile([1, 2 * num_group])
    negative = torch.zeros([bs, max_gt * 2, 1], device=device)
    negative[:, max_gt:] = 1
    negative = negative.tile([1, num_group, 1])
    positive = (1 - negative).squeeze(-1) * pad_mask
    positive_idx = torch.nonzero(positive)[:, 1]
    positive_idx = torch.split(positive_idx, [n * num_group for n in num_gts])
    num_dn = int(max_gt * 2 * num_group)

    if label_noise_ratio > 0:
        flip = torch.rand_like(query_class, dtype=torch.float) < (label_noise_ratio * 0.5)
        new_label = torch.randint_like(flip, 0, num_classes, dtype=query_class.dtype)
        query_class = torch.where(flip & pad_mask, new_label, query_class)

    if box_noise_scale > 0:
        xyxy = box_cxcywh_to_xyxy(query_box)
        diff = torch.tile(query_box[..., 2:] * 0.5, [1, 1, 2]) * box_noise_scale
        sign = torch.randint_like(query_box, 0, 2) * 2.0 - 1.0
        part = torch.rand_like(query_box)
        part = (part + 1.0) * negative + part * (1 - negative)
        xyxy = (xyxy + sign * part * diff).clip(min=0.0, max=1.0)
        query_box = box_xyxy_to_cxcywh(xyxy)
        query_box = torch.where(query_box < 0, -query_box, query_box)
    boxes_unact = inverse_sigmoid(query_box)
    content = class_embed(query_class)

    size = num_dn + num_queries
    attn_mask = torch.zeros([size, size], dtype=torch.bool, device=device)
    attn_mask[num_dn:, :num_dn] = True
    group = torch.arange(num_dn, device=device) // (2 * max_gt)
    attn_mask[:num_dn, :num_dn] = group[:, None] != group[None, :]

    meta = {
        "dn_positive_idx": positive_idx,
        "dn_num_group": num_group,
        "dn_num_split": [num_dn, num_queries],
    }
    return content, boxes_unact, attn_mask, meta
