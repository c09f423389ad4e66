"""Record the reference D-FINE decoder's attention: deformable sampling locations and weights,
and the self-attention between queries, for every decoder layer.

Usage (the reference is a `git archive` of github.com/Peterande/D-FINE at commit 4a1f73a;
nothing of it is copied into this repository, only the recorded numbers)::

    git --git-dir=<D-FINE mirror> archive 4a1f73a | tar -x -C /tmp/dfine-ref
    PYTHONPATH=<calflops, loguru, accelerate> python scripts/record_attention_fixture.py \\
        /tmp/dfine-ref --shared ../shared/reference --out tests/fixtures/dfine_attention

It writes ``<out>.safetensors`` and ``<out>.json``; ``tests/test_attention_parity.py`` compares
our ``model.trace`` with them.

How the numbers are taken: the model is built through the reference's own ``YAMLConfig`` from
``configs/dfine/dfine_hgnetv2_{n,s}_coco.yml`` (``HGNetv2.pretrained`` False, 80 classes,
``eval_spatial_size`` the recorded input size, so the reference's fixed anchor buffer matches
it), after ``torch.manual_seed`` (0 for N, 1 for S), each case in a fresh process (the
reference's config loader keeps state between loads). Its weights are then replaced by:

- ``n_perturbed``: the perturbed N checkpoint of ../shared/reference (also in tests/fixtures);
- ``s_attention``: the official random S checkpoint with every decoder layer's
  ``cross_attn.sampling_offsets.weight`` and ``cross_attn.attention_weights.weight`` given
  seeded noise (:func:`perturb_attention`), since the official init sets them to zero, which
  makes every query sample the same pattern with uniform weights.

The anchor / valid-mask buffers depend on the input size and stay the freshly built ones.
In eval mode under ``torch.no_grad``, each decoder layer's ``cross_attn.ms_deformable_attn_core``
is wrapped on its instance (the call passes through unchanged) to keep its
``sampling_locations [B, Q, heads, P, 2]`` and ``attention_weights [B, Q, heads, P]``
arguments; a forward hook on each layer's ``self_attn`` keeps the head-averaged weights it
returns ``[B, Q, Q]``; a forward hook on ``enc_score_head`` gives the encoder logits, whose
``topk(max over classes, 300)`` are the queries' encoder positions (the reference's own
selection, recomputed from its own logits).

Inputs: the 2 images of ``inputs.pt`` at 640x640, and their rows 80..559 (480x640, a crop, so
the test rebuilds it exactly). To keep the file small only the first ``KEEP`` queries of the
reference's order are stored per image, with their encoder positions (the pairing keys; see
../shared/reference/README.md on query order), and the self-attention among those queries.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

REFERENCE_COMMIT = "4a1f73a8bcfac736a88abde9596d87f116d780a7"
SEEDS = {"n": 0, "s": 1}
CASES = {"n_perturbed": "n", "s_attention": "s"}  # case -> model size
SIZES = {"640x640": (640, 640), "480x640": (480, 640)}
CROP_ROWS = (80, 560)  # the non-square input: inputs.pt images[..., 80:560, :]
KEEP = 64  # queries stored per image
ATTENTION_NOISE = (1000, 0.05)  # seed, std of the noise perturb_attention adds
FIELDS = ("sampling_locations", "attention_weights", "self_attention")


def input_images(images: torch.Tensor, size: str) -> torch.Tensor:
    """The recorded input of ``size`` from ``inputs.pt``'s 640x640 images (exact)."""
    if size == "640x640":
        return images
    return images[..., CROP_ROWS[0] : CROP_ROWS[1], :].contiguous()


def perturb_attention(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ``s_attention`` weights: seeded N(0, 0.05²) noise added to every decoder layer's
    cross-attention ``sampling_offsets.weight`` and ``attention_weights.weight`` (keys in sorted
    order; the state-dict keys are the same in the reference and in dfine)."""
    seed, std = ATTENTION_NOISE
    gen = torch.Generator().manual_seed(seed)
    out = dict(state)
    suffixes = ("cross_attn.sampling_offsets.weight", "cross_attn.attention_weights.weight")
    for key in sorted(k for k in state if k.endswith(suffixes)):
        noise = torch.randn(state[key].shape, generator=gen, dtype=torch.float32) * std
        out[key] = state[key] + noise
    return out


def checkpoint_state(path: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    return ckpt["ema"]["module"] if "ema" in ckpt else ckpt["model"]


def build_reference(root: Path, size: str, hw: tuple[int, int]) -> torch.nn.Module:
    sys.path.insert(0, str(root))
    from src.core import YAMLConfig

    cfg = YAMLConfig(
        str(root / f"configs/dfine/dfine_hgnetv2_{size}_coco.yml"),
        HGNetv2={"pretrained": False},
        num_classes=80,
        eval_spatial_size=list(hw),
    )
    torch.manual_seed(SEEDS[size])
    return cfg.model


def load_weights(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load ``state``, keeping the model's own size-dependent anchor buffers."""
    own = model.state_dict()
    sized = {"decoder.anchors", "decoder.valid_mask"}
    state = {k: (own[k] if k in sized else v) for k, v in state.items()}
    model.load_state_dict(state, strict=True)


def capture(model: torch.nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Run the reference in eval mode, observing its attention (see the module docstring)."""
    model.eval()
    seen: dict[str, list] = {name: [] for name in FIELDS}
    enc_logits = []
    for layer in model.decoder.decoder.layers:
        core = layer.cross_attn.ms_deformable_attn_core

        def observed(value, shapes, locations, weights, points, _core=core):
            seen["sampling_locations"].append(locations.clone())
            seen["attention_weights"].append(weights.clone())
            return _core(value, shapes, locations, weights, points)

        layer.cross_attn.ms_deformable_attn_core = observed
        layer.self_attn.register_forward_hook(
            lambda m, args, out: seen["self_attention"].append(out[1].clone())
        )
    model.decoder.enc_score_head.register_forward_hook(
        lambda m, args, out: enc_logits.append(out.clone())
    )
    with torch.no_grad():
        out = model(images)
    q = model.decoder.num_queries
    _, idx = torch.topk(enc_logits[0].max(-1).values, q, dim=-1)
    result = {name: torch.stack(v) for name, v in seen.items()}
    result.update(enc_topk_indices=idx, pred_boxes=out["pred_boxes"])
    return result


def keep_first(rec: dict[str, torch.Tensor], keep: int) -> dict[str, torch.Tensor]:
    """The first ``keep`` queries of every image (and self-attention among them)."""
    return {
        "enc_topk_indices": rec["enc_topk_indices"][:, :keep].contiguous(),
        "sampling_locations": rec["sampling_locations"][:, :, :keep].contiguous(),
        "attention_weights": rec["attention_weights"][:, :, :keep].contiguous(),
        "self_attention": rec["self_attention"][:, :, :keep, :keep].contiguous(),
    }


def run_case(root: Path, shared: Path, case: str, size_name: str, out: Path) -> None:
    """One (case, input size) in this process: build, load, record, save to ``out``."""
    size = CASES[case]
    hw = SIZES[size_name]
    model = build_reference(root, size, hw)
    official = checkpoint_state(shared / f"dfine_{size}_random_official.pth")
    fresh = model.state_dict()
    for k, v in official.items():  # the seed reproduces the official init
        if k not in ("decoder.anchors", "decoder.valid_mask"):
            assert torch.equal(fresh[k], v), f"{k} differs from the official random init"
    if case == "n_perturbed":
        state = checkpoint_state(shared / "dfine_n_perturbed_random_official.pth")
    else:
        state = perturb_attention(official)
    load_weights(model, state)
    images = input_images(
        torch.load(shared / "inputs.pt", map_location="cpu", weights_only=True)["images"],
        size_name,
    )
    rec = capture(model, images)
    if case == "n_perturbed" and size_name == "640x640":  # the recorded eval outputs agree
        ref = torch.load(
            shared / "dfine_n_perturbed_eval_outputs.pt", map_location="cpu", weights_only=True
        )
        assert torch.equal(rec["enc_topk_indices"], ref["enc_topk_indices"])
        assert torch.equal(rec["pred_boxes"], ref["pred_boxes"])
    torch.save(keep_first(rec, KEEP), out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reference", type=Path, help="the D-FINE source tree (git archive)")
    parser.add_argument("--shared", type=Path, default=Path("../shared/reference"))
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures/dfine_attention"))
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: one case per process
    parser.add_argument("--size", help=argparse.SUPPRESS)
    parser.add_argument("--to", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.case:
        run_case(args.reference.resolve(), args.shared.resolve(), args.case, args.size, args.to)
        return
    from safetensors.torch import save_file

    tensors, meta = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for case in CASES:
            for size_name in SIZES:
                part = Path(tmp) / f"{case}_{size_name}.pt"
                cmd = [sys.executable, __file__, str(args.reference), "--shared", str(args.shared)]
                cmd += ["--case", case, "--size", size_name, "--to", str(part)]
                subprocess.run(cmd, check=True)  # a fresh process per case (see docstring)
                rec = torch.load(part, weights_only=True)
                for name, v in rec.items():
                    tensors[f"{case}.{size_name}.{name}"] = (
                        v.float() if v.is_floating_point() else v
                    )
                meta[f"{case}.{size_name}"] = {k: list(v.shape) for k, v in rec.items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(args.out.with_suffix(".safetensors")))
    info = {
        "reference_commit": REFERENCE_COMMIT,
        "torch": torch.__version__,
        "seeds": SEEDS,
        "cases": CASES,
        "sizes": {k: list(v) for k, v in SIZES.items()},
        "crop_rows": list(CROP_ROWS),
        "keep_queries": KEEP,
        "attention_noise": {"seed": ATTENTION_NOISE[0], "std": ATTENTION_NOISE[1]},
        "shapes": meta,
    }
    args.out.with_suffix(".json").write_text(json.dumps(info, indent=1) + "\n")


if __name__ == "__main__":
    main()
