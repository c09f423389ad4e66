"""Two (or more) models on the same image, side by side — e.g. a full D-FINE against its
``--ablate golsd`` / ``--ablate fdr`` variants.

- :func:`compare_refinement` → :class:`RefinementComparison`: for the same objects (the
  image's ground truth, or the first model's detections), each model's matched query and the
  IoU of its box with the object at every stage (pre-head where the model has one, then every
  decoder layer).
- :func:`compare_edge` → :class:`EdgeComparison`: one object's edge (left/top/right/bottom)
  in every model: per layer its bin probabilities placed at the image coordinate each bin
  stands for, and the expected edge position. A model without distributions (``--ablate
  fdr``) contributes its box edge per layer only.

Queries are matched to objects with the criterion's Hungarian matcher on the last layer's
logits and boxes (as :func:`analysis.layer_stats`), so every model is judged on the query it
would be trained to put on the object. Figures: ``analysis.figures.refinement_comparison_figure``
and ``analysis.figures.edge_comparison_figure``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from analysis._common import (
    EDGES,
    OUTWARD_SIGN,
    ImageSize,
    check_image_size,
    check_single_image,
    cxcywh_to_xyxy_px,
    layer_names,
    np64,
    pairwise_iou,
    xyxy_px_to_cxcywh,
)
from analysis._style import edge_index
from analysis.distributions import edge_stats
from analysis.refinement import STAGE_PRE
from dfine.errors import InvalidArgumentError
from dfine.loss.matcher import HungarianMatcher
from dfine.nn.decoder import DecoderTrace


@dataclass(frozen=True)
class ModelLayerIoU:
    """One model's matched queries and their per-stage IoU with the compared objects.

    Attributes:
        model: the model's name.
        stages: ``[S]`` its stages: ``pre-head`` (models with FDR), ``layer 1`` .. ``layer L``.
        queries: ``[N]`` int64 the query matched to each object.
        iou: ``[S, N]`` IoU of the matched query's box at every stage with the object.
    """

    model: str
    stages: list[str]
    queries: np.ndarray
    iou: np.ndarray

    @property
    def mean_iou(self) -> np.ndarray:
        """``[S]`` mean over the objects (NaN when there are none)."""
        if self.iou.shape[1] == 0:
            return np.full(len(self.stages), np.nan)
        return self.iou.mean(axis=1)


@dataclass(frozen=True)
class RefinementComparison:
    """Per-stage IoU of several models with the same N objects of one image.

    Attributes:
        reference: what the objects are (``"ground truth"``, ``"detections of <model>"``).
        image_size: ``(width, height)`` of the original image, pixels.
        objects_xyxy: ``[N, 4]`` the objects' boxes, pixels.
        labels: ``[N]`` int64 their classes.
        models: one :class:`ModelLayerIoU` per model, in the order given.
    """

    reference: str
    image_size: ImageSize
    objects_xyxy: np.ndarray
    labels: np.ndarray
    models: tuple[ModelLayerIoU, ...]

    @property
    def stages(self) -> list[str]:
        """Every stage of any model, in order (``pre-head`` first)."""
        longest = max(len(m.stages) - (STAGE_PRE in m.stages) for m in self.models)
        pre = [STAGE_PRE] if any(STAGE_PRE in m.stages for m in self.models) else []
        return [*pre, *layer_names(longest)]


def match_objects(
    trace: DecoderTrace, objects_xyxy: np.ndarray, labels: np.ndarray, image_size: ImageSize
) -> np.ndarray:
    """``[N]`` the query of image 0 of ``trace`` that the criterion's Hungarian matcher assigns
    to each object (class and box costs on the last layer), int64."""
    num_classes = trace.logits.shape[-1]
    if len(labels) and int(labels.max()) >= num_classes:
        raise InvalidArgumentError(
            f"the objects use class {int(labels.max())} but a model has only {num_classes} "
            "classes; compare models trained on the same classes"
        )
    if len(labels) == 0:
        return np.zeros(0, dtype=np.int64)
    target = {
        "labels": torch.as_tensor(labels, dtype=torch.int64),
        "boxes": torch.as_tensor(xyxy_px_to_cxcywh(objects_xyxy, image_size), dtype=torch.float32),
    }
    final = {"pred_logits": trace.logits[-1, :1].float(), "pred_boxes": trace.boxes[-1, :1].float()}
    ((queries, objects),) = HungarianMatcher()(final, [target])
    order = np.empty(len(labels), dtype=np.int64)
    order[objects.numpy()] = queries.numpy()
    return order


def compare_refinement(
    traces: Sequence[DecoderTrace],
    model_names: Sequence[str],
    objects_xyxy: np.ndarray,
    labels: np.ndarray,
    image_size: Sequence[int],
    reference: str = "ground truth",
) -> RefinementComparison:
    """Per-stage IoU of each model's matched query with each object (image 0 of every trace).

    ``objects_xyxy [N, 4]`` pixels of the original image, ``labels [N]`` their classes,
    ``image_size`` ``(width, height)``; ``reference`` names what the objects are.
    """
    size = check_image_size(image_size)
    if len(traces) != len(model_names) or not traces:
        raise InvalidArgumentError(f"{len(traces)} traces for {len(model_names)} model names")
    objects = np.asarray(objects_xyxy, dtype=np.float64).reshape(-1, 4)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(labels) != len(objects):
        raise InvalidArgumentError(f"{len(labels)} labels for {len(objects)} objects")
    models = []
    for trace, name in zip(traces, model_names):
        check_single_image(trace)
        q = match_objects(trace, objects, labels, size)
        norm = trace.boxes[:, 0, q]
        stages = layer_names(trace.num_layers)
        if trace.pre_boxes is not None:
            norm = torch.cat([trace.pre_boxes[0, q][None], norm])
            stages = [STAGE_PRE, *stages]
        xyxy = cxcywh_to_xyxy_px(np64(norm), size)  # [S, N, 4]
        iou = pairwise_iou(xyxy, objects[None]).reshape(len(stages), len(q))  # [S, N]
        models.append(ModelLayerIoU(str(name), stages, q, iou))
    return RefinementComparison(reference, size, objects, labels, tuple(models))


@dataclass(frozen=True)
class ModelEdge:
    """One model's view of one edge of the compared object, per decoder layer.

    Attributes:
        model: the model's name.
        query: the decoder query matched to the object.
        layers: ``[L]`` layer names.
        position_px: ``[L]`` the edge's image coordinate at every layer (x for left/right,
            y for top/bottom), pixels.
        bin_positions_px: ``[R+1]`` the image coordinate each bin stands for, or ``None``
            without distributions.
        probs: ``[L, R+1]`` the bin probabilities, or ``None`` without distributions.
        std_px: ``[L]`` standard deviation of the edge position, pixels, or ``None``.
        entropy: ``[L]`` entropy of the distribution, nats, or ``None``.
    """

    model: str
    query: int
    layers: list[str]
    position_px: np.ndarray
    bin_positions_px: np.ndarray | None
    probs: np.ndarray | None
    std_px: np.ndarray | None
    entropy: np.ndarray | None

    @property
    def has_distributions(self) -> bool:
        return self.probs is not None


@dataclass(frozen=True)
class EdgeComparison:
    """The same edge of the same object in several models (see :func:`compare_edge`).

    ``object_xyxy [4]`` pixels (the object the models' queries were matched to), ``edge`` its
    name, ``reference`` what the object is, ``models`` one :class:`ModelEdge` per model."""

    edge: str
    reference: str
    image_size: ImageSize
    object_xyxy: np.ndarray
    label: int
    models: tuple[ModelEdge, ...]

    @property
    def num_layers(self) -> int:
        return max(len(m.layers) for m in self.models)


def compare_edge(
    traces: Sequence[DecoderTrace],
    model_names: Sequence[str],
    object_xyxy: Sequence[float] | np.ndarray,
    label: int,
    image_size: Sequence[int],
    edge: int | str,
    reference: str = "ground truth",
) -> EdgeComparison:
    """Edge ``edge`` of one object (``object_xyxy`` pixels, class ``label``) in every model:
    each model's Hungarian-matched query, its edge position at every layer and, for models
    with FDR, the distribution of that edge at every layer on the image's pixel axis."""
    size = check_image_size(image_size)
    e = edge_index(edge)
    box = np.asarray(object_xyxy, dtype=np.float64).reshape(1, 4)
    labels = np.array([int(label)], dtype=np.int64)
    if len(traces) != len(model_names) or not traces:
        raise InvalidArgumentError(f"{len(traces)} traces for {len(model_names)} model names")
    models = []
    for trace, name in zip(traces, model_names):
        check_single_image(trace)
        (q,) = match_objects(trace, box, labels, size)
        xyxy = cxcywh_to_xyxy_px(np64(trace.boxes[:, 0, q]), size)  # [L, 4]
        bins = probs = std = entropy = None
        if trace.has_distributions:
            st = edge_stats(trace, np.array([q]), size)
            bins = st["reference_px"][0, e] + OUTWARD_SIGN[e] * st["offsets_px"][0, e]
            probs, std, entropy = (
                st["probs"][:, 0, e],
                st["std_px"][:, 0, e],
                st["entropy"][:, 0, e],
            )
        models.append(
            ModelEdge(
                str(name),
                int(q),
                layer_names(trace.num_layers),
                xyxy[:, e],
                bins,
                probs,
                std,
                entropy,
            )
        )
    return EdgeComparison(EDGES[e], reference, size, box[0], int(label), tuple(models))
