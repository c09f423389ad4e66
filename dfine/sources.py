"""What a ``weights`` argument names, wherever one is accepted (``Detector``, ``load_model``,
the CLI's ``predict``/``inspect``/``val``/``export``/``benchmark``, the app's ``--model``):

- a checkpoint file: reference ``.pth`` / ``.pt`` or this project's ``.safetensors``;
- a Hugging Face transformers-layout folder (``config.json`` + weights, see :mod:`dfine.hf`);
- a model-zoo name (``dfine_n_coco``, also spelt ``dfine_n_coco.pth``), downloaded once;
- a Hugging Face Hub model id (``owner/name`` or ``owner/name@revision``) in the transformers
  ``d_fine`` layout, fetched into the Hub's cache (see :mod:`dfine.hub`);
- an exported ONNX graph (``.onnx``), run by a non-torch backend — ONNX Runtime unless told
  otherwise (:func:`default_backend`).

>>> default_backend("model.onnx"), default_backend("dfine_n_coco")
('onnxruntime', 'torch')

``backend="fastest"`` (``Detector``, ``dfine predict --backend fastest``, the app's plain
detection) picks with :func:`fastest_backend`.

Every failure is one line saying what failed, why and what to do.
"""

from __future__ import annotations

import os
from pathlib import Path

from dfine import hub, optional, zoo
from dfine.errors import InputFileError
from dfine.hf import is_hf_checkpoint
from dfine.weights import CheckpointError

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".safetensors")
ONNX_SUFFIX = ".onnx"
WEIGHT_SUFFIXES = (*CHECKPOINT_SUFFIXES, ONNX_SUFFIX)


def is_onnx(source: object) -> bool:
    """Whether ``source`` is a path (or path string) ending in ``.onnx``."""
    return isinstance(source, (str, os.PathLike)) and Path(source).suffix.lower() == ONNX_SUFFIX


def default_backend(source: object) -> str:
    """The backend that runs ``source``: ``onnxruntime`` for an ``.onnx`` file,
    ``openvino`` for an OpenVINO IR (``.xml``, e.g. a bf16/INT8 export), else ``torch``."""
    if isinstance(source, (str, os.PathLike)) and Path(source).suffix == ".xml":
        return "openvino"
    return "onnxruntime" if is_onnx(source) else "torch"


def fastest_backend(source: object, device: object = None) -> str:
    """The fastest runtime installed here for a plain detection (no trace) of ``source``.

    On the CPU: OpenVINO, else ONNX Runtime, else torch — the order measured end to end,
    interleaved (``benchmarks/results/runtime_cpu.md``, 2 threads: OpenVINO f32 1.27× /
    1.35× / 1.27× and ONNX Runtime 1.01× / 1.16× / 1.20× the deployed torch model for the
    demo model at 320² and N / S at 640²; ``backends_cpu.md`` agrees for N/S/L). A
    checkpoint is exported to ONNX once (cached, see :func:`dfine.backends.base.onnx_for`),
    which needs the ``onnx`` package; without it the checkpoint runs on torch. An OpenVINO
    ``.xml`` runs on OpenVINO and a ``DFINE`` model object on torch (only a file can be
    exported); on a GPU (``device`` not the CPU) the choice is :func:`default_backend`'s.
    Nothing is imported to decide."""
    if not isinstance(source, (str, os.PathLike)) or Path(source).suffix == ".xml":
        return default_backend(source)
    if device is not None and str(device).split(":")[0].lower() not in ("cpu",):
        return default_backend(source)
    exportable = is_onnx(source) or optional.available("onnx")
    for name in ("openvino", "onnxruntime"):
        if exportable and optional.available(name):
            return name
    return default_backend(source)


def resolve(source: str | os.PathLike) -> Path:
    """The local file or folder ``source`` names; a zoo name is downloaded first (once, into
    :func:`dfine.zoo.cache_dir`), a Hub model id fetched (into the Hub's cache).

    Raises ``FileNotFoundError`` (no such file, not a zoo name or Hub id), :class:`~dfine.
    checkpoint.CheckpointError` (a file of another kind), :class:`~dfine.zoo.ZooDownloadError`
    or :class:`~dfine.hub.HubError`."""
    path = Path(source).expanduser()
    if path.exists():
        if is_hf_checkpoint(path):
            return path
        if path.is_dir():
            raise CheckpointError(
                f"{path} is a folder, not a model: pass a checkpoint file, an exported .onnx "
                "file or a Hugging Face model folder (with config.json)"
            )
        if path.suffix.lower() not in WEIGHT_SUFFIXES:
            raise CheckpointError(
                f"{path} is not a weights file ({path.suffix or 'no suffix'}): pass a .pth or "
                ".safetensors checkpoint, an exported .onnx file, a Hugging Face model folder "
                f"or a model-zoo name such as {zoo.names()[0]}"
            )
        return path
    if zoo.is_zoo_name(str(source)):
        try:
            return zoo.download(str(source))
        except zoo.ZooDownloadError as e:
            note = (
                f"{source} is not a file here; it names the official checkpoint "
                f"{zoo.get(str(source)).name}, which could not be downloaded. "
            )
            raise zoo.ZooDownloadError(note + str(e)) from None
    if hub.is_hub_id(str(source)):
        return hub.snapshot(str(source))
    raise InputFileError(
        f"checkpoint not found: {source} is not a file, not a model-zoo name (names are like "
        f"{', '.join(zoo.names()[:3])}, ...; list them with `dfine inspect --zoo`) and not a "
        "Hugging Face Hub id (owner/name)"
    )


__all__ = [
    "CHECKPOINT_SUFFIXES",
    "WEIGHT_SUFFIXES",
    "default_backend",
    "is_onnx",
    "resolve",
]
