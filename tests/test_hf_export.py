"""``dfine export W --format hf`` (issue 23): a folder transformers loads and runs like us.

The weights are seeded random values for every parameter (``random_state_dict`` of
``scripts/record_deim_fixture.py``), so the heads and the LQE are not the degenerate zeros of
a fresh init. Tolerances as in ``test_hf.py``: 1e-3 logits, 1e-4 boxes, after pairing.
"""

from __future__ import annotations

import json

import pytest
import torch

import dfine
from dfine.checkpoint import save_model
from dfine.cli import main
from dfine.parity import compare_outputs
from tests.app_util import load_script

LOGIT_TOL, BOX_TOL = 1e-3, 1e-4
RECORD = load_script("scripts/record_deim_fixture.py", "record_deim_fixture_hf")


def _random_checkpoint(tmp_path, family: str):
    model = dfine.build_model("n", family=family).eval()
    model.load_state_dict(RECORD.random_state_dict(model.state_dict(), seed=7))
    return model, save_model(model, tmp_path / f"{family}_random.safetensors")


def _transformers_outputs(folder, images):
    from transformers import DFineForObjectDetection

    hf, info = DFineForObjectDetection.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    with torch.inference_mode():
        out = hf.eval()(pixel_values=images)
    return out.logits, out.pred_boxes


def test_export_hf_runs_in_transformers_like_our_model(tmp_path, inputs, capsys):
    pytest.importorskip("transformers")
    model, path = _random_checkpoint(tmp_path, "dfine")
    out = tmp_path / "exported"
    assert main(["export", str(path), "--format", "hf", "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"} <= names
    card = (out / "README.md").read_text()
    front = card.split("---")[1]
    for line in ("license: apache-2.0", "pipeline_tag: object-detection", "- coco"):
        assert line in front
    pre = json.loads((out / "preprocessor_config.json").read_text())
    assert pre["size"] == {"height": 640, "width": 640} and not pre["do_normalize"]
    images = inputs["images"]
    logits, boxes = _transformers_outputs(out, images)
    with torch.inference_mode():
        ours = model(images)
    # query by query after pairing: near-tied random-weight queries can be selected in
    # another order where the two implementations round differently (an AVX-512 CPU)
    report = compare_outputs(logits, boxes, ours["pred_logits"], ours["pred_boxes"])
    print(report.summary())
    assert report.ok(LOGIT_TOL, BOX_TOL), report.summary()
    # and back: dfine reads the folder (with its preprocessor's input size) exactly
    back = dfine.load_model(out)
    with torch.inference_mode():
        assert torch.equal(back(images)["pred_logits"], ours["pred_logits"])


def test_export_hf_of_a_deim_model_records_silu(tmp_path, inputs):
    pytest.importorskip("transformers")
    model, path = _random_checkpoint(tmp_path, "deim")
    out = tmp_path / "deim-hf"
    assert main(["export", str(path), "--format", "hf", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["decoder_activation_function"] == "silu"
    card = (out / "README.md").read_text()
    assert "- deim" in card and "transformers applies that activation" in card
    back = dfine.load_model(out)
    assert back.family == "deim"
    images = inputs["images"][:1]
    with torch.inference_mode():
        ours = model(images)["pred_logits"]
        assert torch.equal(back(images)["pred_logits"], ours)
    # transformers keeps ReLU in the heads: what the card warns about
    logits, _ = _transformers_outputs(out, images)
    assert (logits - ours).abs().max() > LOGIT_TOL


def test_export_hf_refuses_graph_options(tmp_path, capsys):
    _, path = _random_checkpoint(tmp_path, "dfine")
    args = ["export", str(path), "--format", "hf", "--batch", "1", "--out", str(tmp_path / "o")]
    assert main(args) == 2
    assert "--format hf writes the f32 weights" in capsys.readouterr().err
    assert main(["export", str(path), "--push-to-hub", "me/model"]) == 2
    assert "add --format hf" in capsys.readouterr().err
