"""A backend (an exported ``.onnx`` run by ONNX Runtime, OpenVINO or TensorRT) seen as a
model by code written for one: evaluation loops call :meth:`BackendModel.detect` with the
batch and the original sizes instead of ``model(images)`` + ``postprocess``."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from dfine.backends import create_backend
from dfine.backends.base import Backend


@dataclass(frozen=True)
class BackendConfig:
    """The part of :class:`dfine.config.DFINEConfig` evaluation reads."""

    eval_size: tuple[int, int]


class BackendModel(nn.Module):
    """``backend`` with the attributes evaluation reads from a :class:`dfine.DFINE`
    (``num_classes``, ``class_names``, ``config.eval_size``, ``metadata``)."""

    def __init__(self, backend: Backend) -> None:
        super().__init__()
        self.backend = backend
        self.num_classes = backend.num_classes
        self.class_names = backend.class_names
        self.config = BackendConfig(tuple(backend.input_size))
        self.metadata: dict = {}

    @classmethod
    def load(
        cls,
        weights: str | os.PathLike,
        backend: str,
        device: str | torch.device = "cpu",
        precision: str | None = None,
        decoder_layers: int | None = None,
        num_queries: int | None = None,
    ) -> BackendModel:
        """``weights`` through ``backend``; ``precision``: see :mod:`dfine.precision` (default:
        the file's own); ``decoder_layers`` / ``num_queries``: the decoder's inference budget
        (see :func:`dfine.backends.create_backend`)."""
        options: dict = {"precision": precision} if precision is not None else {}
        options.update(decoder_layers=decoder_layers, num_queries=num_queries)
        return cls(create_backend(backend, weights, device=str(device), **options))

    def detect(
        self, images: torch.Tensor, orig_sizes: torch.Tensor
    ) -> list[dict[str, torch.Tensor]]:
        """``postprocess``-style results: one dict of ``labels``, ``boxes`` (xyxy pixels),
        ``scores`` per image."""
        out = self.backend.detect(images.cpu(), orig_sizes.cpu())
        return [
            {"labels": lab, "boxes": box, "scores": sco}
            for lab, box, sco in zip(out.labels, out.boxes, out.scores)
        ]

    def forward(self, images: torch.Tensor) -> None:  # pragma: no cover - guard
        raise TypeError("a backend model needs the original sizes: call detect(images, sizes)")
