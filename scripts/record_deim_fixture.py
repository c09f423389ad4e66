"""Record DEIM-D-FINE's own eval outputs on seeded random weights, for ``tests/test_deim.py``.

Usage (the reference is a ``git archive`` of github.com/ShihuaHuang95/DEIM; nothing of it is
copied into this repository, only the recorded numbers)::

    git --git-dir=/work/.mirror/ShihuaHuang95+DEIM/repo archive HEAD | tar -x -C /tmp/deim-ref
    python scripts/record_deim_fixture.py /tmp/deim-ref --out tests/fixtures/deim_eval_outputs

For every size it builds DEIM's model through DEIM's ``YAMLConfig`` from
``configs/deim_dfine/deim_hgnetv2_{size}_coco.yml`` (``HGNetv2.pretrained = False``, so no
ImageNet weights; ``torch.manual_seed(seed)`` before construction), replaces its weights by
:func:`random_state_dict` (seeded, from each key's name and shape only, so our model gets the
very same tensors without a stored checkpoint), runs it in eval mode on ``inputs.pt`` (two
images at 640x640) and writes ``<out>.safetensors``: ``{size}.pred_logits [2, 300, 80]``,
``{size}.pred_boxes [2, 300, 4]`` and ``{size}.enc_topk_indices [2, 300]`` (the encoder
positions the queries come from, recorded by wrapping the decoder's top-k selection), with
the DEIM commit, the seeds and a checksum of each size's weights in its metadata.

DEIM's own random init is no use for parity: the last layers of the box heads and of every LQE
start at zero, which hides exactly the activations that tell DEIM from D-FINE.
:func:`random_state_dict` draws every parameter and BatchNorm statistic instead.

Each size is recorded in a fresh process: DEIM's YAML machinery keeps a global configuration
that a second model built in the same process inherits settings from.

DEIM's ``engine`` package imports ``calflops`` (a FLOP counter used by its profiler only); when
it is not installed, a stand-in module is put in ``sys.modules`` (DEIM's files are not edited).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import types
from collections.abc import Mapping
from pathlib import Path

import torch

SEEDS = {"n": 0, "s": 1, "m": 2, "l": 3, "x": 4}
KEPT = ("decoder.anchors", "decoder.valid_mask", "num_points_scale", "num_batches_tracked")
"""Entries kept as built: anchors, masks and fixed buffers (``up``/``reg_scale`` too)."""


def _kept(key: str) -> bool:
    return key.endswith(KEPT) or key.rsplit(".", 1)[-1] in ("up", "reg_scale")


def random_state_dict(sd: Mapping[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Seeded random values for every parameter and BatchNorm statistic of the state dict
    ``sd``, drawn in sorted key order from each tensor's name and shape only (so two
    implementations with the official layout get identical tensors): matrices and kernels
    uniform in ``±sqrt(3 / fan_in)``, 1-D weights (norm scales) ``1 + 0.1·N(0,1)``, biases and
    running means ``0.1·N(0,1)``, running variances uniform in [0.5, 1.5]. Anchors, masks,
    ``up``/``reg_scale`` and counters are kept."""
    gen = torch.Generator().manual_seed(seed)
    out = dict(sd)
    for key in sorted(sd):
        value = sd[key]
        if not value.is_floating_point() or _kept(key):
            continue
        shape = value.shape
        if key.endswith("running_var"):
            new = 0.5 + torch.rand(shape, generator=gen)
        elif key.endswith(("running_mean", "bias")):
            new = 0.1 * torch.randn(shape, generator=gen)
        elif value.ndim <= 1:
            new = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        else:
            bound = math.sqrt(3.0 / (value.numel() // shape[0]))
            new = (2.0 * torch.rand(shape, generator=gen) - 1.0) * bound
        out[key] = new.to(value.dtype)
    return out


def checksum(sd: Mapping[str, torch.Tensor]) -> float:
    """Sum of |value| over the drawn entries: a fixture records it, so a change in torch's
    random streams shows as itself, not as a parity failure."""
    return float(
        sum(v.double().abs().sum() for k, v in sd.items() if v.is_floating_point() and not _kept(k))
    )


def _import_deim(ref: Path):
    sys.path.insert(0, str(ref))
    try:
        import calflops  # noqa: F401
    except ImportError:
        stand_in = types.ModuleType("calflops")
        stand_in.calculate_flops = None
        sys.modules["calflops"] = stand_in
    from engine.core import YAMLConfig

    return YAMLConfig


def _record_size(yaml_config, ref: Path, size: str, images: torch.Tensor) -> dict:
    seed = SEEDS[size]
    cfg = yaml_config(
        str(ref / f"configs/deim_dfine/deim_hgnetv2_{size}_coco.yml"),
        HGNetv2={"pretrained": False},
    )
    torch.manual_seed(seed)
    model = cfg.model
    sd = random_state_dict(model.state_dict(), seed)
    model.load_state_dict(sd)
    model.eval()
    decoder = model.decoder
    picked = {}
    select = decoder._select_topk

    def record_topk(memory, logits, anchors, topk):  # observe DEIM's query selection
        picked["indices"] = logits.max(-1).values.topk(topk, dim=-1).indices
        return select(memory, logits, anchors, topk)

    decoder._select_topk = record_topk
    with torch.no_grad():
        out = model(images)
    settings = cfg.yaml_cfg["DFINETransformer"]
    return {
        "tensors": {
            f"{size}.pred_logits": out["pred_logits"].contiguous(),
            f"{size}.pred_boxes": out["pred_boxes"].contiguous(),
            f"{size}.enc_topk_indices": picked["indices"].contiguous(),
        },
        "meta": {
            "seed": seed,
            "checksum": checksum(sd),
            "activation": settings["activation"],
            "mlp_act": settings["mlp_act"],
            "freeze_norm": cfg.yaml_cfg["HGNetv2"]["freeze_norm"],
        },
    }


def _record_one(args: argparse.Namespace) -> int:
    """Child process: record ``args.one`` into the safetensors file ``args.to``."""
    from safetensors.torch import save_file

    yaml_config = _import_deim(args.reference.resolve())
    images = torch.load(args.inputs, weights_only=True)["images"]
    rec = _record_size(yaml_config, args.reference.resolve(), args.one, images)
    save_file(rec["tensors"], str(args.to), metadata={"meta": json.dumps(rec["meta"])})
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reference", type=Path, help="a git archive of DEIM")
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures/deim_eval_outputs"))
    parser.add_argument("--inputs", type=Path, default=Path("tests/fixtures/inputs.pt"))
    parser.add_argument("--sizes", default="nsmlx")
    parser.add_argument("--commit", default=None, help="the DEIM commit (recorded as is)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # child process: one size
    parser.add_argument("--to", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    if args.one:
        return _record_one(args)
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    tensors, meta = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            part = Path(tmp) / f"{size}.safetensors"
            common = ["--inputs", str(args.inputs), "--one", size, "--to", str(part)]
            subprocess.run([sys.executable, __file__, str(args.reference), *common], check=True)
            tensors.update(load_file(str(part)))
            with safe_open(str(part), framework="pt") as f:
                meta[size] = json.loads(f.metadata()["meta"])
            print(size, json.dumps(meta[size]))
    header = {
        "deim_commit": args.commit or "unknown",
        "torch": torch.__version__,
        "sizes": json.dumps(meta),
    }
    save_file(tensors, str(args.out.with_suffix(".safetensors")), metadata=header)
    print(f"wrote {args.out.with_suffix('.safetensors')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
