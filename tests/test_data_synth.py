"""The synthetic shapes dataset: determinism, exact boxes, COCO validity, the CLI."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dfine.data import CocoDetection
from dfine.data.cli import register_cli
from dfine.data.synth import SynthOptions, make_synthetic_dataset
from dfine.data.synth_scene import render_image
from dfine.data.synth_shapes import SYNTH_CLASSES, shape_mask

KW = {"num_train": 8, "num_val": 3, "image_size": (96, 72), "seed": 7}


@pytest.fixture(scope="module")
def png_set(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("png")
    return make_synthetic_dataset(out, image_format="png", workers=0, **KW)


def tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_same_seed_same_bytes_any_worker_count(tmp_path):
    a = make_synthetic_dataset(tmp_path / "a", workers=0, **KW)["root"]
    b = make_synthetic_dataset(tmp_path / "b", workers=2, **KW)["root"]
    files = tree(a)
    assert len(files) == 8 + 3 + 2 and files == tree(b)
    c = make_synthetic_dataset(tmp_path / "c", workers=0, **{**KW, "seed": 8})["root"]
    other = tree(c)
    assert other.keys() == files.keys() and all(other[k] != files[k] for k in files)


def test_layout_and_coco_fields(png_set):
    assert sorted(p.name for p in png_set["train_images"].iterdir())[:2] == [
        "000001.png",
        "000002.png",
    ]
    for split, count in (("train", 8), ("val", 3)):
        data = json.loads(png_set[f"{split}_annotations"].read_text())
        assert data["categories"] == [
            {"id": i + 1, "name": c.name, "supercategory": c.shape}
            for i, c in enumerate(SYNTH_CLASSES)
        ]
        assert [img["id"] for img in data["images"]] == list(range(1, count + 1))
        assert all(img["width"] == 96 and img["height"] == 72 for img in data["images"])
        ids = [a["id"] for a in data["annotations"]]
        assert ids == list(range(1, len(ids) + 1))
        per_image = {i: 0 for i in range(1, count + 1)}
        for a in data["annotations"]:
            x, y, w, h = a["bbox"]
            assert all(isinstance(v, int) for v in a["bbox"])
            assert min(w, h) >= 8 and x >= 0 and y >= 0 and x + w <= 96 and y + h <= 72
            assert 0 < a["area"] <= w * h and a["iscrowd"] == 0
            assert 1 <= a["category_id"] <= len(SYNTH_CLASSES)
            per_image[a["image_id"]] += 1
        assert all(1 <= n <= 8 for n in per_image.values())


def test_boxes_are_tight_on_the_pixels(png_set):
    """Re-render image k: the PNG holds exactly its pixels, the json boxes are the bounding
    boxes of the visible shapes, and those pixels have the class colour."""
    data = json.loads(png_set["train_annotations"].read_text())
    for image_id in (1, 2, 3):
        rng = np.random.default_rng([7, 1, image_id])
        rgb, objects = render_image(rng, 96, 72)
        saved = np.asarray(Image.open(png_set["train_images"] / f"{image_id:06d}.png"))
        assert np.array_equal(saved, rgb)
        anns = [a for a in data["annotations"] if a["image_id"] == image_id]
        assert [a["bbox"] for a in anns] == [o.bbox() for o in objects]
        assert [a["category_id"] - 1 for a in anns] == [o.label for o in objects]
        for obj, a in zip(objects, anns):
            x, y, w, h = a["bbox"]
            color = np.array(SYNTH_CLASSES[obj.label].color, float)
            near = np.abs(saved.astype(float) - color).max(axis=2) <= 40  # jitter + shading
            h_, w_ = obj.visible.shape
            patch = near[obj.top : obj.top + h_, obj.left : obj.left + w_]
            assert patch[obj.visible].all()
            region = near[y : y + h, x : x + w]
            # every edge of the box touches a pixel of the class colour
            assert (
                region[0].any() and region[-1].any() and region[:, 0].any() and region[:, -1].any()
            )
            assert a["area"] == obj.visible.sum()


def test_loads_with_coco_apis(png_set):
    faster = pytest.importorskip("faster_coco_eval")
    api = faster.COCO(str(png_set["train_annotations"]))
    assert len(api.getImgIds()) == 8 and len(api.getCatIds()) == len(SYNTH_CLASSES)
    pycocotools = pytest.importorskip("pycocotools.coco")
    api = pycocotools.COCO(str(png_set["val_annotations"]))
    assert len(api.getImgIds()) == 3 and api.loadCats(1)[0]["name"] == "red circle"


def test_dataset_reads_it_without_skips(png_set):
    ds = CocoDetection(
        png_set["train_images"], png_set["train_annotations"], on_invalid="error", check_files=True
    )
    assert len(ds) == 8 and ds.class_names == tuple(c.name for c in SYNTH_CLASSES)


@pytest.mark.parametrize("shape", sorted({c.shape for c in SYNTH_CLASSES}))
def test_shape_masks(shape):
    for size in (10, 33.3, 120):
        mask = shape_mask(shape, size, angle=0.7)
        assert mask.dtype == bool and mask[0].any() and mask[-1].any()
        assert mask[:, 0].any() and mask[:, -1].any()
        assert max(mask.shape) <= size + 2 and min(mask.shape) >= 0.5 * size
    if shape == "ring":
        mask = shape_mask(shape, 40)
        assert not mask[mask.shape[0] // 2, mask.shape[1] // 2]  # a hole in the middle


def test_sizes_objects_and_occlusion_limits():
    counts, sides = [], []
    for k in range(40):
        rgb, objects = render_image(np.random.default_rng(k), 160, 160, photo_fraction=0.0)
        assert rgb.shape == (160, 160, 3) and rgb.dtype == np.uint8
        counts.append(len(objects))
        for obj in objects:
            assert obj.visible.sum() >= 0.6 * obj.mask.sum()
            sides.append(max(obj.bbox()[2:]))
    assert min(counts) >= 1 and max(counts) <= 8 and len(set(counts)) > 3
    assert min(sides) >= 8 and min(sides) <= 14 and max(sides) >= 0.3 * 160


def test_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="image_size"):
        make_synthetic_dataset(tmp_path, 1, 0, image_size=(16, 16))
    with pytest.raises(ValueError, match="image_format"):
        make_synthetic_dataset(tmp_path, 1, 0, image_format="gif")
    with pytest.raises(FileNotFoundError, match="photo_fraction=0"):
        make_synthetic_dataset(tmp_path, 1, 0, photo_dir=tmp_path / "none")
    assert not any(tmp_path.iterdir())  # nothing written before the checks


def test_options_are_frozen_and_checked():
    options = SynthOptions(image_size=(64, 48), num_objects=(2, 3))
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.jpeg_quality = 50  # type: ignore[misc]
    with pytest.raises(ValueError, match="num_objects"):
        SynthOptions(num_objects=(3, 2))
    with pytest.raises(ValueError, match="photo_fraction"):
        SynthOptions(photo_fraction=1.5)
    with pytest.raises(ValueError, match="32x32"):
        SynthOptions(image_size=(31, 64))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dfine")
    register_cli(p.add_subparsers(dest="command", required=True))
    return p


def test_cli_synth(tmp_path, capsys):
    out = tmp_path / "cli"
    args = parser().parse_args(
        ["data", "synth", "--out", str(out), "--train", "3", "--val", "2", "--size", "64", "48",
         "--seed", "7", "--workers", "0"]
    )  # fmt: skip
    assert args.func(args) == 0
    assert "wrote 3 train and 2 val images (64x48, seed 7)" in capsys.readouterr().out
    data = json.loads((out / "annotations" / "instances_val.json").read_text())
    assert len(data["images"]) == 2 and data["images"][0]["width"] == 64
    assert len(list((out / "train").glob("*.jpg"))) == 3


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as info:
        parser().parse_args(["data", "synth", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--out", "--train", "--val", "--size W H", "--seed", "--photos", "--format"):
        assert option in text
    with pytest.raises(SystemExit):
        parser().parse_args(["data", "synth", "--out", "x", "--photos", "2"])
