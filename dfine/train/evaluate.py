"""COCO box mAP of a model on a dataset (faster-coco-eval, or pycocotools).

:func:`coco_metrics` scores a list of COCO-style detections against ground truth;
:func:`evaluate` runs a model over a data loader (eval mode, ``dfine.postprocess``), maps the
contiguous labels back to category ids through the dataset's ``label_to_category``, gathers the
detections of every rank on rank 0 and returns the same metrics dictionary on every rank.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from dfine.errors import InvalidArgumentError, missing
from dfine.postprocess import postprocess
from dfine.train import dist
from dfine.train.names import COCO_LIBS

METRIC_NAMES = (
    "AP",
    "AP50",
    "AP75",
    "APs",
    "APm",
    "APl",
    "AR1",
    "AR10",
    "AR100",
    "ARs",
    "ARm",
    "ARl",
)
"""The 12 numbers of COCOeval.summarize(), in order (AP at IoU .50:.95, .50, .75, per area; AR
at 1, 10, 100 detections and per area). -1 means "no ground truth in that area range"."""


# ------------------------------------------------------------------------------ ground truth
def load_ground_truth(source: Any) -> dict[str, Any]:
    """A COCO annotation dictionary from a json path, a dict, a pycocotools/faster-coco-eval
    ``COCO`` object (its ``.dataset``) or a dataset exposing ``to_coco_dict()``, ``.coco`` or
    ``.ann_file`` (wrappers such as ``torch.utils.data.Subset`` are looked through)."""
    if isinstance(source, Mapping):
        return dict(source)
    if isinstance(source, (str, os.PathLike)):
        return json.loads(Path(source).read_text())
    if callable(getattr(source, "to_coco_dict", None)):  # dfine.data.CocoDetection
        return source.to_coco_dict()
    if hasattr(source, "dataset") and isinstance(source.dataset, Mapping):
        return dict(source.dataset)  # a COCO object
    for attr in ("coco", "coco_gt"):
        if getattr(source, attr, None) is not None:
            return load_ground_truth(getattr(source, attr))
    if getattr(source, "ann_file", None):
        return load_ground_truth(source.ann_file)
    if hasattr(source, "dataset"):  # torch Subset and similar wrappers
        return load_ground_truth(source.dataset)
    raise TypeError(f"cannot find COCO ground truth in a {type(source).__name__}")


def _coco_modules(coco_lib: str) -> tuple[Any, Any]:
    """(COCO class, COCOeval class) of the chosen COCO evaluation library."""
    if coco_lib not in COCO_LIBS:
        raise InvalidArgumentError(
            f"unknown COCO evaluation library {coco_lib!r}; choose one of {', '.join(COCO_LIBS)}"
        )
    if coco_lib in ("auto", "faster_coco_eval"):
        try:
            from faster_coco_eval import COCO, COCOeval_faster

            return COCO, COCOeval_faster
        except ImportError:
            if coco_lib == "faster_coco_eval":
                raise missing("COCO evaluation with faster_coco_eval", "faster-coco-eval") from None
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise missing("COCO evaluation", "faster-coco-eval") from None
    return COCO, COCOeval


def _coco_from_dict(coco_cls: Any, data: Mapping[str, Any]) -> Any:
    gt = coco_cls()
    gt.dataset = copy.deepcopy(dict(data))
    gt.dataset.setdefault("info", {})
    gt.dataset.setdefault("licenses", [])
    for ann in gt.dataset.get("annotations", []):
        ann.setdefault("iscrowd", 0)
        if "area" not in ann:
            ann["area"] = float(ann["bbox"][2] * ann["bbox"][3])
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def _placeholder(gt: Mapping[str, Any], image_id: int) -> list[dict[str, Any]]:
    """One detection of an absent category: COCO tools refuse an empty result list, and a
    category without ground truth is not evaluated, so this scores exactly as 'nothing'."""
    unused = max([c["id"] for c in gt.get("categories", [])] + [0]) + 1
    return [{"image_id": image_id, "category_id": unused, "bbox": [0, 0, 1, 1], "score": 0.0}]


# ------------------------------------------------------------------------------ scoring
def coco_eval(
    ground_truth: Any,
    detections: Sequence[Mapping[str, Any]] | np.ndarray,
    image_ids: Iterable[int] | None = None,
    coco_lib: str = "auto",
    verbose: bool = False,
) -> Any:
    """The accumulated and summarized ``COCOeval`` (box) of ``detections``; see
    :func:`coco_metrics` for the arguments; ``detections`` may also be a float ``[N, 7]`` array
    of ``image_id, x, y, w, h, score, category_id`` rows (both libraries load it directly). Its ``.eval["precision"]`` ``[T, R, K, A, M]``
    (IoU thresholds .50:.05:.95, 101 recall points, categories in ``.params.catIds`` order,
    areas all/small/medium/large, max detections 1/10/100) gives per-class AP and PR curves."""
    gt_dict = load_ground_truth(ground_truth)
    all_ids = [img["id"] for img in gt_dict.get("images", [])]
    ids = sorted(set(image_ids)) if image_ids is not None else sorted(all_ids)
    if not ids:
        raise InvalidArgumentError("no images to evaluate (empty ground truth or image list)")
    unknown = set(ids) - set(all_ids)
    if unknown:
        raise InvalidArgumentError(f"image ids not in the ground truth: {sorted(unknown)[:10]}")
    coco_cls, eval_cls = _coco_modules(coco_lib)
    if isinstance(detections, np.ndarray):  # [N, 7] image_id, x, y, w, h, score, category_id
        dets = detections if len(detections) else _placeholder(gt_dict, ids[0])
    else:
        dets = [dict(d) for d in detections] or _placeholder(gt_dict, ids[0])
    quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with quiet:
        gt = _coco_from_dict(coco_cls, gt_dict)
        dt = gt.loadRes(dets)
        ev = eval_cls(gt, dt, "bbox")
        ev.params.imgIds = ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def coco_metrics(
    ground_truth: Any,
    detections: Sequence[Mapping[str, Any]],
    image_ids: Iterable[int] | None = None,
    coco_lib: str = "auto",
    verbose: bool = False,
) -> dict[str, float]:
    """COCO box metrics (:data:`METRIC_NAMES`) of ``detections`` against ``ground_truth``.

    ``detections``: dicts with ``image_id``, ``category_id`` (dataset ids), ``bbox`` (x, y, w, h
    in original pixels) and ``score``. ``ground_truth``: anything :func:`load_ground_truth`
    accepts. ``image_ids``: evaluate on these images only (as the reference's evaluator, which
    scores the images it was given); default all images of the ground truth. ``coco_lib``: one
    of :data:`COCO_LIBS`. ``verbose`` prints COCO's summary table.
    """
    ev = coco_eval(ground_truth, detections, image_ids, coco_lib, verbose)
    return {name: float(v) for name, v in zip(METRIC_NAMES, list(ev.stats)[: len(METRIC_NAMES)])}


# ------------------------------------------------------------------------------ model eval
def to_coco_detections(
    results: Sequence[Mapping[str, torch.Tensor]],
    image_ids: Sequence[int],
    label_to_category: Mapping[int, int] | None,
) -> list[dict[str, Any]]:
    """``dfine.postprocess`` results (xyxy pixels) → COCO detection dicts (xywh)."""
    out = []
    for image_id, res in zip(image_ids, results):
        boxes = res["boxes"].detach().float().cpu()
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
        labels = res["labels"].detach().cpu().tolist()
        scores = res["scores"].detach().float().cpu().tolist()
        for box, label, score in zip(xywh, labels, scores):
            category = label_to_category[int(label)] if label_to_category else int(label)
            out.append(
                {
                    "image_id": int(image_id),
                    "category_id": int(category),
                    "bbox": [round(float(v), 3) for v in box],
                    "score": float(score),
                }
            )
    return out


def _dataset_attr(loader: Any, name: str) -> Any:
    ds = getattr(loader, "dataset", loader)
    while ds is not None:
        if getattr(ds, name, None) is not None:
            return getattr(ds, name)
        ds = (
            getattr(ds, "dataset", None)
            if not isinstance(getattr(ds, "dataset", None), Mapping)
            else None
        )
    return None


def _merge_ranks(
    per_rank: list[tuple[list[int], list[dict[str, Any]]]],
) -> tuple[list[int], list[dict[str, Any]]]:
    """Concatenate ranks' image ids and detections; an image seen twice (DistributedSampler
    pads the last round by repeating samples) counts once."""
    seen: set[int] = set()
    merged: list[dict[str, Any]] = []
    for image_ids, dets in per_rank:
        new = set(image_ids) - seen
        merged.extend(d for d in dets if d["image_id"] in new)
        seen |= new
    return sorted(seen), merged


@torch.no_grad()
def predict_detections(
    model: nn.Module,
    loader: Iterable,
    label_to_category: Mapping[int, int] | None = None,
    device: str | torch.device = "cpu",
    num_top: int = 300,
    progress: bool = True,
) -> tuple[list[int], list[dict[str, Any]]]:
    """Run ``model`` over ``loader`` (this rank's share): image ids seen and COCO detections."""
    was_training = model.training
    model.eval()
    image_ids: list[int] = []
    dets: list[dict[str, Any]] = []
    bar = tqdm(
        loader,
        desc="eval",
        unit="batch",
        disable=not (progress and dist.is_main()),
        leave=False,
        dynamic_ncols=True,
    )
    try:
        for images, targets in bar:
            sizes = torch.stack([torch.as_tensor(t["orig_size"]) for t in targets]).to(device)
            if hasattr(model, "detect"):  # an exported graph (dfine.backends.module)
                results = model.detect(images, sizes)
            else:
                results = postprocess(model(images.to(device)), sizes, num_top=num_top)
            ids = [int(t["image_id"]) for t in targets]
            image_ids.extend(ids)
            dets.extend(to_coco_detections(results, ids, label_to_category))
    finally:
        model.train(was_training)
    return image_ids, dets


def evaluate(
    model: nn.Module,
    loader: Iterable,
    ground_truth: Any = None,
    label_to_category: Mapping[int, int] | None = None,
    device: str | torch.device = "cpu",
    num_top: int = 300,
    coco_lib: str = "auto",
    progress: bool = True,
    verbose: bool = False,
) -> dict[str, float]:
    """COCO box metrics of ``model`` on ``loader`` (every rank returns the same dict).

    ``loader`` yields ``(images [B,3,H,W], targets)`` with ``image_id`` and ``orig_size`` (w, h)
    per target. Ground truth and ``label_to_category`` default to the loader's dataset's
    (``.coco``/``.ann_file`` and ``.label_to_category``).
    """
    if label_to_category is None:
        label_to_category = _dataset_attr(loader, "label_to_category")
    image_ids, dets = predict_detections(
        model, loader, label_to_category, device, num_top, progress
    )
    gathered = dist.all_gather_object((image_ids, dets))
    metrics: dict[str, float] | None = None
    if dist.is_main():
        gt = ground_truth if ground_truth is not None else getattr(loader, "dataset", loader)
        ids, dets = _merge_ranks(gathered)
        metrics = coco_metrics(gt, dets, image_ids=ids, coco_lib=coco_lib, verbose=verbose)
    return dist.broadcast_object(metrics)
