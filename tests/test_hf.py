"""Hugging Face (transformers) layout: reading, conversion, export, and parity with transformers.

The parity tests build random ``DFineForObjectDetection`` models whose ``DFineConfig`` spells out
the D-FINE-N (and -S) architecture field by field, save them with ``save_pretrained``, load the
directory with ``dfine.load_model`` and compare both implementations on the fixture images.

transformers' own random init (std 0.01 normal for every Linear) makes attention nearly uniform:
a model with its q and k projections swapped then gives the same outputs to 1e-4. So every
weight is re-drawn with a fan-in scaled normal (norm/affine weights around 1, biases and BN
statistics perturbed), which makes attention, FDR distributions and LQE non-degenerate;
``test_parity_check_is_sensitive`` shows that a q/k swap is then caught.

Queries are paired by encoder position: transformers does not return its top-k indices, but it
returns ``enc_outputs_class``, and the same ``topk`` over it reproduces them.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

import dfine
from dfine.checkpoint import CheckpointError, read_checkpoint
from dfine.coco import COCO_CLASSES
from dfine.config import PRESETS, get_config
from dfine.hf import (
    config_differences,
    hf_config_to_model_config,
    hf_key_to_reference,
    is_hf_checkpoint,
    model_config_to_hf_config,
    read_hf_checkpoint,
    reference_key_to_hf,
    save_hf_checkpoint,
)
from dfine.parity import ParityReport, compare_outputs
from tests.conftest import load_tensors, reference_file

LOGIT_TOL, BOX_TOL = 1e-3, 1e-4
N_NAMES = {i: f"thing_{i}" for i in range(80)}


# ---------------------------------------------------------------------------- helpers
def hgnet_b0(out_indices: list[int]):
    """The HGNetV2-B0 backbone config (stem 16/16, stages 64-256-512-1024, with LAB)."""
    from transformers import HGNetV2Config

    return HGNetV2Config(
        stem_channels=[3, 16, 16],
        stage_in_channels=[16, 64, 256, 512],
        stage_mid_channels=[16, 32, 64, 128],
        stage_out_channels=[64, 256, 512, 1024],
        stage_num_blocks=[1, 1, 2, 1],
        stage_downsample=[False, True, True, True],
        stage_light_block=[False, False, True, True],
        stage_kernel_size=[3, 3, 5, 5],
        stage_numb_of_layers=[3, 3, 3, 3],
        hidden_sizes=[64, 256, 512, 1024],
        use_learnable_affine_block=True,
        out_indices=out_indices,
    )


def dfine_n_config(**overrides):
    """A DFineConfig with exactly the D-FINE-N architecture."""
    from transformers import DFineConfig

    fields = {
        "backbone_config": hgnet_b0([3, 4]),
        "encoder_in_channels": [512, 1024],
        "feat_strides": [16, 32],
        "encode_proj_layers": [1],
        "encoder_hidden_dim": 128,
        "encoder_ffn_dim": 512,
        "hidden_expansion": 0.34,
        "depth_mult": 0.5,
        "d_model": 128,
        "decoder_in_channels": [128, 128],
        "num_feature_levels": 2,
        "decoder_n_points": [6, 6],
        "decoder_layers": 3,
        "decoder_ffn_dim": 512,
        "num_labels": 80,
    }
    return DFineConfig(**{**fields, **overrides})


def dfine_s_config(**overrides):
    """A DFineConfig with exactly the D-FINE-S architecture (defaults: 256 wide, 3 levels)."""
    from transformers import DFineConfig

    fields = {
        "backbone_config": hgnet_b0([2, 3, 4]),
        "encoder_in_channels": [256, 512, 1024],
        "hidden_expansion": 0.5,
        "depth_mult": 0.34,
        "decoder_layers": 3,
        "decoder_n_points": [3, 6, 3],
        "num_labels": 80,
    }
    return DFineConfig(**{**fields, **overrides})


@torch.no_grad()
def randomize_(model: torch.nn.Module, seed: int) -> None:
    """Re-draw every weight so that no part of the network is degenerate (see module doc)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith(("decoder.up", "decoder.reg_scale")):
            continue
        if p.dim() >= 2:
            p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel()))
        elif name.endswith(("weight", "scale")):
            p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
        else:
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    for name, b in model.named_buffers():
        if name.endswith("running_mean"):
            b.copy_(0.1 * torch.randn(b.shape, generator=g))
        elif name.endswith("running_var"):
            b.copy_(0.5 + torch.rand(b.shape, generator=g))


def build_hf(config, folder: Path, seed: int = 1000):
    """A randomized eval-mode DFineForObjectDetection, saved to ``folder``."""
    from transformers import DFineForObjectDetection

    torch.manual_seed(0)
    model = DFineForObjectDetection(config).eval()
    randomize_(model, seed)
    model.save_pretrained(folder)
    return model


@torch.no_grad()
def run_hf(model, images: torch.Tensor, all_layers: bool = False):
    """transformers' outputs and its encoder top-k indices.

    ``all_layers``: like the reference fixtures, set the ``training`` flag on the decoder module
    alone (dropout is 0) so that it returns class logits and boxes for every layer:
    ``intermediate_logits [B, L+1, Q, C]`` (index 0: the pre-head without LQE),
    ``intermediate_reference_points`` likewise, ``intermediate_predicted_corners [B, L, Q, 4(R+1)]``.
    """
    model.eval()
    if all_layers:
        model.model.decoder.train()
    try:
        out = model(pixel_values=images)
    finally:
        model.eval()
    q = model.config.num_queries
    index = torch.topk(out.enc_outputs_class.max(-1).values, q, dim=1).indices
    return out, index


def check(report: ParityReport, what: str, logit_tol: float = LOGIT_TOL) -> None:
    print(f"{what}: {report.summary()}")
    assert report.ok(logit_tol, BOX_TOL), f"{what}: {report.summary()}"


def compare_all_layers(trace, out, index) -> None:
    """Every decoder layer of ``model.trace`` against transformers' intermediates."""
    ours_idx = trace.enc_topk_indices
    check(
        compare_outputs(
            trace.enc_topk_logits,
            trace.init_boxes,
            out.enc_topk_logits,
            out.enc_topk_bboxes,
            ours_idx,
            index,
        ),
        "encoder top-k",
    )
    logits, boxes = out.intermediate_logits, out.intermediate_reference_points
    check(
        compare_outputs(
            trace.pre_logits, trace.pre_boxes, logits[:, 0], boxes[:, 0], ours_idx, index
        ),
        "pre-head",
    )
    assert torch.equal(out.initial_reference_points[:, 0], boxes[:, 0])
    for layer in range(trace.num_layers):
        check(
            compare_outputs(
                trace.logits[layer],
                trace.boxes[layer],
                logits[:, layer + 1],
                boxes[:, layer + 1],
                ours_idx,
                index,
            ),
            f"layer {layer}",
        )
        corners = out.intermediate_predicted_corners[:, layer]
        check(
            compare_outputs(
                trace.corners[layer].flatten(-2),
                trace.boxes[layer],
                corners,
                boxes[:, layer + 1],
                ours_idx,
                index,
            ),
            f"layer {layer} corners",
        )


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def transformers():
    return pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def hf_n(transformers, tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf_n")
    model = build_hf(dfine_n_config(id2label=N_NAMES), folder)
    return model, folder


@pytest.fixture(scope="module")
def n_runs(hf_n, inputs):
    hf, folder = hf_n
    images = inputs["images"]
    ours = dfine.load_model(folder)
    with torch.no_grad():
        ours_out = ours(images)
    return {
        "ours": ours,
        "ours_out": ours_out,
        "trace": ours.trace(images),
        "hf_eval": run_hf(hf, images),
        "hf_layers": run_hf(hf, images, all_layers=True),
    }


@pytest.fixture
def hf_dir(hf_n, tmp_path):
    """A private copy of the saved N checkpoint, free to be damaged."""
    folder = tmp_path / "ckpt"
    shutil.copytree(hf_n[1], folder)
    return folder


# ---------------------------------------------------------------------------- parity
def test_n_final_outputs_match_transformers(n_runs):
    out, index = n_runs["hf_eval"]
    ours_out, trace = n_runs["ours_out"], n_runs["trace"]
    check(
        compare_outputs(
            ours_out["pred_logits"],
            ours_out["pred_boxes"],
            out.logits,
            out.pred_boxes,
            trace.enc_topk_indices,
            index,
        ),
        "N final (encoder index)",
    )
    check(
        compare_outputs(
            ours_out["pred_logits"], ours_out["pred_boxes"], out.logits, out.pred_boxes
        ),
        "N final (assignment)",
    )


def test_n_every_decoder_layer_matches_trace(n_runs):
    out, index = n_runs["hf_layers"]
    eval_out, _ = n_runs["hf_eval"]
    # the all-layers run is the eval run: its last layer is transformers' eval output
    assert torch.equal(out.intermediate_logits[:, -1], eval_out.logits)
    assert torch.equal(out.intermediate_reference_points[:, -1], eval_out.pred_boxes)
    trace = n_runs["trace"]
    assert out.intermediate_predicted_corners.shape[1] == trace.num_layers == 3
    compare_all_layers(trace, out, index)


def test_n_check_is_not_degenerate(n_runs):
    trace = n_runs["trace"]
    assert trace.corners.std() > 0.5  # FDR distributions far from uniform
    assert trace.probs.amax(-1).mean() > 0.1
    assert (trace.logits - trace.logits_raw).abs().mean() > 0.01  # LQE contributes
    assert (trace.boxes[-1] - trace.init_boxes).abs().mean() > 0.01  # boxes are refined
    scores = n_runs["hf_eval"][0].enc_outputs_class.max(-1).values.sort(-1).values
    assert (scores[:, -1] - scores[:, -300]).min() > 0.05  # top-k scores are spread out


def test_parity_check_is_sensitive(n_runs, hf_n, inputs):
    """Swapping q and k of one decoder self-attention must be caught."""
    ours = dfine.load_model(hf_n[1])
    weight = ours.decoder.decoder.layers[1].self_attn.in_proj_weight
    q, k, v = weight.detach().chunk(3)
    with torch.no_grad():
        weight.copy_(torch.cat([k, q, v]))
        bad = ours(inputs["images"])
    out, _ = n_runs["hf_eval"]
    report = compare_outputs(bad["pred_logits"], bad["pred_boxes"], out.logits, out.pred_boxes)
    assert not report.ok(LOGIT_TOL, BOX_TOL), report.summary()


def test_s_matches_transformers_every_layer(transformers, tmp_path, inputs):
    hf = build_hf(dfine_s_config(), tmp_path, seed=2000)
    ours = dfine.load_model(tmp_path)
    assert ours.config.size == "s"
    assert ours.class_names == COCO_CLASSES  # LABEL_i placeholders: the COCO default
    images = inputs["images"][:1]
    out, index = run_hf(hf, images, all_layers=True)
    trace = ours.trace(images)
    compare_all_layers(trace, out, index)


def test_non_square_inputs_differ_only_by_position_embedding(hf_n, monkeypatch):
    """transformers lays out the AIFI sin-cos embedding row-major over (H, W); the reference
    flattens meshgrid(arange(W), arange(H)). On non-square maps that is the only difference."""
    from transformers.models.d_fine.modeling_d_fine import build_2d_sinusoidal_position_embedding

    hf, folder = hf_n
    ours = dfine.load_model(folder)
    images = torch.rand(1, 3, 480, 640, generator=torch.Generator().manual_seed(5))
    out, index = run_hf(hf, images)

    def compare() -> ParityReport:
        with torch.no_grad():
            res = ours(images)
        trace = ours.trace(images)
        return compare_outputs(
            res["pred_logits"],
            res["pred_boxes"],
            out.logits,
            out.pred_boxes,
            trace.enc_topk_indices,
            index,
        )

    differs = compare()
    print("non-square, reference embedding:", differs.summary())
    assert not differs.ok(LOGIT_TOL, BOX_TOL)

    def hf_layout(w: int, h: int, device: torch.device) -> torch.Tensor:
        return build_2d_sinusoidal_position_embedding(h, w, 128, 10000.0)[None].to(device)

    monkeypatch.setattr(ours.encoder, "position_embedding", hf_layout)
    check(compare(), "non-square, transformers' embedding")


def test_export_runs_in_transformers_like_the_reference(
    transformers, model_n_perturbed, inputs, tmp_path
):
    """Our export of the reference's own N checkpoint, run by transformers, reproduces the
    outputs the reference implementation recorded (final and per layer)."""
    from transformers import DFineForObjectDetection

    save_hf_checkpoint(model_n_perturbed, tmp_path)
    hf, info = DFineForObjectDetection.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    images = inputs["images"]
    ref = load_tensors("dfine_n_perturbed_eval_outputs.pt")
    out, index = run_hf(hf, images)
    check(
        compare_outputs(
            out.logits,
            out.pred_boxes,
            ref["pred_logits"],
            ref["pred_boxes"],
            index,
            ref["enc_topk_indices"],
        ),
        "export: transformers vs reference",
    )
    layers = load_tensors("dfine_n_perturbed_layer_outputs_trimmed.pt")
    out, index = run_hf(hf, images, all_layers=True)
    for layer in range(3):
        check(
            compare_outputs(
                out.intermediate_logits[:, layer + 1],
                out.intermediate_reference_points[:, layer + 1],
                layers["dec_logits"][layer],
                layers["dec_boxes"][layer],
                index,
                layers["enc_topk_indices"],
            ),
            f"export layer {layer}",
        )
    # and back: the exported directory loads into exactly the original weights
    back = dfine.load_model(tmp_path)
    original = model_n_perturbed.state_dict()
    assert back.state_dict().keys() == original.keys()
    for key, value in back.state_dict().items():
        assert value.dtype == original[key].dtype, key
        assert torch.equal(value, original[key]), key


# ---------------------------------------------------------------------------- mapping, configs
@pytest.mark.parametrize("size", ["n", "s", "m", "l", "x"])
def test_every_official_key_has_a_transformers_name(size):
    keys = json.loads(reference_file(f"official_keys_{size}.json").read_text())["keys"]
    dropped = {"decoder.anchors", "decoder.valid_mask", "decoder.decoder.up"}
    dropped.add("decoder.decoder.reg_scale")
    seen = set()
    for key, _shape, _dtype in keys:
        if key in dropped or (key.startswith("backbone.") and "num_batches" in key):
            continue
        names = [key]
        if key.endswith(("in_proj_weight", "in_proj_bias")):
            kind = key.rsplit("_", 1)[1]
            names = [key.replace(f"in_proj_{kind}", f"{p}_proj.{kind}") for p in "qkv"]
        for name in names:
            hub = reference_key_to_hf(name)
            assert hub is not None and hub.startswith("model."), name
            assert hub not in seen, hub
            seen.add(hub)
            assert hf_key_to_reference(hub) == name


def test_in_memory_transformers_names_are_accepted():
    pairs = {
        "model.encoder.aifi.0.layers.0.mlp.layers.1.bias": "encoder.encoder.0.layers.0.linear2.bias",
        "model.encoder.aifi.0.layers.0.self_attn.o_proj.weight": (
            "encoder.encoder.0.layers.0.self_attn.out_proj.weight"
        ),
        "model.decoder.layers.2.mlp.layers.0.weight": "decoder.decoder.layers.2.linear1.weight",
        "model.encoder.fpn_blocks.1.csp_rep2.bottlenecks.0.conv1.norm.bias": (
            "encoder.fpn_blocks.1.cv3.0.bottlenecks.0.conv1.norm.bias"
        ),
        "model.backbone.model.encoder.stages.2.blocks.1.layers.0.conv2.normalization.weight": (
            "backbone.stages.2.blocks.1.layers.0.conv2.bn.weight"
        ),
    }
    for hf_key, ref_key in pairs.items():
        assert hf_key_to_reference(hf_key) == ref_key


@pytest.mark.parametrize("size", list(PRESETS))
def test_config_round_trip(size):
    cfg = get_config(size)
    back = hf_config_to_model_config(json.loads(json.dumps(model_config_to_hf_config(cfg))))
    assert back == cfg


@pytest.mark.parametrize("size", list(PRESETS))
def test_transformers_accepts_exported_configs(transformers, size):
    from transformers import DFineConfig

    cfg = get_config(size)
    config = DFineConfig.from_dict(model_config_to_hf_config(cfg))
    assert hf_config_to_model_config(config.to_dict()) == cfg


def test_explicit_transformers_configs_are_the_presets(transformers):
    assert hf_config_to_model_config(dfine_n_config().to_dict()) == get_config("n")
    assert hf_config_to_model_config(dfine_s_config().to_dict()) == get_config("s")


# ---------------------------------------------------------------------------- files, errors
def test_load_paths_and_metadata(hf_n, n_runs):
    folder = hf_n[1]
    assert n_runs["ours"].class_names == tuple(N_NAMES.values())
    for path in (folder, folder / "model.safetensors", folder / "config.json"):
        assert is_hf_checkpoint(path)
        sd, meta = read_checkpoint(path)
        assert meta["format"] == "transformers"
        assert meta["class_names"] == list(N_NAMES.values())
        assert meta["input_size"] == [640, 640]
        assert sd["decoder.reg_scale"].dtype == torch.int64
        assert sd["decoder.decoder.up"] is sd["decoder.up"]
    assert len(read_hf_checkpoint(folder)[0]) == 674  # the official N layout


def test_not_transformers_checkpoints(model_n_perturbed, tmp_path):
    project = dfine.save_model(model_n_perturbed, tmp_path / "model.safetensors")
    assert not is_hf_checkpoint(project)
    assert not is_hf_checkpoint(reference_file("dfine_n_perturbed_random_official.pth"))
    assert not is_hf_checkpoint(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    assert not is_hf_checkpoint(tmp_path / "empty")


def test_pytorch_model_bin_with_in_memory_names(hf_n, tmp_path):
    """A pytorch_model.bin holding transformers' in-memory state dict (aifi/mlp/o_proj names,
    tied top-level class_embed/bbox_embed copies) loads like the safetensors file."""
    hf, folder = hf_n
    shutil.copy(folder / "config.json", tmp_path / "config.json")
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    sd_bin, _ = read_checkpoint(tmp_path)
    sd_st, _ = read_checkpoint(folder)
    assert sd_bin.keys() == sd_st.keys()
    for key in sd_st:
        assert torch.equal(sd_bin[key], sd_st[key]), key


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickled_code_is_refused(hf_n, tmp_path):
    shutil.copy(hf_n[1] / "config.json", tmp_path / "config.json")
    marker = tmp_path / "code_ran"
    torch.save(
        {"model.backbone.x": torch.zeros(1), "evil": _Payload(marker)},
        tmp_path / "pytorch_model.bin",
    )
    with pytest.raises(CheckpointError, match="refusing to load"):
        dfine.load_model(tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["garbage", "truncated", "not_object"])
def test_broken_config_json(hf_dir, damage):
    path = hf_dir / "config.json"
    text = path.read_text()
    new = {
        "garbage": "\x00\x01 not json {",
        "truncated": text[: len(text) // 2],
        "not_object": "[1, 2]",
    }[damage]
    path.write_text(new)
    with pytest.raises(CheckpointError, match=r"config\.json"):
        dfine.load_model(hf_dir)


def test_missing_files(hf_dir):
    (hf_dir / "model.safetensors").rename(hf_dir / "weights.moved")
    with pytest.raises(CheckpointError, match="has no weights"):
        dfine.load_model(hf_dir)
    (hf_dir / "weights.moved").rename(hf_dir / "model.safetensors")
    (hf_dir / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        dfine.load_model(hf_dir / "model.safetensors")


def test_truncated_weights(hf_dir):
    data = (hf_dir / "model.safetensors").read_bytes()
    (hf_dir / "model.safetensors").write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        dfine.load_model(hf_dir)


def _edit_config(folder: Path, **changes) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"decoder_method": "discrete"}, "decoder_method"),
        ({"learn_initial_query": True}, "learn_initial_query"),
        ({"eval_idx": 1}, "eval_idx"),
        ({"layer_norm_eps": 1e-6}, "layer_norm_eps"),
        ({"model_type": "rt_detr"}, "model_type"),
        ({"reg_scale": 4.5}, "reg_scale"),
        ({"num_queries": 100}, "decoder.num_queries"),
        ({"decoder_n_points": [4, 4, 4]}, "decoder_n_points"),
        ({"encoder_in_channels": [256, 512]}, "encoder_in_channels"),
    ],
)
def test_unsupported_configs_name_the_field(hf_dir, changes, named):
    _edit_config(hf_dir, **changes)
    with pytest.raises(CheckpointError, match=named):
        dfine.load_model(hf_dir)


def test_class_names_must_be_contiguous(hf_dir):
    _edit_config(hf_dir, id2label={str(i): f"c{i}" for i in range(1, 81)})
    with pytest.raises(CheckpointError, match="id2label"):
        dfine.load_model(hf_dir)


def test_training_only_differences_are_tolerated():
    cfg = get_config("n")
    hf = model_config_to_hf_config(cfg) | {"dropout": 0.1, "num_denoising": 50}
    assert config_differences(hf_config_to_model_config(hf), cfg) == []


def test_input_size_sources(hf_dir):
    _edit_config(hf_dir, anchor_image_size=[480, 640])
    assert read_hf_checkpoint(hf_dir)[1]["input_size"] == [480, 640]
    (hf_dir / "preprocessor_config.json").write_text(
        json.dumps({"do_normalize": False, "size": {"height": 512, "width": 512}})
    )
    sd, meta = read_hf_checkpoint(hf_dir)
    assert meta["input_size"] == [512, 512]
    assert sd["decoder.anchors"].shape == (1, 32 * 32 + 16 * 16, 4)
    assert dfine.load_model(hf_dir).config.eval_size == (512, 512)
    _edit_config(hf_dir, eval_size=[640, 640])
    with pytest.warns(UserWarning, match="position embedding"):
        read_hf_checkpoint(hf_dir)
