"""One traced forward per image: everything a dataset report needs, kept as small arrays.

For every image, :func:`image_results` keeps

- each stage's top-k detections — encoder proposals (b0), pre-head boxes, decoder layers
  1..L — scored twice: (a) with the stage's own class scores, (b) with the final layer's
  scores on the stage's boxes (localization only);
- the final layer's detections at or above the score threshold matched to the ground truth
  (same class, IoU ≥ ``match_iou``), and for those matches every stage's box and, per decoder
  layer, the σ of each edge distribution (pixels) and the W(n) unit of each edge;
- per decoder layer, where the attention of those detections fell relative to their boxes
  (inside, near an edge, outside; true and false positives apart: ``analysis.attention``).

Everything downstream (per-stage AP, calibration, per-class AP, confusion matrix, error
gallery) is computed from these arrays, without another forward pass.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import box_convert

from analysis.attention import attention_sums
from analysis.evaluation.matching import greedy_match
from dfine.data import build_dataloader
from dfine.errors import InvalidArgumentError
from dfine.nn.decoder import DecoderTrace


@dataclass(frozen=True)
class EvalSettings:
    """What a report depends on besides the weights and the data (part of the cache key).

    Attributes:
        size: network input size (square), None for the checkpoint's.
        num_top: detections kept per image and stage (as ``dfine val``: 300).
        threshold: score threshold of the confusion matrix, the error gallery and the
            matches that calibration and mean IoU use.
        match_iou: IoU of a match for those.
        per_layer: score every stage (encoder, pre-head, each decoder layer).
        calibration: measure the edge distributions' σ against the real edge errors.
        coco_lib: COCO evaluation library (``dfine.train.names.COCO_LIBS``).
        batch_size: images per forward.
    """

    size: int | None = None
    num_top: int = 300
    threshold: float = 0.5
    match_iou: float = 0.5
    per_layer: bool = True
    calibration: bool = True
    coco_lib: str = "auto"
    batch_size: int = 8

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise InvalidArgumentError(f"threshold must be in [0, 1], got {self.threshold}")
        if not 0.0 < self.match_iou <= 1.0:
            raise InvalidArgumentError(f"match_iou must be in (0, 1], got {self.match_iou}")
        if self.num_top < 1 or self.batch_size < 1:
            raise InvalidArgumentError("num_top and batch_size must be at least 1")


@dataclass(frozen=True)
class StageDetections:
    """Top-k detections of every stage of one image; S stages, K detections.

    ``labels [S, K]`` int64 (contiguous model labels), ``boxes [S, K, 4]`` float32 xyxy
    original pixels, ``scores [S, K]`` float32 descending per stage."""

    labels: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray


@dataclass(frozen=True)
class ImageResult:
    """What one image contributes to a dataset report.

    G ground-truth boxes, S stages, M matches of the final layer, L decoder layers.

    Attributes:
        image_id: the annotation file's image id.
        index: the item index in the dataset.
        size: ``(width, height)`` of the original image.
        gt_boxes: ``[G, 4]`` xyxy pixels; gt_labels: ``[G]`` contiguous labels.
        own: the stages' detections under their own scores (a).
        final: the stages' detections under the final layer's scores (b); None without
            per-layer analysis.
        match_gt: ``[M]`` index of the matched ground-truth box of each match.
        match_score: ``[M]`` score of the matching final-layer detection.
        match_boxes: ``[S_all, M, 4]`` every stage's box (encoder, pre-head, layers, also
            without per-layer analysis) of the matched queries, xyxy pixels.
        stages: names of all stages (:func:`stage_names`; no pre-head without FDR).
        match_sigma: ``[L, M, 4]`` σ of each edge distribution, pixels (left, top, right,
            bottom); None without calibration.
        match_unit: ``[M, 4]`` pixels per W(n) unit of each edge (box size / reg_scale).
        attention: ``[2, L, 4 + K]`` where each decoder layer's attention fell relative to the
            final boxes of the detections at or above the threshold, summed over the true
            positives (row 0) and the false positives (row 1)
            (:func:`analysis.attention.attention_sums`); None for a trace without attention.
    """

    image_id: int
    index: int
    size: tuple[int, int]
    gt_boxes: np.ndarray
    gt_labels: np.ndarray
    own: StageDetections
    final: StageDetections | None
    match_gt: np.ndarray
    match_score: np.ndarray
    match_boxes: np.ndarray
    match_sigma: np.ndarray | None
    match_unit: np.ndarray
    stages: tuple[str, ...] = ()
    attention: np.ndarray | None = None


def stage_names(num_layers: int, per_layer: bool = True, pre_head: bool = True) -> list[str]:
    """``encoder``, ``pre-head`` (absent without FDR, ablation ``fdr``), ``layer 1`` ..
    ``layer L``; only the last without per-layer analysis."""
    layers = [f"layer {i + 1}" for i in range(num_layers)]
    if not per_layer:
        return layers[-1:]
    return ["encoder", *(["pre-head"] if pre_head else []), *layers]


def _stage_tensors(trace: DecoderTrace) -> tuple[list, list]:
    """Boxes ``[B, Q, 4]`` and logits ``[B, Q, C]`` of every stage, in :func:`stage_names`
    order (no pre-head stage for a model without one)."""
    boxes = [trace.init_boxes, *trace.boxes.unbind(0)]
    logits = [trace.enc_topk_logits, *trace.logits.unbind(0)]
    if trace.pre_boxes is not None:
        boxes.insert(1, trace.pre_boxes)
        logits.insert(1, trace.pre_logits)
    return boxes, logits


def _topk(
    logits: torch.Tensor, boxes_xyxy: torch.Tensor, num_top: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """As ``dfine.postprocess.topk_detections`` on pixel boxes: ``[B, K]`` labels,
    ``[B, K, 4]`` boxes, ``[B, K]`` scores and queries."""
    num_classes = logits.shape[-1]
    k = min(num_top, logits.shape[1] * num_classes)
    scores, index = torch.topk(F.sigmoid(logits).flatten(1), k, dim=-1)
    queries = index // num_classes
    picked = boxes_xyxy.gather(1, queries.unsqueeze(-1).expand(-1, -1, 4))
    return index % num_classes, picked, scores, queries


def _pixels(boxes: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """Normalised cxcywh ``[B, Q, 4]`` → xyxy pixels with ``sizes [B, 2]`` (w, h)."""
    return box_convert(boxes, "cxcywh", "xyxy") * sizes.to(boxes).repeat(1, 2).unsqueeze(1)


def _edge_sigma(trace: DecoderTrace, image: int, queries: np.ndarray, size) -> tuple:
    """``σ [L, M, 4]`` pixels of each edge distribution and ``unit [M, 4]`` pixels per W(n)
    unit, for ``queries`` of ``image``."""
    q = torch.as_tensor(queries, dtype=torch.long)
    probs = trace.corners[:, image, q].double().softmax(-1)  # [L, M, 4, R+1]
    project = trace.project.double()
    pre = trace.pre_boxes[image, q].double()  # [M, 4] cxcywh normalised
    w_px = pre[:, 2] * size[0] / abs(trace.reg_scale)
    h_px = pre[:, 3] * size[1] / abs(trace.reg_scale)
    unit = torch.stack([w_px, h_px, w_px, h_px], -1)  # [M, 4]
    mean = probs @ project
    var = (probs @ project.square()) - mean.square()
    sigma = var.clamp_min(0).sqrt() * unit
    return sigma.numpy(), unit.numpy()


def _pack(per_stage: list, i: int) -> StageDetections:
    """Image ``i``'s detections of every stage from per-stage ``_topk`` outputs."""
    return StageDetections(
        labels=torch.stack([s[0][i] for s in per_stage]).numpy().astype(np.int64),
        boxes=torch.stack([s[1][i] for s in per_stage]).numpy().astype(np.float32),
        scores=torch.stack([s[2][i] for s in per_stage]).numpy().astype(np.float32),
    )


def image_results(
    trace: DecoderTrace,
    targets: Sequence[Mapping[str, torch.Tensor]],
    indices: Sequence[int],
    settings: EvalSettings,
) -> list[ImageResult]:
    """The :class:`ImageResult` of every image of a batch's ``trace``.

    ``targets[i]``: ``boxes [G, 4]`` normalised cxcywh, ``labels [G]``, ``image_id``,
    ``orig_size`` (w, h) — as ``dfine.data`` datasets with validation transforms give them.
    """
    sizes = torch.stack([torch.as_tensor(t["orig_size"]) for t in targets]).float()
    all_boxes, all_logits = _stage_tensors(trace)
    all_px = [_pixels(b.float(), sizes) for b in all_boxes]  # matches follow every stage
    scored = range(len(all_px)) if settings.per_layer else [len(all_px) - 1]
    own = [_topk(all_logits[s].float(), all_px[s], settings.num_top) for s in scored]
    final = (
        [_topk(trace.logits[-1].float(), b, settings.num_top) for b in all_px]
        if settings.per_layer
        else None
    )
    out = []
    for i, target in enumerate(targets):
        size = tuple(int(v) for v in target["orig_size"])
        gt = target["boxes"].reshape(-1, 4).double()
        gt_boxes = (box_convert(gt, "cxcywh", "xyxy") * gt.new_tensor([*size, *size])).numpy()
        gt_labels = target["labels"].reshape(-1).numpy().astype(np.int64)

        labels, boxes, scores, queries = (t[i].numpy() for t in own[-1])
        keep = scores >= settings.threshold
        gt_of_det, _ = greedy_match(
            boxes[keep], scores[keep], labels[keep], gt_boxes, gt_labels, settings.match_iou
        )
        hit = gt_of_det >= 0
        match_q = queries[keep][hit]
        attention = None
        if trace.has_attention:
            det_q = torch.as_tensor(queries[keep])
            det_boxes = trace.boxes[-1, i, det_q].float()
            attention = attention_sums(trace, det_q, det_boxes, torch.as_tensor(hit), i)
        sigma, unit = (
            _edge_sigma(trace, i, match_q, size)
            if settings.calibration and trace.has_distributions
            else (None, np.zeros((len(match_q), 4)))
        )
        out.append(
            ImageResult(
                image_id=int(target["image_id"]),
                index=int(indices[i]),
                size=size,  # type: ignore[arg-type]
                gt_boxes=gt_boxes,
                gt_labels=gt_labels,
                own=_pack(own, i),
                final=_pack(final, i) if final is not None else None,
                match_gt=gt_of_det[hit],
                match_score=scores[keep][hit].astype(np.float64),
                match_boxes=np.stack([p[i, match_q].double().numpy() for p in all_px]),
                match_sigma=sigma,
                match_unit=unit,
                stages=tuple(stage_names(trace.num_layers, pre_head=trace.pre_boxes is not None)),
                attention=attention,
            )
        )
    return out


@torch.inference_mode()
def run_pass(
    model: torch.nn.Module,
    dataset: Sequence,
    settings: EvalSettings,
    on_batch: Callable[[int, int], None] | None = None,
    device: str | torch.device = "cpu",
    workers: int = 0,
) -> list[ImageResult]:
    """One traced forward per image of ``dataset`` (``dfine.data`` items with validation
    transforms). ``on_batch(done, total)`` is called after each batch (progress bars,
    cancellation: raise from it to stop)."""
    loader = build_dataloader(dataset, settings.batch_size, shuffle=False, num_workers=workers)
    results: list[ImageResult] = []
    done, total = 0, len(dataset)
    for images, targets in loader:
        trace = _to_cpu(model.trace(images.to(device)))
        batch_idx = range(done, done + len(targets))
        results.extend(image_results(trace, targets, batch_idx, settings))
        done += len(targets)
        if on_batch is not None:
            on_batch(done, total)
    return results


def _to_cpu(trace: DecoderTrace) -> DecoderTrace:
    if trace.boxes.device.type == "cpu":
        return trace
    import dataclasses

    return dataclasses.replace(
        trace,
        **{
            f.name: getattr(trace, f.name).cpu()
            for f in dataclasses.fields(trace)
            if isinstance(getattr(trace, f.name), torch.Tensor)
        },
    )
