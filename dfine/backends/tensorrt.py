"""TensorRT backend: an engine built from the exported ONNX file, FP32 or FP16, cached by
ONNX hash, input shape, batch range and precision.

FP16 guard: after an FP16 build the engine is compared with the PyTorch model on sample
images. If scores or boxes drift beyond the bounds (``FP16_SCORE_TOL``, ``FP16_BOX_TOL``), the
engine is rebuilt with normalization, softmax and reduction layers pinned to FP32 (what users
of the reference found necessary); if that still drifts, the FP16 engine is refused and the
numbers are reported.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from dfine.backends.base import (
    Backend,
    BatchDetections,
    Device,
    backend_cache_dir,
    file_digest,
    torch_device,
)
from dfine.backends.torch_backend import TorchBackend
from dfine.errors import InvalidArgumentError, PrecisionGuardError, missing
from dfine.export import sample_images
from dfine.files import atomic_write
from dfine.parity import compare_detections

FP16_SCORE_TOL = 0.02  # max |score difference| of paired detections
FP16_BOX_TOL = 0.01  # max box coordinate difference, as a fraction of the image side


OUTPUTS = ("labels", "boxes", "scores")


def cuda_device(device: Device) -> torch.device:
    """The CUDA device TensorRT runs on: ``None`` → ``cuda:0``; a non-CUDA device is refused."""
    dev = torch_device(device, default="cuda:0")
    if dev.type != "cuda":
        raise InvalidArgumentError(
            f"the TensorRT backend runs on a CUDA GPU, not on {dev}: use device='cuda' "
            "(or 'cuda:N'), or the onnxruntime/openvino backend on the CPU"
        )
    return dev if dev.index is not None else torch.device("cuda", 0)


def _torch_dtype(trt_dtype) -> torch.dtype:
    """``tensorrt.DataType.X`` → the torch dtype of the same layout."""
    name = str(trt_dtype).rsplit(".", 1)[-1].upper()
    table = {
        "FLOAT": torch.float32,
        "HALF": torch.float16,
        "BF16": torch.bfloat16,
        "INT64": torch.int64,
        "INT32": torch.int32,
        "INT8": torch.int8,
        "BOOL": torch.bool,
    }
    if name not in table:
        raise RuntimeError(f"TensorRT output dtype {trt_dtype} is not supported")
    return table[name]


def output_buffers(engine, context, device: torch.device) -> dict[str, torch.Tensor]:
    """Empty tensors for the engine's outputs, shaped as the execution context reports them for
    the input shapes already set (``context.get_tensor_shape``) and typed as the engine says
    (``engine.get_tensor_dtype``): nothing assumes K = 300."""
    buffers = {}
    for name in OUTPUTS:
        shape = tuple(context.get_tensor_shape(name))
        if any(d < 0 for d in shape):
            raise RuntimeError(f"TensorRT output {name!r} has an unresolved shape {shape}")
        dtype = _torch_dtype(engine.get_tensor_dtype(name))
        buffers[name] = torch.empty(shape, dtype=dtype, device=device)
    return buffers


def _import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError as e:
        raise missing("the TensorRT backend", "tensorrt") from e
    if not torch.cuda.is_available():
        raise InvalidArgumentError(
            "the TensorRT backend needs a CUDA GPU; none is visible to torch"
        )
    return trt


def build_engine(
    onnx_path: Path,
    input_size: tuple[int, int],
    precision: str = "fp32",
    max_batch: int = 8,
    fp32_norm_layers: bool = False,
    workspace_gib: float = 4.0,
) -> bytes:
    """Serialized TensorRT engine for ``onnx_path`` (batch 1..max_batch)."""
    trt = _import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
        if fp32_norm_layers:
            config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
            keep = {trt.LayerType.NORMALIZATION, trt.LayerType.SOFTMAX, trt.LayerType.REDUCE}
            for i in range(network.num_layers):
                layer = network.get_layer(i)
                if layer.type in keep:
                    layer.precision = trt.float32
    h, w = input_size
    profile = builder.create_optimization_profile()
    profile.set_shape("images", (1, 3, h, w), (1, 3, h, w), (max_batch, 3, h, w))
    profile.set_shape("orig_target_sizes", (1, 2), (1, 2), (max_batch, 2))
    config.add_optimization_profile(profile)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path}")
    return bytes(engine)


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(
        self,
        weights: str | os.PathLike,
        *,
        size: tuple[int, int] | None = None,
        precision: str = "fp32",
        max_batch: int = 8,
        device: Device = None,
        guard: bool = True,
    ) -> None:
        if precision not in ("fp32", "fp16"):
            raise InvalidArgumentError(f"precision must be 'fp32' or 'fp16', got {precision!r}")
        self.device = cuda_device(device)
        trt = _import_tensorrt()
        self._init_from_onnx(weights, size)
        self.max_batch = max_batch
        self.precision = precision
        self.guard_report: str | None = None
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._load(self._engine_bytes(precision, fp32_norm=False))
        if precision == "fp16" and guard:
            self._guard(weights)

    def _engine_bytes(self, precision: str, fp32_norm: bool) -> bytes:
        h, w = self.input_size
        tag = f"{file_digest(self.path)}-{h}x{w}-b{self.max_batch}-{precision}{'-n32' if fp32_norm else ''}"
        cache = backend_cache_dir() / "tensorrt" / f"{tag}.engine"
        if cache.exists():
            return cache.read_bytes()
        data = build_engine(self.path, self.input_size, precision, self.max_batch, fp32_norm)
        atomic_write(cache, lambda tmp: tmp.write_bytes(data))
        return data

    def _load(self, data: bytes) -> None:
        self.engine = self._runtime.deserialize_cuda_engine(data)
        self.context = self.engine.create_execution_context()

    def _guard(self, weights) -> None:
        source = weights if Path(weights).suffix != ".onnx" else None
        if source is None:
            self.guard_report = "FP16 guard skipped: no PyTorch checkpoint to compare with"
            return
        reference = TorchBackend(source, size=self.input_size, device=self.device)
        images, sizes = sample_images(self.input_size)
        expected = reference.detect(images, sizes)
        for fp32_norm in (False, True):
            if fp32_norm:
                self._load(self._engine_bytes("fp16", fp32_norm=True))
            report = compare_detections(
                self.detect(images, sizes), expected, sizes, gate=FP16_SCORE_TOL + 4 * FP16_BOX_TOL
            )
            within = (
                report.paired_max_logit_diff <= FP16_SCORE_TOL
                and report.paired_max_box_diff <= FP16_BOX_TOL
            )
            mode = "FP16 with FP32 normalization" if fp32_norm else "FP16"
            self.guard_report = f"{mode} vs PyTorch FP32: {report.summary()}"
            if within:
                return
        raise PrecisionGuardError(
            f"the FP16 engine drifts beyond the bounds (scores {FP16_SCORE_TOL}, boxes "
            f"{FP16_BOX_TOL} of the image side) even with FP32 normalization layers: "
            f"{self.guard_report}. Use precision='fp32'."
        )

    def detect(self, images: torch.Tensor, orig_sizes: torch.Tensor) -> BatchDetections:
        b = images.shape[0]
        if b > self.max_batch:
            raise InvalidArgumentError(f"batch {b} exceeds the engine's max batch {self.max_batch}")
        x = images.to(self.device, torch.float32).contiguous()
        s = orig_sizes.to(self.device, torch.int64).contiguous()
        self.context.set_input_shape("images", tuple(x.shape))
        self.context.set_input_shape("orig_target_sizes", tuple(s.shape))
        outputs = output_buffers(self.engine, self.context, self.device)
        for name, tensor in [("images", x), ("orig_target_sizes", s), *outputs.items()]:
            self.context.set_tensor_address(name, tensor.data_ptr())
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        stream.synchronize()
        return BatchDetections(
            boxes=outputs["boxes"].float().cpu(),
            scores=outputs["scores"].float().cpu(),
            labels=outputs["labels"].long().cpu(),
        )
