"""ONNX export of the ablated models (``--ablate fdr``: 4 box deltas per layer, no
distributions; ``--ablate golsd``: FDR without DDF): ``dfine export`` passes its ONNX Runtime
parity check, the variant is in the ONNX metadata and ``dfine inspect`` shows it, and
``dfine predict x.onnx`` of the fdr model (its own graph: 4 box deltas per layer) runs and
scores like the PyTorch model. Random-initialised D-FINE-N models (8 classes) at 256²."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

import dfine
from dfine.cli import main as dfine_main
from dfine.export import read_metadata
from dfine.resources import examples_dir

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

SIZE = "256"


def _detections(folder) -> list[dict]:
    (record,) = [json.loads(p.read_text()) for p in folder.glob("*.json")]
    return record["detections"]


@pytest.mark.parametrize("ablation", ["fdr", "golsd"])
def test_export_inspect_and_predict_an_ablated_model(ablation, tmp_path, capsys, monkeypatch):
    torch.manual_seed(0)
    model = dfine.build_model("n", num_classes=8, ablation=ablation).eval()
    weights = dfine.save_model(model, tmp_path / f"{ablation}.safetensors")
    onnx_path = tmp_path / f"{ablation}.onnx"
    monkeypatch.chdir(tmp_path)

    assert dfine_main(["export", str(weights), "--size", SIZE, "--out", str(onnx_path)]) == 0
    report = capsys.readouterr().out
    assert "onnx.checker passed" in report and "[OK]" in report  # ORT vs PyTorch parity

    meta = read_metadata(onnx_path)
    assert meta["ablation"] == ablation and meta["input_size"] == (256, 256)
    assert dfine_main(["inspect", str(onnx_path)]) == 0
    assert re.search(rf"^ablation:\s+{ablation} \(", capsys.readouterr().out, re.M)
    assert dfine_main(["inspect", str(onnx_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ablation"] == ablation

    if ablation == "golsd":  # the same graph as the full model's (only training differs)
        return
    image = str(examples_dir() / "synth" / "000002.jpg")
    # a random model's scores are all alike (~0.03): keep all top-300 and compare them
    # order-free (the query-order-aware comparison is the export's parity check above)
    common = ["--threshold", "0", "--quiet"]
    assert dfine_main(["predict", image, "-w", str(onnx_path), "--out", "ort", *common]) == 0
    assert dfine_main(["predict", image, "-w", str(weights), "--size", SIZE, "--out", "pt",
                       *common]) == 0  # fmt: skip
    ort, pt = _detections(tmp_path / "ort"), _detections(tmp_path / "pt")
    assert len(ort) == len(pt) == 300
    scores = [np.sort([d["score"] for d in dets]) for dets in (ort, pt)]
    np.testing.assert_allclose(*scores, atol=2e-4)  # the JSON rounds to 1e-4
    boxes = np.array([d["box"] for d in ort])
    assert (boxes >= 0).all() and (boxes <= 320).all()  # the 320² example's pixels


def test_unknown_ablation_in_onnx_metadata_is_refused(tmp_path):
    import onnx

    proto = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], []))
    props = {"num_classes": "2", "input_size": "[256, 256]", "ablation": "gosld"}
    onnx.helper.set_model_props(proto, props)
    onnx.save(proto, str(tmp_path / "m.onnx"))
    with pytest.raises(ValueError, match=r"ablation metadata must be one of none, golsd, fdr"):
        read_metadata(tmp_path / "m.onnx")
    onnx.helper.set_model_props(proto, {**props, "ablation": "fdr"})
    onnx.save(proto, str(tmp_path / "m.onnx"))
    assert read_metadata(tmp_path / "m.onnx")["ablation"] == "fdr"
