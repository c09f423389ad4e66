"""The paper's ablation switches (``ablation`` / ``dfine train --ablate``): the losses each
variant trains with, the RT-DETR-style head of ``fdr``, checkpoints that remember the variant,
and traces without distributions."""

from __future__ import annotations

import json
import re

import pytest
import torch

import dfine
from dfine.checkpoint import CheckpointError, infer_config, load_model, save_model
from dfine.config import get_config
from dfine.loss import build_criterion
from dfine.loss.criterion import box_losses, matched_targets, src_permutation
from dfine.nn.decoder import NoDistributionsError

VARIANTS = ("none", "golsd", "fdr")


def _targets() -> list[dict[str, torch.Tensor]]:
    return [
        {
            "labels": torch.tensor([0, 1]),
            "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.6, 0.6, 0.3, 0.4]]),
        },
        {"labels": torch.tensor([2]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.4]])},
    ]


def _families(losses: dict) -> set[str]:
    return {re.sub(r"_(aux_\d+|dn_\d+|dn_pre|pre|enc_\d+)$", "", k) for k in losses}


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("ablation", VARIANTS)
def test_each_variant_has_its_loss_terms_and_trains(ablation, images):
    torch.manual_seed(0)
    model = dfine.build_model("n", num_classes=3, ablation=ablation)
    criterion = build_criterion(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    before = {k: v.clone() for k, v in model.decoder.dec_bbox_head.state_dict().items()}
    for _ in range(2):
        losses = criterion(model(images, _targets()), _targets())
        assert criterion.last_nonfinite == []
        assert all(torch.isfinite(v) for v in losses.values())
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    expected = {
        "none": {"loss_vfl", "loss_bbox", "loss_giou", "loss_fgl", "loss_ddf"},
        "golsd": {"loss_vfl", "loss_bbox", "loss_giou", "loss_fgl"},
        "fdr": {"loss_vfl", "loss_bbox", "loss_giou"},
    }[ablation]
    assert _families(losses) == expected
    # every decoder layer is supervised, denoising included; fdr has no pre-head
    n = model.config.decoder.num_layers
    for i in range(n - 1):
        assert f"loss_giou_aux_{i}" in losses
    for i in range(n):
        assert f"loss_bbox_dn_{i}" in losses
    assert ("loss_bbox_pre" in losses) == (ablation != "fdr")
    after = model.decoder.dec_bbox_head.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the box head learns


def test_without_golsd_each_layer_uses_its_own_matching(images):
    torch.manual_seed(0)
    model = dfine.build_model("n", num_classes=3, ablation="golsd")
    criterion = build_criterion(model)
    assert not criterion.golsd and build_criterion(dfine.build_model("n", 3)).golsd
    out = model(images, _targets())
    losses = criterion(out, _targets())
    aux = out["aux_outputs"][0]
    own = criterion.matcher(aux, _targets())
    idx = src_permutation(own)
    l1, giou = box_losses(aux["pred_boxes"][idx], matched_targets(_targets(), own, "boxes"), 3.0)
    torch.testing.assert_close(losses["loss_bbox_aux_0"], l1 * 5.0)
    torch.testing.assert_close(losses["loss_giou_aux_0"], giou * 2.0)


def test_fdr_head_refines_in_inverse_sigmoid_space(images):
    model = dfine.build_model("n", num_classes=3, ablation="fdr").eval()
    dec = model.decoder
    assert dec.dec_bbox_head[0].layers[-1].out_features == 4
    assert not hasattr(dec, "pre_bbox_head") and not hasattr(dec.decoder, "lqe_layers")
    # zero-initialised heads: every layer keeps the encoder's box
    trace = model.trace(images)
    for layer in range(trace.num_layers):
        torch.testing.assert_close(trace.boxes[layer], trace.init_boxes, atol=1e-5, rtol=0)
    # a delta of +0.5 on layer 1's cx logit moves layers 1.. by exactly that in logit space
    with torch.no_grad():
        dec.dec_bbox_head[1].layers[-1].bias[0] = 0.5
    trace = model.trace(images)
    logit = torch.logit(trace.init_boxes[..., 0])
    torch.testing.assert_close(
        torch.logit(trace.boxes[1, ..., 0]), logit + 0.5, atol=1e-4, rtol=1e-4
    )
    torch.testing.assert_close(trace.boxes[2], trace.boxes[1], atol=1e-6, rtol=0)
    out = model(images)
    torch.testing.assert_close(out["pred_boxes"], trace.boxes[-1])
    torch.testing.assert_close(out["pred_logits"], trace.logits[-1])


def test_fdr_trace_has_no_distributions_and_says_so(images):
    model = dfine.build_model("n", num_classes=3, ablation="fdr")
    trace = model.trace(images)
    assert not trace.has_distributions and trace.ablation == "fdr"
    assert trace.corners is None and trace.project is None and trace.pre_boxes is None
    torch.testing.assert_close(trace.logits, trace.logits_raw)
    assert trace.select(1).boxes.shape == (trace.num_layers, 1, 300, 4)
    with pytest.raises(NoDistributionsError, match="--ablate fdr"):
        _ = trace.probs
    with pytest.raises(NoDistributionsError):
        model.decoder.project()
    full = dfine.build_model("n", num_classes=3).trace(images)
    assert full.has_distributions and full.ablation == "none"


@pytest.mark.parametrize("ablation", VARIANTS)
def test_checkpoints_round_trip_the_variant(ablation, images, tmp_path):
    model = dfine.build_model("n", num_classes=3, ablation=ablation).eval()
    path = save_model(model, tmp_path / "m.safetensors")
    loaded = load_model(path)
    assert loaded.ablation == ablation and loaded.metadata["ablation"] == ablation
    with torch.inference_mode():
        a, b = model(images), loaded(images)
    torch.testing.assert_close(a["pred_boxes"], b["pred_boxes"])
    # a reference-layout .pth has no metadata: fdr is recognised from the head's shape
    pth = save_model(model, tmp_path / "m.pth")
    assert load_model(pth).ablation == ("fdr" if ablation == "fdr" else "none")


def test_inconsistent_or_unknown_ablation_metadata_is_refused(tmp_path):
    fdr = dfine.build_model("n", num_classes=3, ablation="fdr")
    path = save_model(fdr, tmp_path / "liar.safetensors", metadata={"ablation": "golsd"})
    with pytest.raises(CheckpointError, match="ablation 'golsd' but its box head has 4 box"):
        load_model(path)
    full = dfine.build_model("n", num_classes=3)
    path = save_model(full, tmp_path / "odd.safetensors", metadata={"ablation": "nofdr"})
    with pytest.raises(CheckpointError, match="ablation must be one of none, golsd, fdr"):
        load_model(path)
    assert infer_config(fdr.state_dict()).ablation == "fdr"
    with pytest.raises(ValueError, match="unknown ablation"):
        get_config("n", 3, "gosld")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from dfine.data import make_synthetic_dataset

    root = tmp_path_factory.mktemp("synth_ablation")
    make_synthetic_dataset(root, num_train=2, num_val=1, image_size=(256, 256), seed=0,
                           photo_fraction=0.0)  # fmt: skip
    return root


@pytest.mark.parametrize("ablation", ["fdr", "golsd"])
def test_dfine_train_ablate_records_the_variant(ablation, tiny, tmp_path, capsys):
    from dfine.cli import main as dfine_main

    out = tmp_path / ablation
    args = [
        "train", "--recipe", "synth", "--data", str(tiny), "--out", str(out),
        "--epochs", "1", "--batch-size", "2", "--input-size", "256", "--workers", "0",
        "--no-val", "--quiet", "--no-tensorboard", "--ablate", ablation,
    ]  # fmt: skip
    assert dfine_main(args) == 0
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    terms = " ".join(record)
    assert "loss_ddf" not in terms and ("loss_fgl" in terms) == (ablation == "golsd")
    assert "loss_giou" in terms
    model = load_model(out / "final.safetensors")
    assert model.ablation == ablation
    last = torch.load(out / "last.pth", map_location="cpu", weights_only=True)
    assert last["model_config"]["ablation"] == ablation
    capsys.readouterr()
    assert dfine_main(["inspect", str(out / "final.safetensors")]) == 0
    assert re.search(rf"^ablation:\s+{ablation} \(", capsys.readouterr().out, re.M)
    # resuming under another variant is refused before any weights are touched
    with pytest.raises(ValueError, match="ablation"):
        from dfine.train.run import TrainRun, train

        train(
            TrainRun(
                data=tiny, out=out, epochs=2, batch_size=2, input_size=256, workers=0,
                no_val=True, progress=False, tensorboard=False, resume="auto",
                ablation="none" if ablation == "fdr" else "fdr",
            )
        )  # fmt: skip


def test_layer_stats_of_a_model_without_distributions(images):
    from analysis.layer_stats import layer_stats, markdown

    target = {"labels": torch.tensor([0, 1]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2],
                                                                     [0.6, 0.6, 0.3, 0.4]])}  # fmt: skip
    model = dfine.build_model("n", num_classes=3, ablation="fdr").eval()
    stats = layer_stats(model, [(images[0], target)])
    assert stats["stages"] == ["layer 1", "layer 2", "layer 3"] and stats["objects"] == 2
    assert stats["mean_edge_entropy_nats"] == [None] * 3 and stats["max_entropy_nats"] is None
    assert all(0.0 <= v <= 1.0 for v in stats["mean_iou_to_gt"])
    assert "no distributions" in markdown(stats)


def test_layer_stats_batches_skip_empty_images_and_split_on_size():
    from analysis.layer_stats import _batches

    def item(size: int, objects: int) -> tuple[torch.Tensor, dict]:
        return torch.zeros(3, size, size), {"labels": torch.zeros(objects, dtype=torch.long)}

    dataset = [item(256, 1), item(256, 0), item(256, 2), item(256, 1), item(288, 1), item(256, 3)]
    groups = [[(img.shape[-1], len(t["labels"])) for img, t in zip(*b)] for b in
              _batches(dataset, len(dataset), 2)]  # fmt: skip
    assert groups == [[(256, 1), (256, 2)], [(256, 1)], [(288, 1)], [(256, 3)]]
    assert [len(b[0]) for b in _batches(dataset, 3, 8)] == [2]  # only the first n items
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        from analysis.layer_stats import layer_stats

        layer_stats(dfine.build_model("n", num_classes=3), dataset, batch_size=0)


def _load_script():
    from tests.app_util import load_script

    return load_script("scripts/ablation.py", "ablation_script")


def test_ablation_script_commands_differ_only_in_the_switch_and_report_spread(tmp_path):
    script = _load_script()
    args = script.build_parser().parse_args(["--out", str(tmp_path), "--seeds", "0", "1"])
    commands = {v: script.train_command(args, v, 0, tmp_path / "data") for v in script.VARIANTS}
    assert commands["fdr"][-1] == "fdr" and commands["none"][-1] == "none"
    strip = [[a for a in c if not a.endswith(("fdr_seed0", "golsd_seed0", "none_seed0"))][:-1]
             for c in commands.values()]  # fmt: skip
    assert strip[0] == strip[1] == strip[2]  # same data, recipe, schedule, seed, steps

    def record(ap: float, stages: list[str]) -> dict:
        return {
            "metrics": {"AP": ap, "AP50": ap + 0.2, "AP75": ap, "APs": ap / 2},
            "layers": {"stages": stages, "mean_iou_to_gt": [0.5 + 0.1 * i for i in range(len(stages))]},
            "train_seconds": 600.0, "steps": 350, "seconds_per_step": 1.71,
        }  # fmt: skip

    full = ["pre-head", "layer 1", "layer 2"]
    records = {("none", 0): record(0.30, full), ("none", 1): record(0.40, full),
               ("fdr", 0): record(0.20, full[1:]), ("fdr", 1): record(0.24, full[1:])}  # fmt: skip
    text = script.report(args, tmp_path / "data", records)
    assert "| 0.3500 ± 0.0500 | 0.5500 ± 0.0500 |" in text  # full model: AP and AP50 over 2 seeds
    assert "0.2200 ± 0.0200" in text
    assert "| fdr | — | 0.5000 ± 0.0000 | 0.6000 ± 0.0000 |" in text  # no pre-head stage
    assert "10.0 min (350 steps, 1.71 s/step)" in text
    assert "--ablate fdr" in text and "```bash" in text
    assert "these are its defaults" not in text  # --out and --seeds differ from the defaults
    defaults = script.build_parser().parse_args([])
    assert "python scripts/ablation.py   # the same" in script.report(defaults, tmp_path, records)
    assert "Per-stage AP" not in text  # only when every run has it
    for (v, _), r in records.items():
        stages = ["encoder", *(["pre-head"] if v == "none" else []), "layer 1", "layer 2"]
        r["stage_ap"] = [{"stage": n, "AP": 0.1 * i, "AP50": 0.0} for i, n in enumerate(stages)]
    text = script.report(args, tmp_path / "data", records)
    assert "| variant | encoder | pre-head | layer 1 | layer 2 |" in text
    assert "| fdr | 0.0000 ± 0.0000 | — | 0.1000 ± 0.0000 | 0.2000 ± 0.0000 |" in text
