"""The D-FINE criterion: parity with the reference's recorded loss terms, and unit behaviour."""

from __future__ import annotations

import functools
import json
import math

import pytest
import torch

import dfine
from dfine.loss import HungarianMatcher, build_criterion
from dfine.loss.criterion import (
    ddf_kl,
    ddf_loss,
    denoising_indices,
    fgl_loss,
    union_matches,
)
from dfine.nn.fdr import bbox2distance, distance2bbox, weighting_function
from tests.conftest import load_tensors, reference_file


@functools.cache  # one train-mode forward and backward per model (the tests only read it)
def _train_losses(name):
    fx = json.loads(reference_file(f"dfine_{name}_train_losses.json").read_text())
    model = dfine.load_model(reference_file(f"dfine_{name}_random_official.pth"))
    model.decoder.num_denoising = 0
    model.train()
    targets = [
        {"labels": torch.tensor(t["labels"]), "boxes": torch.tensor(t["boxes"])}
        for t in fx["targets"]
    ]
    images = load_tensors("inputs.pt")["images"]
    criterion = build_criterion(model)
    losses = criterion(model(images, targets), targets, epoch=0, step=0, global_step=0)
    total = sum(losses.values())
    total.backward()
    grads = [p.grad.double() for p in model.parameters() if p.grad is not None]
    grad_norm = math.sqrt(sum(float((g**2).sum()) for g in grads))
    return fx, losses, total, grad_norm, len(grads)


@pytest.mark.parametrize("name", ["n", "n_perturbed"])
def test_loss_terms_match_reference(name):
    fx, losses, total, grad_norm, n_grads = _train_losses(name)
    assert set(losses) == set(fx["losses"])
    for key, expected in fx["losses"].items():
        got = losses[key].item()
        assert abs(got - expected) <= 1e-4 * abs(expected) + 1e-9, (key, got, expected)
    assert abs(total.item() - fx["total_loss"]) <= 1e-3 * fx["total_loss"]
    assert abs(grad_norm - fx["grad_l2_norm_all_params"]) <= 1e-3 * fx["grad_l2_norm_all_params"]
    assert n_grads == fx["num_params_with_grad"]


def test_official_init_degenerate_terms():
    # with the zero-initialised box heads the distributions are uniform in every layer
    _, losses, *_ = _train_losses("n")
    assert losses["loss_ddf_aux_0"].item() == 0.0 and losses["loss_ddf_aux_1"].item() == 0.0
    assert losses["loss_bbox"].item() == pytest.approx(losses["loss_bbox_aux_0"].item(), rel=1e-6)


def test_matcher_finds_the_obvious_assignment():
    matcher = HungarianMatcher()
    boxes = torch.tensor([[[0.2, 0.2, 0.1, 0.1], [0.7, 0.7, 0.2, 0.2], [0.5, 0.5, 0.3, 0.3]]])
    logits = torch.full((1, 3, 4), -5.0)
    logits[0, 0, 1] = logits[0, 1, 3] = 5.0
    targets = [
        {
            "labels": torch.tensor([3, 1]),
            "boxes": torch.tensor([[0.7, 0.7, 0.2, 0.2], [0.2, 0.2, 0.1, 0.1]]),
        }
    ]
    ((rows, cols),) = matcher({"pred_logits": logits, "pred_boxes": boxes}, targets)
    assert dict(zip(rows.tolist(), cols.tolist())) == {0: 1, 1: 0}
    empty = [{"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}]
    ((rows, cols),) = matcher({"pred_logits": logits, "pred_boxes": boxes}, empty)
    assert len(rows) == len(cols) == 0


def test_union_matches_majority_vote():
    t = torch.tensor
    final = [(t([0, 1]), t([0, 1]))]
    layer_a = [(t([0, 2]), t([0, 1]))]
    layer_b = [(t([0, 1]), t([1, 1]))]
    ((rows, cols),) = union_matches(final, [layer_a, layer_b])
    pairs = dict(zip(rows.tolist(), cols.tolist()))
    assert pairs == {0: 0, 1: 1, 2: 1}  # query 0: target 0 twice vs target 1 once


def test_fgl_loss_minimum_at_the_interpolated_target():
    """FGL is a cross-entropy against the two-bin target (0.7 on bin 10, 0.3 on bin 11): its
    gradient vanishes there and any other split of the mass costs more."""
    bins = torch.tensor([10.3])
    w_right, w_left = torch.tensor([0.3]), torch.tensor([0.7])

    def loss_at(p_left: float) -> tuple[torch.Tensor, torch.Tensor]:
        prob = torch.full((1, 33), 1e-12)
        prob[0, 10], prob[0, 11] = p_left, 1 - p_left
        logits = prob.log().requires_grad_(True)
        loss = fgl_loss(logits, bins, w_right, w_left, None, 1.0)
        loss.backward()
        return loss.detach(), logits.grad

    best, grad = loss_at(0.7)
    assert grad.abs().max() < 1e-6
    for p in (0.5, 0.6, 0.8, 0.95):
        assert loss_at(p)[0] > best


def test_bbox2distance_inverts_distance2bbox():
    torch.manual_seed(0)
    ref = torch.tensor([[0.5, 0.5, 0.4, 0.3]]).repeat(5, 1)
    w = weighting_function(32, 0.5, 4)
    offsets = (torch.rand(5, 4) - 0.5) * 3.0  # inside W's range
    boxes = distance2bbox(ref, offsets, 4)
    from dfine.box_ops import box_cxcywh_to_xyxy

    bins, w_right, w_left = bbox2distance(ref, box_cxcywh_to_xyxy(boxes), 32, 4, 0.5)
    left = bins.long()
    value = w[left] * w_left + w[left + 1] * w_right
    torch.testing.assert_close(value, offsets.reshape(-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(w_left + w_right, torch.ones(20))


def test_ddf_is_zero_for_identical_distributions_and_balanced():
    student = torch.randn(8, 33)
    assert ddf_kl(student, student.clone()).abs().max() < 1e-6
    kl = torch.tensor([1.0, 1.0, 3.0, 3.0])
    mask = torch.tensor([True, True, False, False])
    loss = ddf_loss(kl, torch.ones(4), mask, torch.tensor(1.0), torch.tensor(3.0), temperature=1.0)
    assert loss.item() == pytest.approx((1 * 1 + 3 * 3) / 4)


def test_denoising_losses_present_and_finite():
    torch.manual_seed(0)
    model = dfine.build_model("n", num_classes=4).train()
    targets = [
        {
            "labels": torch.tensor([1, 2]),
            "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.4]]),
        },
        {"labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.5, 0.5]])},
    ]
    out = model(torch.rand(2, 3, 256, 256), targets)
    criterion = build_criterion(model)
    losses = criterion(out, targets)
    for suffix in ("_dn_0", "_dn_1", "_dn_2", "_dn_pre"):
        assert "loss_vfl" + suffix in losses and "loss_giou" + suffix in losses
    assert "loss_ddf_dn_0" in losses and losses["loss_ddf_dn_2"].item() == 0.0
    assert all(torch.isfinite(v) for v in losses.values()) and not criterion.last_nonfinite
    sum(losses.values()).backward()
    idx = denoising_indices(out["dn_meta"], targets)
    assert len(idx[0][0]) == 2 * out["dn_meta"]["dn_num_group"]


def test_criterion_needs_train_outputs(model_n, inputs):
    with torch.inference_mode():
        out = model_n(inputs["images"][:1])
    with pytest.raises(ValueError, match="train-mode"):
        build_criterion(model_n)(out, [])
