"""Per-part precision sensitivity by emulation in PyTorch: AP on a COCO val split with only
one part of the model rounded to bf16 (weights, inputs and outputs of its modules; f32
accumulation, as the CPU's bf16 kernels), everything else f32.

    python benchmarks/precision_emulate.py WEIGHTS DATA_DIR [--limit N] [--size 320]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import dfine
import dfine.nn.decoder as dec
from dfine.io import load_image
from dfine.postprocess import postprocess
from dfine.predict import to_input_tensor
from dfine.train.evaluate import coco_metrics, to_coco_detections

PART_MODULES = {
    "backbone": ["backbone"],
    "encoder": ["encoder"],
    "query_selection": ["decoder.enc_output", "decoder.enc_score_head", "decoder.enc_bbox_head"],
    "decoder_layers": ["decoder.decoder.layers", "decoder.input_proj"],
    "query_pos": ["decoder.query_pos_head"],
    "distribution_heads": ["decoder.dec_bbox_head", "decoder.pre_bbox_head"],
    "score_lqe": ["decoder.dec_score_head", "decoder.decoder.lqe_layers"],
}


def bf16(x):
    return x.to(torch.bfloat16).float() if torch.is_tensor(x) and x.is_floating_point() else x


def round_module(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(bf16(p))
    for leaf in module.modules():
        if next(leaf.children(), None) is None:
            leaf.register_forward_pre_hook(lambda m, a: tuple(bf16(t) for t in a))
            leaf.register_forward_hook(
                lambda m, a, out: (
                    tuple(bf16(t) for t in out) if isinstance(out, tuple) else bf16(out)
                )
            )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("weights")
    ap.add_argument("data")
    ap.add_argument("--limit", type=int, default=300)
    ap.add_argument("--size", type=int, default=320)
    args = ap.parse_args()
    gt = json.loads(Path(args.data, "annotations/instances_val.json").read_text())
    imgs = gt["images"][: args.limit]
    cats = {i: c for i, c in enumerate(sorted(c["id"] for c in gt["categories"]))}
    rgbs = [load_image(Path(args.data, "val", im["file_name"])) for im in imgs]
    x = torch.cat([to_input_tensor(r, (args.size, args.size)) for r in rgbs])
    sizes = torch.tensor([[r.shape[1], r.shape[0]] for r in rgbs])
    ids = [im["id"] for im in imgs]
    integral, distance2bbox = dec.integral, dec.distance2bbox
    variants = ["f32", *PART_MODULES, "fdr_math", "all"]
    print("| part in bf16 (rest f32) | AP | AP50 | AP75 | ΔAP (points) |")
    print("|---|---|---|---|---|")
    base = None
    for variant in variants:
        model = dfine.load_model(args.weights).eval()
        modules = dict(model.named_modules())
        names = (
            [m for ms in PART_MODULES.values() for m in ms]
            if variant == "all"
            else PART_MODULES.get(variant, [])
        )
        for name in names:
            round_module(modules[name])
        if variant in ("fdr_math", "all"):
            dec.integral = lambda c, p: bf16(integral(bf16(c), bf16(p)))
            dec.distance2bbox = lambda a, d, s: bf16(distance2bbox(bf16(a), bf16(d), s))
        dets = []
        with torch.inference_mode():
            for i in range(0, len(x), 16):
                out = model(x[i : i + 16])
                res = postprocess(out, sizes[i : i + 16])
                dets += to_coco_detections(res, ids[i : i + 16], cats)
        dec.integral, dec.distance2bbox = integral, distance2bbox
        m = coco_metrics(gt, dets, image_ids=ids)
        base = base or m["AP"]
        print(
            f"| {variant} | {m['AP']:.4f} | {m['AP50']:.4f} | {m['AP75']:.4f} | "
            f"{100 * (m['AP'] - base):+.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
