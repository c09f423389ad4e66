"""Record DEIM's own criterion and training steps on DEIM-D-FINE-N, for ``tests/test_deim_loss.py``.

Usage (the reference is a ``git archive`` of github.com/ShihuaHuang95/DEIM; nothing of it is
copied into this repository, only the recorded numbers)::

    git --git-dir=/work/.mirror/ShihuaHuang95+DEIM/repo archive HEAD | tar -x -C /tmp/deim-ref
    python scripts/record_deim_loss_fixture.py /tmp/deim-ref --commit a9aa4ad

Both recordings use DEIM's model and ``DEIMCriterion`` built by DEIM's ``YAMLConfig`` from
``configs/deim_dfine/deim_hgnetv2_n_coco.yml`` (``HGNetv2.pretrained = False``), with the
seeded weights of ``scripts/record_deim_fixture.py``'s ``random_state_dict`` (drawn from key
names and shapes only, so our model gets the same tensors without a stored checkpoint), f32 on
CPU with 2 threads, on :func:`batch`: the two images of ``inputs.pt`` resized to 320 px and
seeded targets (4 and 2 objects).

1. ``<out>.safetensors`` + ``<out>.json`` (default ``tests/fixtures/deim_losses``): one
   train-mode forward with denoising on (``torch.manual_seed(DN_SEED)`` right before it), every
   output tensor the criterion reads (``out.<path>``, e.g. ``out.aux_outputs.0.pred_corners``;
   a tensor shared by several entries is stored once, the JSON names its aliases; ``dn_meta``
   and ``enc_meta`` in the JSON), the targets, every loss term DEIM's criterion returns
   (weighted, as DEIM sums them), the total, and the L2 norm of the total's gradient with
   respect to every output tensor (the criterion run on detached copies of the outputs).
2. ``<steps-out>.safetensors`` + ``<steps-out>.json`` (default ``tests/fixtures/deim_steps``):
   :data:`STEPS` training steps as DEIM's ``train_one_epoch`` does them without AMP (forward with
   targets after ``torch.manual_seed(DN_SEED + step)``, criterion, ``zero_grad``, backward,
   ``clip_grad_norm_(0.1)``, ``optimizer.step()``) with DEIM's ``optimizer`` from the YAML
   (AdamW, DEIM-N's parameter groups, their learning rates; no lr schedule, no EMA), recording
   each step's total loss and gradient norm, and the weights after the last step: in full for
   the tensors in :data:`FULL` (``delta.<key>``: after minus before), and for every other float
   entry of the state dict its change's L2 norm and max (JSON), to keep the file small.

Each file name carries this CPU's kernel class (``torch.backends.cpu.get_cpu_capability()``,
e.g. ``deim_steps.avx2.json``; see :func:`for_this_cpu`); record once per class.

DEIM's ``engine`` package imports ``calflops`` (a FLOP counter used by its profiler only); when
it is not installed, a stand-in module is put in ``sys.modules`` (DEIM's files are not edited).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"
SEED = 0  # weights (random_state_dict) and targets
DN_SEED = 1234  # torch.manual_seed right before each training forward (+ step index)
SIZE = 320
COUNTS = (4, 2)
STEPS = 3
CLIP = 0.1
FULL = (
    "decoder.dec_score_head.",
    "decoder.dec_bbox_head.2.",
    "decoder.lqe_layers.",
    "decoder.pre_bbox_head.layers.2.",
    "decoder.enc_score_head.",
    "decoder.decoder.layers.0.gateway.",
    "encoder.input_proj.0.",
    "backbone.stem.stem1.",
)
"""State-dict key prefixes whose change is stored in full (well under 2 MB together)."""
HERE = Path(__file__).resolve().parent


def _eval_recorder():
    """``scripts/record_deim_fixture.py`` (``random_state_dict``, ``_import_deim``)."""
    spec = importlib.util.spec_from_file_location(
        "record_deim_fixture", HERE / "record_deim_fixture.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def for_this_cpu(stem: Path) -> Path:
    """``stem.<capability>`` (``deim_steps.avx2``): the recording for this CPU's kernels.

    A train forward and three AdamW steps of a randomly initialised network amplify rounding:
    DEIM's own code gives a first gradient norm of 15353.80 on an AVX2 CPU and 15358.89 on an
    AVX-512 one (a third of a percent). Within one kind of CPU ours equals DEIM's bit for bit,
    so each kind keeps its own recording.
    """
    cap = torch.backends.cpu.get_cpu_capability().lower()
    return stem.with_name(f"{stem.name}.{cap}")


def batch(inputs: Path) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """``images [2, 3, SIZE, SIZE]`` from ``inputs.pt`` and seeded targets (cxcywh in [0, 1])."""
    images = torch.load(inputs, weights_only=True)["images"]
    images = F.interpolate(images, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    gen = torch.Generator().manual_seed(SEED)
    targets = []
    for n in COUNTS:
        centre = 0.25 + 0.5 * torch.rand(n, 2, generator=gen)
        size = 0.1 + 0.3 * torch.rand(n, 2, generator=gen)
        labels = torch.randint(0, 80, (n,), generator=gen)
        targets.append({"labels": labels, "boxes": torch.cat([centre, size], 1)})
    return images.contiguous(), targets


# ----------------------------------------------------------------------------- output layout
def flatten(value: Any, prefix: str, tensors: dict, seen: dict) -> Any:
    """The structure of ``value`` with every tensor replaced by its key (stored in
    ``tensors`` once: a tensor met again, or one equal to a stored one, becomes an alias);
    non-tensor leaves kept as is."""
    if isinstance(value, torch.Tensor):
        if id(value) in seen:
            return {"alias": seen[id(value)]}
        same = next((k for k, v in tensors.items() if _same(v, value)), None)
        if same is not None:  # e.g. a teacher's corners: a fresh view of the last layer's
            return {"alias": same}
        seen[id(value)] = prefix
        tensors[prefix] = value.detach().clone().contiguous()
        return {"tensor": prefix}
    if isinstance(value, dict):
        return {"dict": {k: flatten(v, f"{prefix}.{k}", tensors, seen) for k, v in value.items()}}
    if isinstance(value, (list, tuple)):
        return {"list": [flatten(v, f"{prefix}.{i}", tensors, seen) for i, v in enumerate(value)]}
    return {"value": value}


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b.detach())


def unflatten(node: dict, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`flatten` (aliases become the same tensor object again)."""
    if "tensor" in node:
        return tensors[node["tensor"]]
    if "alias" in node:
        return tensors[node["alias"]]
    if "dict" in node:
        return {k: unflatten(v, tensors) for k, v in node["dict"].items()}
    if "list" in node:
        return [unflatten(v, tensors) for v in node["list"]]
    return node["value"]


def leaves(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Fresh copies, the float ones requiring grad (so gradient norms can be compared)."""
    out = {}
    for k, v in tensors.items():
        v = v.detach().clone()
        out[k] = v.requires_grad_(True) if v.is_floating_point() else v
    return out


# ----------------------------------------------------------------------------- recording
def _build(ref: Path):
    rec = _eval_recorder()
    yaml_config = rec._import_deim(ref)
    cfg = yaml_config(
        str(ref / "configs/deim_dfine/deim_hgnetv2_n_coco.yml"), HGNetv2={"pretrained": False}
    )
    torch.manual_seed(SEED)
    model = cfg.model
    sd = rec.random_state_dict(model.state_dict(), SEED)
    model.load_state_dict(sd)
    return cfg, model, sd, rec.checksum(sd)


def _criterion_settings(cfg) -> dict:
    crit = cfg.criterion
    return {
        "weight_dict": dict(crit.weight_dict),
        "losses": list(crit.losses),
        "alpha": crit.alpha,
        "gamma": crit.gamma,
        "mal_alpha": crit.mal_alpha,
        "use_uni_set": crit.use_uni_set,
        "matcher": {
            "cost_class": crit.matcher.cost_class,
            "cost_bbox": crit.matcher.cost_bbox,
            "cost_giou": crit.matcher.cost_giou,
            "alpha": crit.matcher.alpha,
            "gamma": crit.matcher.gamma,
            "use_focal_loss": crit.matcher.use_focal_loss,
        },
    }


def record_losses(cfg, model, images, targets) -> tuple[dict, dict]:
    model.train()
    torch.manual_seed(DN_SEED)
    out = model(images, targets=targets)
    tensors: dict[str, torch.Tensor] = {}
    layout = flatten(out, "out", tensors, {})
    runs = []
    for _ in range(2):  # the second run checks that DEIM is deterministic on these inputs
        inputs = leaves(tensors)
        losses = cfg.criterion(unflatten(layout, inputs), targets)
        total = sum(losses.values())
        total.backward()
        grads = {k: float(v.grad.norm()) for k, v in inputs.items() if v.grad is not None}
        runs.append(({k: v.item() for k, v in losses.items()}, total.item(), grads))
    assert runs[0] == runs[1], "DEIM's criterion is not deterministic on these inputs"
    losses, total, grads = runs[0]
    for i, t in enumerate(targets):
        tensors[f"targets.{i}.labels"] = t["labels"]
        tensors[f"targets.{i}.boxes"] = t["boxes"]
    record = {"layout": layout, "losses": losses, "total": total, "grad_norms": grads}
    return tensors, record


def record_steps(cfg, model, sd, images, targets) -> tuple[dict, dict]:
    model.load_state_dict(sd)
    model.train()
    optimizer = cfg.optimizer
    groups = [
        {
            "lr": g["lr"],
            "weight_decay": g["weight_decay"],
            "numel": sum(p.numel() for p in g["params"]),
        }
        for g in optimizer.param_groups
    ]
    steps = []
    for step in range(STEPS):
        torch.manual_seed(DN_SEED + step)
        outputs = model(images, targets=targets)
        loss_dict = cfg.criterion(outputs, targets)
        loss = sum(loss_dict.values())
        optimizer.zero_grad()
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        optimizer.step()
        steps.append({"loss": float(loss), "grad_norm": float(norm)})
    after = model.state_dict()
    tensors, stats = {}, {}
    for key, value in after.items():
        if not value.is_floating_point():
            continue
        delta = (value - sd[key]).detach()
        if key.startswith(FULL):
            tensors[f"delta.{key}"] = delta.contiguous()
        stats[key] = {"norm": float(delta.norm()), "max": float(delta.abs().max())}
    return tensors, {"steps": steps, "param_groups": groups, "delta_stats": stats}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reference", type=Path, help="a git archive of DEIM")
    parser.add_argument("--out", type=Path, default=FIXTURES / "deim_losses")
    parser.add_argument("--steps-out", type=Path, default=FIXTURES / "deim_steps")
    parser.add_argument("--inputs", type=Path, default=Path("tests/fixtures/inputs.pt"))
    parser.add_argument("--commit", default=None, help="the DEIM commit (recorded as is)")
    args = parser.parse_args(argv)
    from safetensors.torch import save_file

    torch.set_num_threads(2)
    ref = args.reference.resolve()
    cfg, model, sd, checksum = _build(ref)
    images, targets = batch(args.inputs)
    common = {
        "deim_commit": args.commit or "unknown",
        "torch": torch.__version__,
        "config": "configs/deim_dfine/deim_hgnetv2_n_coco.yml",
        "seed": SEED,
        "dn_seed": DN_SEED,
        "checksum": checksum,
        "size": SIZE,
        "criterion": _criterion_settings(cfg),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    out = for_this_cpu(args.out)
    tensors, record = record_losses(cfg, model, images, targets)
    save_file(tensors, f"{out}.safetensors")
    Path(f"{out}.json").write_text(json.dumps({**common, **record}, indent=1) + "\n")
    print(f"wrote {out}: {len(record['losses'])} terms, total {record['total']:.6f}")
    out = for_this_cpu(args.steps_out)
    tensors, record = record_steps(cfg, model, sd, images, targets)
    save_file(tensors, f"{out}.safetensors")
    record = {**common, "clip_max_norm": CLIP, "full": list(FULL), **record}
    Path(f"{out}.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {out}: {json.dumps(record['steps'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
