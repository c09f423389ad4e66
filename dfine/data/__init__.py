"""Training data: COCO- and YOLO-format datasets validated at load time, the reference's
transforms (torchvision.transforms.v2) and DEIM's Dense O2O (mosaic, mixup, their epoch
policy), multi-scale batch collation and data loaders, and a
procedural synthetic dataset that writes COCO json.

Importing this package does not import pycocotools / faster-coco-eval (only
``CocoDetection.coco`` does) nor PyYAML (only ``YoloDetection.from_yaml`` does).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dfine._lazy import lazy_package

if TYPE_CHECKING:
    from dfine.data.coco import CocoDetection
    from dfine.data.collate import BatchImageCollate, DataLoader, build_dataloader, generate_scales
    from dfine.data.dataset import DatasetError, DetectionDataset
    from dfine.data.dense_o2o import Mosaic, build_dense_o2o_transforms
    from dfine.data.policy import DenseO2OPolicy, deim_policy
    from dfine.data.synth import SYNTH_CLASSES, make_synthetic_dataset
    from dfine.data.transforms import Compose, build_train_transforms, build_val_transforms
    from dfine.data.yolo import YoloDetection

_EXPORTS = {
    "CocoDetection": "coco",
    "BatchImageCollate": "collate",
    "DataLoader": "collate",
    "build_dataloader": "collate",
    "generate_scales": "collate",
    "DatasetError": "dataset",
    "DetectionDataset": "dataset",
    "Mosaic": "dense_o2o",
    "build_dense_o2o_transforms": "dense_o2o",
    "DenseO2OPolicy": "policy",
    "deim_policy": "policy",
    "SYNTH_CLASSES": "synth",
    "make_synthetic_dataset": "synth",
    "Compose": "transforms",
    "build_train_transforms": "transforms",
    "build_val_transforms": "transforms",
    "YoloDetection": "yolo",
}
__all__ = [
    "SYNTH_CLASSES",
    "BatchImageCollate",
    "CocoDetection",
    "Compose",
    "DataLoader",
    "DatasetError",
    "DenseO2OPolicy",
    "DetectionDataset",
    "Mosaic",
    "YoloDetection",
    "build_dataloader",
    "build_dense_o2o_transforms",
    "build_train_transforms",
    "build_val_transforms",
    "deim_policy",
    "generate_scales",
    "make_synthetic_dataset",
]
lazy_package(__name__, _EXPORTS)
