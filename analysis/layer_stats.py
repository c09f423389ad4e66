"""Refinement measured over a dataset: per decoder layer, the mean IoU of matched queries with
the ground truth and the mean entropy of their edge distributions.

For every ground-truth box of every image, the query that the final layer's Hungarian matching
(the criterion's own matcher) assigns to it is followed through the decoder: its box at the
pre-head and at every layer is compared with the ground truth (IoU), and the entropy of its four
edge distributions is averaged. Refinement shows as IoU rising and entropy falling from the
first layer to the last. ``scripts/layer_stats.py`` is the command-line front end.

A model trained with ``--ablate fdr`` has neither a pre-head nor distributions: its stages are
the decoder layers only and every entropy is ``None``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torchvision.ops import box_iou

from analysis._common import layer_names
from analysis.distributions import edge_stats
from dfine.box_ops import box_cxcywh_to_xyxy
from dfine.errors import InvalidArgumentError
from dfine.loss.matcher import HungarianMatcher


@torch.inference_mode()
def layer_stats(
    model: torch.nn.Module,
    dataset: Sequence[Any],
    limit: int | None = None,
    batch_size: int = 8,
) -> dict:
    """Per-stage mean IoU to ground truth and mean per-edge entropy (nats).

    ``dataset[i]`` gives ``(image [3, H, W] normalised as the model expects, target)`` with
    ``target["boxes"]`` normalised cxcywh and ``target["labels"]``, as ``dfine.data`` datasets
    with validation transforms do. Images are traced ``batch_size`` at a time (consecutive
    images of one size). Returns ``stages`` (``pre-head``, ``layer 1`` .. ``layer L``),
    ``mean_iou_to_gt`` (one per stage), ``mean_edge_entropy_nats`` (``None`` for the pre-head,
    which has no distributions), ``max_entropy_nats`` (a uniform distribution), ``objects`` and
    ``images``. Without distributions (``--ablate fdr``): no pre-head stage, entropies and
    ``max_entropy_nats`` ``None``.
    """
    if batch_size < 1:
        raise InvalidArgumentError(f"batch_size must be at least 1, got {batch_size}")
    matcher = HungarianMatcher()
    has_dists = model.config.decoder.distributions
    max_entropy = float(np.log(model.config.decoder.reg_max + 1)) if has_dists else None
    ious, entropies = [], []
    n = len(dataset) if limit is None else min(limit, len(dataset))
    for images, targets in _batches(dataset, n, batch_size):
        trace = model.trace(torch.stack(images))
        final = {"pred_logits": trace.logits[-1], "pred_boxes": trace.boxes[-1]}
        for i, ((queries, gts), target) in enumerate(zip(matcher(final, targets), targets)):
            gt_xyxy = box_cxcywh_to_xyxy(target["boxes"][gts])
            stages = [trace.boxes[layer, i] for layer in range(trace.num_layers)]
            if has_dists:
                stages.insert(0, trace.pre_boxes[i])
            ious.append(
                [box_iou(box_cxcywh_to_xyxy(s[queries]), gt_xyxy).diag().numpy() for s in stages]
            )
            if has_dists:
                width, height = images[i].shape[-1], images[i].shape[-2]
                stats = edge_stats(trace.select(i), queries.numpy(), (width, height))
                entropies.append(stats["entropy"].mean(-1))  # [L, M]: mean over the four edges
    if not ious:
        raise InvalidArgumentError(
            f"no ground-truth boxes in the first {n} images: nothing to measure"
        )
    iou = np.concatenate(ious, axis=1)  # [stages, objects]
    layers = layer_names(len(trace.boxes))
    if has_dists:
        ent = np.concatenate(entropies, axis=1)  # [L, objects]
        names, entropy = ["pre-head", *layers], [None] + [float(v) for v in ent.mean(1)]
    else:
        names, entropy = layers, [None] * len(layers)
    return {
        "objects": int(iou.shape[1]),
        "images": n,
        "stages": names,
        "mean_iou_to_gt": [float(v) for v in iou.mean(1)],
        "mean_edge_entropy_nats": entropy,
        "max_entropy_nats": max_entropy,
    }


def _batches(
    dataset: Sequence[Any], n: int, batch_size: int
) -> Iterator[tuple[list[torch.Tensor], list[dict]]]:
    """The first ``n`` items with ground truth, in runs of at most ``batch_size`` images of
    one size."""
    images: list[torch.Tensor] = []
    targets: list[dict] = []
    for index in range(n):
        image, target = dataset[index]
        if len(target["labels"]) == 0:
            continue
        if images and (len(images) == batch_size or image.shape != images[0].shape):
            yield images, targets
            images, targets = [], []
        images.append(image)
        targets.append(target)
    if images:
        yield images, targets


def markdown(stats: dict) -> str:
    """The statistics as a Markdown table."""
    uniform = stats["max_entropy_nats"]
    note = "no distributions" if uniform is None else f"uniform distribution: {uniform:.3f} nats"
    lines = [
        f"{stats['objects']} ground-truth objects in {stats['images']} images ({note})",
        "",
        "| stage | mean IoU with ground truth | mean per-edge entropy (nats) |",
        "|---|---|---|",
    ]
    for name, iou, ent in zip(
        stats["stages"], stats["mean_iou_to_gt"], stats["mean_edge_entropy_nats"]
    ):
        lines.append(f"| {name} | {iou:.4f} | {'—' if ent is None else f'{ent:.4f}'} |")
    return "\n".join(lines)
