"""OpenVINO backend (CPU), fp32 by default so outputs stay within the parity tolerance."""

from __future__ import annotations

import os

import numpy as np
import torch

from dfine.backends.base import Backend, Detections3, as_numpy, missing_package

PRECISIONS = ("f32", "bf16", "f16")


class OpenVINOBackend(Backend):
    name = "openvino"

    def __init__(
        self,
        weights: str | os.PathLike,
        *,
        size: tuple[int, int] | None = None,
        device: str = "CPU",
        threads: int | None = None,
        precision: str = "f32",
    ) -> None:
        try:
            import openvino as ov
        except ImportError as e:
            raise missing_package("openvino", "openvino", "OpenVINO") from e
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self._init_from_onnx(weights, size)
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": precision}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        core = ov.Core()
        self.compiled = core.compile_model(core.read_model(str(self.path)), device.upper(), config)
        self.request = self.compiled.create_infer_request()

    def detect(self, images: torch.Tensor, orig_sizes: torch.Tensor) -> Detections3:
        result = self.request.infer(
            {"images": as_numpy(images), "orig_target_sizes": as_numpy(orig_sizes, np.int64)}
        )
        labels, boxes, scores = (result[out] for out in self.compiled.outputs)
        return (
            torch.from_numpy(np.array(labels, dtype=np.int64)),
            torch.from_numpy(np.array(boxes)),
            torch.from_numpy(np.array(scores)),
        )
