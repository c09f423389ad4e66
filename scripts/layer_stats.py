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
import sys
from pathlib import Path

# `analysis` ships in the checkout, not in the installed package: run from any folder
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dfine
from analysis.layer_stats import layer_stats, markdown
from dfine.data import CocoDetection, build_val_transforms


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
    stats = layer_stats(model, dataset, args.limit)
    print(markdown(stats))
    if args.json:
        args.json.write_text(json.dumps(stats, indent=2))


if __name__ == "__main__":
    main()
