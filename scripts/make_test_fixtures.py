"""Copy the reference fixtures the test suite needs from ../shared/reference into tests/fixtures.

The layer-output files are trimmed to the tensors the tests compare (the backbone feature maps
and decoder hidden states are dropped to keep the repository small). Run from the repo root:

    python scripts/make_test_fixtures.py [--reference ../shared/reference]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

COPY = [
    "inputs.pt",
    "dfine_n_random_official.pth",
    "dfine_n_perturbed_random_official.pth",
    "dfine_n_eval_outputs.pt",
    "dfine_n_perturbed_eval_outputs.pt",
    "dfine_n_train_losses.json",
    "dfine_n_perturbed_train_losses.json",
    "official_keys_n.json",
    "official_keys_s.json",
    "official_keys_m.json",
    "official_keys_l.json",
    "official_keys_x.json",
    "manifest.json",
]
LAYER_KEYS = [
    "enc_topk_indices",
    "init_ref_boxes",
    "pre_boxes",
    "pre_logits",
    "dec_corners",
    "dec_boxes",
    "dec_logits",
    "dec_logits_raw",
    "project",
    "project_deploy",
    "up",
    "reg_scale",
    "reg_max",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", default="../shared/reference", type=Path)
    parser.add_argument("--out", default="tests/fixtures", type=Path)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name in COPY:
        shutil.copyfile(args.reference / name, args.out / name)
    src = args.reference / "dfine_n_perturbed_layer_outputs.pt"
    layers = torch.load(src, map_location="cpu", weights_only=True)
    trimmed = {k: layers[k] for k in LAYER_KEYS}
    torch.save(trimmed, args.out / "dfine_n_perturbed_layer_outputs_trimmed.pt")
    total = sum(p.stat().st_size for p in args.out.iterdir() if p.is_file())
    print(f"wrote {len(COPY) + 1} files to {args.out} ({total / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
