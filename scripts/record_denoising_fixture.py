"""Record the reference D-FINE criterion on training outputs that include denoising queries.

Usage (the reference is a checkout or `git archive` of github.com/Peterande/D-FINE; nothing of
it is copied into this repository, only the recorded numbers)::

    python scripts/record_denoising_fixture.py /tmp/dfine-ref \
        --out tests/fixtures/dfine_denoising_losses

It writes ``<out>.safetensors`` (every tensor fed to the criterion, the targets and the
reference's contrastive denoising group) and ``<out>.json`` (settings, every loss term, the
gradient norms); ``tests/test_denoising_parity.py`` feeds the same tensors to our criterion.

What is recorded:

1. **Targets**: a seeded batch of 3 images with 5, 2 and 0 objects (the empty image exercises
   the reference's no-object branches), labels 0..79, cxcywh boxes in [0, 1].
2. **The denoising group**: the reference's ``get_contrastive_denoising_training_group`` with
   the N recipe (``num_denoising`` 100, ``label_noise_ratio`` 0.5, ``box_noise_scale`` 1.0),
   called right after ``torch.manual_seed(DN_SEED)`` with a seeded class embedding. The noised
   boxes, the query labels (recovered exactly from the embedding output), the attention mask
   and ``dn_meta`` are stored, so our generator can be run under the same seed and compared.
3. **Decoder-like outputs** built around those denoising queries the way the reference
   ``DFINETransformer`` (``dfine_decoder.py``) lays them out in training: the denoising queries
   first, ``init_ref = [dn_boxes_unact | encoder top-k]``; ``pre_boxes`` =
   ``sigmoid(init_ref + noise)``; accumulated corner logits per layer; boxes from
   ``distance2bbox(pre_boxes, Integral(corners, W), reg_scale)`` with the reference's W(n);
   logits per layer; then ``torch.split(..., dn_meta["dn_num_split"])`` into the ``dn_*`` and
   matching parts. The stored tensors are the split ones, as independent leaves, so both
   criteria see identical inputs and their gradients can be compared.
4. **The reference criterion**: ``DFINECriterion`` and ``HungarianMatcher`` built with the
   loss weights, losses, alpha/gamma and matcher costs read from the reference's
   ``configs/dfine/include/dfine_hgnetv2.yml`` (the N recipe does not override them), called on
   the output dictionary in the decoder's layout (``aux_outputs`` with teacher corners/logits,
   ``pre_outputs``, ``enc_aux_outputs``/``enc_meta``, ``dn_outputs`` with the denoising last
   layer as teacher, ``dn_pre_outputs``, ``dn_meta``, ``up``, ``reg_scale``). Every term
   (already weighted), the total, and the L2 norm of the total's gradient for every input are
   recorded; a second run checks that the reference is deterministic on these inputs.

The number of matching queries is 24 instead of 300 to keep the file small: the criterion
does not depend on it beyond the matching.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file

REFERENCE_COMMIT = "4a1f73a8bcfac736a88abde9596d87f116d780a7"
SEED = 0  # targets and decoder-like outputs (an explicit generator)
DN_SEED = 1234  # torch.manual_seed right before the denoising group is generated
NUM_CLASSES = 80
HIDDEN = 128  # D-FINE-N hidden_dim
NUM_QUERIES = 24
NUM_LAYERS = 3  # D-FINE-N decoder layers
REG_MAX = 32
COUNTS = (5, 2, 0)


def load_reference(root: Path):
    """The reference modules the recording needs (the criterion, matcher, denoising, W(n))."""
    if not (root / "src" / "zoo" / "dfine" / "dfine_criterion.py").is_file():
        raise SystemExit(f"{root} is not a D-FINE checkout: no src/zoo/dfine/dfine_criterion.py")
    sys.path.insert(0, str(root))
    from src.zoo.dfine import denoising, dfine_criterion, dfine_decoder, dfine_utils, matcher, utils

    return dfine_criterion, matcher, denoising, dfine_utils, dfine_decoder, utils


def recipe(root: Path) -> dict:
    cfg = yaml.safe_load((root / "configs/dfine/include/dfine_hgnetv2.yml").read_text())
    n_cfg = yaml.safe_load((root / "configs/dfine/dfine_hgnetv2_n_coco.yml").read_text())
    assert "DFINECriterion" not in n_cfg, "the N recipe overrides the criterion: read it"
    dec = {**cfg["DFINETransformer"], **n_cfg["DFINETransformer"]}
    return {
        "criterion": cfg["DFINECriterion"],
        "use_focal_loss": cfg["use_focal_loss"],
        "num_denoising": dec["num_denoising"],
        "label_noise_ratio": dec["label_noise_ratio"],
        "box_noise_scale": dec["box_noise_scale"],
        "reg_scale": dec["reg_scale"],
        "num_layers": dec["num_layers"],
        "hidden_dim": dec["hidden_dim"],
    }


def make_targets(g: torch.Generator) -> list[dict[str, torch.Tensor]]:
    targets = []
    for n in COUNTS:
        centre = torch.rand(n, 2, generator=g) * 0.6 + 0.2
        size = torch.rand(n, 2, generator=g) * 0.35 + 0.05
        labels = torch.randint(0, NUM_CLASSES, (n,), generator=g)
        targets.append({"labels": labels, "boxes": torch.cat([centre, size], 1)})
    return targets


def make_outputs(ref, rcp, targets, dn_unact, dn_meta, g) -> dict[str, torch.Tensor]:
    """Split decoder-like tensors (see the module docstring), float32, detached."""
    _, _, _, fdr, decoder, utils = ref
    b, q, layers, c = len(targets), NUM_QUERIES, NUM_LAYERS, NUM_CLASSES
    num_dn = dn_meta["dn_num_split"][0]
    # encoder top-k boxes: a few near each image's objects, the rest anywhere
    enc = torch.rand(b, q, 4, generator=g) * torch.tensor([0.8, 0.8, 0.4, 0.4])
    enc += torch.tensor([0.1, 0.1, 0.03, 0.03])
    for i, t in enumerate(targets):
        n = len(t["boxes"])
        if n:
            near = t["boxes"].repeat(2, 1)
            enc[i, : 2 * n] = near * (1 + 0.15 * torch.randn(near.shape, generator=g))
    enc = enc.clamp(0.02, 0.98)
    enc_unact = utils.inverse_sigmoid(enc)
    init_unact = torch.cat([dn_unact, enc_unact], 1)  # [B, D+Q, 4], denoising first
    total = num_dn + q
    pre_boxes = torch.sigmoid(init_unact + 0.1 * torch.randn(b, total, 4, generator=g))
    pre_logits = torch.randn(b, total, c, generator=g) - 2.0
    up = torch.tensor([0.5])
    reg_scale = torch.tensor([rcp["reg_scale"]])  # int64, as the reference's parameter
    project = fdr.weighting_function(REG_MAX, up, reg_scale)
    integral = decoder.Integral(REG_MAX)
    steps = 0.6 * torch.randn(layers, b, total, 4 * (REG_MAX + 1), generator=g)
    corners = steps.cumsum(0)  # accumulated, as pred_corners of layer l
    boxes = torch.stack(
        [
            fdr.distance2bbox(pre_boxes, integral(corners[i], project), reg_scale)
            for i in range(layers)
        ]
    )
    logits = torch.randn(layers, b, total, c, generator=g) - 2.0
    refs = pre_boxes  # every layer's reference is the detached pre boxes

    split = dn_meta["dn_num_split"]
    result = {}
    for name, t, dim in [
        ("logits", logits, 2),
        ("boxes", boxes, 2),
        ("corners", corners, 2),
        ("refs", refs, 1),
        ("pre_logits", pre_logits, 1),
        ("pre_boxes", pre_boxes, 1),
    ]:
        dn_part, part = torch.split(t, split, dim=dim)
        result["dn_" + name], result[name] = dn_part, part
    result["enc_logits"] = torch.randn(b, q, c, generator=g) - 2.0
    result["enc_boxes"] = enc
    result["up"], result["reg_scale"] = up, reg_scale
    return {k: v.detach().contiguous().clone() for k, v in result.items()}


def assemble(t: dict[str, torch.Tensor], dn_meta: dict, layers: int = NUM_LAYERS) -> dict:
    """The reference decoder's training output dictionary from the split tensors (the
    fixture's layout; ``tests/test_denoising_parity.py`` feeds our criterion the same)."""
    last = layers - 1

    def layer(prefix: str, i: int) -> dict:
        return {
            "pred_logits": t[prefix + "logits"][i],
            "pred_boxes": t[prefix + "boxes"][i],
            "pred_corners": t[prefix + "corners"][i],
            "ref_points": t[prefix + "refs"],
            "teacher_corners": t[prefix + "corners"][last],
            "teacher_logits": t[prefix + "logits"][last],
        }

    return {
        "pred_logits": t["logits"][last],
        "pred_boxes": t["boxes"][last],
        "pred_corners": t["corners"][last],
        "ref_points": t["refs"],
        "up": t["up"],
        "reg_scale": t["reg_scale"],
        "aux_outputs": [layer("", i) for i in range(last)],
        "enc_aux_outputs": [{"pred_logits": t["enc_logits"], "pred_boxes": t["enc_boxes"]}],
        "pre_outputs": {"pred_logits": t["pre_logits"], "pred_boxes": t["pre_boxes"]},
        "enc_meta": {"class_agnostic": False},
        "dn_outputs": [layer("dn_", i) for i in range(layers)],
        "dn_pre_outputs": {"pred_logits": t["dn_pre_logits"], "pred_boxes": t["dn_pre_boxes"]},
        "dn_meta": dn_meta,
    }


GRAD_KEYS = (
    "logits",
    "boxes",
    "corners",
    "pre_logits",
    "pre_boxes",
    "enc_logits",
    "enc_boxes",
    "dn_logits",
    "dn_boxes",
    "dn_corners",
    "dn_pre_logits",
    "dn_pre_boxes",
)


def run_criterion(ref, rcp, tensors, targets, dn_meta):
    crit_mod, match_mod, *_ = ref
    c = rcp["criterion"]
    m = c["matcher"]
    assert m["type"] == "HungarianMatcher"
    matcher = match_mod.HungarianMatcher(
        weight_dict=m["weight_dict"],
        use_focal_loss=rcp["use_focal_loss"],
        alpha=m["alpha"],
        gamma=m["gamma"],
    )
    criterion = crit_mod.DFINECriterion(
        matcher,
        weight_dict=c["weight_dict"],
        losses=c["losses"],
        alpha=c["alpha"],
        gamma=c["gamma"],
        num_classes=NUM_CLASSES,
        reg_max=c["reg_max"],
    )
    leaves = {
        k: v.clone().requires_grad_(k in GRAD_KEYS) if v.is_floating_point() else v.clone()
        for k, v in tensors.items()
    }
    losses = criterion(
        assemble(leaves, dn_meta), targets, epoch=0, step=0, global_step=0, epoch_step=1
    )
    total = sum(losses.values())
    total.backward()
    grads = {k: float(leaves[k].grad.double().norm()) for k in GRAD_KEYS}
    return {k: float(v) for k, v in losses.items()}, float(total), grads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "reference", type=Path, help="the D-FINE checkout (the src/ folder's parent)"
    )
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures/dfine_denoising_losses"))
    parser.add_argument("--commit", default=REFERENCE_COMMIT, help="the reference's commit")
    args = parser.parse_args()
    torch.set_num_threads(2)
    ref = load_reference(args.reference)
    rcp = recipe(args.reference)
    assert rcp["num_layers"] == NUM_LAYERS and rcp["hidden_dim"] == HIDDEN, rcp

    g = torch.Generator().manual_seed(SEED)
    targets = make_targets(g)
    embed = torch.nn.Embedding(NUM_CLASSES + 1, HIDDEN, padding_idx=NUM_CLASSES)
    with torch.no_grad():
        embed.weight[:-1] = torch.randn(NUM_CLASSES, HIDDEN, generator=g)
    torch.manual_seed(DN_SEED)
    with torch.no_grad():
        content, dn_unact, attn_mask, dn_meta = ref[2].get_contrastive_denoising_training_group(
            targets,
            NUM_CLASSES,
            NUM_QUERIES,
            embed,
            num_denoising=rcp["num_denoising"],
            label_noise_ratio=rcp["label_noise_ratio"],
            box_noise_scale=rcp["box_noise_scale"],
        )
    # the query labels, recovered exactly from the embedding output
    dn_labels = torch.cdist(content.reshape(-1, HIDDEN), embed.weight.detach()).argmin(1)
    dn_labels = dn_labels.reshape(content.shape[:2])
    assert torch.equal(embed(dn_labels), content), "query labels not recoverable"

    tensors = make_outputs(ref, rcp, targets, dn_unact, dn_meta, g)
    losses, total, grads = run_criterion(ref, rcp, tensors, targets, dn_meta)
    rerun = run_criterion(ref, rcp, tensors, targets, dn_meta)
    assert rerun == (losses, total, grads), "the reference is not deterministic here"

    tensors.update(
        target_labels=torch.cat([t["labels"] for t in targets]),
        target_boxes=torch.cat([t["boxes"] for t in targets]),
        target_counts=torch.tensor(COUNTS),
        dn_class_embed=embed.weight.detach().clone(),
        dn_boxes_unact=dn_unact.contiguous(),
        dn_labels=dn_labels,
        dn_attn_mask=attn_mask.to(torch.uint8),
        dn_positive_idx=torch.cat(dn_meta["dn_positive_idx"]),
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(args.out.with_suffix(".safetensors")))
    record = {
        "source": "github.com/Peterande/D-FINE (Apache-2.0), only recorded numbers",
        "reference_commit": args.commit,
        "torch": torch.__version__,
        "script": "scripts/record_denoising_fixture.py",
        "seed": SEED,
        "dn_seed": DN_SEED,
        "num_classes": NUM_CLASSES,
        "num_queries": NUM_QUERIES,
        "num_layers": NUM_LAYERS,
        "recipe": rcp,
        "dn_meta": {
            "dn_num_group": dn_meta["dn_num_group"],
            "dn_num_split": dn_meta["dn_num_split"],
            "dn_positive_counts": [len(p) for p in dn_meta["dn_positive_idx"]],
        },
        "losses": losses,
        "total_loss": total,
        "grad_l2_norms": grads,
        "rerun_check": "two runs gave identical terms, total and gradient norms",
    }
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"{len(losses)} terms, total {total:.6f} -> {args.out}.{{safetensors,json}}")


if __name__ == "__main__":
    main()
