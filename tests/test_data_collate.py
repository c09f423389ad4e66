"""Batch collation (multi-scale) and the data loader (workers, epochs, seeding, DDP)."""

from __future__ import annotations

import random
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler

from dfine.data import (
    BatchImageCollate,
    CocoDetection,
    build_dataloader,
    build_train_transforms,
    build_val_transforms,
    generate_scales,
)
from dfine.data.synth import make_synthetic_dataset


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("synth")
    return make_synthetic_dataset(out, num_train=10, num_val=0, image_size=(64, 48), workers=0)


def items(n: int, size: int = 64):
    return [
        (torch.rand(3, size, size), {"boxes": torch.tensor([[0.5, 0.5, 0.2, 0.1]]), "i": i})
        for i in range(n)
    ]


def test_generate_scales_reference_values():
    assert generate_scales(640, 3) == [
        480, 512, 544, 576, 608, 640, 640, 640, 800, 768, 736, 704, 672,
    ]  # fmt: skip
    assert generate_scales(640, 1) == [480, 512, 544, 576, 608, 640, 800, 768, 736, 704, 672]
    assert generate_scales(320, 2) == [224, 256, 288, 320, 320, 384, 352, 320]
    assert BatchImageCollate(640, None).scales is None


def test_collate_stacks_without_multiscale():
    batch = items(3)
    images, targets = BatchImageCollate(64, base_size_repeat=None)(batch)
    assert images.shape == (3, 3, 64, 64) and type(images) is torch.Tensor
    assert [t["i"] for t in targets] == [0, 1, 2]
    torch.testing.assert_close(images[1], batch[1][0])


def test_collate_multiscale_and_stop_epoch():
    collate = BatchImageCollate(64, base_size_repeat=2, stop_epoch=4)
    assert collate.scales == [32, 64, 64, 64]  # 0.75·64 → 32, then 64 twice, 1.25·64 → 64
    collate = BatchImageCollate(640, base_size_repeat=3, stop_epoch=4)
    batch = items(1, 640)
    random.seed(0)
    sizes = {collate(batch)[0].shape[-1] for _ in range(20)}
    assert sizes <= set(collate.scales) and len(sizes) > 3
    images, targets = collate(batch)
    assert images.shape[:2] == (1, 3) and images.shape[-1] == images.shape[-2]
    torch.testing.assert_close(targets[0]["boxes"], batch[0][1]["boxes"])  # normalised: unchanged
    collate.set_epoch(3)
    assert collate.multi_scale
    collate.set_epoch(4)
    assert not collate.multi_scale
    assert all(collate(batch)[0].shape[-1] == 640 for _ in range(5))


def test_collate_is_seeded_by_python_random():
    collate = BatchImageCollate(640, base_size_repeat=3)
    batch = items(1, 640)
    random.seed(123)
    first = [collate(batch)[0].shape[-1] for _ in range(10)]
    random.seed(123)
    assert [collate(batch)[0].shape[-1] for _ in range(10)] == first


def test_collate_nearest_interpolation():
    collate = BatchImageCollate(64, base_size_repeat=1)
    image = torch.arange(64.0).repeat(3, 64, 1)  # column index as value
    random.seed(0)
    while True:
        images, _ = collate([(image, {})])
        if images.shape[-1] != 64:
            break
    size = images.shape[-1]
    assert set(images.unique().tolist()) <= set(range(64))  # nearest: no new values
    assert images[0, 0, 0, -1] == int((size - 1) * 64 / size)


def test_collate_rejects_mixed_sizes():
    with pytest.raises(ValueError, match="one size"):
        BatchImageCollate(64, None)([(torch.rand(3, 64, 64), {}), (torch.rand(3, 32, 64), {})])


def test_dataloader_two_workers_deterministic(synth):
    def batches(seed: int):
        ds = CocoDetection(
            synth["train_images"], synth["train_annotations"], transforms=build_train_transforms(64)
        )
        loader = build_dataloader(
            ds, batch_size=4, shuffle=True, num_workers=2, seed=seed,
            collate_fn=BatchImageCollate(64, base_size_repeat=2),
        )  # fmt: skip
        return list(loader)

    first, again, other = batches(0), batches(0), batches(1)
    assert len(first) == 3  # 10 images, batch 4, no drop_last
    assert [len(t) for _, t in first] == [4, 4, 2]
    for (xa, ta), (xb, tb) in zip(first, again):
        assert torch.equal(xa, xb)
        assert [t["image_id"].item() for t in ta] == [t["image_id"].item() for t in tb]
        for a, b in zip(ta, tb):
            assert torch.equal(a["boxes"], b["boxes"])
    ids = [[t["image_id"].item() for t in ts] for _, ts in first]
    assert sorted(i for batch in ids for i in batch) == list(range(1, 11))
    assert ids != [[t["image_id"].item() for t in ts] for _, ts in other]


def test_dataloader_set_epoch_reaches_sampler_transforms_and_collate(synth):
    transforms = build_train_transforms(64, stop_epoch=2)
    ds = CocoDetection(synth["train_images"], synth["train_annotations"], transforms=transforms)
    collate = BatchImageCollate(64, base_size_repeat=2, stop_epoch=2)
    loader = build_dataloader(ds, 5, shuffle=True, num_workers=2, collate_fn=collate, seed=0)
    orders = []
    for epoch in range(2):
        loader.set_epoch(epoch)
        orders.append([t["image_id"].item() for _, ts in loader for t in ts])
    assert orders[0] != orders[1]
    loader.set_epoch(0)
    assert [t["image_id"].item() for _, ts in loader for t in ts] == orders[0]
    loader.set_epoch(2)
    assert ds.epoch == 2 and not transforms.augmenting and not collate.multi_scale
    val = CocoDetection(
        synth["train_images"], synth["train_annotations"], transforms=build_val_transforms(64)
    )
    for images, targets in loader:  # in the workers: no photometric/zoom/crop, no rescale
        assert images.shape[-2:] == (64, 64)
        for image, target in zip(images, targets):
            expected = val[val.image_ids.index(target["image_id"].item())][0]
            assert torch.equal(image, expected) or torch.equal(image, expected.flip(-1))


def test_dataloader_sequential_and_default_collate(synth):
    ds = CocoDetection(
        synth["train_images"], synth["train_annotations"], transforms=build_val_transforms(64)
    )
    loader = build_dataloader(ds, 4, drop_last=True)
    assert len(loader) == 2
    ids = [t["image_id"].item() for _, ts in loader for t in ts]
    assert ids == list(range(1, 9))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dataloader_uses_distributed_sampler_when_initialised(synth):
    ds = CocoDetection(
        synth["train_images"], synth["train_annotations"], transforms=build_val_transforms(64)
    )
    assert not dist.is_initialized()
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1
    )
    try:
        loader = build_dataloader(ds, 4, shuffle=True, seed=5)
        assert isinstance(loader.sampler, DistributedSampler)
        assert loader.sampler.num_replicas == 1 and loader.sampler.seed == 5
        loader.set_epoch(3)
        assert loader.sampler.epoch == 3
        assert len([t for _, ts in loader for t in ts]) == 10
    finally:
        dist.destroy_process_group()
