"""End-to-end entry points behind ``dfine train`` and ``dfine val`` (usable from Python).

Launch on several processes with ``torchrun``::

    torchrun --nproc_per_node 2 -m dfine.train train --recipe synth --data data/synth
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dfine.backends.module import BackendModel
from dfine.checkpoint import load_model
from dfine.coco import COCO_CATEGORY_IDS
from dfine.config import get_config
from dfine.data import CocoDetection, build_dataloader, build_val_transforms
from dfine.errors import InputFileError, InvalidArgumentError
from dfine.model import DFINE
from dfine.sources import default_backend
from dfine.train import dist
from dfine.train.data import Split, build_loaders, category_mapping, resolve_split
from dfine.train.evaluate import evaluate
from dfine.train.recipes import Recipe, get_recipe
from dfine.train.state import seed_everything, set_deterministic
from dfine.train.trainer import Trainer, TrainOptions


@dataclass
class TrainRun:
    """Everything ``dfine train`` takes (see ``dfine train --help``)."""

    recipe: str | Recipe = "synth"
    data: str | os.PathLike | None = None
    val_data: str | os.PathLike | None = None
    images: str | os.PathLike | None = None
    val_images: str | os.PathLike | None = None
    out: str | os.PathLike = "runs/train"
    epochs: int | None = None
    stop_epoch: int | None = None
    batch_size: int | None = None
    lr_scale: float = 1.0
    scheduler: str | None = None
    flat_epochs: int | None = None
    input_size: int | None = None
    workers: int | None = None
    device: str | None = None
    amp: str = "auto"
    seed: int = 0
    deterministic: bool = False
    resume: str | os.PathLike | None = None
    tune_from: str | os.PathLike | None = None
    ablation: str = "none"
    eval_every: int | None = None
    no_val: bool = False
    max_steps_per_epoch: int | None = None
    sync_bn: bool | None = None
    channels_last: bool | None = None
    progress: bool = True
    tensorboard: bool = True
    save_every: int | None = None
    stop_on_nan: bool = False
    overrides: dict[str, Any] = field(default_factory=dict)


def scale_lr(recipe: Recipe, factor: float) -> Recipe:
    """The recipe with its base and per-group learning rates multiplied by ``factor``."""
    if factor == 1.0:
        return recipe
    groups = tuple(
        dataclasses.replace(g, lr=None if g.lr is None else g.lr * factor)
        for g in recipe.param_groups
    )
    return recipe.replace(lr=recipe.lr * factor, param_groups=groups)


def resolve_recipe(run: TrainRun) -> Recipe:
    """The named recipe with the run's overrides applied."""
    recipe = run.recipe if isinstance(run.recipe, Recipe) else get_recipe(run.recipe)
    changes: dict[str, Any] = dict(run.overrides)
    if run.epochs is not None:
        changes["epochs"] = run.epochs
    if run.stop_epoch is not None:
        changes["stop_epoch"] = run.stop_epoch
    if run.scheduler is not None:
        changes["scheduler"] = run.scheduler
    if run.flat_epochs is not None:
        changes["flat_epochs"] = run.flat_epochs
    if run.batch_size is not None:
        changes["batch_size"] = run.batch_size
    if run.input_size is not None:
        if run.input_size % 32:
            raise InvalidArgumentError(
                f"--input-size must be a multiple of 32, got {run.input_size}"
            )
        changes["input_size"] = run.input_size
    return scale_lr(recipe.replace(**changes), run.lr_scale)


def build_model_for(
    recipe: Recipe, num_classes: int, class_names: Any = None, ablation: str = "none"
) -> torch.nn.Module:
    """A fresh D-FINE of the recipe's size and family with anchors for its input size;
    ``ablation`` switches FDR / GO-LSD off (see :data:`dfine.config.ABLATIONS`)."""
    size = recipe.input_size
    cfg = get_config(recipe.model_size, num_classes, ablation, recipe.family)
    cfg = dataclasses.replace(cfg, eval_size=(size, size))
    names = tuple(class_names) if class_names else None
    return DFINE(cfg, class_names=names).train()


def _resume_path(run: TrainRun) -> Path | None:
    if run.resume is None:
        return None
    path = Path(run.out) / "last.pth" if str(run.resume) == "auto" else Path(run.resume)
    if not path.is_file():
        raise InputFileError(f"nothing to resume: {path} does not exist")
    return path


def train(run: TrainRun) -> dict[str, Any]:
    """Train as ``dfine train`` does; returns the trainer's summary (every rank)."""
    if run.data is None:
        raise InvalidArgumentError("--data is required: a dataset folder or a COCO json file")
    owned = not dist.is_dist()  # leave a caller's process group alone
    device = dist.init_distributed(run.device)
    try:
        return _train(run, device)
    finally:
        if owned:
            dist.cleanup()


def _train(run: TrainRun, device: torch.device) -> dict[str, Any]:
    recipe = resolve_recipe(run)
    if run.deterministic:
        set_deterministic(True)
    seed_everything(run.seed)
    resume = _resume_path(run)
    train_split = resolve_split(run.data, "train", run.images)
    val_split = None
    if not run.no_val:
        val_split = resolve_split(run.val_data or run.data, "val", run.val_images)
    train_loader, val_loader, train_ds = build_loaders(
        recipe, train_split, val_split, run.seed, run.workers
    )
    num_classes = recipe.num_classes or train_ds.num_classes
    model = build_model_for(
        recipe, num_classes, getattr(train_ds, "class_names", None), run.ablation
    )
    seed_everything(run.seed + dist.rank())  # per-rank streams (denoising noise, augmentation)
    options = TrainOptions(
        out_dir=run.out,
        device=str(device),
        amp=run.amp,
        progress=run.progress,
        tensorboard=run.tensorboard,
        eval_every=run.eval_every,
        max_steps_per_epoch=run.max_steps_per_epoch,
        sync_bn=run.sync_bn,
        channels_last=run.channels_last,
        save_every=run.save_every,
        stop_on_nan=run.stop_on_nan,
        metadata={"dataset": str(train_split.annotations)},
    )
    trainer = Trainer(model, recipe, train_loader, val_loader, options=options)
    if resume is not None:
        trainer.resume(resume)
    elif run.tune_from is not None:
        trainer.tune_from(run.tune_from)
    else:
        for note in _start_notes(recipe):
            trainer.log(note)
    return trainer.fit()


def _start_notes(recipe: Recipe) -> list[str]:
    """What the reference starts this recipe from, when this run starts from scratch."""
    if recipe.tune_from:
        return [
            f"note: the reference fine-tunes {recipe.name} from {recipe.tune_from}; pass "
            f"--tune-from {recipe.tune_from} (file or zoo name) to do the same"
        ]
    if recipe.pretrained_backbone:
        return [
            f"note: the reference starts {recipe.name} from ImageNet-pretrained HGNetv2 "
            "backbone weights, which this project does not ship; the backbone starts from "
            "random weights (use --tune-from to start from a D-FINE checkpoint)"
        ]
    return []


# ---------------------------------------------------------------------- validation
def _mapping_for(model: Any, annotations: Path) -> str:
    """Category mapping for evaluating ``model``: its recipe's, else guessed from the json."""
    recipe = (getattr(model, "metadata", None) or {}).get("recipe")
    if recipe:
        return category_mapping(Recipe.from_dict(recipe))
    if model.num_classes == 366:
        return "identity"
    if model.num_classes == 80:
        ids = {c["id"] for c in json.loads(annotations.read_text()).get("categories", [])}
        if ids == set(COCO_CATEGORY_IDS):
            return "coco80"
    return "contiguous"


def val_dataset(model: Any, split: Split, size: int) -> CocoDetection:
    """The dataset :func:`validate` scores ``model`` on (validation transforms at ``size``)."""
    return CocoDetection(
        split.images,
        split.annotations,
        transforms=build_val_transforms(size),
        category_mapping=_mapping_for(model, split.annotations),
        num_classes=model.num_classes,
    )


def validate(
    weights: str | os.PathLike,
    data: str | os.PathLike,
    images: str | os.PathLike | None = None,
    size: int | None = None,
    batch_size: int = 8,
    workers: int = 2,
    device: str | None = None,
    coco_lib: str = "auto",
    progress: bool = True,
    backend: str | None = None,
    precision: str | None = None,
    family: str | None = None,
    decoder_layers: int | None = None,
    num_queries: int | None = None,
) -> dict[str, float]:
    """COCO metrics of ``weights`` (a checkpoint, zoo name, exported ``.onnx`` or OpenVINO
    ``.xml``) on the val split of ``data``. ``backend``: the inference runtime — ``torch``,
    ``onnxruntime``, ``openvino`` or ``tensorrt`` (default: from the file, see
    :func:`dfine.sources.default_backend`); ``precision``: the runtime's precision (see
    :mod:`dfine.precision`; default: the file's own); ``coco_lib``: the COCO evaluation
    library (``dfine.train.names.COCO_LIBS``); ``family``: ``dfine`` or ``deim`` for a
    checkpoint whose metadata and name do not say it (torch backend).; ``decoder_layers`` / ``num_queries``: the
    decoder's inference budget (:meth:`dfine.model.DFINE.set_decoder_budget`)."""
    owned = not dist.is_dist()
    device_ = dist.init_distributed(device)
    try:
        backend = backend or default_backend(weights)
        if backend == "torch":
            if precision not in (None, "f32"):
                raise InvalidArgumentError(
                    f"the torch backend runs f32; --precision {precision} needs a runtime that "
                    "reduces precision (--backend openvino)"
                )
            model = load_model(
                weights, device=device_, family=family,
                decoder_layers=decoder_layers, num_queries=num_queries,
            )  # fmt: skip
        elif family is not None:
            raise InvalidArgumentError(
                f"--family applies to a checkpoint run by the torch backend, not {backend}: "
                "export it with `dfine export W --family deim` (the export records it)"
            )
        else:
            model = BackendModel.load(
                weights, backend, device=device_, precision=precision,
                decoder_layers=decoder_layers, num_queries=num_queries,
            )  # fmt: skip
        split = resolve_split(data, "val", images)
        size = size or model.config.eval_size[0]
        if backend != "torch" and (size, size) != tuple(model.config.eval_size):
            raise InvalidArgumentError(
                f"{weights} was exported for input {model.config.eval_size[0]}x"
                f"{model.config.eval_size[1]}; leave --size out or export again at {size}"
            )
        dataset = val_dataset(model, split, size)
        if backend != "torch":
            # OpenVINO's and ONNX Runtime's thread pools do not survive a fork: loader workers
            # forked from a process holding one leave it to crash at its next fork. Decoding
            # in-process costs little next to the runtime itself.
            workers = 0
        loader = build_dataloader(dataset, batch_size, shuffle=False, num_workers=workers)
        return evaluate(model, loader, device=device_, coco_lib=coco_lib, progress=progress)
    finally:
        if owned:
            dist.cleanup()
