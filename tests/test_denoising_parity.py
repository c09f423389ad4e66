"""Denoising (CDN) parity with the reference: the criterion's ``_dn_*`` terms and the group
generator, on the inputs recorded by ``scripts/record_denoising_fixture.py`` from the reference
``DFINECriterion`` / ``get_contrastive_denoising_training_group`` (commit 4a1f73a).

The fixture holds every tensor the reference criterion was fed (the decoder's outputs already
split into their denoising and matching parts, as the reference decoder splits them), so ours
gets the identical tensors; only the loss terms and gradient norms are compared.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from dfine.loss import build_criterion
from dfine.loss.criterion import denoising_indices
from dfine.nn.denoising import contrastive_denoising_group
from tests.app_util import load_script
from tests.conftest import FIXTURES

NAME = "dfine_denoising_losses"
# the recorder's own layout of the fixture's tensors, so both criteria get one dictionary
RECORDER = load_script("scripts/record_denoising_fixture.py", "record_denoising_fixture")
GRAD_KEYS = RECORDER.GRAD_KEYS  # the inputs whose gradient norms the fixture holds


@pytest.fixture(scope="module")
def fixture():
    tensors = load_file(str(FIXTURES / f"{NAME}.safetensors"))
    record = json.loads((FIXTURES / f"{NAME}.json").read_text())
    return tensors, record


def _targets(t: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    counts = t["target_counts"].tolist()
    labels = torch.split(t["target_labels"], counts)
    boxes = torch.split(t["target_boxes"], counts)
    return [{"labels": lab, "boxes": box} for lab, box in zip(labels, boxes)]


def _dn_meta(t: dict[str, torch.Tensor], record: dict) -> dict:
    meta = record["dn_meta"]
    return {
        "dn_positive_idx": torch.split(t["dn_positive_idx"], meta["dn_positive_counts"]),
        "dn_num_group": meta["dn_num_group"],
        "dn_num_split": list(meta["dn_num_split"]),
    }


def _losses(fixture, edit=None, grads: bool = False):
    t, record = fixture
    leaves = {k: v.clone().requires_grad_(grads and k in GRAD_KEYS) for k, v in t.items()}
    if edit is not None:
        with torch.no_grad():
            edit(leaves)
    criterion = build_criterion(num_classes=record["num_classes"])
    outputs = RECORDER.assemble(leaves, _dn_meta(leaves, record), record["num_layers"])
    losses = criterion(outputs, _targets(leaves))
    if grads:
        sum(losses.values()).backward()
    return losses, leaves


@pytest.fixture(scope="module")
def computed(fixture):
    """Our terms and the inputs with their gradients (one criterion run shared by the tests)."""
    return _losses(fixture, grads=True)


def test_fixture_has_every_denoising_term(fixture):
    _, record = fixture
    terms = record["losses"]
    for suffix in ("_dn_0", "_dn_1", "_dn_2"):
        assert {k + suffix for k in ("loss_vfl", "loss_bbox", "loss_giou", "loss_fgl")} <= set(
            terms
        )
    assert {"loss_vfl_dn_pre", "loss_bbox_dn_pre", "loss_giou_dn_pre"} <= set(terms)
    assert record["dn_meta"]["dn_num_group"] == 20 and record["dn_meta"]["dn_num_split"] == [
        200,
        24,
    ]


def test_every_term_matches_the_reference(fixture, computed):
    _, record = fixture
    losses, _ = computed
    assert set(losses) == set(record["losses"])
    worst = 0.0
    for key, expected in record["losses"].items():
        diff = abs(losses[key].item() - expected)
        worst = max(worst, diff / max(1.0, abs(expected)))
        assert diff <= 1e-5 * max(1.0, abs(expected)), (key, losses[key].item(), expected)
    total = sum(v.item() for v in losses.values())
    assert total == pytest.approx(record["total_loss"], rel=1e-6)
    assert worst <= 1e-5


def test_gradients_match_the_reference(fixture, computed):
    _, record = fixture
    _, leaves = computed
    for key, expected in record["grad_l2_norms"].items():
        got = float(leaves[key].grad.double().norm())
        assert got == pytest.approx(expected, rel=1e-4, abs=1e-9), key


def test_moving_a_positive_denoising_box_changes_only_denoising_terms(fixture, computed):
    t, record = fixture
    base, _ = computed
    counts = record["dn_meta"]["dn_positive_counts"]
    query = int(t["dn_positive_idx"][counts[0] + counts[1] - 1])  # image 1's last positive copy
    assert query >= counts[1]  # (not one of the first queries: the test needs dn_meta)

    def move(leaves):
        leaves["dn_boxes"][0, 1, query, :2] += 0.05

    moved, _ = _losses(fixture, move)
    changed = {k for k in base if not torch.equal(base[k], moved[k])}
    assert {"loss_bbox_dn_0", "loss_giou_dn_0"} <= changed
    assert all(k.endswith("_dn_0") for k in changed), changed


def test_moving_a_negative_denoising_box_changes_no_term(fixture, computed):
    t, record = fixture
    base, _ = computed
    positives = set(t["dn_positive_idx"][: record["dn_meta"]["dn_positive_counts"][0]].tolist())
    query = next(i for i in range(record["dn_meta"]["dn_num_split"][0]) if i not in positives)

    def move(leaves):
        leaves["dn_boxes"][0, 0, query, :2] += 0.05

    moved, _ = _losses(fixture, move)
    assert all(torch.equal(base[k], moved[k]) for k in base)


def test_denoising_indices_follow_dn_meta(fixture):
    t, record = fixture
    meta = _dn_meta(t, record)
    indices = denoising_indices(meta, _targets(t))
    for (rows, cols), positive, n in zip(indices, meta["dn_positive_idx"], [5, 2, 0]):
        assert torch.equal(rows, positive)
        assert torch.equal(cols, torch.arange(n).tile(meta["dn_num_group"]))


def test_group_generator_matches_the_reference_under_the_same_seed(fixture):
    t, record = fixture
    targets = _targets(t)
    num_classes, hidden = t["dn_class_embed"].shape[0] - 1, t["dn_class_embed"].shape[1]
    embed = torch.nn.Embedding(num_classes + 1, hidden, padding_idx=num_classes)
    with torch.no_grad():
        embed.weight.copy_(t["dn_class_embed"])
    rcp = record["recipe"]
    torch.manual_seed(record["dn_seed"])
    with torch.no_grad():
        content, boxes_unact, attn_mask, meta = contrastive_denoising_group(
            targets,
            num_classes,
            record["num_queries"],
            embed,
            num_denoising=rcp["num_denoising"],
            label_noise_ratio=rcp["label_noise_ratio"],
            box_noise_scale=rcp["box_noise_scale"],
        )
    # identical random draws give identical queries: labels exactly, boxes to float32 noise
    assert torch.equal(content, embed(t["dn_labels"]))
    torch.testing.assert_close(boxes_unact, t["dn_boxes_unact"], atol=1e-6, rtol=0)
    assert torch.equal(attn_mask, t["dn_attn_mask"].bool())
    assert meta["dn_num_group"] == record["dn_meta"]["dn_num_group"]
    assert meta["dn_num_split"] == record["dn_meta"]["dn_num_split"]
    assert torch.equal(torch.cat(meta["dn_positive_idx"]), t["dn_positive_idx"])


def _layout(value):
    """Nested keys, list lengths and tensor shapes of an output dictionary."""
    if isinstance(value, dict):
        return {k: _layout(v) for k, v in value.items() if k != "dn_meta"}
    if isinstance(value, list | tuple):
        return [_layout(v) for v in value]
    if isinstance(value, torch.Tensor):
        return (tuple(value.shape), value.dtype)
    return value


def test_fixture_layout_is_our_decoders_training_output(fixture):
    # the fixture's dictionary is the one our model's train-mode forward produces
    t, record = fixture
    import dfine

    torch.manual_seed(0)
    model = dfine.build_model("n", num_classes=record["num_classes"]).train()
    model.decoder.num_queries = record["num_queries"]
    targets = _targets(t)
    with torch.no_grad():
        ours = model(torch.rand(len(targets), 3, 128, 128), targets)
    theirs = RECORDER.assemble(t, _dn_meta(t, record), record["num_layers"])
    assert _layout(ours) == _layout(theirs)
    assert set(ours["dn_meta"]) == set(theirs["dn_meta"])
    assert ours["dn_meta"]["dn_num_split"] == theirs["dn_meta"]["dn_num_split"]
