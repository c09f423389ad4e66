"""dfine.detections.Detections: container, export, summary and drawing."""

import ast
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import dfine.detections
import dfine.draw
import dfine.files
import dfine.io
from dfine.detections import PALETTE, Detections

NAMES = ("person", "bicycle", "cup")


def _dets(**overrides) -> Detections:
    fields = {
        "boxes": np.array(
            [[10, 20, 110, 220], [50.123, 60.456, 70.789, 80.001], [0, 0, 30, 40], [5, 5, 9, 9]],
            np.float32,
        ),
        "scores": np.array([0.95, 0.8765432, 0.5, 0.2], np.float32),
        "labels": np.array([0, 2, 0, 7]),
        "class_names": NAMES,
        "image_size": (320, 240),
        "speed": {"preprocess": 11.23, "inference": 180.44, "postprocess": 1.26},
    }
    fields.update(overrides)
    return Detections(**fields)


def _empty() -> Detections:
    return Detections(np.zeros((0, 4)), np.zeros(0), np.zeros(0, int), NAMES, (64, 48))


# ---------------------------------------------------------------------------- construction


def test_fields_are_normalised():
    d = _dets(labels=[0, 2, 0, 7], scores=[0.9, 0.8, 0.5, 0.2], class_names=list(NAMES))
    assert d.boxes.dtype == np.float32 and d.boxes.shape == (4, 4)
    assert d.scores.dtype == np.float32
    assert d.labels.dtype == np.int64
    assert d.class_names == NAMES
    assert d.image_size == (320, 240)
    assert len(d) == 4


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"boxes": np.zeros((4, 5))}, r"boxes must have shape \[N, 4\]"),
        ({"boxes": np.zeros(4)}, r"boxes must have shape \[N, 4\]"),
        ({"scores": np.zeros(3)}, r"scores must have shape \[N\]"),
        ({"scores": np.zeros((4, 1))}, r"scores must have shape \[N\]"),
        ({"labels": np.zeros(5, int)}, r"labels must have shape \[N\]"),
        ({"labels": np.array([0.5, 1, 2, 3])}, "labels must be integers"),
        ({"image_size": (320,)}, "image_size"),
        ({"image_size": (0, 240)}, "image_size"),
        ({"image": np.zeros((320, 240, 3), np.uint8)}, r"\[240, 320, 3\]"),
        ({"image": np.zeros((240, 320, 3), np.float32)}, "uint8"),
    ],
)
def test_shape_mismatch_is_a_clear_error(overrides, words):
    with pytest.raises(ValueError, match=words):
        _dets(**overrides)


def test_empty():
    d = _empty()
    assert len(d) == 0
    assert d.boxes.shape == (0, 4)
    assert d.names == []
    assert d.to_coco(1) == []
    assert d.to_dict()["detections"] == []


@pytest.mark.parametrize("module", [dfine.detections, dfine.draw, dfine.files, dfine.io])
def test_module_does_not_import_torch(module):
    """The ONNX backends use Detections and load_image without torch."""
    tree = ast.parse(Path(module.__file__).read_text())
    imported = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    imported += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not [m for m in imported if m.split(".")[0] == "torch"]


# ---------------------------------------------------------------------------- container


def test_names_with_index_beyond_class_names():
    assert _dets().names == ["person", "cup", "person", "class 7"]


def test_int_index_keeps_a_detections():
    d = _dets()
    one = d[1]
    assert isinstance(one, Detections)
    assert len(one) == 1
    np.testing.assert_array_equal(one.boxes[0], d.boxes[1])
    assert one.names == ["cup"]
    assert d[-1].names == ["class 7"]
    assert one.class_names == d.class_names and one.image_size == d.image_size
    assert one.speed == d.speed


@pytest.mark.parametrize("bad", [4, -5])
def test_int_index_out_of_range(bad):
    with pytest.raises(IndexError):
        _dets()[bad]


def test_slice_mask_and_index_array():
    d = _dets()
    assert d[:2].names == ["person", "cup"]
    assert d[::-1].names == ["class 7", "person", "cup", "person"]
    mask = d.labels == 0
    np.testing.assert_array_equal(d[mask].scores, d.scores[mask])
    assert d[np.array([3, 0])].names == ["class 7", "person"]
    assert d[[2]].names == ["person"]
    assert len(d[np.zeros(4, bool)]) == 0
    assert len(d[[]]) == 0


def test_wrong_length_mask_is_refused():
    with pytest.raises(IndexError, match="mask"):
        _dets()[np.ones(3, bool)]


def test_iteration_yields_single_detections():
    items = list(_dets())
    assert [len(i) for i in items] == [1, 1, 1, 1]
    assert [i.names[0] for i in items] == _dets().names


def test_filter():
    d = _dets()
    kept = d.filter(0.5)
    np.testing.assert_array_equal(kept.scores, d.scores[:3])
    assert len(d.filter(0.99)) == 0
    assert len(d.filter(0.0)) == 4


# ---------------------------------------------------------------------------- export


def test_json_round_trip(tmp_path):
    d = _dets()
    path = tmp_path / "out" / "dets.json"
    path.parent.mkdir()
    text = d.to_json(path)
    data = json.loads(text)
    assert json.loads(path.read_text()) == data
    assert data["image_size"] == {"width": 320, "height": 240}
    assert data["speed"] == {"preprocess": 11.23, "inference": 180.44, "postprocess": 1.26}
    assert len(data["detections"]) == 4
    second = data["detections"][1]
    assert second == {
        "box": [50.12, 60.46, 70.79, 80.0],
        "score": 0.8765,
        "label": 2,
        "name": "cup",
    }
    assert data["detections"][3]["name"] == "class 7"
    assert d.to_dict() == data


def test_to_json_indent():
    assert "\n" not in _dets().to_json(indent=None)
    assert "\n  " in _dets().to_json()


def test_to_coco_bbox_is_xywh():
    results = _dets().to_coco(image_id=42)
    assert len(results) == 4
    first = results[0]
    assert set(first) == {"image_id", "category_id", "bbox", "score"}
    assert first["image_id"] == 42
    assert first["category_id"] == 0
    assert first["bbox"] == [10.0, 20.0, 100.0, 200.0]
    assert first["score"] == pytest.approx(0.95)
    assert results[1]["bbox"] == pytest.approx([50.123, 60.456, 20.666, 19.545], abs=1e-3)
    json.dumps(results)  # plain Python types only


def test_to_coco_maps_category_ids():
    ids = [1, 2, 3, 4, 5, 6, 7, 8]
    assert [r["category_id"] for r in _dets().to_coco(1, ids)] == [1, 3, 1, 8]
    with pytest.raises(ValueError, match="category_ids"):
        _dets().to_coco(1, [1, 2, 3])


def test_summary_counts_and_speed():
    assert _dets().summary() == (
        "320x240: 2 persons, 1 cup, 1 class 7; "
        "11.2ms preprocess, 180.4ms inference, 1.3ms postprocess"
    )


def test_summary_without_speed_and_empty():
    assert _dets(speed={}).summary() == "320x240: 2 persons, 1 cup, 1 class 7"
    assert _empty().summary() == "64x48: no detections"
    assert _dets()[1:2].summary().startswith("320x240: 1 cup;")


def test_repr_uses_summary():
    d = _dets()
    assert d.summary() in repr(d)
    assert repr(d).startswith("Detections(")


# ---------------------------------------------------------------------------- plot


def _gray(width: int = 320, height: int = 240) -> np.ndarray:
    return np.full((height, width, 3), 128, np.uint8)


def test_plot_draws_box_edges_and_leaves_input_alone():
    image = _gray()
    before = image.copy()
    d = _dets()
    out = d.plot(image)
    assert isinstance(out, Image.Image)
    assert out.size == (320, 240) and out.mode == "RGB"
    np.testing.assert_array_equal(image, before)
    pixels = np.asarray(out)
    color = PALETTE[0]
    assert tuple(pixels[150, 10]) == color  # left edge of the first box
    assert tuple(pixels[150, 110]) == color  # right edge
    assert tuple(pixels[220, 60]) == color  # bottom edge
    assert tuple(pixels[150, 60]) == (128, 128, 128)  # inside: untouched
    assert tuple(pixels[235, 300]) == (128, 128, 128)  # far from every box


def test_plot_label_box_above_or_below_at_top_edge():
    d = _dets(boxes=np.array([[100, 150, 200, 200], [20, 0, 80, 60]], np.float32),
              scores=[0.9, 0.8], labels=[0, 2])  # fmt: skip
    pixels = np.asarray(d.plot(_gray(), line_width=2, font_size=12)).astype(int)
    above = pixels[130:148, 100:140]  # label of box 0 sits above its top edge
    assert (np.abs(above - PALETTE[0]).sum(-1) == 0).mean() > 0.3
    # box 1 touches the top: no room above, and inside it would hide the object; its label
    # goes under its bottom edge, where it hides nothing (dfine.draw.label's placement)
    below = pixels[62:73, 22:60]
    assert (np.abs(below - PALETTE[2]).sum(-1) == 0).mean() > 0.3
    assert (np.abs(pixels[3:15, 22:60] - PALETTE[2]).sum(-1) == 0).mean() < 0.05


def test_plot_uses_the_kept_image_and_custom_colors():
    image = _gray()
    d = _dets(image=image)
    out = np.asarray(d.plot(colors=[(0, 255, 0)], show_scores=False))
    assert tuple(out[150, 10]) == (0, 255, 0)
    np.testing.assert_array_equal(image, _gray())
    hexed = np.asarray(d.plot(colors=["#ff00ff"]))
    assert tuple(hexed[150, 10]) == (255, 0, 255)


def test_plot_scores_change_the_label():
    d = _dets()
    with_scores = np.asarray(d.plot(_gray(), font_size=14))
    without = np.asarray(d.plot(_gray(), font_size=14, show_scores=False))
    assert not np.array_equal(with_scores, without)


def test_plot_line_width_and_font_size():
    d = _dets()[:1]
    thin = np.asarray(d.plot(_gray(), line_width=1)).astype(int)
    thick = np.asarray(d.plot(_gray(), line_width=6)).astype(int)
    changed = lambda a: (np.abs(a - 128).sum(-1) > 0).sum()  # noqa: E731
    assert changed(thick) > changed(thin)
    small = np.asarray(d.plot(_gray(), font_size=10)).astype(int)
    big = np.asarray(d.plot(_gray(), font_size=30)).astype(int)
    assert changed(big) > changed(small)


def test_plot_default_sizes_scale_with_image():
    def edge_and_label(scale: int) -> tuple[int, int]:
        box = np.array([[100, 150, 200, 200]], np.float32) * scale
        d = Detections(box, [0.9], [0], NAMES, (320 * scale, 240 * scale))
        pixels = np.asarray(d.plot(_gray(320 * scale, 240 * scale))).astype(int)
        is_color = np.abs(pixels - PALETTE[0]).sum(-1) == 0
        edge = int(is_color[175 * scale, : 150 * scale].sum())  # across the left edge
        label = int(is_color[: 150 * scale, 100 * scale].sum())  # label box above
        return edge, label

    small_edge, small_label = edge_and_label(1)
    big_edge, big_label = edge_and_label(5)
    assert big_edge >= 2 * small_edge
    assert big_label >= 2 * small_label


def test_plot_accepts_pil_and_empty_detections():
    out = _empty().plot(Image.new("RGB", (64, 48), (1, 2, 3)))
    assert out.size == (64, 48)
    assert np.all(np.asarray(out) == (1, 2, 3))


def test_plot_boxes_outside_the_image_are_clipped_or_skipped():
    d = _dets(boxes=np.array([[-50, -50, 400, 300], [500, 500, 600, 600]], np.float32),
              scores=[0.9, 0.8], labels=[1, 1])  # fmt: skip
    out = np.asarray(d.plot(_gray()))
    assert tuple(out[120, 0]) == PALETTE[1]


def test_plot_errors():
    with pytest.raises(ValueError, match="needs an image"):
        _dets().plot()
    with pytest.raises(ValueError, match="100x50"):
        _dets().plot(_gray(100, 50))


def test_palette_has_twenty_distinct_colors():
    assert len(PALETTE) == 20
    assert len(set(PALETTE)) == 20
    assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in PALETTE)


def test_plot_labels_never_pile_up(monkeypatch):
    """On a crowded image every label tag goes where no other tag is (above, inside, below
    the box), dropping to the bare class name and then to no tag when there is no room."""
    from PIL import ImageDraw

    from dfine.detections import Detections

    tags: list[tuple[float, ...]] = []
    real = ImageDraw.ImageDraw.rectangle

    def record(self, xy, fill=None, outline=None, width=1):
        if fill is not None:
            tags.append(tuple(float(v) for v in xy))
        return real(self, xy, fill=fill, outline=outline, width=width)

    monkeypatch.setattr(ImageDraw.ImageDraw, "rectangle", record)
    boxes = np.array([[100 + 3 * i, 100 + 2 * i, 180 + 3 * i, 160 + 2 * i] for i in range(12)])
    dets = Detections(
        boxes=boxes.astype(np.float32),
        scores=np.linspace(0.99, 0.5, 12, dtype=np.float32),
        labels=np.arange(12) % 3,
        class_names=("circle", "square", "a class with a long name"),
        image_size=(320, 320),
        image=np.zeros((320, 320, 3), np.uint8),
    )
    dets.plot()
    assert 3 <= len(tags) < 12  # some labelled, the rest left to the table
    for i, a in enumerate(tags):
        assert a[1] >= 0 and a[3] <= 320
        for b in tags[i + 1 :]:
            assert not (a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]), (a, b)


def _interop_dets():
    from dfine.detections import Detections

    image = np.zeros((40, 60, 3), np.uint8)
    image[10:20, 5:25] = (255, 0, 0)
    return Detections(
        boxes=np.array([[5, 10, 25, 20], [30.4, 1.6, 59.5, 39.2]], np.float32),
        scores=np.array([0.9, 0.6], np.float32),
        labels=np.array([1, 0]),
        class_names=("cat", "red box"),
        image_size=(60, 40),
        image=image,
    )


def test_to_pandas_and_supervision():
    dets = _interop_dets()
    frame = dets.to_pandas()
    assert list(frame.columns) == ["x1", "y1", "x2", "y2", "score", "label", "name"]
    assert frame["name"].tolist() == ["red box", "cat"]
    np.testing.assert_allclose(frame[["x1", "y1", "x2", "y2"]].to_numpy(), dets.boxes)
    sv = pytest.importorskip("supervision")
    svd = dets.to_supervision()
    assert isinstance(svd, sv.Detections) and len(svd) == 2
    np.testing.assert_allclose(svd.xyxy, dets.boxes)
    assert svd.class_id.tolist() == [1, 0] and svd.data["class_name"].tolist() == ["red box", "cat"]
    coco = dets.to_coco(7)
    assert coco[0]["bbox"] == [5.0, 10.0, 20.0, 10.0] and coco[0]["image_id"] == 7


def test_to_supervision_names_the_missing_package(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_supervision(name, *args, **kwargs):
        if name == "supervision":
            raise ImportError("No module named 'supervision'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_supervision)
    with pytest.raises(ImportError, match="pip install supervision"):
        _interop_dets().to_supervision()


def test_save_crops(tmp_path):
    dets = _interop_dets()
    paths = dets.save_crops(tmp_path / "crops", suffix=".png")
    assert [p.name for p in paths] == ["000_red_box.png", "001_cat.png"]
    first = np.asarray(Image.open(paths[0]))
    assert first.shape == (10, 20, 3) and (first == (255, 0, 0)).all()
    assert np.asarray(Image.open(paths[1])).shape == (39, 30, 3)  # rounded outward, clipped
    with pytest.raises(ValueError, match="png"):
        dets.save_crops(tmp_path, suffix=".gif")
