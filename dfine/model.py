"""The D-FINE detector: HGNetv2 backbone → HybridEncoder → D-FINE decoder."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.utils import fuse_conv_bn_eval

from dfine.config import DecoderConfig, ModelConfig, get_config
from dfine.errors import InvalidArgumentError
from dfine.nn.backbone import ConvBNAct, HGNetv2
from dfine.nn.decoder import DecoderTrace, DFINEDecoder, TransformerDecoderLayer
from dfine.nn.encoder import ConvNorm, HybridEncoder, TransformerEncoderLayer, VGGBlock


class DFINE(nn.Module):
    """D-FINE. ``forward(images [B, 3, H, W] in [0, 1], targets=None)``.

    Eval mode returns ``{"pred_logits": [B, Q, C], "pred_boxes": [B, Q, 4]}`` (last decoder
    layer, LQE included; boxes cx, cy, w, h normalized to [0, 1]). Train mode returns the
    reference's full output dictionary for the criterion. H and W must be multiples of 32.
    """

    def __init__(self, cfg: ModelConfig, class_names: tuple[str, ...] | None = None) -> None:
        super().__init__()
        self.config = cfg
        self.class_names = class_names
        # registration order = state-dict order of the reference: backbone, decoder, encoder
        self.backbone = HGNetv2(cfg.backbone)
        self.decoder = DFINEDecoder(cfg.decoder, cfg.eval_size)
        self.encoder = HybridEncoder(cfg.encoder, shortcut_first=cfg.family == "deim")
        self.deployed = False

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def ablation(self) -> str:
        """The paper-ablation switch this model was built with (``none``, ``golsd``, ``fdr``)."""
        return self.config.decoder.ablation

    @property
    def family(self) -> str:
        """The model family (``dfine``, or ``deim``: DEIM's SiLU decoder; see
        :data:`dfine.config.FAMILIES`)."""
        return self.config.family

    @staticmethod
    def check_input(images: torch.Tensor) -> None:
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images)
            raise InvalidArgumentError(f"images must be a float tensor [B, 3, H, W], got {shape}")
        h, w = images.shape[-2:]
        if h % 32 or w % 32 or h < 64 or w < 64:
            raise InvalidArgumentError(
                f"input height and width must be multiples of 32 and at least 64, got {h}x{w}; "
                "resize the image (dfine.Detector does this for you)"
            )

    def forward(
        self, images: torch.Tensor, targets: list[dict[str, torch.Tensor]] | None = None
    ) -> dict[str, Any]:
        self.check_input(images)
        feats = self.encoder(self.backbone(self._layout(images)))
        return self.decoder(feats, targets)

    def _layout(self, images: torch.Tensor) -> torch.Tensor:
        # deployed models keep their weights channels-last (oneDNN's fast path on CPU)
        return images.contiguous(memory_format=torch.channels_last) if self.deployed else images

    @torch.inference_mode()
    def trace(self, images: torch.Tensor, attention: bool = True) -> DecoderTrace:
        """Eval-mode forward that records every decoder layer (see :class:`DecoderTrace`),
        with its attention (sampling points and weights, self-attention, encoder objectness)
        unless ``attention=False``.

        The model is put in eval mode for the call and restored afterwards.
        """
        self.check_input(images)
        was_training = self.training
        self.eval()
        try:
            feats = self.encoder(self.backbone(self._layout(images)))
            return self.decoder.trace(feats, (images.shape[-2], images.shape[-1]), attention)
        finally:
            self.train(was_training)

    def deploy(self) -> DFINE:
        """Inference-only speed-ups, in place: conv+BN folding everywhere, RepVGG blocks merged
        into single 3x3 convs, ReLU + learnable affine folded into one clamp, fused attention
        kernels, channels-last weights. Outputs equal eval mode up to float rounding (~1e-6);
        the state dict no longer has the reference layout afterwards."""
        self.eval()
        for m in list(self.modules()):
            if isinstance(m, (ConvBNAct, ConvNorm, VGGBlock)):
                m.fuse()
            elif isinstance(m, nn.Sequential) and isinstance(
                getattr(m, "norm", None), nn.BatchNorm2d
            ):
                m.conv = fuse_conv_bn_eval(m.conv, m.norm)  # input projections
                m.norm = nn.Identity()
            if isinstance(m, (TransformerEncoderLayer, TransformerDecoderLayer)):
                m.exact_attention = False
        self.to(memory_format=torch.channels_last)
        self.deployed = True
        return self

    def train(self, mode: bool = True) -> DFINE:
        if mode and self.deployed:
            raise RuntimeError("a deployed (fused) model cannot be trained; load it again")
        if mode and self.budget_limited:
            raise InvalidArgumentError(
                f"this model runs {self.decoder_layers} decoder layers on {self.num_queries} "
                "queries (an inference budget); training needs every layer and query: call "
                "model.set_decoder_budget() to lift it first"
            )
        return super().train(mode)

    # ------------------------------------------------------------------ inference budget
    @property
    def decoder_layers(self) -> int:
        """Decoder layers run in eval mode (the reference's ``eval_idx + 1``)."""
        return self.decoder.eval_layers

    @property
    def num_queries(self) -> int:
        """Encoder proposals kept in eval mode (top by their best class logit)."""
        return self.decoder.eval_queries

    @property
    def budget_limited(self) -> bool:
        """True when fewer decoder layers or queries than the model was built with run."""
        cfg = self.config.decoder
        return (self.decoder_layers, self.num_queries) != (cfg.num_layers, cfg.num_queries)

    def set_decoder_budget(
        self, decoder_layers: int | None = None, num_queries: int | None = None
    ) -> DFINE:
        """Run only the first ``decoder_layers`` decoder layers on the top ``num_queries``
        encoder proposals (eval mode; ``None``: all layers / the built number, 300 for the
        reference models). Outputs at depth K equal ``trace().boxes[K - 1]`` and
        ``trace().logits[K - 1]`` of the full model; :meth:`trace` records the K layers run.
        Training refuses a limited model (denoising and the auxiliary losses need every layer
        and query). In place; returns the model."""
        cfg = self.config.decoder
        k, q = decoder_budget(cfg, decoder_layers, num_queries)
        if self.training and (k, q) != (cfg.num_layers, cfg.num_queries):
            raise InvalidArgumentError(
                "an inference budget (decoder_layers / num_queries) is for eval mode; call "
                "model.eval() first (training needs every layer and query)"
            )
        self.decoder.eval_layers, self.decoder.eval_queries = k, q
        return self


def decoder_budget(
    cfg: DecoderConfig, decoder_layers: int | None, num_queries: int | None
) -> tuple[int, int]:
    """``(K, Q)`` checked against the decoder ``cfg`` (None: every layer / its queries); a
    value out of range is one line saying the range."""
    k = cfg.num_layers if decoder_layers is None else decoder_layers
    q = cfg.num_queries if num_queries is None else num_queries
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= cfg.num_layers:
        raise InvalidArgumentError(
            f"decoder_layers must be an integer from 1 to {cfg.num_layers} (this model's "
            f"decoder depth), got {decoder_layers!r}"
        )
    if isinstance(q, bool) or not isinstance(q, int) or not 1 <= q <= cfg.num_queries:
        raise InvalidArgumentError(
            f"num_queries must be an integer from 1 to {cfg.num_queries} (the queries this "
            f"model was trained with), got {num_queries!r}"
        )
    return k, q


def build_model(
    size: str = "n",
    num_classes: int = 80,
    class_names=None,
    ablation: str = "none",
    family: str = "dfine",
) -> DFINE:
    """A randomly initialised D-FINE of ``size`` (``n s m l x``), in train mode; ``ablation``
    switches FDR/GO-LSD off (see :data:`dfine.config.ABLATIONS`); ``family="deim"`` builds
    DEIM-D-FINE (see :data:`dfine.config.FAMILIES`)."""
    model = DFINE(get_config(size, num_classes, ablation, family), class_names=class_names)
    return model.train()
