"""ONNX Runtime backend (CPU; CUDA when onnxruntime-gpu and a GPU are present)."""

from __future__ import annotations

import os

import numpy as np
import torch

from dfine.backends.base import Backend, Detections3, as_numpy, missing_package


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(
        self,
        weights: str | os.PathLike,
        *,
        size: tuple[int, int] | None = None,
        device: str = "cpu",
        threads: int | None = None,
        precision: str | None = None,
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise missing_package("onnxruntime", "onnxruntime", "ONNX Runtime") from e
        meta = self._init_from_onnx(weights, size)
        self.precision = _check_precision(self.path, meta["precision"], precision)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = ["CPUExecutionProvider"]
        if str(device).startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise RuntimeError(
                    "device cuda asked for, but this onnxruntime has no CUDA provider: "
                    "pip install onnxruntime-gpu (and have a CUDA GPU)"
                )
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(str(self.path), options, providers=providers)

    def run_raw(self, images: np.ndarray, orig_sizes: np.ndarray) -> list[np.ndarray]:
        feed = {"images": as_numpy(images), "orig_target_sizes": as_numpy(orig_sizes, np.int64)}
        return self.session.run(None, feed)

    def detect(self, images: torch.Tensor, orig_sizes: torch.Tensor) -> Detections3:
        labels, boxes, scores = self.run_raw(images, orig_sizes)
        return torch.from_numpy(labels), torch.from_numpy(boxes), torch.from_numpy(scores)


def _check_precision(path, stored: str, asked: str | None) -> str:
    """ONNX Runtime runs a graph at the precision it was exported with (f32, fp16, INT8 QDQ);
    ``asked`` must match it (bf16 has no ONNX Runtime CPU kernels: use OpenVINO)."""
    from dfine.precision import normalize_precision

    if asked is None:
        return stored
    asked = normalize_precision(asked)
    if asked == "bf16":
        raise ValueError(
            "ONNX Runtime has no bf16 CPU path; use backend='openvino' with precision='bf16'"
        )
    if asked != stored:
        how = {
            "int8": "dfine export W --format onnx --precision int8 --calibration DIR",
            "fp16": "dfine export W --half",
            "f32": "dfine export W",
        }[asked]
        raise ValueError(f"{path} is a {stored} graph; for {asked} export one with: {how}")
    return stored
