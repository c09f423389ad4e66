"""Package a training run's best weights as the bundled demo model.

Reads ``RUN/best.safetensors`` (the best EMA weights the trainer exported), adds what the
model card needs to its metadata (dataset generator arguments and seed, the training command,
measured training time) and writes ``assets/dfine_n_synth.safetensors``. No pickles: the
weights and the metadata stay in safetensors.

    python scripts/package_demo_model.py --run runs/synth --data data/synth \\
        --command "dfine train --recipe synth ..." [--out assets/dfine_n_synth.safetensors] \\
        [--tuned-from assets/previous.safetensors]

A run that started from an earlier model (``--tune-from``) records that model's own
metadata under ``tuned_from`` (its data, command, time, metrics), and the total training
time of both.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
from pathlib import Path

import torch

import dfine
from dfine.checkpoint import read_checkpoint, save_model

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "assets" / "dfine_n_synth.safetensors"


def training_seconds(run: Path) -> dict[str, float]:
    """Sum of the per-epoch training time the trainer logged in ``metrics.csv``."""
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{run / 'metrics.csv'} holds no epochs")
    seconds = sum(float(r["train_seconds"]) for r in rows)
    steps = max(int(r["global_step"]) for r in rows)
    return {"epochs": len(rows), "steps": steps, "train_seconds": round(seconds, 1)}


def dataset_info(data: Path) -> dict:
    """The generator arguments stored in the synthetic dataset's annotation files."""
    info = {}
    for split in ("train", "val"):
        ann = json.loads((data / "annotations" / f"instances_{split}.json").read_text())
        info[split] = {"images": len(ann["images"]), "objects": len(ann["annotations"])}
        info["seed"] = ann["info"]["seed"]
        info["image_size"] = ann["info"]["image_size"]
    info["generator"] = (
        f"dfine data synth --out DATA --train {info['train']['images']} "
        f"--val {info['val']['images']} --seed {info['seed']}"
    )
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, type=Path, help="training output folder")
    parser.add_argument("--data", required=True, type=Path, help="the synthetic dataset used")
    parser.add_argument("--command", required=True, help="the training command, for the card")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--tuned-from",
        type=Path,
        help="the model the run started from (its --tune-from): its own training is recorded",
    )
    args = parser.parse_args()

    _, meta = read_checkpoint(args.run / "best.safetensors")
    model = dfine.load_model(args.run / "best.safetensors")
    extra = {
        "recipe": meta.get("recipe"),
        "epoch": meta.get("epoch"),
        "metrics": meta.get("metrics"),
        "dataset": dataset_info(args.data),
        "command": args.command,
        "training": {
            **training_seconds(args.run),
            "machine": f"{platform.machine()} CPU with {os.cpu_count()} cores",
            "torch": torch.__version__,
        },
    }
    if args.tuned_from is not None:
        _, before = read_checkpoint(args.tuned_from)
        keep = ("recipe", "epoch", "metrics", "dataset", "command", "training", "tuned_from")
        extra["tuned_from"] = {k: before[k] for k in keep if k in before}
        before_training = before.get("training", {})  # its own total when it was tuned too
        previous = before_training.get(
            "total_train_seconds", before_training.get("train_seconds", 0.0)
        )
        extra["training"]["total_train_seconds"] = round(
            extra["training"]["train_seconds"] + previous, 1
        )
    path = save_model(model, args.out, metadata=extra)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    print(json.dumps(extra, indent=2)[:2000])


if __name__ == "__main__":
    main()
