"""Model configurations: one frozen dataclass per model part, and the five official presets.

The values mirror the reference configs ``configs/dfine/dfine_hgnetv2_{n,s,m,l,x}_coco.yml``
(D-FINE commit 4a1f73a), including the defaults they inherit from
``configs/dfine/include/dfine_hgnetv2.yml``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from dfine.errors import InvalidArgumentError

# HGNetv2 variants: stem channels (in, mid, out) and per stage
# (in_ch, mid_ch, out_ch, num_blocks, downsample, light_block, kernel_size, layer_num).
StageSpec = tuple[int, int, int, int, bool, bool, int, int]
HGNETV2_ARCHS: dict[str, dict] = {
    "B0": {
        "stem": (3, 16, 16),
        "stages": (
            (16, 16, 64, 1, False, False, 3, 3),
            (64, 32, 256, 1, True, False, 3, 3),
            (256, 64, 512, 2, True, True, 5, 3),
            (512, 128, 1024, 1, True, True, 5, 3),
        ),
    },
    "B1": {
        "stem": (3, 24, 32),
        "stages": (
            (32, 32, 64, 1, False, False, 3, 3),
            (64, 48, 256, 1, True, False, 3, 3),
            (256, 96, 512, 2, True, True, 5, 3),
            (512, 192, 1024, 1, True, True, 5, 3),
        ),
    },
    "B2": {
        "stem": (3, 24, 32),
        "stages": (
            (32, 32, 96, 1, False, False, 3, 4),
            (96, 64, 384, 1, True, False, 3, 4),
            (384, 128, 768, 3, True, True, 5, 4),
            (768, 256, 1536, 1, True, True, 5, 4),
        ),
    },
    "B3": {
        "stem": (3, 24, 32),
        "stages": (
            (32, 32, 128, 1, False, False, 3, 5),
            (128, 64, 512, 1, True, False, 3, 5),
            (512, 128, 1024, 3, True, True, 5, 5),
            (1024, 256, 2048, 1, True, True, 5, 5),
        ),
    },
    "B4": {
        "stem": (3, 32, 48),
        "stages": (
            (48, 48, 128, 1, False, False, 3, 6),
            (128, 96, 512, 1, True, False, 3, 6),
            (512, 192, 1024, 3, True, True, 5, 6),
            (1024, 384, 2048, 1, True, True, 5, 6),
        ),
    },
    "B5": {
        "stem": (3, 32, 64),
        "stages": (
            (64, 64, 128, 1, False, False, 3, 6),
            (128, 128, 512, 2, True, False, 3, 6),
            (512, 256, 1024, 5, True, True, 5, 6),
            (1024, 512, 2048, 2, True, True, 5, 6),
        ),
    },
}


@dataclass(frozen=True)
class BackboneConfig:
    """HGNetv2 backbone.

    ``return_idx`` selects which of the four stages (strides 4, 8, 16, 32) feed the encoder.
    ``freeze_norm`` swaps every BatchNorm for a FrozenBatchNorm2d (L and X);
    ``freeze_stem`` sets ``requires_grad=False`` on the stem (the reference's
    ``freeze_at=0, freeze_stem_only=True``).
    """

    name: str = "B0"
    use_lab: bool = True
    return_idx: tuple[int, ...] = (1, 2, 3)
    freeze_norm: bool = False
    freeze_stem: bool = False

    @property
    def out_channels(self) -> tuple[int, ...]:
        stages = HGNETV2_ARCHS[self.name]["stages"]
        return tuple(stages[i][2] for i in self.return_idx)

    @property
    def out_strides(self) -> tuple[int, ...]:
        return tuple((4, 8, 16, 32)[i] for i in self.return_idx)


@dataclass(frozen=True)
class EncoderConfig:
    """HybridEncoder: AIFI (one transformer layer on the top level) plus CCFF fusion."""

    in_channels: tuple[int, ...] = (512, 1024, 2048)
    feat_strides: tuple[int, ...] = (8, 16, 32)
    hidden_dim: int = 256
    nhead: int = 8
    dim_feedforward: int = 1024
    dropout: float = 0.0
    enc_act: str = "gelu"
    use_encoder_idx: tuple[int, ...] = (2,)
    num_encoder_layers: int = 1
    pe_temperature: float = 10000.0
    expansion: float = 1.0
    depth_mult: float = 1.0
    act: str = "silu"


ABLATIONS: tuple[str, ...] = ("none", "golsd", "fdr")
"""Training switches of the paper's ablation (``DecoderConfig.ablation``):

- ``"none"``: the full D-FINE (FDR + GO-LSD), the reference model;
- ``"golsd"``: GO-LSD removed: FDR with its FGL loss, but no DDF self-distillation and no
  union of matches over layers (each output set is trained on its own Hungarian matching);
- ``"fdr"``: FDR removed (and GO-LSD with it, which distills FDR's distributions): the box
  head predicts 4 deltas per layer, refined RT-DETR-style in inverse-sigmoid space, trained
  with L1 + GIoU on every layer; no distributions, no FGL/DDF, no LQE (it reads distribution
  statistics) and no pre-head (layer 0's own head gives its box) — an RT-DETR-style decoder.
"""


ABLATION_NOTES: dict[str, str] = {
    "none": "full D-FINE: FDR + GO-LSD",
    "golsd": "trained without GO-LSD: FDR + FGL, no DDF",
    "fdr": "trained without FDR: RT-DETR-style box deltas, no distributions",
}
"""One line per ablation switch, for ``dfine inspect`` and the app's Model tab."""


FAMILIES: dict[str, str] = {"dfine": "relu", "deim": "silu"}
"""The models of D-FINE's architecture this project builds, by family name, with their decoder
activation. ``deim`` is DEIM-D-FINE (DEIM, CVPR 2025: ``configs/base/deim.yml`` sets
``DFINETransformer.activation`` and ``mlp_act`` to ``silu``): the same modules and state-dict
keys as D-FINE, but SiLU in the decoder FFNs, the query-position head, the encoder/pre-box and
box heads and the LQEs, and an unfrozen backbone BatchNorm in every size. The backbone and the
encoder (GELU in AIFI, SiLU in CCFF) are D-FINE's."""

FAMILY_NOTES: dict[str, str] = {
    "dfine": "D-FINE (ReLU decoder)",
    "deim": "DEIM-D-FINE (SiLU decoder, trained with DEIM)",
}
"""One line per family, for ``dfine inspect`` and the app's Model tab."""


def check_family(family: str) -> str:
    """``family`` if it is one of :data:`FAMILIES`, else an error naming them."""
    if family not in FAMILIES:
        raise InvalidArgumentError(
            f"unknown model family {family!r}; choose one of {', '.join(FAMILIES)}"
        )
    return family


@dataclass(frozen=True)
class DecoderConfig:
    """D-FINE transformer decoder with Fine-grained Distribution Refinement.

    ``activation`` is the decoder layers' FFN activation, ``mlp_act`` that of every decoder
    MLP (query-position head, encoder/pre/box heads and the LQE): ReLU in D-FINE, SiLU in
    DEIM (see :data:`FAMILIES`). ``ablation`` switches FDR / GO-LSD off for the paper's
    ablation (see :data:`ABLATIONS`).
    """

    num_classes: int = 80
    hidden_dim: int = 256
    num_queries: int = 300
    feat_channels: tuple[int, ...] = (256, 256, 256)
    feat_strides: tuple[int, ...] = (8, 16, 32)
    num_levels: int = 3
    num_points: tuple[int, ...] = (3, 6, 3)
    nhead: int = 8
    num_layers: int = 6
    dim_feedforward: int = 1024
    dropout: float = 0.0
    activation: str = "relu"
    mlp_act: str = "relu"
    num_denoising: int = 100
    label_noise_ratio: float = 0.5
    box_noise_scale: float = 1.0
    eval_idx: int = -1
    eps: float = 1e-2
    reg_max: int = 32
    reg_scale: int = 4
    up: float = 0.5
    ablation: str = "none"

    def __post_init__(self) -> None:
        if self.ablation not in ABLATIONS:
            raise InvalidArgumentError(
                f"unknown ablation {self.ablation!r}; choose one of {', '.join(ABLATIONS)}"
            )

    @property
    def distributions(self) -> bool:
        """Whether boxes come from per-edge distributions (FDR); False for ``ablation="fdr"``."""
        return self.ablation != "fdr"

    @property
    def last_layer(self) -> int:
        """Index of the layer whose outputs are returned in eval mode."""
        return self.eval_idx if self.eval_idx >= 0 else self.num_layers + self.eval_idx


@dataclass(frozen=True)
class ModelConfig:
    """A whole D-FINE model. ``eval_size`` is (height, width) of the reference's stored anchors."""

    size: str
    backbone: BackboneConfig
    encoder: EncoderConfig
    decoder: DecoderConfig
    eval_size: tuple[int, int] = (640, 640)

    @property
    def num_classes(self) -> int:
        return self.decoder.num_classes

    @property
    def ablation(self) -> str:
        return self.decoder.ablation

    @property
    def family(self) -> str:
        """``deim`` when every decoder activation is SiLU, else ``dfine`` (see :data:`FAMILIES`)."""
        act = FAMILIES["deim"]
        return "deim" if self.decoder.activation == self.decoder.mlp_act == act else "dfine"

    def with_family(self, family: str) -> ModelConfig:
        """The same model in ``family``: its decoder activations and, for ``deim``, an unfrozen
        backbone (DEIM's ``HGNetv2: {freeze_at: -1, freeze_norm: False}``); ``dfine`` restores
        the preset's backbone freezing."""
        act = FAMILIES[check_family(family)]
        preset = PRESETS[self.size].backbone
        frozen = family == "dfine"
        backbone = dataclasses.replace(
            self.backbone,
            freeze_norm=preset.freeze_norm and frozen,
            freeze_stem=preset.freeze_stem and frozen,
        )
        decoder = dataclasses.replace(self.decoder, activation=act, mlp_act=act)
        return dataclasses.replace(self, backbone=backbone, decoder=decoder)

    def with_ablation(self, ablation: str) -> ModelConfig:
        """The same model with the ablation switch ``ablation`` (see :data:`ABLATIONS`)."""
        return dataclasses.replace(
            self, decoder=dataclasses.replace(self.decoder, ablation=ablation)
        )

    def with_num_classes(self, num_classes: int) -> ModelConfig:
        if num_classes < 1:
            raise InvalidArgumentError(f"num_classes must be >= 1, got {num_classes}")
        return dataclasses.replace(
            self, decoder=dataclasses.replace(self.decoder, num_classes=num_classes)
        )


def _preset(size: str) -> ModelConfig:
    if size == "n":
        return ModelConfig(
            size="n",
            backbone=BackboneConfig(name="B0", use_lab=True, return_idx=(2, 3)),
            encoder=EncoderConfig(
                in_channels=(512, 1024),
                feat_strides=(16, 32),
                hidden_dim=128,
                use_encoder_idx=(1,),
                dim_feedforward=512,
                expansion=0.34,
                depth_mult=0.5,
            ),
            decoder=DecoderConfig(
                hidden_dim=128,
                feat_channels=(128, 128),
                feat_strides=(16, 32),
                num_levels=2,
                num_points=(6, 6),
                num_layers=3,
                dim_feedforward=512,
            ),
        )
    if size == "s":
        return ModelConfig(
            size="s",
            backbone=BackboneConfig(name="B0", use_lab=True),
            encoder=EncoderConfig(in_channels=(256, 512, 1024), expansion=0.5, depth_mult=0.34),
            decoder=DecoderConfig(num_layers=3),
        )
    if size == "m":
        return ModelConfig(
            size="m",
            backbone=BackboneConfig(name="B2", use_lab=True),
            encoder=EncoderConfig(in_channels=(384, 768, 1536), depth_mult=0.67),
            decoder=DecoderConfig(num_layers=4),
        )
    if size == "l":
        return ModelConfig(
            size="l",
            backbone=BackboneConfig(name="B4", use_lab=False, freeze_norm=True, freeze_stem=True),
            encoder=EncoderConfig(),
            decoder=DecoderConfig(),
        )
    if size == "x":
        return ModelConfig(
            size="x",
            backbone=BackboneConfig(name="B5", use_lab=False, freeze_norm=True, freeze_stem=True),
            encoder=EncoderConfig(hidden_dim=384, dim_feedforward=2048),
            decoder=DecoderConfig(feat_channels=(384, 384, 384), reg_scale=8),
        )
    raise InvalidArgumentError(f"unknown model size {size!r}; choose one of {', '.join(SIZES)}")


SIZES: tuple[str, ...] = ("n", "s", "m", "l", "x")
PRESETS: dict[str, ModelConfig] = {s: _preset(s) for s in SIZES}


def get_config(
    size: str, num_classes: int = 80, ablation: str = "none", family: str = "dfine"
) -> ModelConfig:
    """The preset for ``size`` (one of ``n s m l x``) with ``num_classes`` classes, the
    ablation switch ``ablation`` (``none``, the full model; see :data:`ABLATIONS`) and the
    model family ``family`` (``dfine`` or ``deim``, see :data:`FAMILIES`)."""
    key = size.lower().removeprefix("dfine_").removeprefix("dfine-")
    if key not in PRESETS:
        raise InvalidArgumentError(f"unknown model size {size!r}; choose one of {', '.join(SIZES)}")
    cfg = PRESETS[key].with_num_classes(num_classes)
    cfg = cfg if ablation == "none" else cfg.with_ablation(ablation)
    return cfg if check_family(family) == "dfine" else cfg.with_family(family)
