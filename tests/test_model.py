"""Model behaviour beyond parity: any input size, trace, deploy, train-mode outputs."""

from __future__ import annotations

import copy

import pytest
import torch

import dfine
from dfine.parity import compare_outputs


@pytest.fixture(scope="module")
def small_images(inputs):
    return inputs["images"][:1]


@pytest.mark.parametrize("hw", [(320, 320), (480, 480), (800, 800), (480, 640), (640, 352)])
def test_any_input_size(model_n_perturbed, inputs, hw):
    x = torch.nn.functional.interpolate(inputs["images"][:1], size=hw, mode="bilinear")
    with torch.inference_mode():
        out = model_n_perturbed(x)
        trace = model_n_perturbed.trace(x)
    h, w = hw
    s = (h // 16) * (w // 16) + (h // 32) * (w // 32)
    assert trace.spatial_shapes == [(h // 16, w // 16), (h // 32, w // 32)]
    assert out["pred_boxes"].shape == (1, 300, 4) and out["pred_logits"].shape == (1, 300, 80)
    assert torch.isfinite(out["pred_logits"]).all() and torch.isfinite(out["pred_boxes"]).all()
    assert int(trace.enc_topk_indices.max()) < s
    # anchors for this size, computed and cached; the stored 640 buffer is untouched
    anchors, valid = model_n_perturbed.decoder.anchors_for(
        trace.spatial_shapes, torch.device("cpu")
    )
    assert anchors.shape == (1, s, 4) and valid.shape == (1, s, 1)
    assert model_n_perturbed.decoder.anchors.shape == (1, 2000, 4)


def test_anchors_for_640_equal_the_stored_reference_buffer(model_n):
    anchors, valid = model_n.decoder.anchors_for([(40, 40), (20, 20)], torch.device("cpu"))
    assert torch.equal(anchors, model_n.decoder.anchors)
    assert torch.equal(valid, model_n.decoder.valid_mask)


def test_anchor_geometry():
    model = dfine.build_model("n")
    anchors, valid = model.decoder.generate_anchors([(2, 4)])
    boxes = torch.sigmoid(anchors[0])
    # centers on the grid, size 0.05 at level 0; x varies fastest (row-major)
    torch.testing.assert_close(boxes[:4, 0], torch.tensor([0.125, 0.375, 0.625, 0.875]))
    torch.testing.assert_close(boxes[:, 1], torch.tensor([0.25] * 4 + [0.75] * 4))
    torch.testing.assert_close(boxes[:, 2:], torch.full((8, 2), 0.05))
    assert valid.all()


def test_bad_input_shapes_are_clear_errors(model_n):
    with pytest.raises(ValueError, match="multiples of 32"):
        model_n(torch.rand(1, 3, 100, 100))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        model_n(torch.rand(3, 64, 64))


def test_trace_contents(model_n_perturbed, small_images):
    trace = model_n_perturbed.trace(small_images)
    L, B, Q = 3, 1, 300
    assert trace.boxes.shape == (L, B, Q, 4)
    assert trace.logits.shape == trace.logits_raw.shape == (L, B, Q, 80)
    assert trace.corners.shape == (L, B, Q, 4, 33)
    assert trace.probs.shape == (L, B, Q, 4, 33)
    torch.testing.assert_close(trace.probs.sum(-1), torch.ones(L, B, Q, 4))
    assert trace.project.shape == (33,) and trace.reg_max == 32 and trace.reg_scale == 4.0
    # every layer's box is distance2bbox(pre_boxes, expected offsets)
    from dfine.nn.fdr import distance2bbox

    rebuilt = distance2bbox(trace.pre_boxes, trace.edge_offsets, trace.reg_scale)
    torch.testing.assert_close(rebuilt, trace.boxes, rtol=0, atol=1e-6)
    one = trace.select(0)
    assert one.boxes.shape == (L, 1, Q, 4) and one.init_boxes.shape == (1, Q, 4)
    assert model_n_perturbed.training is False


def test_trace_restores_training_mode(small_images):
    model = dfine.build_model("n")
    model.train()
    trace = model.trace(small_images)
    assert model.training and trace.boxes.shape[0] == 3


def test_deploy_matches_eval(model_n_perturbed, inputs):
    deployed = copy.deepcopy(model_n_perturbed).deploy()
    x = inputs["images"]
    with torch.inference_mode():
        a = model_n_perturbed(x)
        b = deployed(x)
    ta, tb = model_n_perturbed.trace(x), deployed.trace(x)
    report = compare_outputs(
        a["pred_logits"],
        a["pred_boxes"],
        b["pred_logits"],
        b["pred_boxes"],
        ta.enc_topk_indices,
        tb.enc_topk_indices,
    )
    assert report.ok(logit_tol=1e-3, box_tol=1e-4, max_swaps=3), report.summary()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in deployed.modules())
    with pytest.raises(RuntimeError, match="deployed"):
        deployed.train()


def test_train_mode_outputs_layout():
    torch.manual_seed(0)
    model = dfine.build_model("n", num_classes=5)
    x = torch.rand(2, 3, 256, 256)
    targets = [
        {
            "labels": torch.tensor([1, 3]),
            "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.3], [0.3, 0.3, 0.1, 0.1]]),
        },
        {"labels": torch.tensor([0]), "boxes": torch.tensor([[0.6, 0.4, 0.3, 0.3]])},
    ]
    out = model(x, targets)
    q = 300
    assert out["pred_logits"].shape == (2, q, 5) and out["pred_corners"].shape == (2, q, 132)
    assert len(out["aux_outputs"]) == 2 and len(out["enc_aux_outputs"]) == 1
    assert torch.equal(out["aux_outputs"][0]["teacher_corners"], out["pred_corners"])
    meta = out["dn_meta"]
    num_dn = meta["dn_num_split"][0]
    assert meta["dn_num_group"] == 50 and num_dn == 2 * 2 * 50
    assert len(out["dn_outputs"]) == 3 and out["dn_outputs"][0]["pred_boxes"].shape == (
        2,
        num_dn,
        4,
    )
    assert out["pre_outputs"]["pred_boxes"].shape == (2, q, 4)
    enc = out["enc_aux_outputs"][0]
    loss = out["pred_logits"].sum() + out["pred_boxes"].sum() + enc["pred_logits"].sum()
    loss = loss + enc["pred_boxes"].sum()
    loss.backward()
    assert model.decoder.enc_score_head.weight.grad is not None
    assert model.decoder.enc_bbox_head.layers[0].weight.grad is not None
    assert model.backbone.stem.stem1.conv.weight.grad is not None


def test_train_mode_needs_targets_for_denoising():
    model = dfine.build_model("n")
    with pytest.raises(ValueError, match="targets"):
        model(torch.rand(1, 3, 64, 64))


def test_too_small_input_is_a_clear_error(model_n):
    with pytest.raises(ValueError, match="too small"):
        model_n(torch.rand(1, 3, 128, 128))


def test_denoising_attention_mask_blocks_other_groups():
    from dfine.nn.denoising import contrastive_denoising_group

    torch.manual_seed(0)
    embed = torch.nn.Embedding(6, 8, padding_idx=5)
    targets = [{"labels": torch.tensor([1, 2]), "boxes": torch.rand(2, 4) * 0.5 + 0.25}]
    content, boxes, mask, meta = contrastive_denoising_group(targets, 5, 10, embed, num_denoising=8)
    g = meta["dn_num_group"]
    num_dn = meta["dn_num_split"][0]
    assert g == 4 and num_dn == 16 and mask.shape == (26, 26)
    assert mask[num_dn:, :num_dn].all() and not mask[:, num_dn:].any()
    for i in range(num_dn):
        for j in range(num_dn):
            assert bool(mask[i, j]) == (i // 4 != j // 4)
    assert content.shape == (1, 16, 8) and boxes.shape == (1, 16, 4)


@pytest.mark.parametrize("deployed", [False, True])
def test_autograd_after_an_inference_mode_call(deployed):
    """Eval-mode caches (anchors, W(n)) made under ``torch.inference_mode`` hold inference
    tensors; a later eval forward with autograd (saliency, attacks) must not reuse them."""
    model = dfine.build_model("n").eval()
    if deployed:
        model.deploy()
    x = torch.rand(1, 3, 320, 320, requires_grad=True)
    with torch.inference_mode():
        first = model(x.detach())
    out = model(x)
    out["pred_logits"].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert torch.equal(out["pred_logits"].detach(), first["pred_logits"])
