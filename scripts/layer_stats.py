"""Per decoder layer: mean per-edge entropy and mean IoU with the ground truth, on a COCO set.

For every ground-truth box of every validation image, the query that the final layer's
Hungarian matching (the criterion's matcher) assigns to it is followed through the decoder:
its box at the pre-head and at every layer is compared with the ground truth (IoU), and the
entropy of its four edge distributions is averaged. Refinement shows as IoU rising and entropy
falling from the first layer to the last.

    python scripts/layer_stats.py --weights assets/dfine_n_synth.safetensors \\
        --data /path/to/synth --split val [--limit 300] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import box_iou

import dfine
from dfine.box_ops import box_cxcywh_to_xyxy
from dfine.data import CocoDetection, build_val_transforms
from dfine.loss.matcher import HungarianMatcher


def layer_stats(model, dataset, limit: int | None = None) -> dict:
    matcher = HungarianMatcher()
    ious, entropies = [], []
    n = len(dataset) if limit is None else min(limit, len(dataset))
    for i in range(n):
        image, target = dataset[i]
        if len(target["labels"]) == 0:
            continue
        trace = model.trace(image.unsqueeze(0))
        final = {"pred_logits": trace.logits[-1], "pred_boxes": trace.boxes[-1]}
        ((queries, gts),) = matcher(final, [target])
        gt_xyxy = box_cxcywh_to_xyxy(target["boxes"][gts])
        stages = [trace.pre_boxes[0]] + [trace.boxes[layer, 0] for layer in range(trace.num_layers)]
        ious.append(
            [box_iou(box_cxcywh_to_xyxy(s[queries]), gt_xyxy).diag().numpy() for s in stages]
        )
        p = trace.probs[:, 0, queries]  # [L, M, 4, R+1]
        ent = -(p * p.clamp_min(1e-12).log()).sum(-1).mean(-1)  # [L, M]
        entropies.append(ent.numpy())
    iou = np.concatenate(ious, axis=1)  # [stages, objects]
    ent = np.concatenate(entropies, axis=1)  # [L, objects]
    names = ["pre-head"] + [f"layer {k + 1}" for k in range(ent.shape[0])]
    return {
        "objects": int(iou.shape[1]),
        "images": n,
        "stages": names,
        "mean_iou_to_gt": [float(v) for v in iou.mean(1)],
        "mean_edge_entropy_nats": [None] + [float(v) for v in ent.mean(1)],
        "max_entropy_nats": float(np.log(trace.project.shape[0])),
    }


def markdown(stats: dict) -> str:
    lines = [
        f"{stats['objects']} ground-truth objects in {stats['images']} images "
        f"(uniform distribution: {stats['max_entropy_nats']:.3f} nats)",
        "",
        "| stage | mean IoU with ground truth | mean per-edge entropy (nats) |",
        "|---|---|---|",
    ]
    for name, iou, ent in zip(
        stats["stages"], stats["mean_iou_to_gt"], stats["mean_edge_entropy_nats"]
    ):
        lines.append(f"| {name} | {iou:.4f} | {'—' if ent is None else f'{ent:.4f}'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True)
    parser.add_argument(
        "--data", required=True, type=Path, help="dataset folder (dfine data synth layout)"
    )
    parser.add_argument("--split", default="val")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    model = dfine.load_model(args.weights)
    size = model.config.eval_size
    dataset = CocoDetection(
        args.data / args.split,
        args.data / "annotations" / f"instances_{args.split}.json",
        transforms=build_val_transforms(size[0]),
    )
    with torch.inference_mode():
        stats = layer_stats(model, dataset, args.limit)
    print(markdown(stats))
    if args.json:
        args.json.write_text(json.dumps(stats, indent=2))


if __name__ == "__main__":
    main()
