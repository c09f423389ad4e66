"""OpenVINO backend (CPU), fp32 by default so outputs stay within the parity tolerance."""

from __future__ import annotations

import os

import numpy as np
import torch

from dfine.backends.base import Backend, BatchDetections, Device, as_numpy, missing_package

PRECISIONS = ("f32", "bf16", "f16")
OPENVINO_DEVICES = ("CPU", "GPU", "NPU", "AUTO")


def openvino_device(device: Device) -> str:
    """OpenVINO's device name for ``device``: ``None`` / ``"cpu"`` / ``torch.device("cpu")`` →
    ``"CPU"``; OpenVINO names (``"GPU"``, ``"GPU.1"``, ``"NPU"``, ``"AUTO"``, any case) pass
    through. CUDA devices are refused: OpenVINO runs on Intel hardware only."""
    if device is None:
        return "CPU"
    if isinstance(device, torch.device):
        device = device.type if device.index is None else f"{device.type}:{device.index}"
    name = str(device).strip().upper()
    if name.split(".")[0] in OPENVINO_DEVICES:
        return name
    if name.startswith("CUDA"):
        raise ValueError(
            f"the OpenVINO backend runs on Intel CPU/GPU/NPU, not on CUDA device {device!r}: "
            "use device='cpu' (or 'GPU' for an Intel GPU), or the onnxruntime/tensorrt backend"
        )
    raise ValueError(
        f"unknown OpenVINO device {device!r}: use one of {', '.join(OPENVINO_DEVICES)} (or 'cpu')"
    )


class OpenVINOBackend(Backend):
    name = "openvino"

    def __init__(
        self,
        weights: str | os.PathLike,
        *,
        size: tuple[int, int] | None = None,
        device: Device = None,
        threads: int | None = None,
        precision: str = "f32",
    ) -> None:
        try:
            import openvino as ov
        except ImportError as e:
            raise missing_package("openvino", "openvino", "OpenVINO") from e
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.ov_device = openvino_device(device)
        self._init_from_onnx(weights, size)
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": precision}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        core = ov.Core()
        self.compiled = core.compile_model(core.read_model(str(self.path)), self.ov_device, config)
        self.request = self.compiled.create_infer_request()

    def detect(self, images: torch.Tensor, orig_sizes: torch.Tensor) -> BatchDetections:
        result = self.request.infer(
            {"images": as_numpy(images), "orig_target_sizes": as_numpy(orig_sizes, np.int64)}
        )
        labels, boxes, scores = (result[out] for out in self.compiled.outputs)
        return BatchDetections(
            boxes=torch.from_numpy(np.array(boxes)),
            scores=torch.from_numpy(np.array(scores)),
            labels=torch.from_numpy(np.array(labels, dtype=np.int64)),
        )
