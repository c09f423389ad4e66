"""Record DEIM's training settings and its learning rate at every step, for ``tests/test_deim_train.py``.

Usage (the reference is a ``git archive`` of github.com/ShihuaHuang95/DEIM; nothing of it is
copied into this repository, only the recorded numbers)::

    git --git-dir=/work/.mirror/ShihuaHuang95+DEIM/repo archive HEAD | tar -x -C /tmp/deim-ref
    python scripts/record_deim_recipe_fixture.py /tmp/deim-ref --commit a9aa4ad

For each DEIM-D-FINE config in :data:`CONFIGS` (``configs/deim_dfine/...``), read through DEIM's
``YAMLConfig`` (its ``__include__`` chain merged by DEIM's own code), it writes into
``tests/fixtures/deim_recipes.json``:

- ``settings``: the merged values a recipe mirrors (epochs, optimizer and its groups, lr
  scheduler, warm-ups, EMA, batch sizes, the data policy epochs, backbone freezing, decoder
  activations, criterion);
- ``groups``: DEIM's parameter groups on DEIM's model of that size (``get_optim_params``):
  each group's regex, lr, weight decay, tensor count and element count;
- ``lr``: DEIM's learning rate as its training loop applies it, at :data:`ITERS_PER_EPOCH`
  iterations per epoch: an AdamW over one stand-in parameter per group, the config's
  ``lr_scheduler`` (``MultiStepLR``, which only sets ``initial_lr`` here) and
  ``lr_warmup_scheduler`` (``LinearWarmup``, whose constructor already scales the lr) built as
  DEIM's ``BaseSolver.train`` does, then ``FlatCosineLRScheduler`` as ``DetSolver.fit`` does;
  step ``i`` trains with the lr the groups hold before ``lr_scheduler.step(i, optimizer)`` runs
  (``train_one_epoch`` calls it after the optimizer step). Recorded at the steps of
  :func:`sample_steps`. DEIM's ``flat_cosine_schedule`` divides by ``warmup_iter``; with
  ``warmup_iter: 0`` (the Objects365→COCO config) its first call raises ZeroDivisionError,
  which is recorded as such.

Each config is read in a fresh process: DEIM's YAML machinery keeps a global configuration
that a second model built in the same process inherits settings from.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import torch

CONFIGS = {
    "deim_n": "configs/deim_dfine/deim_hgnetv2_n_coco.yml",
    "deim_s": "configs/deim_dfine/deim_hgnetv2_s_coco.yml",
    "deim_m": "configs/deim_dfine/deim_hgnetv2_m_coco.yml",
    "deim_l": "configs/deim_dfine/deim_hgnetv2_l_coco.yml",
    "deim_x": "configs/deim_dfine/deim_hgnetv2_x_coco.yml",
    "deim_obj2coco_x": "configs/deim_dfine/object365/deim_hgnetv2_x_obj2coco_24e.yml",
}
ITERS_PER_EPOCH = 100
HERE = Path(__file__).resolve().parent


def sample_steps(total: int, marks: list[int]) -> list[int]:
    """The first steps, every 97th, the last, and two steps either side of each boundary."""
    steps = set(range(6)) | set(range(0, total, 97)) | {total - 1}
    for m in marks:
        steps |= {s for s in range(m - 2, m + 3) if 0 <= s < total}
    return sorted(steps)


def _settings(y: dict) -> dict:
    train, collate = y["train_dataloader"], y["train_dataloader"]["collate_fn"]
    transforms = train["dataset"]["transforms"]
    return {
        "epochs": y["epoches"],
        "optimizer": y["optimizer"],
        "clip_max_norm": y["clip_max_norm"],
        "use_amp": y["use_amp"],
        "use_ema": y["use_ema"],
        "ema": y["ema"],
        "lrsheduler": y.get("lrsheduler"),
        "lr_gamma": y["lr_gamma"],
        "warmup_iter": y["warmup_iter"],
        "flat_epoch": y["flat_epoch"],
        "no_aug_epoch": y["no_aug_epoch"],
        "lr_warmup_scheduler": y.get("lr_warmup_scheduler"),
        "total_batch_size": train["total_batch_size"],
        "val_total_batch_size": y["val_dataloader"]["total_batch_size"],
        "stop_epoch": collate["stop_epoch"],
        "ema_restart_decay": collate.get("ema_restart_decay"),
        "base_size_repeat": collate.get("base_size_repeat"),
        "mixup_prob": collate.get("mixup_prob"),
        "mixup_epochs": collate.get("mixup_epochs"),
        "policy": transforms.get("policy"),
        "mosaic_prob": transforms.get("mosaic_prob"),
        "HGNetv2": {
            k: y["HGNetv2"].get(k) for k in ("freeze_at", "freeze_norm", "freeze_stem_only")
        },
        "activation": y["DFINETransformer"]["activation"],
        "mlp_act": y["DFINETransformer"]["mlp_act"],
        "criterion": {k: v for k, v in y["DEIMCriterion"].items() if k != "matcher"},
        "num_classes": y["num_classes"],
        "remap_mscoco_category": y.get("remap_mscoco_category"),
        "checkpoint_freq": y["checkpoint_freq"],
        "sync_bn": y["sync_bn"],
    }


def _groups(cfg) -> list[dict]:
    model = cfg.model
    groups = cfg.get_optim_params(cfg.yaml_cfg["optimizer"], model)
    names = {id(p): n for n, p in model.named_parameters()}
    result = []
    for g in groups:
        params = list(g["params"])
        result.append(
            {
                "params": None,  # the regex, filled in by the caller
                "lr": g.get("lr"),
                "weight_decay": g.get("weight_decay"),
                "tensors": len(params),
                "numel": sum(p.numel() for p in params),
                "first": names[id(params[0])] if params else None,
            }
        )
    return result


def _lr_trace(cfg, lr_scheduler_cls) -> dict:
    """DEIM's lr per step, through its own optimizer/scheduler objects (see the module doc)."""
    y = cfg.yaml_cfg
    specs = [dict(g) for g in y["optimizer"]["params"]] + [{}]
    stand_ins = [{"params": [torch.nn.Parameter(torch.zeros(1))], **_lr_wd(g)} for g in specs]

    cfg._optimizer = None
    from engine.core import create

    optimizer = create("optimizer", cfg.global_cfg, params=stand_ins)
    cfg._optimizer = optimizer
    _ = cfg.lr_scheduler  # MultiStepLR: sets initial_lr
    _ = cfg.lr_warmup_scheduler  # LinearWarmup: scales the lr at construction
    sched = lr_scheduler_cls(
        optimizer,
        y["lr_gamma"],
        ITERS_PER_EPOCH,
        total_epochs=y["epoches"],
        warmup_iter=y["warmup_iter"],
        flat_epochs=y["flat_epoch"],
        no_aug_epochs=y["no_aug_epoch"],
    )
    total = ITERS_PER_EPOCH * y["epoches"]
    marks = [
        y["warmup_iter"],
        ITERS_PER_EPOCH * y["flat_epoch"],
        total - ITERS_PER_EPOCH * y["no_aug_epoch"],
    ]
    wanted = set(sample_steps(total, marks))
    base = [g["initial_lr"] for g in optimizer.param_groups]
    lrs, error = {}, None
    for i in range(total):
        if i in wanted:
            lrs[i] = [g["lr"] for g in optimizer.param_groups]
        try:
            sched.step(i, optimizer)
        except ZeroDivisionError as e:
            error = f"step {i}: ZeroDivisionError: {e}"
            break
    return {
        "iters_per_epoch": ITERS_PER_EPOCH,
        "base_lrs": base,
        "steps": sorted(lrs),
        "lrs": [lrs[i] for i in sorted(lrs)],
        "error": error,
    }


def _lr_wd(spec: dict) -> dict:
    return {k: spec[k] for k in ("lr", "weight_decay") if k in spec}


def _record_one(ref: Path, name: str) -> dict:
    spec = importlib.util.spec_from_file_location(
        "record_deim_fixture", HERE / "record_deim_fixture.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yaml_config = module._import_deim(ref)
    from engine.optim.lr_scheduler import FlatCosineLRScheduler

    cfg = yaml_config(str(ref / CONFIGS[name]), HGNetv2={"pretrained": False})
    settings = _settings(cfg.yaml_cfg)
    groups = _groups(cfg)
    for g, p in zip(groups, [*cfg.yaml_cfg["optimizer"]["params"], {"params": None}]):
        g["params"] = p["params"]
    return {"settings": settings, "groups": groups, "lr": _lr_trace(cfg, FlatCosineLRScheduler)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reference", type=Path, help="a git archive of DEIM")
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures/deim_recipes.json"))
    parser.add_argument("--commit", default=None, help="the DEIM commit (recorded as is)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # child process: one config
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    ref = args.reference.resolve()
    if args.one:
        print("RESULT " + json.dumps(_record_one(ref, args.one)))
        return 0
    records = {}
    for name in CONFIGS:
        run = subprocess.run(
            [sys.executable, __file__, str(ref), "--one", name],
            check=True,
            capture_output=True,
            text=True,
        )
        line = next(x for x in run.stdout.splitlines() if x.startswith("RESULT "))
        records[name] = {"config": CONFIGS[name], **json.loads(line[len("RESULT ") :])}
        print(name, records[name]["lr"]["error"] or "ok")
    header = {"deim_commit": args.commit or "unknown", "torch": torch.__version__}
    args.out.write_text(json.dumps({**header, "recipes": records}, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
