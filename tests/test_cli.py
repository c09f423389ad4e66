"""The dfine command line: predict and inspect."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dfine.cli import main
from tests.conftest import reference_file


@pytest.fixture(scope="module")
def ckpt():
    return str(reference_file("dfine_n_perturbed_random_official.pth"))


def test_predict_writes_images_and_json(tmp_path, ckpt, capsys):
    out = tmp_path / "out"
    rc = main(
        [
            "predict",
            "assets/examples/astronaut.jpg",
            "assets/examples/coffee.jpg",
            "--weights",
            ckpt,
            "--threshold",
            "0.005",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    for stem, size in (
        ("astronaut", {"width": 512, "height": 512}),
        ("coffee", {"width": 600, "height": 400}),
    ):
        assert (out / f"{stem}.jpg").stat().st_size > 1000
        record = json.loads((out / f"{stem}.json").read_text())
        assert record["image_size"] == size and record["detections"]
        det = record["detections"][0]
        assert set(det) >= {"box", "score", "label", "name"}
    printed = capsys.readouterr().out
    assert "astronaut.jpg: 512x512:" in printed and "ms inference" in printed


def test_predict_folder_and_bad_image(tmp_path, ckpt, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "ok.jpg").write_bytes(Path("assets/examples/chelsea.jpg").read_bytes())
    (folder / "broken.jpg").write_text("not an image")
    rc = main(["predict", str(folder), "--weights", ckpt, "--out", str(tmp_path / "o"), "-q"])
    assert rc == 1  # one failure is reported, the rest is written
    assert (tmp_path / "o" / "ok.json").exists() and not (tmp_path / "o" / "broken.json").exists()
    assert "broken.jpg" in capsys.readouterr().err


def test_predict_rejects_bad_options(ckpt, capsys):
    with pytest.raises(SystemExit):
        main(["predict", "x.jpg", "--weights", ckpt, "--threshold", "2"])
    assert "threshold must be in [0, 1]" in capsys.readouterr().err
    assert main(["predict", "x.jpg", "--weights", "missing.pth"]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_inspect(ckpt, capsys):
    assert main(["inspect", ckpt]) == 0
    text = capsys.readouterr().out
    assert "D-FINE-N" in text and "3,782,693" in text and "80: person, bicycle" in text
    assert main(["inspect", ckpt, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["size"] == "n" and info["num_classes"] == 80 and info["input_size"] == [640, 640]


def test_help_is_complete():
    res = subprocess.run(
        [sys.executable, "-m", "dfine.cli", "predict", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    for flag in ("--weights", "--threshold", "--size", "--out", "examples:"):
        assert flag in res.stdout


def test_argument_types():
    import argparse

    from dfine.argtypes import fraction, non_negative_int, positive_int

    assert positive_int("3") == 3 and non_negative_int("0") == 0 and fraction("0.25") == 0.25
    for parse, text, message in [
        (positive_int, "0", "expected a positive integer, got 0"),
        (positive_int, "1.5", "expected an integer, got '1.5'"),
        (non_negative_int, "-1", "expected an integer >= 0, got -1"),
        (fraction, "1.5", r"expected a number in \[0, 1\], got 1.5"),
        (fraction, "half", r"expected a number in \[0, 1\], got 'half'"),
    ]:
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            parse(text)
