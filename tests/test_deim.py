"""DEIM-D-FINE (issue 23): the ``deim`` family equals DEIM's own model.

``tests/fixtures/deim_eval_outputs.safetensors`` holds DEIM's eval outputs on seeded random
weights (``scripts/record_deim_fixture.py``: DEIM's model built from its YAML, weights from
``random_state_dict``, which draws from key names and shapes only). Here our model gets the
same weights, through both loading routes a user has: a release file named ``deim_…`` and
``load_model(..., family="deim")``. Tolerances: 1e-4 on logits, 1e-5 on boxes, query by query
after pairing by encoder position: on the CPU that recorded the fixture the order is the same
(and every difference 0), but a CPU whose kernels round differently (AVX-512 against AVX2)
reorders the near-tied queries of random weights (see ``dfine.parity``).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import dfine
from dfine import zoo
from dfine.checkpoint import load_model, read_checkpoint, save_model
from dfine.cli import main
from dfine.config import FAMILIES, PRESETS, get_config
from dfine.errors import InvalidArgumentError
from dfine.hf import hf_config_to_model_config, model_config_to_hf_config, save_hf_checkpoint
from dfine.parity import compare_outputs
from dfine.weights import CheckpointError, choose_family
from tests.app_util import load_script
from tests.conftest import FIXTURES

LOGIT_TOL, BOX_TOL = 1e-4, 1e-5
FIXTURE = FIXTURES / "deim_eval_outputs.safetensors"
RECORD = load_script("scripts/record_deim_fixture.py", "record_deim_fixture")


@pytest.fixture(scope="module")
def recorded() -> tuple[dict[str, torch.Tensor], dict]:
    with safe_open(str(FIXTURE), framework="pt") as f:
        sizes = json.loads(f.metadata()["sizes"])
    return load_file(str(FIXTURE)), sizes


def _official_state_dict(size: str, sizes: dict) -> dict[str, torch.Tensor]:
    """The recorded size's random weights, regenerated from the state-dict layout."""
    template = dfine.build_model(size, family="deim").state_dict()
    sd = RECORD.random_state_dict(template, sizes[size]["seed"])
    got, want = RECORD.checksum(sd), sizes[size]["checksum"]
    assert got == pytest.approx(want, rel=1e-9), "torch's random streams changed: record again"
    return sd


def _max_diffs(
    model: dfine.DFINE, size: str, tensors: dict, images: torch.Tensor, same_queries: bool = True
):
    with torch.inference_mode():
        out = model(images)
        trace = model.trace(images)
    report = compare_outputs(
        out["pred_logits"],
        out["pred_boxes"],
        tensors[f"{size}.pred_logits"],
        tensors[f"{size}.pred_boxes"],
        trace.enc_topk_indices,
        tensors[f"{size}.enc_topk_indices"],
    )
    print(f"deim {size}: {report.summary()}")
    if same_queries:
        assert all(s <= 3 for s in report.swaps), "queries missing from DEIM's selection"
    return report.paired_max_logit_diff, report.paired_max_box_diff


def _check_release_name_and_family_argument(size, tmp_path, recorded, inputs):
    tensors, sizes = recorded
    sd = _official_state_dict(size, sizes)
    named = tmp_path / f"deim_dfine_hgnetv2_{size}_coco.pth"  # DEIM's release layout
    torch.save({"model": sd}, named)
    model = load_model(named)
    assert model.family == "deim"
    logits, boxes = _max_diffs(model, size, tensors, inputs["images"])
    assert logits <= LOGIT_TOL and boxes <= BOX_TOL
    renamed = tmp_path / "weights.pth"
    named.rename(renamed)
    model = load_model(renamed, family="deim")
    logits, boxes = _max_diffs(model, size, tensors, inputs["images"])
    assert logits <= LOGIT_TOL and boxes <= BOX_TOL
    return renamed


@pytest.mark.parametrize("size", ["n", "s"])
def test_outputs_equal_deims_own_model(size, tmp_path, recorded, inputs):
    renamed = _check_release_name_and_family_argument(size, tmp_path, recorded, inputs)
    # without the hint the same file is read as D-FINE: ReLU heads, other scores (the bug)
    plain = load_model(renamed)
    assert plain.family == "dfine"
    logits, _ = _max_diffs(plain, size, recorded[0], inputs["images"], same_queries=False)
    assert logits > 1e-2


@pytest.mark.slow
@pytest.mark.parametrize("size", ["m", "l", "x"])
def test_outputs_equal_deims_own_model_larger_sizes(size, tmp_path, recorded, inputs):
    # L and X: DEIM unfreezes the backbone BatchNorm, so its files carry num_batches_tracked
    _check_release_name_and_family_argument(size, tmp_path, recorded, inputs)


def test_the_fixture_was_recorded_from_deims_silu_decoder(recorded):
    _, sizes = recorded
    assert set(sizes) == set("nsmlx")
    for meta in sizes.values():
        assert (meta["activation"], meta["mlp_act"], meta["freeze_norm"]) == ("silu", "silu", False)


# ---------------------------------------------------------------------------- config
def test_family_switch_changes_exactly_deims_layers():
    deim = dfine.build_model("n", family="deim")
    ours = dfine.build_model("n")
    assert [k for k in deim.state_dict()] == [k for k in ours.state_dict()]
    silu = {n for n, m in deim.named_modules() if isinstance(m, torch.nn.SiLU)}
    relu = {n for n, m in ours.named_modules() if isinstance(m, torch.nn.SiLU)}
    changed = sorted(silu - relu)
    assert changed and all(n.startswith("decoder.") for n in changed)
    heads = ("query_pos_head", "enc_bbox_head", "pre_bbox_head", "dec_bbox_head")
    for name in changed:
        assert name.endswith(".activation") or name.split(".")[1] in heads or "lqe" in name
    assert "decoder.decoder.layers.0.activation" in changed
    assert "decoder.decoder.lqe_layers.2.reg_conf.act" in changed
    assert not any(n.startswith(("backbone.", "encoder.")) for n in silu ^ relu)


def test_deim_config_unfreezes_the_backbone_and_round_trips():
    cfg = get_config("l", family="deim")
    assert cfg.family == "deim" and not cfg.backbone.freeze_norm and not cfg.backbone.freeze_stem
    assert (cfg.decoder.activation, cfg.decoder.mlp_act) == ("silu", "silu")
    assert cfg.with_family("dfine") == PRESETS["l"]
    assert get_config("x", ablation="golsd", family="deim").ablation == "golsd"
    with pytest.raises(InvalidArgumentError, match="unknown model family 'rtdetr'"):
        get_config("n", family="rtdetr")
    assert set(FAMILIES) == {"dfine", "deim"}


# ---------------------------------------------------------------------------- files
def test_checkpoint_metadata_records_the_family(tmp_path, capsys):
    model = dfine.build_model("n", num_classes=3, family="deim").eval()
    path = save_model(model, tmp_path / "trained.safetensors")
    assert read_checkpoint(path)[1]["family"] == "deim"
    assert load_model(path).family == "deim"  # the name says nothing; the metadata does
    with pytest.raises(CheckpointError, match="its metadata says family 'deim', not 'dfine'"):
        load_model(path, family="dfine")
    assert main(["inspect", str(path)]) == 0
    assert "family:        deim (DEIM-D-FINE" in capsys.readouterr().out
    assert main(["inspect", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["family"] == "deim"


def test_inspect_and_predict_take_family(tmp_path, capsys, inputs):
    model = dfine.build_model("n", num_classes=2, family="deim").eval()
    path = tmp_path / "plain.pth"
    save_model(model, path)  # reference layout: no metadata
    assert main(["inspect", str(path)]) == 0
    assert "family:        dfine" in capsys.readouterr().out
    assert main(["inspect", str(path), "--family", "deim"]) == 0
    assert "family:        deim" in capsys.readouterr().out
    det = dfine.Detector(path, family="deim", deploy=False)
    assert det.backend.model.family == "deim"
    with pytest.raises(InvalidArgumentError, match="torch backend"):
        dfine.Detector(path, backend="onnxruntime", family="deim")


@pytest.mark.slow
def test_onnx_export_records_the_family(tmp_path, capsys):
    from dfine.export import read_metadata

    model = dfine.build_model("n", num_classes=2, family="deim").eval()
    path = tmp_path / "plain.pth"
    save_model(model, path)
    out = tmp_path / "plain.onnx"
    args = ["export", str(path), "--family", "deim", "--out", str(out), "--no-check"]
    assert main(args) == 0
    assert read_metadata(out)["family"] == "deim"
    assert main(["inspect", str(out)]) == 0
    assert "family:        deim" in capsys.readouterr().out


def test_hf_folder_of_a_deim_model_reads_back_as_deim(tmp_path, inputs):
    model = dfine.build_model("n", num_classes=2, family="deim").eval()
    config = model_config_to_hf_config(model.config)
    assert config["decoder_activation_function"] == "silu"
    assert hf_config_to_model_config(config).family == "deim"
    back = load_model(save_hf_checkpoint(model, tmp_path / "hf"))
    assert back.family == "deim"
    x = inputs["images"][:1]
    with torch.inference_mode():
        a, b = model(x), back(x)
    assert torch.equal(a["pred_logits"], b["pred_logits"])
    bad = dict(config, decoder_activation_function="gelu")
    with pytest.raises(CheckpointError, match="only relu"):
        hf_config_to_model_config(bad)


# ---------------------------------------------------------------------------- zoo
def test_zoo_lists_deims_releases_with_their_ap():
    deim = {n: e for n, e in zoo.MODELS.items() if n.startswith("deim")}
    assert [deim[f"deim_dfine_hgnetv2_{s}_coco"].ap for s in "nsmlx"] == [
        43.0,
        49.0,
        52.7,
        54.7,
        56.5,
    ]
    assert zoo.get("deim_dfine_hgnetv2_x_obj2coco").ap == 59.5
    for e in deim.values():
        assert e.needs_browser and e.url.startswith("https://drive.google.com/file/d/")
        assert e.filename == f"{e.name}.pth" and e.hf_repo is None
    assert zoo.get("DEIM-D-FINE-N-COCO.pth").name == "deim_dfine_hgnetv2_n_coco"
    assert zoo.get("deim_small_coco").name == "deim_dfine_hgnetv2_s_coco"


def test_zoo_family_of_release_files():
    # DEIM's Objects365 X config sets activation/mlp_act back to relu
    assert zoo.get("deim_dfine_hgnetv2_x_obj2coco").family == "dfine"
    assert {zoo.get(f"deim_{s}_coco").family for s in "nsmlx"} == {"deim"}
    assert choose_family(Path("deim_dfine_hgnetv2_x_obj2coco.pth"), {}) == "dfine"
    assert choose_family(Path("DEIM_finetuned.pth"), {}) == "deim"
    assert choose_family(Path("model.pth"), {}) == "dfine"
    assert choose_family(Path("model.pth"), {"family": "deim"}) == "deim"


def test_a_drive_release_says_where_to_save_it(tmp_path, monkeypatch):
    monkeypatch.setenv("DFINE_HOME", str(tmp_path))
    with pytest.raises(zoo.ZooDownloadError) as info:
        zoo.download("deim_dfine_hgnetv2_n_coco", progress=False)
    text = str(info.value)
    assert "needs a browser" in text and "https://drive.google.com/file/d/" in text
    assert str(tmp_path / "deim_dfine_hgnetv2_n_coco.pth") in text
    # saved there by hand, the name is enough (and it is read as DEIM)
    model = dfine.build_model("n", family="deim").eval()
    sd = {k: v for k, v in model.state_dict().items()}
    torch.save({"model": sd}, tmp_path / "deim_dfine_hgnetv2_n_coco.pth")
    assert load_model("deim_dfine_hgnetv2_n_coco").family == "deim"
    assert dataclasses.asdict(zoo.get("deim_n_coco"))["family"] == "deim"
