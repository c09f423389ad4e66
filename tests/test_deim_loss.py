"""DEIM's criterion (issue 23): MAL and every loss term against DEIM's own ``DEIMCriterion``.

``tests/fixtures/deim_losses.<cpu>.{safetensors,json}`` (``scripts/record_deim_loss_fixture.py``)
hold one train-mode forward of DEIM's DEIM-D-FINE-N (seeded random weights, denoising on) —
every output tensor the criterion reads, the targets, DEIM's weighted loss terms and the
gradient norm of their sum for each output tensor. Our criterion gets the same tensors; every
term is compared (1e-5, relative where large), and so are the gradients. Our model's own
train-mode forward under the same denoising seed is compared with DEIM's outputs too.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import dfine
from dfine.errors import InvalidArgumentError
from dfine.loss import build_criterion
from dfine.loss.criterion import DEIM_WEIGHTS, matchability_aware_loss, varifocal_loss
from tests.app_util import load_script
from tests.conftest import FIXTURES, cpu_fixture

NAME = "deim_losses"
RECORDER = load_script("scripts/record_deim_loss_fixture.py", "record_deim_loss_fixture")
EVAL_RECORDER = load_script("scripts/record_deim_fixture.py", "record_deim_fixture")
TOL = 1e-5


@pytest.fixture(scope="module")
def fixture() -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors.torch import load_file

    stem = cpu_fixture(RECORDER.for_this_cpu(FIXTURES / NAME))
    tensors = load_file(f"{stem}.safetensors")
    record = json.loads(Path(f"{stem}.json").read_text())
    return tensors, record


def _targets(t: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    count = len({k.split(".")[1] for k in t if k.startswith("targets.")})
    return [
        {"labels": t[f"targets.{i}.labels"], "boxes": t[f"targets.{i}.boxes"]} for i in range(count)
    ]


def _outputs(fixture, grads: bool):
    t, record = fixture
    outs = {k: v for k, v in t.items() if k.startswith("out.")}
    leaves = RECORDER.leaves(outs) if grads else outs
    return RECORDER.unflatten(record["layout"], leaves), leaves


@pytest.fixture(scope="module")
def computed(fixture):
    """Our DEIM criterion on the recorded outputs, with the outputs' gradients."""
    outputs, leaves = _outputs(fixture, grads=True)
    losses = build_criterion(num_classes=80, loss="deim")(outputs, _targets(fixture[0]))
    sum(losses.values()).backward()
    return losses, leaves


def _close(got: float, want: float) -> bool:
    return abs(got - want) <= TOL * max(1.0, abs(want))


def test_our_deim_settings_are_the_recorded_ones(fixture):
    _, record = fixture
    deim = record["criterion"]
    ours = build_criterion(num_classes=80, loss="deim")
    # DEIM's YAML merge keeps D-FINE's loss_vfl weight beside loss_mal; no vfl term is computed
    weights = {k: v for k, v in deim["weight_dict"].items() if k != "loss_vfl"}
    assert ours.weight_dict == weights == DEIM_WEIGHTS
    assert list(ours.losses) == deim["losses"] == ["mal", "boxes", "local"]
    assert ours.gamma == deim["gamma"] == 1.5
    assert ours.mal_alpha is deim["mal_alpha"] is None
    assert deim["use_uni_set"] and ours.golsd
    m = ours.matcher
    got = [m.cost_class, m.cost_bbox, m.cost_giou, m.alpha, m.gamma]
    want = deim["matcher"]
    assert got == [want[k] for k in ("cost_class", "cost_bbox", "cost_giou", "alpha", "gamma")]


def test_fixture_holds_every_output_set(fixture):
    _, record = fixture
    terms = record["losses"]
    for suffix in ("", "_aux_0", "_aux_1", "_pre", "_enc_0", "_dn_0", "_dn_2", "_dn_pre"):
        assert f"loss_mal{suffix}" in terms, suffix
    assert "loss_vfl" not in terms
    assert {"loss_ddf_aux_0", "loss_ddf_aux_1", "loss_ddf_dn_0", "loss_ddf_dn_1"} <= set(terms)


def test_every_term_matches_deim(fixture, computed):
    _, record = fixture
    losses, _ = computed
    assert set(losses) == set(record["losses"])  # DEIM has no loss_ddf for the teacher layer
    got = {k: v.item() for k, v in losses.items()}
    bad = {k: (got[k], v) for k, v in record["losses"].items() if not _close(got[k], v)}
    assert not bad
    assert _close(sum(got.values()), record["total"])


def test_gradients_match_deim(fixture, computed):
    _, record = fixture
    _, leaves = computed
    for key, want in record["grad_norms"].items():
        got = float(leaves[key].grad.norm())
        assert abs(got - want) <= 1e-4 * max(1.0, want), (key, got, want)


def test_dfine_criterion_on_the_same_outputs_differs(fixture):
    # the recorded terms are DEIM's, not D-FINE's: a D-FINE criterion has VFL and a zero DDF
    outputs, _ = _outputs(fixture, grads=False)
    losses = build_criterion(num_classes=80, loss="dfine")(outputs, _targets(fixture[0]))
    assert "loss_mal" not in losses and "loss_vfl" in losses
    assert float(losses["loss_ddf_dn_2"]) == 0.0


def test_family_chooses_the_criterion():
    model = dfine.build_model("n", family="deim")
    assert "mal" in build_criterion(model).losses
    assert "vfl" in build_criterion(dfine.build_model("n")).losses
    assert "vfl" in build_criterion(model, loss="dfine").losses
    with pytest.raises(InvalidArgumentError, match="unknown loss"):
        build_criterion(model, loss="yolo")


def _mal_by_hand(logits, classes, ious, gamma, alpha=None):
    """MAL written out element by element from the paper's definition."""
    p = logits.sigmoid()
    total = torch.zeros(())
    for b in range(logits.shape[0]):
        for q in range(logits.shape[1]):
            for c in range(logits.shape[2]):
                if classes[b, q] == c:
                    target, weight = ious[b, q] ** gamma, 1.0
                else:
                    target, weight = 0.0, p[b, q, c] ** gamma * (1 if alpha is None else alpha)
                x = logits[b, q, c]
                bce = -(target * F.logsigmoid(x) + (1 - target) * F.logsigmoid(-x))
                total = total + weight * bce
    return total


@pytest.mark.parametrize("alpha", [None, 0.5])
def test_mal_follows_its_definition(alpha):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 3, generator=gen)
    idx = (torch.tensor([0, 1, 1]), torch.tensor([2, 0, 4]))
    labels, ious = torch.tensor([1, 0, 2]), torch.tensor([0.9, 0.3, 0.6])
    classes = torch.full((2, 5), -1)
    classes[idx] = labels
    iou_map = torch.zeros(2, 5)
    iou_map[idx] = ious
    num_boxes = 3.0
    got = matchability_aware_loss(logits, labels, ious, idx, 3, 1.5, num_boxes, alpha)
    # reduction: mean over classes... as DEIM: loss.mean(1).sum() * Q / num_boxes = sum / num_boxes
    want = _mal_by_hand(logits, classes, iou_map, 1.5, alpha) / num_boxes
    assert float(got) == pytest.approx(float(want), rel=1e-5)
    # a positive's target is IoU^gamma, and low-quality matches get no extra weight (unlike VFL)
    vfl = varifocal_loss(logits, labels, ious, idx, 3, 0.75, 1.5, num_boxes)
    assert float(got) != pytest.approx(float(vfl), rel=1e-3)


def test_our_train_forward_is_deims(fixture):
    """Our DEIM-family N with the recorded weights, on the recorded batch and denoising seed,
    gives DEIM's train-mode outputs (so the step parity below starts from the same place)."""
    t, record = fixture
    model = dfine.build_model("n", family="deim")
    sd = EVAL_RECORDER.random_state_dict(model.state_dict(), record["seed"])
    assert EVAL_RECORDER.checksum(sd) == pytest.approx(record["checksum"], rel=1e-9)
    model.load_state_dict(sd)
    images, targets = RECORDER.batch(FIXTURES / "inputs.pt")
    model.train()
    torch.manual_seed(record["dn_seed"])
    with torch.no_grad():
        out = model(images, targets=targets)
    paths = dict(_tensor_paths(record["layout"], "out"))
    assert len(paths) > 40
    for path, key in paths.items():
        got, want = _at(out, path), t[key]
        assert got.shape == want.shape, path
        if want.is_floating_point():
            assert (got - want).abs().max() <= 1e-4, path
        else:
            assert torch.equal(got, want), path


def _tensor_paths(node: dict, path: str):
    """(path, stored key) of every tensor in a recorded layout, aliases included."""
    if "tensor" in node or "alias" in node:
        yield path, node.get("tensor", node.get("alias"))
    for k, v in node.get("dict", {}).items():
        yield from _tensor_paths(v, f"{path}.{k}")
    for i, v in enumerate(node.get("list", [])):
        yield from _tensor_paths(v, f"{path}.{i}")


def _at(value, path: str):
    for part in path.split(".")[1:]:
        value = value[int(part)] if isinstance(value, (list, tuple)) else value[part]
    return value
