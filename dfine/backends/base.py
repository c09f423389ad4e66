"""The interface every inference backend implements."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from dfine import zoo
from dfine.checkpoint import load_model
from dfine.errors import InputFileError, InvalidArgumentError
from dfine.export import export_onnx, read_metadata
from dfine.files import file_sha256
from dfine.postprocess import BatchDetections

Device = torch.device | str | None

RUNTIME_TITLES = {
    "torch": "PyTorch",
    "onnxruntime": "ONNX Runtime",
    "openvino": "OpenVINO",
    "tensorrt": "TensorRT",
}
"""Each backend's runtime as people write it."""


class Backend:
    """Runs a D-FINE graph: ``detect(images [B, 3, H, W] float32 in [0, 1], orig_sizes [B, 2]
    int64 (w, h))`` → :class:`~dfine.postprocess.BatchDetections` (``boxes [B, K, 4]`` xyxy in
    original pixels, ``scores [B, K]`` descending, ``labels [B, K]``) as CPU torch tensors.

    Every backend takes ``device: torch.device | str | None`` (None: the backend's default) and
    translates it to its runtime's own device name.

    Attributes: ``name``, ``input_size`` (h, w), ``num_classes``, ``class_names`` (or None),
    ``num_top`` (K, the detections kept per image), ``device`` (a ``torch.device``).
    """

    name = "base"
    input_size: tuple[int, int]
    num_classes: int
    class_names: tuple[str, ...] | None = None
    num_top: int = 300
    device: torch.device = torch.device("cpu")
    decoder_layers: int | None = None  # the inference budget run (None: not recorded)
    num_queries: int | None = None

    def detect(self, images: torch.Tensor, orig_sizes: torch.Tensor) -> BatchDetections:
        raise NotImplementedError

    @property
    def label(self) -> str:
        """What runs the model, for people: ``"OpenVINO f32"``, ``"PyTorch f32"``, …"""
        return f"{RUNTIME_TITLES.get(self.name, self.name)} {getattr(self, 'precision', 'f32')}"

    def _init_from_onnx(
        self, weights: str | os.PathLike, size: tuple[int, int] | None, postprocess: bool = True
    ) -> dict:
        """Resolve ``weights`` to an exported ONNX file and read its metadata."""
        self.path = onnx_for(weights, size)
        meta = read_metadata(self.path)
        if postprocess and not meta["postprocess"]:
            raise InvalidArgumentError(
                f"{self.path} was exported without postprocessing; export it with it"
            )
        self.input_size = tuple(meta["input_size"])
        self.num_classes = meta["num_classes"]
        self.class_names = tuple(meta["class_names"]) if meta["class_names"] else None
        self.num_top = meta["num_top"]
        self.decoder_layers, self.num_queries = meta["decoder_layers"], meta["num_queries"]
        return meta

    def __repr__(self) -> str:
        h, w = self.input_size
        return f"{type(self).__name__}(input {h}x{w}, {self.num_classes} classes)"


def torch_device(device: Device, default: str = "cpu") -> torch.device:
    """``device`` as a ``torch.device`` (``None`` → ``default``); a bad name is one clear line."""
    if device is None:
        device = default
    if isinstance(device, torch.device):
        return device
    try:
        return torch.device(str(device).strip().lower())
    except RuntimeError as e:
        raise InvalidArgumentError(
            f"unknown device {device!r}: use 'cpu', 'cuda' or 'cuda:N' (a torch device)"
        ) from e


def as_numpy(x: torch.Tensor | np.ndarray, dtype=np.float32) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(x, dtype=dtype)


def file_digest(path: str | os.PathLike, length: int = 16) -> str:
    """sha256 prefix of a file's bytes (cache keys for exported graphs and engines); for a
    Hugging Face model folder, of its files' digests by name."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file())
        text = "\n".join(f"{p.name} {file_sha256(p)}" for p in files)
        return hashlib.sha256(text.encode()).hexdigest()[:length]
    return file_sha256(path)[:length]


def backend_cache_dir() -> Path:
    path = zoo.cache_dir() / "backends"
    path.mkdir(parents=True, exist_ok=True)
    return path


def onnx_for(
    weights: str | os.PathLike,
    size: tuple[int, int] | None,
    decoder_layers: int | None = None,
    num_queries: int | None = None,
) -> Path:
    """An ONNX file for ``weights``: the file itself when it is ``.onnx``, otherwise an export
    (dynamic batch, in-graph postprocessing) cached by checkpoint hash, input size and
    inference budget (``decoder_layers`` / ``num_queries``, see
    :meth:`dfine.model.DFINE.set_decoder_budget`)."""
    path = Path(weights)
    if path.suffix == ".onnx":
        if not path.exists():
            raise InputFileError(f"ONNX file not found: {path}")
        return path
    if not path.exists():
        path = zoo.download(str(weights)) if zoo.is_zoo_name(str(weights)) else path
    model = load_model(path, decoder_layers=decoder_layers, num_queries=num_queries)
    size = tuple(size or model.config.eval_size)
    budget = f"-k{model.decoder_layers}q{model.num_queries}" if model.budget_limited else ""
    name = f"{path.stem}-{file_digest(path)}-{size[0]}x{size[1]}{budget}.onnx"
    out = backend_cache_dir() / name
    if not out.exists():
        export_onnx(model, out, size=size, check_parity=False)
    return out


def check_budget(
    path: Path, meta: dict, decoder_layers: int | None, num_queries: int | None
) -> None:
    """An exported file runs the budget it was exported with: asking for another is a user
    error naming the export that would give it."""
    for key, asked in (("decoder_layers", decoder_layers), ("num_queries", num_queries)):
        stored = meta.get(key)
        if asked is not None and stored is not None and asked != stored:
            flag = key.replace("_", "-")
            raise InvalidArgumentError(
                f"{path.name} was exported with {key}={stored}, not {asked}; export the "
                f"checkpoint again with --{flag} {asked} (or pass the checkpoint itself)"
            )
        if asked is not None and stored is None:
            raise InvalidArgumentError(
                f"{path.name} does not record its {key} (an older export: every layer, 300 "
                f"queries); export the checkpoint again with --{key.replace('_', '-')} {asked}"
            )
