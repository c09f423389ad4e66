"""Layer-by-layer box refinement of chosen detections.

Stages of a D-FINE box: the encoder's initial box b0 (``"encoder (b0)"``), the first layer's
traditional head (``"pre-head"``, the fixed reference from which every layer's FDR offsets are
measured), then the FDR box of every decoder layer (``"layer 1"`` … ``"layer L"``). A model
trained with ``--ablate fdr`` has no pre-head: its stages are the encoder box and the layers,
and its edge offsets are measured from the encoder box b0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from analysis import _draw
from analysis._common import (
    EDGES,
    OUTWARD_SIGN,
    ImageSize,
    check_image_size,
    check_queries,
    class_color,
    class_name,
    cxcywh_to_xyxy_px,
    edge_unit_px,
    layer_names,
    np64,
    pairwise_iou,
)
from dfine.errors import InvalidArgumentError
from dfine.nn.decoder import DecoderTrace

STAGE_ENCODER = "encoder (b0)"
STAGE_PRE = "pre-head"


@dataclass(frozen=True)
class Refinement:
    """The box of every stage for N detections of one image (batch index 0 of the trace).

    S = L + 2 stages (encoder b0, pre-head, layers 1..L; L + 1 without the pre-head of an
    ``--ablate fdr`` model), N detections, L decoder layers.
    All coordinates are pixels of the original image; edge order left, top, right, bottom;
    "outward" (away from the box centre) is positive for every edge.

    Attributes:
        stages: ``[S]`` stage names.
        queries: ``[N]`` int64 decoder query index of each detection.
        labels: ``[N]`` int64 class of each detection (given, or the final layer's argmax).
        image_size: ``(width, height)`` of the original image, pixels.
        boxes_xyxy: ``[S, N, 4]`` float64 box of every stage, ``x1, y1, x2, y2`` in pixels
            (unclipped: the network may place edges outside the image).
        edge_offsets_px: ``[L, N, 4]`` each layer's signed edge displacement from the pre-head
            box, pixels, outward positive (``Σ_n p(n) W(n) × box size / reg_scale``); from the
            encoder box b0 for a model without FDR (``--ablate fdr``).
        iou_to_final: ``[S, N]`` IoU of every stage's box with the last layer's box.
        edge_moves_px: ``[S-1, N, 4]`` signed movement of each edge from the previous stage to
            this one (row ``s`` is stage ``s`` → ``s + 1``), pixels, outward positive.
        scores: ``[S, N]`` sigmoid probability of the detection's class at every stage (encoder:
            top-k logits; pre-head: layer-1 logits without LQE; layers: with LQE).
    """

    stages: list[str]
    queries: np.ndarray
    labels: np.ndarray
    image_size: ImageSize
    boxes_xyxy: np.ndarray
    edge_offsets_px: np.ndarray
    iou_to_final: np.ndarray
    edge_moves_px: np.ndarray
    scores: np.ndarray

    @property
    def num_layers(self) -> int:
        return self.edge_offsets_px.shape[0]

    @property
    def num_detections(self) -> int:
        return int(self.queries.shape[0])

    def stage_index(self, stage: int | str) -> int:
        """Index of a stage given by name or by (possibly negative) index."""
        if isinstance(stage, str):
            if stage not in self.stages:
                raise InvalidArgumentError(f"unknown stage {stage!r}; stages: {self.stages}")
            return self.stages.index(stage)
        if not -len(self.stages) <= stage < len(self.stages):
            raise InvalidArgumentError(
                f"stage must be in [{-len(self.stages)}, {len(self.stages)}), got {stage}"
            )
        return stage % len(self.stages)

    def to_table(self, class_names: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """One row per (detection, stage): box (px), score, IoU to final, edge movement from the
        previous stage (px, outward +; ``None`` for the first stage) and edge offset from the
        pre-head box (px, outward +; ``None`` for the encoder and pre-head stages)."""
        rows = []
        for i in range(self.num_detections):
            for s, stage in enumerate(self.stages):
                rows.append(self._row(i, s, stage, class_names))
        return rows

    def _row(self, i: int, s: int, stage: str, class_names: Sequence[str] | None) -> dict:
        x1, y1, x2, y2 = (round(float(v), 2) for v in self.boxes_xyxy[s, i])
        row: dict[str, Any] = {
            "detection": i,
            "query": int(self.queries[i]),
            "class": class_name(class_names, int(self.labels[i])),
            "stage": stage,
            "x1": x1,
            "y1": y1,
            "x2": x2,
            "y2": y2,
            "score": round(float(self.scores[s, i]), 4),
            "iou_to_final": round(float(self.iou_to_final[s, i]), 4),
        }
        for e, edge in enumerate(EDGES):
            move = self.edge_moves_px[s - 1, i, e] if s > 0 else None
            row[f"move_{edge}_px"] = None if move is None else round(float(move), 2)
        layer = s - (len(self.stages) - self.num_layers)
        for e, edge in enumerate(EDGES):
            off = self.edge_offsets_px[layer, i, e] if layer >= 0 else None
            row[f"offset_{edge}_px"] = None if off is None else round(float(off), 2)
        return row


def refinement(
    trace: DecoderTrace,
    queries: torch.Tensor | np.ndarray | Sequence[int],
    image_size: Sequence[int],
    labels: torch.Tensor | np.ndarray | Sequence[int] | None = None,
) -> Refinement:
    """Per-stage boxes of the detections that came from decoder ``queries`` (image 0 of the
    trace). ``image_size`` is ``(width, height)`` of the original image; ``labels`` the class
    of each detection (default: each query's best class at the last layer)."""
    size = check_image_size(image_size)
    q = check_queries(queries, trace.boxes.shape[2])
    pre = trace.pre_boxes is not None
    stages = stage_names(trace)
    boxes = [trace.init_boxes[0, q][None], trace.boxes[:, 0, q]]
    logits = [trace.enc_topk_logits[0, q][None], trace.logits[:, 0, q]]
    if pre:
        boxes.insert(1, trace.pre_boxes[0, q][None])
        logits.insert(1, trace.pre_logits[0, q][None])
    xyxy = cxcywh_to_xyxy_px(np64(torch.cat(boxes)), size)
    logits = torch.cat(logits)
    labels_np = _labels(labels, trace, q)
    probs = np64(logits.float().sigmoid())
    scores = np.take_along_axis(probs, labels_np[None, :, None], axis=-1)[..., 0]
    return Refinement(
        stages=stages,
        queries=q,
        labels=labels_np,
        image_size=size,
        boxes_xyxy=xyxy,
        edge_offsets_px=(
            layer_edge_offsets_px(trace, q, size)
            if pre
            else (xyxy[1:] - xyxy[0][None]) * OUTWARD_SIGN  # from b0: no pre-head, no FDR
        ),
        iou_to_final=pairwise_iou(xyxy, xyxy[-1][None]),
        edge_moves_px=(xyxy[1:] - xyxy[:-1]) * OUTWARD_SIGN,
        scores=scores,
    )


def stage_names(trace: DecoderTrace) -> list[str]:
    """The stages of ``trace``'s boxes: encoder b0, the pre-head (models with FDR), layers."""
    pre = [STAGE_PRE] if trace.pre_boxes is not None else []
    return [STAGE_ENCODER, *pre, *layer_names(trace.num_layers)]


def layer_edge_offsets_px(
    trace: DecoderTrace, queries: np.ndarray, image_size: ImageSize
) -> np.ndarray:
    """``[L, N, 4]`` FDR edge offsets ``Σ_n p(n) W(n)`` of image 0's ``queries`` in pixels
    (× reference box size / reg_scale), outward positive, float64."""
    trace.require_distributions("FDR edge offsets")
    corners = trace.corners[:, 0, queries].detach().double()
    d = np64(corners.softmax(-1) @ trace.project.detach().double())
    unit = edge_unit_px(np64(trace.pre_boxes[0, queries]), trace.reg_scale, image_size)
    return d * unit[None]


def _labels(labels, trace: DecoderTrace, q: np.ndarray) -> np.ndarray:
    if labels is None:
        return trace.logits[-1, 0, q].argmax(-1).cpu().numpy().astype(np.int64).reshape(-1)
    lab = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels, np.int64)
    lab = lab.reshape(-1)
    num_classes = trace.logits.shape[-1]
    if lab.shape != q.shape:
        raise InvalidArgumentError(f"{lab.shape[0]} labels for {q.shape[0]} queries")
    if lab.size and (lab.min() < 0 or lab.max() >= num_classes):
        raise InvalidArgumentError(f"labels must lie in [0, {num_classes}), got {lab.tolist()}")
    return lab


def refinement_overlay(
    image_rgb: Image.Image | np.ndarray,
    ref: Refinement,
    stage: int | str = -1,
    *,
    class_names: Sequence[str] | None = None,
    ghost_previous: bool = True,
) -> Image.Image:
    """The image with every detection's box at ``stage`` (solid, class colour) and, when
    ``ghost_previous``, its box at the previous stage (faint, dashed). Returns RGB PIL."""
    s = ref.stage_index(stage)
    base = _draw.to_rgb_image(image_rgb, ref.image_size)
    lw, fs = _draw.sizes_for(base)
    fnt = _draw.font(fs)
    layer = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    boxes = [
        _ordered(tuple(float(v) for v in ref.boxes_xyxy[s, i])) for i in range(ref.num_detections)
    ]
    for i, box in enumerate(boxes):
        rgb = class_color(int(ref.labels[i]))
        if ghost_previous and s > 0:
            ghost = tuple(float(v) for v in ref.boxes_xyxy[s - 1, i])
            _draw.dashed_rectangle(draw, _ordered(ghost), (*rgb, 140), max(lw - 1, 1), 3 * lw)
        draw.rectangle(box, outline=(*rgb, 255), width=lw)
    placed: list[tuple[float, float, float, float]] = []
    for i, box in enumerate(boxes):  # labels after every outline, clear of each other
        name = class_name(class_names, int(ref.labels[i]))
        texts = [
            f"{name} IoU→final {ref.iou_to_final[s, i]:.2f}",
            f"IoU {ref.iou_to_final[s, i]:.2f}",
        ]
        _draw.label(draw, box, class_color(int(ref.labels[i])), lw, texts, fnt, placed, boxes)
    out = _draw.composite(base, layer)
    lines = [f"solid: {ref.stages[s]}"]
    if ghost_previous and s > 0:
        lines.append(f"dashed: {ref.stages[s - 1]} (previous stage)")
    _draw.legend(out, lines, _draw.font(max(fs - 2, 10)))
    return out


def _ordered(box: tuple[float, ...]) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = box
    return min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)
