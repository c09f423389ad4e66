"""GO-LSD (Global Optimal Localization Self-Distillation) explained for one image.

Everything here is computed by the criterion's own functions (``DFINECriterion.match_all``,
``union_matches``, ``matched_ious``, ``ddf_kl``, ``ddf_weights``, ``ddf_balance``,
``ddf_loss``) on the outputs the criterion would see, rebuilt from an eval-mode trace by
:func:`criterion_outputs`. Nothing is re-implemented: the per-layer ``loss_ddf`` of a report
equals the criterion's ``loss_ddf_aux_i / weight_dict["loss_ddf"]`` for the same outputs.

Eval-mode caveat: a trace is an eval-mode forward (BatchNorm running statistics, no dropout,
no denoising queries), so these are the distillation targets of the model *as it predicts*,
not of a training step's forward.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from analysis._common import (
    EDGES,
    ImageSize,
    check_image_size,
    check_single_image,
    class_name,
    cxcywh_to_xyxy_px,
    edge_unit_px,
    layer_names,
    np64,
    xyxy_px_to_cxcywh,
)
from analysis.refinement import STAGE_ENCODER, STAGE_PRE
from dfine.detections import Detections
from dfine.errors import InvalidArgumentError
from dfine.loss.criterion import (
    DFINECriterion,
    ddf_loss,
    ddf_terms,
    matched_ious,
    matched_targets,
    src_permutation,
)
from dfine.nn.decoder import DecoderTrace

PSEUDO_NOTE = "pseudo ground truth: the model's own detections"
UNION = "union"


def criterion_outputs(trace: DecoderTrace) -> dict[str, Any]:
    """The criterion's train-mode output dict rebuilt from an eval-mode trace (no denoising).

    ``pred_*`` are the last layer; ``pred_corners`` ``[B, Q, 4(R+1)]``; ``ref_points`` the
    pre-head boxes (the FDR reference of every layer); ``aux_outputs`` layers 1..L-1, each with
    the last layer as ``teacher_corners`` / ``teacher_logits``; ``pre_outputs`` the pre-head;
    ``enc_aux_outputs`` the encoder's top-k logits and initial boxes b0.
    """
    corners = trace.corners.detach().flatten(-2)  # [L, B, Q, 4(R+1)]
    logits, boxes = trace.logits.detach(), trace.boxes.detach()
    ref = trace.pre_boxes.detach()
    aux = [
        {
            "pred_logits": logits[i],
            "pred_boxes": boxes[i],
            "pred_corners": corners[i],
            "ref_points": ref,
            "teacher_corners": corners[-1],
            "teacher_logits": logits[-1],
        }
        for i in range(trace.num_layers - 1)
    ]
    return {
        "pred_logits": logits[-1],
        "pred_boxes": boxes[-1],
        "pred_corners": corners[-1],
        "ref_points": ref,
        "up": torch.tensor([float(trace.up)]),
        "reg_scale": torch.tensor([float(trace.reg_scale)]),
        "aux_outputs": aux,
        "pre_outputs": {
            "pred_logits": trace.pre_logits.detach(),
            "pred_boxes": trace.pre_boxes.detach(),
        },
        "enc_aux_outputs": [
            {"pred_logits": trace.enc_topk_logits.detach(), "pred_boxes": trace.init_boxes.detach()}
        ],
        "enc_meta": {"class_agnostic": False},
    }


def pseudo_targets(
    detections: Detections, image_size: Sequence[int] | None = None, min_score: float = 0.5
) -> list[dict[str, Any]]:
    """Targets (a batch of one) from the model's own detections with score ≥ ``min_score``:
    ``{"labels": int64 [n], "boxes": float32 [n, 4] cxcywh normalised, "pseudo": True}``.
    ``image_size`` ``(width, height)`` defaults to the detections' own."""
    size = check_image_size(image_size if image_size is not None else detections.image_size)
    if not 0.0 <= float(min_score) <= 1.0:
        raise InvalidArgumentError(f"min_score must be in [0, 1], got {min_score}")
    kept = detections.filter(float(min_score))
    boxes = xyxy_px_to_cxcywh(kept.boxes.reshape(-1, 4), size)
    return [
        {
            "labels": torch.as_tensor(kept.labels, dtype=torch.int64),
            "boxes": torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "pseudo": True,
        }
    ]


@dataclass(frozen=True)
class GOLSDReport:
    """GO-LSD for one image: matches, softened teacher/student distributions, KL and weights.

    Q queries, T targets, L decoder layers (L-1 students: layers 1..L-1; the teacher is layer
    L), R = reg_max, edges left, top, right, bottom.

    Attributes:
        targets_are_pseudo: the targets are the model's own detections, not annotations.
        temperature: the distillation temperature T (distributions are ``softmax(logits / T)``).
        image_size: ``(width, height)`` of the pixel space of ``target_boxes_xyxy`` and
            ``offsets_px``; ``pixel_space`` says whether that is the original image or the
            network input.
        target_labels: ``[T]`` int64; target_boxes_xyxy: ``[T, 4]`` pixels.
        match_sets: names of the matched output sets: ``"encoder (b0)"``, ``"pre-head"``,
            ``"layer 1"`` … ``"layer L"``.
        matches: set name (and ``"union"``) → ``(queries [M], targets [M])`` int64 arrays.
        matched: ``[Q]`` bool, query is in the union of matches (the DDF "matched" group).
        union_target: ``[Q]`` int64 the union target of each query, -1 when unmatched.
        match_count: ``[Q]`` in how many sets the query was matched to its union target.
        student_layers, teacher_layer: layer names.
        teacher_probs: ``[Q, 4, R+1]`` softened teacher distributions.
        student_probs: ``[L-1, Q, 4, R+1]`` softened student distributions.
        offsets_px: ``[Q, 4, R+1]`` the edge displacement each bin stands for, pixels.
        kl_edges: ``[L-1, Q, 4]`` ``KL(teacher_T ‖ student_T)`` per edge, nats (``ddf_kl``).
        kl: ``[L-1, Q]`` the same summed over the four edges, nats.
        weights: ``[L-1, Q]`` DDF weight (``ddf_weights``): IoU of that layer's box with the
            union target for matched queries, the teacher's top class probability otherwise.
        teacher_confidence: ``[Q]`` sigmoid of the teacher's best class logit.
        num_pos, num_neg: the group weights of ``ddf_balance`` (sqrt of scaled edge counts).
        loss_ddf: ``[L-1]`` per-layer ``ddf_loss`` (before ``weight_dict["loss_ddf"]``, 1.5 by default).
        contribution: ``[L-1, Q]`` each query's share of ``loss_ddf`` (four edges summed);
            sums to ``loss_ddf`` over queries (``ddf_loss`` is linear in the KL terms, so the
            share is ``kl × ∂loss/∂kl``, taken by autograd through ``ddf_loss`` itself).
    """

    targets_are_pseudo: bool
    temperature: float
    image_size: ImageSize
    pixel_space: str
    target_labels: np.ndarray
    target_boxes_xyxy: np.ndarray
    match_sets: list[str]
    matches: dict[str, tuple[np.ndarray, np.ndarray]]
    matched: np.ndarray
    union_target: np.ndarray
    match_count: np.ndarray
    student_layers: list[str]
    teacher_layer: str
    teacher_probs: np.ndarray
    student_probs: np.ndarray
    offsets_px: np.ndarray
    kl_edges: np.ndarray
    kl: np.ndarray
    weights: np.ndarray
    teacher_confidence: np.ndarray
    num_pos: float
    num_neg: float
    loss_ddf: np.ndarray
    contribution: np.ndarray

    @property
    def note(self) -> str:
        """The line every view of this report shows about where the targets came from."""
        return PSEUDO_NOTE if self.targets_are_pseudo else "ground truth: annotations"

    @property
    def num_queries(self) -> int:
        return self.teacher_probs.shape[0]

    def check_query(self, query: int) -> int:
        """``query`` as an int, or ValueError when it is not a query of this report."""
        if not 0 <= int(query) < self.num_queries:
            raise InvalidArgumentError(f"query must be in 0..{self.num_queries - 1}, got {query}")
        return int(query)

    def match_text(self, query: int) -> str:
        """'matched to target t' or 'unmatched' (GO-LSD union matching)."""
        t = int(self.union_target[query])
        return f"matched to target {t}" if t >= 0 else "unmatched"

    def ranked_queries(self) -> np.ndarray:
        """Queries by total contribution to the DDF loss (all student layers), descending."""
        return np.argsort(-self.contribution.sum(0), kind="stable")

    def to_table(
        self, top: int | None = 20, class_names: Sequence[str] | None = None
    ) -> list[dict[str, Any]]:
        """One row per query, the ``top`` largest contributors to the DDF loss first: match,
        teacher confidence, and per student layer the KL (nats), DDF weight and loss share."""
        order = self.ranked_queries()
        order = order if top is None else order[: max(int(top), 0)]
        return [self._row(int(q), class_names) for q in order]

    def _row(self, q: int, class_names: Sequence[str] | None) -> dict[str, Any]:
        t = int(self.union_target[q])
        sets = [s for s in self.match_sets if _pairs(self.matches[s]).get(q) == t]
        row: dict[str, Any] = {
            "query": q,
            "matched": bool(self.matched[q]),
            "target": t if t >= 0 else None,
            "target class": class_name(class_names, int(self.target_labels[t])) if t >= 0 else None,
            "matched in": ", ".join(sets) if t >= 0 else "",
            "teacher confidence": round(float(self.teacher_confidence[q]), 4),
            "targets": self.note,
        }
        for i, layer in enumerate(self.student_layers):
            row[f"KL {layer} (nats)"] = round(float(self.kl[i, q]), 6)
            row[f"weight {layer}"] = round(float(self.weights[i, q]), 4)
            row[f"loss share {layer}"] = round(float(self.contribution[i, q]), 8)
        return row


def _pairs(match: tuple[np.ndarray, np.ndarray]) -> dict[int, int]:
    return {int(a): int(b) for a, b in zip(*match)}


def golsd(
    trace: DecoderTrace,
    targets: list[dict[str, Any]],
    criterion: DFINECriterion,
    temperature: float | None = None,
    *,
    image_size: Sequence[int] | None = None,
    pseudo: bool | None = None,
) -> GOLSDReport:
    """GO-LSD of one image. ``trace`` holds one image (``trace.select(i)``); ``targets`` is a
    batch of one: ``{"labels": int64 [n], "boxes": float [n, 4] cxcywh normalised}``.
    ``temperature`` defaults to the criterion's; ``image_size`` ``(width, height)`` of the
    original image (default: the network input); ``pseudo`` defaults to the targets' own
    ``"pseudo"`` flag (set by :func:`pseudo_targets`)."""
    check_single_image(trace)
    trace.require_distributions("GO-LSD (distilling the last layer's distributions)")
    targets = _check_targets(targets, trace.logits.shape[-1])
    if trace.num_layers < 2:
        raise InvalidArgumentError(
            "GO-LSD needs at least two decoder layers (a teacher and a student)"
        )
    temp = float(criterion.temperature if temperature is None else temperature)
    if not (math.isfinite(temp) and temp > 0):
        raise InvalidArgumentError(f"temperature must be positive, got {temperature}")
    size, space = _pixel_space(trace, image_size)
    outputs = criterion_outputs(trace)
    matching = criterion.match_all(outputs, targets)
    sets = _named_matches(matching, trace.num_layers)
    layers = _layer_terms(outputs, targets, matching["union"], temp, trace.reg_max)
    return _report(trace, targets, sets, layers, temp, size, space, _is_pseudo(pseudo, targets))


def _check_targets(targets: list[dict[str, Any]], num_classes: int) -> list[dict[str, Any]]:
    if not isinstance(targets, list) or len(targets) != 1:
        raise InvalidArgumentError(
            "targets must be a list holding one image's {'labels', 'boxes'} dict"
        )
    t = targets[0]
    labels = torch.as_tensor(t["labels"], dtype=torch.int64).reshape(-1)
    boxes = torch.as_tensor(t["boxes"], dtype=torch.float32).reshape(-1, 4)
    if len(labels) != len(boxes):
        raise InvalidArgumentError(f"{len(labels)} labels for {len(boxes)} boxes")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise InvalidArgumentError(f"target labels must lie in [0, {num_classes})")
    return [{**t, "labels": labels, "boxes": boxes}]


def _is_pseudo(pseudo: bool | None, targets: list[dict]) -> bool:
    return bool(targets[0].get("pseudo", False)) if pseudo is None else bool(pseudo)


def _pixel_space(trace: DecoderTrace, image_size: Sequence[int] | None) -> tuple[ImageSize, str]:
    if image_size is None:
        h, w = trace.input_size
        return (int(w), int(h)), "network input"
    return check_image_size(image_size), "original image"


def _named_matches(matching: dict, num_layers: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The matchings of ``match_all`` under readable names (image 0), and their union."""
    named: dict[str, Any] = {}
    for i, enc in enumerate(matching["enc"]):
        named[STAGE_ENCODER if i == 0 else f"{STAGE_ENCODER} {i}"] = enc[0]
    if matching["pre"] is not None:
        named[STAGE_PRE] = matching["pre"][0]
    names = layer_names(num_layers)
    for i, aux in enumerate(matching["aux"]):
        named[names[i]] = aux[0]
    named[names[-1]] = matching["final"][0]
    named[UNION] = matching["union"][0]
    return {k: (v[0].cpu().numpy(), v[1].cpu().numpy()) for k, v in named.items()}


def _layer_terms(
    outputs: dict, targets: list[dict], union: list, temp: float, reg_max: int
) -> dict[str, Any]:
    """Per student layer, the DDF terms exactly as ``DFINECriterion._local`` computes them."""
    idx = src_permutation(union)
    tgt = matched_targets(targets, union, "boxes")
    balance = None
    per_layer: dict[str, list] = {k: [] for k in ("kl", "weight", "loss", "share")}
    for aux in outputs["aux_outputs"]:
        ious = matched_ious(aux["pred_boxes"][idx], tgt)
        loss, kl, weight, mask, balance = ddf_terms(aux, idx, ious, reg_max, temp, balance)
        share = _share(kl, weight, mask, balance, temp)
        if loss.item() == 0.0:  # identical teacher and student: no distillation, no shares
            share = torch.zeros_like(share)
        for key, value in zip(per_layer, (kl, weight, loss, share)):
            per_layer[key].append(value.detach())
    return {"mask": mask, "balance": balance, **{k: torch.stack(v) for k, v in per_layer.items()}}


def _share(kl, weight, mask, balance, temp) -> torch.Tensor:
    """Each edge's share of ``ddf_loss`` (``kl × ∂loss/∂kl``; exact, the loss is linear in
    ``kl``)."""
    with torch.inference_mode(False), torch.enable_grad():
        kl_leaf = kl.detach().clone().requires_grad_(True)
        pos, neg = (torch.as_tensor(b).clone() for b in balance)
        loss = ddf_loss(kl_leaf, weight.clone(), mask.clone(), pos, neg, temperature=temp)
        (grad,) = torch.autograd.grad(loss, kl_leaf)
    return kl_leaf.detach() * grad


def _report(trace, targets, sets, layers, temp, size, space, pseudo) -> GOLSDReport:
    q_count, bins = trace.boxes.shape[2], trace.reg_max + 1
    n_students = trace.num_layers - 1
    corners = trace.corners[:, 0].detach().double()  # [L, Q, 4, R+1]
    soft = np64((corners / temp).softmax(-1))
    union_q, union_t = sets[UNION]
    union_target = np.full(q_count, -1, dtype=np.int64)
    union_target[union_q] = union_t
    count = np.zeros(q_count, dtype=np.int64)
    for name, (qs, ts) in sets.items():
        if name != UNION:
            count[qs] += (union_target[qs] == ts) & (union_target[qs] >= 0)
    pre = np64(trace.pre_boxes[0])
    offsets = edge_unit_px(pre, trace.reg_scale, size)[..., None] * np64(trace.project)
    kl_edges = np64(layers["kl"]).reshape(n_students, q_count, 4)
    names = layer_names(trace.num_layers)
    return GOLSDReport(
        targets_are_pseudo=pseudo,
        temperature=temp,
        image_size=size,
        pixel_space=space,
        target_labels=targets[0]["labels"].cpu().numpy(),
        target_boxes_xyxy=cxcywh_to_xyxy_px(np64(targets[0]["boxes"]), size).reshape(-1, 4),
        match_sets=[k for k in sets if k != UNION],
        matches=sets,
        matched=np.asarray(layers["mask"].reshape(q_count, 4)[:, 0].cpu()),
        union_target=union_target,
        match_count=count,
        student_layers=names[:-1],
        teacher_layer=names[-1],
        teacher_probs=soft[-1],
        student_probs=soft[:-1],
        offsets_px=offsets.reshape(q_count, 4, bins),
        kl_edges=kl_edges,
        kl=kl_edges.sum(-1),
        weights=np64(layers["weight"]).reshape(n_students, q_count, 4)[..., 0],
        teacher_confidence=np64(trace.logits[-1, 0].float().sigmoid().max(-1).values),
        num_pos=float(layers["balance"][0]),
        num_neg=float(layers["balance"][1]),
        loss_ddf=np64(layers["loss"]),
        contribution=np64(layers["share"]).reshape(n_students, q_count, 4).sum(-1),
    )


__all__ = [
    "EDGES",
    "PSEUDO_NOTE",
    "GOLSDReport",
    "criterion_outputs",
    "golsd",
    "pseudo_targets",
]
