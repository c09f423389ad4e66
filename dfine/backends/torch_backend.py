"""PyTorch backend (eager or deployed), the only one that can also trace the decoder."""

from __future__ import annotations

import copy
import os

import torch

from dfine.backends.base import Backend, BatchDetections, Device, torch_device
from dfine.checkpoint import load_model
from dfine.errors import InvalidArgumentError
from dfine.model import DFINE
from dfine.postprocess import topk_detections


def _would_change(model: DFINE, deploy: bool, device: torch.device) -> bool:
    """Whether running ``model`` here would change it: fuse it, switch it to eval mode or move
    it to ``device``. An eval-mode model already on ``device`` (and deployed, if asked) is
    shared as it is; any other is copied first."""
    param = next(model.parameters(), None)
    moved = param is not None and param.device != device
    return (deploy and not model.deployed) or model.training or moved


class TorchBackend(Backend):
    name = "torch"

    def __init__(
        self,
        weights: str | os.PathLike | DFINE,
        *,
        size: tuple[int, int] | None = None,
        device: Device = None,
        deploy: bool = True,
        num_top: int = 300,
        family: str | None = None,
        decoder_layers: int | None = None,
        num_queries: int | None = None,
    ) -> None:
        self.device = torch_device(device)
        owned = not isinstance(weights, DFINE)
        model = load_model(weights, device=self.device, family=family) if owned else weights
        if family is not None and model.family != family:
            raise InvalidArgumentError(f"the model given is a {model.family} model, not {family}")
        budget = decoder_layers is not None or num_queries is not None
        if not owned and (budget or _would_change(model, deploy, self.device)):
            model, owned = copy.deepcopy(model), True  # the caller's model is never changed
        if deploy and not model.deployed:
            model = model.deploy()
        if budget:
            model.eval().set_decoder_budget(
                model.decoder_layers if decoder_layers is None else decoder_layers,
                model.num_queries if num_queries is None else num_queries,
            )
        self.model = model.to(self.device).eval()
        self.decoder_layers, self.num_queries = model.decoder_layers, model.num_queries
        self.input_size = tuple(size or model.config.eval_size)
        self.num_classes = model.num_classes
        self.class_names = model.class_names
        self.num_top = num_top

    @torch.inference_mode()
    def detect(self, images: torch.Tensor, orig_sizes: torch.Tensor) -> BatchDetections:
        out = self.model(images.to(self.device))
        top = topk_detections(
            out["pred_logits"], out["pred_boxes"], orig_sizes.to(self.device), self.num_top
        )
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return top.cpu()
