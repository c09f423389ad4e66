"""ONNX Runtime backend (CPU; CUDA when onnxruntime-gpu and a GPU are present)."""

from __future__ import annotations

import os

import numpy as np
import torch

from dfine.backends.base import (
    Backend,
    BatchDetections,
    Device,
    as_numpy,
    torch_device,
)
from dfine.errors import InvalidArgumentError, missing
from dfine.precision import normalize_precision


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(
        self,
        weights: str | os.PathLike,
        *,
        size: tuple[int, int] | None = None,
        device: Device = None,
        threads: int | None = None,
        precision: str | None = None,
        spinning: bool = True,
    ) -> None:
        """``spinning``: ONNX Runtime's threads busy-wait for the next run after each one
        (its default, the lowest latency for one model); ``False`` lets them sleep, for
        timing several runtimes interleaved on few cores, where a spinning pool takes the
        cores of the next model timed."""
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise missing("the ONNX Runtime backend", "onnxruntime") from e
        self.device = torch_device(device)
        if self.device.type not in ("cpu", "cuda"):
            raise InvalidArgumentError(
                f"the ONNX Runtime backend runs on cpu or cuda, not {self.device}"
            )
        meta = self._init_from_onnx(weights, size)
        self.precision = _check_precision(self.path, meta["precision"], precision)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        if not spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = ["CPUExecutionProvider"]
        if self.device.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise missing(
                    f"ONNX Runtime on {self.device}",
                    "onnxruntime-gpu",
                    "pip install onnxruntime-gpu (and have a CUDA GPU)",
                )
            cuda = ("CUDAExecutionProvider", {"device_id": self.device.index or 0})
            providers.insert(0, cuda)
        self.session = ort.InferenceSession(str(self.path), options, providers=providers)

    def run_raw(self, images: np.ndarray, orig_sizes: np.ndarray) -> list[np.ndarray]:
        feed = {"images": as_numpy(images), "orig_target_sizes": as_numpy(orig_sizes, np.int64)}
        return self.session.run(None, feed)

    def detect(self, images: torch.Tensor, orig_sizes: torch.Tensor) -> BatchDetections:
        labels, boxes, scores = self.run_raw(images, orig_sizes)
        return BatchDetections(
            boxes=torch.from_numpy(boxes),
            scores=torch.from_numpy(scores),
            labels=torch.from_numpy(labels),
        )


def _check_precision(path, stored: str, asked: str | None) -> str:
    """ONNX Runtime runs a graph at the precision it was exported with (f32, fp16, INT8 QDQ);
    ``asked`` must match it (bf16 has no ONNX Runtime CPU kernels: use OpenVINO)."""

    if asked is None:
        return stored
    asked = normalize_precision(asked)
    if asked == "bf16":
        raise InvalidArgumentError(
            "ONNX Runtime has no bf16 CPU path; use backend='openvino' with precision='bf16'"
        )
    if asked != stored:
        how = {
            "int8": "an INT8 QDQ graph of your own (dfine's INT8 export is OpenVINO's: "
            "dfine export W --format openvino --precision int8 --calibration DIR)",
            "fp16": "dfine export W --half",
            "f32": "dfine export W",
        }[asked]
        raise InvalidArgumentError(
            f"{path} is a {stored} graph; for {asked} export one with: {how}"
        )
    return stored
