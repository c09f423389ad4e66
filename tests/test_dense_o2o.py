"""DEIM's Dense O2O data policy: mosaic (boxes follow the pixels), mixup (weights, merged
targets, DEIM's draws), the four-stage epoch policy (in workers and in a fresh loader as a
resumed run builds it), seeding, the recipe field, and a two-step training smoke."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch
import torchvision.transforms.v2 as T
from torchvision import tv_tensors

from dfine.data import CocoDetection, make_synthetic_dataset
from dfine.data.collate import BatchImageCollate, mixup_batch
from dfine.data.dense_o2o import DenseO2OCompose, Mosaic, build_dense_o2o_transforms
from dfine.data.policy import DEIM_POLICY_CONFIGS, DenseO2OPolicy, deim_policy
from dfine.data.transforms import RandomIoUCrop
from dfine.errors import InvalidArgumentError
from dfine.train.data import Split, build_loaders
from dfine.train.recipes import Recipe, get_recipe

PALETTE = [
    (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255),
    (255, 128, 0), (128, 0, 255), (0, 128, 255), (128, 255, 0), (255, 0, 128), (0, 255, 128),
]  # fmt: skip


class ColorBoxes:
    """Four images of different sizes, each with three filled boxes; box label ``k`` is
    filled with ``PALETTE[k]`` (labels unique over the source), on a dark gray ground."""

    sizes = ((90, 120), (150, 100), (80, 80), (110, 140))  # (height, width)

    def __len__(self) -> int:
        return len(self.sizes)

    def load_item(self, index: int):
        h, w = self.sizes[index]
        image = torch.full((3, h, w), 30, dtype=torch.uint8)
        boxes, labels = [], []
        for j in range(3):
            label = 3 * index + j
            x1, y1 = 5 + j * w // 4, 8 + j * h // 5
            x2, y2 = x1 + w // 4, y1 + h // 3
            image[:, y1:y2, x1:x2] = torch.tensor(PALETTE[label], dtype=torch.uint8)[:, None, None]
            boxes.append([x1, y1, x2, y2])
            labels.append(label)
        target = {
            "boxes": tv_tensors.BoundingBoxes(
                torch.tensor(boxes, dtype=torch.float32), format="XYXY", canvas_size=(h, w)
            ),
            "labels": torch.tensor(labels),
            "image_id": torch.tensor(index),
            "area": torch.tensor([float((b[2] - b[0]) * (b[3] - b[1])) for b in boxes]),
            "iscrowd": torch.zeros(3, dtype=torch.int64),
        }
        return tv_tensors.Image(image), target


def color_mask(image: torch.Tensor, label: int) -> torch.Tensor:
    """[H, W] bool: pixels of ``PALETTE[label]``."""
    color = torch.tensor(PALETTE[label], dtype=image.dtype)[:, None, None]
    return (image == color).all(0)


def box_mask(boxes: torch.Tensor, shape: tuple[int, int], grow: float = 0.0) -> torch.Tensor:
    """[H, W] bool: pixels whose centre lies in any XYXY box grown by ``grow``."""
    ys = torch.arange(shape[0]).float()[:, None] + 0.5
    xs = torch.arange(shape[1]).float()[None, :] + 0.5
    mask = torch.zeros(shape, dtype=torch.bool)
    for x1, y1, x2, y2 in boxes.tolist():
        mask |= (xs >= x1 - grow) & (xs <= x2 + grow) & (ys >= y1 - grow) & (ys <= y2 + grow)
    return mask


def extent(mask: torch.Tensor) -> torch.Tensor:
    """XYXY pixel-edge bounds of the true pixels of ``mask``."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)


# ---------------------------------------------------------------------- mosaic
def test_mosaic_pastes_four_tiles_and_shifts_their_boxes():
    source = ColorBoxes()
    mosaic = Mosaic(source, size=100, degrees=0, translate=(0, 0), scale=(1, 1))
    torch.manual_seed(0)
    image, target = mosaic(*source.load_item(0))
    # tiles: shorter side 100 -> (100, 133), (150, 100), (100, 100), (100, 127)
    assert image.shape == (3, 300, 266) and image.dtype == torch.uint8
    boxes = target["boxes"]
    assert boxes.format == tv_tensors.BoundingBoxFormat.XYXY
    assert tuple(boxes.canvas_size) == (300, 266)
    assert len(boxes) == len(target["labels"]) == len(target["area"]) == 12
    assert target["image_id"] == 0 and target["labels"][:3].tolist() == [0, 1, 2]
    corners = [(0, 0), (133, 0), (0, 150), (133, 150)]  # tile i's top-left in the canvas
    for k, (box, label) in enumerate(zip(boxes, target["labels"].tolist())):
        x1, y1, x2, y2 = (round(v) for v in box.tolist())
        inside = image[:, y1 + 2 : y2 - 2, x1 + 2 : x2 - 2]
        assert color_mask(inside, label).all(), (label, box)
        near = color_mask(image, label) & box_mask(box[None], image.shape[-2:], grow=2)
        torch.testing.assert_close(extent(near), box, atol=1.5, rtol=0)
        x0, y0 = corners[k // 3]  # each tile holds three boxes
        assert x0 <= x1 < x0 + 133 and y0 <= y1 < y0 + 150, (label, box)
    assert (image[:, 150:, 133 + 127 :] == 0).all()  # right of the last tile: the zero canvas


@pytest.mark.parametrize("seed", range(6))
def test_mosaic_boxes_follow_the_content_under_deims_affine(seed):
    source = ColorBoxes()
    mosaic = Mosaic(source, size=100)  # DEIM's ±10°, translate 0.1, scale 0.5-1.5, fill 0
    torch.manual_seed(seed)
    image, target = mosaic(*source.load_item(seed % 4))
    height, width = image.shape[-2:]
    boxes = target["boxes"].as_subclass(torch.Tensor)
    labels = target["labels"]
    assert (boxes[:, 0::2] >= 0).all() and (boxes[:, 0::2] <= width).all()  # clamped
    assert (boxes[:, 1::2] >= 0).all() and (boxes[:, 1::2] <= height).all()
    for label in labels.unique().tolist():
        own = boxes[labels == label]
        colored = color_mask(image, label)
        # every pixel of the colour lies in a box of its label (1 px of nearest rounding)
        assert not (colored & ~box_mask(own, (height, width), grow=1.5)).any(), label
        for box in own:
            x1, y1, x2, y2 = box.tolist()
            if min(x2 - x1, y2 - y1) < 8 or x1 < 1 or y1 < 1 or x2 > width - 1 or y2 > height - 1:
                continue  # small or cut by the border: the fraction below is not bounded
            area = colored[int(y1) : math.ceil(y2), int(x1) : math.ceil(x2)]
            # a rectangle turned by <= 10° fills >= 64% of its enclosing box
            assert area.float().mean() > 0.55, (label, box)
            near = colored & box_mask(box[None], (height, width), grow=3)
            torch.testing.assert_close(extent(near), box, atol=2.5, rtol=0)  # and touches it


def test_dense_o2o_compose_stages():
    policy = DenseO2OPolicy(mosaic_epochs=(2, 4), mosaic_prob=1.0)
    compose = build_dense_o2o_transforms(ColorBoxes(), policy, 64, stop_epoch=6)
    strong = (Mosaic, T.RandomPhotometricDistort, T.RandomZoomOut, RandomIoUCrop)
    names = {}
    for epoch in range(-1, 8):
        compose.set_epoch(epoch)
        names[epoch] = (
            {type(t) for t in compose.active(mosaic=True)} & set(strong),
            {type(t) for t in compose.active(mosaic=False)} & set(strong),
            compose.mosaic_window,
        )
    nothing = (set(), set(), False)
    plain = {T.RandomPhotometricDistort, T.RandomZoomOut, RandomIoUCrop}
    as_dfine = (plain, plain, False)
    in_window = ({Mosaic, T.RandomPhotometricDistort}, plain, True)
    assert names == {-1: nothing, 0: nothing, 1: nothing, 2: in_window, 3: in_window,
                     4: as_dfine, 5: as_dfine, 6: nothing, 7: nothing}  # fmt: skip
    assert [type(t).__name__ for t in compose.active()] == [
        "SanitizeBoundingBoxes", "RandomHorizontalFlip", "Resize", "SanitizeBoundingBoxes",
        "ToModelFormat",
    ]  # fmt: skip


class CountingMosaic(Mosaic):
    def __call__(self, image, target):
        self.calls = getattr(self, "calls", 0) + 1
        return super().__call__(image, target)


def test_mosaic_excludes_zoom_out_and_crop_per_sample():
    source = ColorBoxes()
    compose = build_dense_o2o_transforms(
        source, DenseO2OPolicy(mosaic_epochs=(0, 9), mosaic_prob=0.5), 64, stop_epoch=9
    )
    compose.set_epoch(1)
    mosaic = compose.transforms[0] = CountingMosaic(source, 100)
    zoom = compose.transforms[2]
    assert isinstance(zoom, T.RandomZoomOut)
    zoomed = []
    run_zoom = zoom.forward
    zoom.forward = lambda *a: zoomed.append(1) or run_zoom(*a)
    torch.manual_seed(0)
    for i in range(40):
        image, target = compose(*source.load_item(i % 4))
        assert image.shape == (3, 64, 64) and target["boxes"].shape[1] == 4
    assert 10 <= mosaic.calls <= 30  # probability 0.5
    assert mosaic.calls + len(zoomed) == 40  # exactly one of them per sample


# ---------------------------------------------------------------------- mixup
def _batch(counts=(2, 1, 3)):
    images = torch.stack([torch.full((3, 8, 8), float(i + 1) / 10) for i in range(len(counts))])
    targets = [
        {
            "boxes": torch.rand(n, 4),
            "labels": torch.arange(n) + 10 * i,
            "area": torch.full((n,), float(i)),
            "iscrowd": torch.zeros(n, dtype=torch.int64),
            "image_id": torch.tensor(i),
        }
        for i, n in enumerate(counts)
    ]
    return images, targets


def test_mixup_blends_with_the_previous_image_and_merges_targets():
    images, targets = _batch()
    before = images.clone()
    mixed, merged = mixup_batch(images, targets, 0.53)
    torch.testing.assert_close(images, before, rtol=0, atol=0)  # inputs untouched
    for i in range(3):
        expected = 0.53 * images[i] + 0.47 * images[i - 1]
        torch.testing.assert_close(mixed[i], expected, rtol=0, atol=1e-7)
        prev = targets[i - 1]
        new = merged[i]
        assert torch.equal(new["boxes"], torch.cat([targets[i]["boxes"], prev["boxes"]]))
        assert torch.equal(new["labels"], torch.cat([targets[i]["labels"], prev["labels"]]))
        assert torch.equal(new["area"], torch.cat([targets[i]["area"], prev["area"]]))
        assert len(new["iscrowd"]) == len(new["boxes"])
        assert new["image_id"] == i
        weights = [0.53] * len(targets[i]["labels"]) + [0.47] * len(prev["labels"])
        torch.testing.assert_close(new["mixup"], torch.tensor(weights))
        assert "mixup" not in targets[i]


def test_collate_mixup_window_probability_and_deims_draws():
    policy = DenseO2OPolicy(mixup_epochs=(1, 3), mixup_prob=1.0)
    collate = BatchImageCollate(8, base_size_repeat=None, stop_epoch=5, policy=policy)
    for epoch, mixed in [(0, False), (1, True), (2, True), (3, False), (5, False)]:
        collate.set_epoch(epoch)
        images, targets = _batch()
        random.seed(epoch)
        out, merged = collate(list(zip(images, targets)))
        assert ("mixup" in merged[0]) is mixed, epoch
        if mixed:  # DEIM: random() for the chance, then round(uniform(0.45, 0.55), 6)
            rng = random.Random(epoch)
            rng.random()
            beta = round(rng.uniform(0.45, 0.55), 6)
            assert merged[0]["mixup"][0].item() == pytest.approx(beta, abs=1e-7)
            torch.testing.assert_close(out, mixup_batch(images, targets, beta)[0])
        else:
            torch.testing.assert_close(out, images, rtol=0, atol=0)
    never = BatchImageCollate(8, None, policy=DenseO2OPolicy(mixup_epochs=(0, 9), mixup_prob=0.0))
    never.set_epoch(1)
    assert all("mixup" not in t for t in never(list(zip(*_batch())))[1])
    random.seed(4)
    state = random.getstate()
    BatchImageCollate(8, None)(list(zip(*_batch())))  # no policy: no draw
    assert random.getstate() == state


# ---------------------------------------------------------------------- policy
def test_policy_windows_and_stop_epoch():
    policy = deim_policy("l")  # DEIM's [4, 29, 50] and mixup [4, 29]
    stop = 50
    on = {e: (policy.strong_on(e, stop), policy.mosaic_on(e, stop), policy.mixup_on(e, stop))
          for e in (3, 4, 28, 29, 49, 50)}  # fmt: skip
    assert on == {3: (False, False, False), 4: (True, True, True), 28: (True, True, True),
                  29: (True, False, False), 49: (True, False, False), 50: (False, False, False)}  # fmt: skip
    assert not policy.mosaic_on(10, stop_epoch=8) and not policy.mixup_on(10, stop_epoch=8)
    assert policy.mixup_on(10, stop_epoch=None)


def test_deim_policy_configs():
    for name, (window, stop, epochs) in DEIM_POLICY_CONFIGS.items():
        policy = deim_policy(name)
        assert policy.mosaic_epochs == policy.mixup_epochs == window
        assert window[1] < stop < epochs
        assert (policy.mosaic_prob, policy.mixup_prob, policy.mosaic_size) == (0.5, 0.5, 320)
    assert deim_policy("N").mosaic_epochs == (4, 78) and DEIM_POLICY_CONFIGS["n"][1] == 148
    assert deim_policy("obj2coco_x").mosaic_epochs == (2, 12)
    with pytest.raises(InvalidArgumentError, match="known: n, s, m, l, x, obj2coco_x"):
        deim_policy("b")


@pytest.mark.parametrize(
    "bad",
    [{"mosaic_prob": 1.5}, {"mixup_epochs": (5, 2)}, {"mixup_ratio": (0.6, 0.4)},
     {"mosaic_size": 0}, {"mosaic_scale": (0, 1)}],
)  # fmt: skip
def test_policy_rejects_bad_values(bad):
    with pytest.raises(InvalidArgumentError):
        DenseO2OPolicy(**bad)


def test_recipe_serialises_the_policy():
    recipe = get_recipe("synth").replace(data_policy=deim_policy("s"))
    stored = json.loads(json.dumps(recipe.to_dict()))
    assert stored["data_policy"]["mosaic_epochs"] == [4, 64]
    assert Recipe.from_dict(stored) == recipe
    plain = get_recipe("synth")
    assert plain.data_policy is None and plain.to_dict()["data_policy"] is None
    old = {k: v for k, v in plain.to_dict().items() if k != "data_policy"}  # older checkpoint
    assert Recipe.from_dict(old) == plain


# ---------------------------------------------------------------------- loaders
@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("dense_o2o")
    return make_synthetic_dataset(out, num_train=8, num_val=0, image_size=(64, 48), workers=0)


def _loader_recipe(policy: DenseO2OPolicy, stop_epoch: int = 5) -> Recipe:
    return get_recipe("synth").replace(
        data_policy=policy, stop_epoch=stop_epoch, input_size=64, batch_size=8
    )


def _epoch(loader, epoch: int):
    loader.set_epoch(epoch)
    return list(loader)


def _foreign(batch, areas: dict[int, set]) -> bool:
    """Whether any target holds a box whose annotation area is not its own image's."""
    return any(
        not set(t["area"].tolist()) <= areas[int(t["image_id"])] for _, ts in batch for t in ts
    )


def test_loader_policy_by_epoch_in_workers_and_after_resume(synth):
    policy = DenseO2OPolicy(
        mosaic_epochs=(1, 2), mosaic_prob=1.0, mixup_epochs=(3, 4), mixup_prob=1.0, mosaic_size=48
    )
    split = Split(synth["train_annotations"], synth["train_images"])
    loader, _, ds = build_loaders(_loader_recipe(policy), split, None, seed=3, num_workers=2)
    assert isinstance(ds.transforms, DenseO2OCompose) and ds.transforms.transforms[0].source is ds
    areas = {
        int(t["image_id"]): set(t["area"].tolist())
        for t in map(lambda i: ds.load_item(i)[1], range(len(ds)))
    }
    seen = {}
    batches = {}
    for epoch in range(6):
        batches[epoch] = _epoch(loader, epoch)
        mixed = any("mixup" in t for _, ts in batches[epoch] for t in ts)
        seen[epoch] = (_foreign(batches[epoch], areas) if not mixed else None, mixed)
    # 0: nothing; 1: mosaic; 2: D-FINE's ops; 3: mixup; 4: D-FINE's ops; 5 = stop: nothing
    assert seen == {0: (False, False), 1: (True, False), 2: (False, False), 3: (None, True),
                    4: (False, False), 5: (False, False)}  # fmt: skip
    # a resumed run builds a new loader and starts at its epoch: the same data
    fresh, _, _ = build_loaders(_loader_recipe(policy), split, None, seed=3, num_workers=2)
    for epoch in (3, 1):
        for (xa, ta), (xb, tb) in zip(batches[epoch], _epoch(fresh, epoch), strict=True):
            assert torch.equal(xa, xb)
            for a, b in zip(ta, tb, strict=True):
                assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    other, _, _ = build_loaders(_loader_recipe(policy), split, None, seed=4, num_workers=2)
    assert not torch.equal(batches[1][0][0], _epoch(other, 1)[0][0])


def test_seeded_mosaic_pipeline_in_the_main_process(synth):
    policy = DenseO2OPolicy(mosaic_epochs=(0, 9), mosaic_prob=0.5, mosaic_size=48)

    def samples(seed: int):
        ds = CocoDetection(synth["train_images"], synth["train_annotations"])
        ds.transforms = build_dense_o2o_transforms(ds, policy, 64, stop_epoch=9)
        ds.set_epoch(0)
        torch.manual_seed(seed)
        return [ds[i] for i in range(len(ds))]

    first, again, other = samples(0), samples(0), samples(1)
    for (xa, ta), (xb, tb) in zip(first, again):
        assert torch.equal(xa, xb) and torch.equal(ta["boxes"], tb["boxes"])
    assert any(not torch.equal(xa, xb) for (xa, _), (xb, _) in zip(first, other))


# ---------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def train_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dense_o2o_train")
    make_synthetic_dataset(root, num_train=4, num_val=2, image_size=(256, 256), seed=0,
                           photo_fraction=0.0)  # fmt: skip
    return root


def test_training_with_the_policy_runs_and_resumes(train_data, tmp_path):
    from dfine.train.run import TrainRun, train
    from dfine.train.state import load_train_state

    policy = DenseO2OPolicy(
        mosaic_epochs=(0, 2), mosaic_prob=1.0, mixup_epochs=(0, 2), mixup_prob=1.0, mosaic_size=128
    )
    recipe = get_recipe("synth").replace(data_policy=policy, stop_epoch=2, warmup_iters=2)

    def run(epochs: int, resume: str | None = None):
        return train(
            TrainRun(
                recipe=recipe, data=str(train_data), out=str(tmp_path / "run"), epochs=epochs,
                batch_size=2, input_size=256, workers=0, seed=7, no_val=True,
                max_steps_per_epoch=2, progress=False, tensorboard=False, resume=resume,
            )
        )  # fmt: skip

    torch.set_num_threads(1)
    run(1)
    state = load_train_state(tmp_path / "run" / "last.pth")
    assert state["last_epoch"] == 0 and state["global_step"] == 2
    assert Recipe.from_dict(state["recipe"]).data_policy == policy
    run(2, resume="auto")  # epoch 1: still in the mosaic and mixup windows
    state = load_train_state(tmp_path / "run" / "last.pth")
    assert state["last_epoch"] == 1 and state["global_step"] == 4
    assert state["recipe"]["data_policy"] == policy.to_dict()
    model = state["model"]
    assert all(torch.isfinite(v).all() for v in model.values() if v.is_floating_point())
