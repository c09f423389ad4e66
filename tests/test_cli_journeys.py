"""A newcomer's CLI paths: export the bundled model to ONNX, then predict, inspect and val on
the ``.onnx`` (the runtime chosen from the suffix); every handled error is one line, exit 2;
outputs go to --out or the current folder, never beside the weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from dfine.cli import main
from tests.app_util import DEMO, SYNTH_EXAMPLE

IMAGE = SYNTH_EXAMPLE

pytest.importorskip("onnxruntime", reason="the ONNX path needs onnxruntime")


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """``dfine export`` of a copy of the demo model, run in an empty folder (the cwd)."""
    work = tmp_path_factory.mktemp("export")
    weights = work / "weights" / DEMO.name
    weights.parent.mkdir()
    shutil.copy(DEMO, weights)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        assert main(["export", str(weights), "--no-check"]) == 0  # parity: compared below
    onnx = work / "dfine_n_synth.onnx"
    assert onnx.is_file()  # in the current folder ...
    assert sorted(p.name for p in weights.parent.iterdir()) == [DEMO.name]  # ... not beside
    return onnx


def test_predict_on_the_onnx_matches_torch(exported, tmp_path, capsys):
    out = tmp_path / "pred"
    assert main(["predict", str(IMAGE), "--weights", str(exported), "--out", str(out), "-q"]) == 0
    onnx = json.loads((out / "000001.json").read_text())
    ref = tmp_path / "ref"
    assert main(["predict", str(IMAGE), "--weights", str(DEMO), "--out", str(ref), "-q"]) == 0
    torch_ = json.loads((ref / "000001.json").read_text())
    assert len(onnx["detections"]) == len(torch_["detections"]) == 6
    for a, b in zip(onnx["detections"], torch_["detections"]):
        assert a["label"] == b["label"] and abs(a["score"] - b["score"]) < 1e-3
        assert max(abs(x - y) for x, y in zip(a["box"], b["box"])) < 0.5  # pixels


def test_inspect_the_onnx(exported, capsys):
    assert main(["inspect", str(exported), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["num_classes"] == 8 and info["class_names"][0] == "red circle"
    assert info["input_size"] == [320, 320] and info["metadata"]["num_top"] == 300
    assert main(["inspect", str(exported)]) == 0
    assert "onnx" in capsys.readouterr().out


def test_val_on_the_onnx(exported, tmp_path, capsys):
    data = tmp_path / "synth"
    assert main(["data", "synth", "--out", str(data), "--train", "1", "--val", "4",
                 "--workers", "0", "-q"]) == 0  # fmt: skip
    assert main(["val", "--weights", str(exported), "--data", str(data), "--json", "-q",
                 "--workers", "0", "--device", "cpu"]) == 0  # fmt: skip
    onnx = json.loads(capsys.readouterr().out)
    assert main(["val", "--weights", str(DEMO), "--data", str(data), "--json", "-q",
                 "--workers", "0", "--device", "cpu"]) == 0  # fmt: skip
    torch_ = json.loads(capsys.readouterr().out)
    assert onnx["AP"] > 0.3  # the demo model knows these shapes
    assert abs(onnx["AP"] - torch_["AP"]) < 0.01


def test_predict_with_another_backend_named(exported, tmp_path, capsys):
    pytest.importorskip("openvino", reason="needs openvino")
    out = tmp_path / "ov"
    args = ["predict", str(IMAGE), "-w", str(exported), "--backend", "openvino", "-o", str(out)]
    assert main([*args, "-q"]) == 0
    assert len(json.loads((out / "000001.json").read_text())["detections"]) == 6


def test_export_refuses_an_onnx(exported, capsys):
    assert main(["export", str(exported)]) == 2
    assert "already an ONNX export" in capsys.readouterr().err


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    # a zoo download announces itself ("downloading URL -> PATH") before it fails
    err = "".join(line for line in err.splitlines(True) if not line.startswith("downloading "))
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("command", ["inspect", "predict", "export"])
def test_offline_zoo_name_says_what_to_do(command, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DFINE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DFINE_ZOO_URL", "http://127.0.0.1:9/unreachable")  # refused at once
    monkeypatch.chdir(tmp_path)
    args = {
        "inspect": ["inspect", "dfine_l_coco.pth"],
        "predict": ["predict", str(IMAGE), "--weights", "dfine_l_coco.pth"],
        "export": ["export", "dfine_l_coco.pth"],
    }[command]
    assert main(args) == 2
    err = _one_line_error(capsys)
    assert "dfine_l_coco.pth is not a file here; it names the official checkpoint" in err
    assert "http://127.0.0.1:9/unreachable/dfine_l_coco.pth" in err  # the URL
    assert str(tmp_path / "home" / "dfine_l_coco.pth") in err  # where to save it
    assert "about 127 MB" in err  # its size
    assert "load_model" not in err  # nothing a CLI user cannot act on


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("notimage.jpg", b"hello\n", "notimage.jpg is not a weights file (.jpg)"),
        ("broken.pth", b"hello\n", "broken.pth is not a readable PyTorch checkpoint"),
        ("missing.pth", None, "missing.pth is not a file, not a model-zoo name"),
    ],
)
def test_inspect_bad_files_in_one_line(name, content, message, tmp_path, capsys):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    assert main(["inspect", str(path)]) == 2
    assert message in _one_line_error(capsys)


def test_predict_an_image_that_is_not_one(tmp_path, capsys):
    fake = tmp_path / "holiday.jpg"
    fake.write_text("not a picture")
    assert main(["predict", str(fake), "--weights", str(DEMO), "-o", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "holiday.jpg" in err and "Traceback" not in err


def test_load_model_points_an_onnx_to_the_detector(exported):
    import dfine
    from dfine.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match=r"exported ONNX graph.*dfine\.Detector"):
        dfine.load_model(exported)
    det = dfine.Detector(exported)  # no backend= needed
    assert det.backend.name == "onnxruntime" and len(det(IMAGE)) == 6
