"""HGNetv2 backbone (PP-HGNetV2 as used by D-FINE).

State-dict names follow the reference exactly (``stem.stem1.conv.weight``,
``stages.2.blocks.1.layers.0.conv2.lab.scale``, ...), so official checkpoints load as they are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import fuse_conv_bn_eval

from dfine.config import HGNETV2_ARCHS, BackboneConfig
from dfine.nn.common import FrozenBatchNorm2d


class LearnableAffineBlock(nn.Module):
    """``scale * x + bias`` with two learnable scalars (the "LAB" of HGNetv2)."""

    def __init__(self, scale_value: float = 1.0, bias_value: float = 0.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([scale_value]))
        self.bias = nn.Parameter(torch.tensor([bias_value]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x + self.bias


class ConvBNAct(nn.Module):
    """Conv (no bias, "same"-style padding ``(k-1)//2``) → BatchNorm → ReLU → optional LAB."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        use_act: bool = True,
        use_lab: bool = False,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_chs,
            out_chs,
            kernel_size,
            stride,
            padding=(kernel_size - 1) // 2,
            groups=groups,
            bias=False,
        )
        self.bn = nn.BatchNorm2d(out_chs)
        self.act = nn.ReLU() if use_act else nn.Identity()
        self.lab = LearnableAffineBlock() if (use_act and use_lab) else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lab(self.act(self.bn(self.conv(x))))

    def fuse(self) -> None:
        """Inference only: fold the norm into the conv and ReLU + LAB into one clamp.

        ``scale * relu(y) + bias`` equals ``max(scale*y + bias, bias)`` for scale > 0 (``min``
        for scale < 0), so the scale and bias move into the conv and one clamp remains.
        """
        if isinstance(self.bn, nn.Identity):
            return
        self.conv = fuse_conv_bn_eval(self.conv, self.bn)
        self.bn = nn.Identity()
        if isinstance(self.lab, LearnableAffineBlock) and isinstance(self.act, nn.ReLU):
            scale, bias = self.lab.scale.item(), self.lab.bias.item()
            with torch.no_grad():
                self.conv.weight.mul_(scale)
                self.conv.bias.mul_(scale).add_(bias)
            self.act = ClampAt(bias, sign=(scale > 0) - (scale < 0))
            self.lab = nn.Identity()


class ClampAt(nn.Module):
    """``max(x, value)`` (sign +1), ``min(x, value)`` (sign -1) or the constant (sign 0)."""

    def __init__(self, value: float, sign: int) -> None:
        super().__init__()
        self.value, self.sign = value, sign

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.sign > 0:
            return x.clamp_min_(self.value) if not x.requires_grad else x.clamp_min(self.value)
        if self.sign < 0:
            return x.clamp_max(self.value)
        return torch.full_like(x, self.value)


class LightConvBNAct(nn.Module):
    """Pointwise ConvBN (no activation) followed by a depthwise ConvBNAct."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, use_lab: bool = False) -> None:
        super().__init__()
        self.conv1 = ConvBNAct(in_chs, out_chs, 1, use_act=False, use_lab=use_lab)
        self.conv2 = ConvBNAct(out_chs, out_chs, kernel_size, groups=out_chs, use_lab=use_lab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x))


class StemBlock(nn.Module):
    """Stride-4 stem: conv, then a conv branch and a max-pool branch concatenated, then 2 convs."""

    def __init__(self, in_chs: int, mid_chs: int, out_chs: int, use_lab: bool = False) -> None:
        super().__init__()
        self.stem1 = ConvBNAct(in_chs, mid_chs, 3, stride=2, use_lab=use_lab)
        self.stem2a = ConvBNAct(mid_chs, mid_chs // 2, 2, use_lab=use_lab)
        self.stem2b = ConvBNAct(mid_chs // 2, mid_chs, 2, use_lab=use_lab)
        self.stem3 = ConvBNAct(mid_chs * 2, mid_chs, 3, stride=2, use_lab=use_lab)
        self.stem4 = ConvBNAct(mid_chs, out_chs, 1, use_lab=use_lab)
        self.pool = nn.MaxPool2d(kernel_size=2, stride=1, ceil_mode=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(self.stem1(x), (0, 1, 0, 1))
        branch_conv = self.stem2b(F.pad(self.stem2a(x), (0, 1, 0, 1)))
        if x.requires_grad:
            branch_pool = self.pool(x)  # max_pool2d routes tie gradients like the reference
        else:
            # the same 2x2 / stride-1 max, 30x faster than max_pool2d_with_indices on CPU
            branch_pool = torch.maximum(
                torch.maximum(x[..., :-1, :-1], x[..., 1:, :-1]),
                torch.maximum(x[..., :-1, 1:], x[..., 1:, 1:]),
            )
        x = torch.cat([branch_pool, branch_conv], dim=1)
        return self.stem4(self.stem3(x))


class HGBlock(nn.Module):
    """``layer_num`` convs in a chain; all intermediate maps are concatenated and aggregated
    by a squeeze (1x1 to out/2) and an excitation (1x1 to out) conv. Residual after block 0."""

    def __init__(
        self,
        in_chs: int,
        mid_chs: int,
        out_chs: int,
        layer_num: int,
        kernel_size: int = 3,
        residual: bool = False,
        light_block: bool = False,
        use_lab: bool = False,
    ) -> None:
        super().__init__()
        self.residual = residual
        self.layers = nn.ModuleList()
        for i in range(layer_num):
            chs = in_chs if i == 0 else mid_chs
            if light_block:
                layer = LightConvBNAct(chs, mid_chs, kernel_size, use_lab=use_lab)
            else:
                layer = ConvBNAct(chs, mid_chs, kernel_size, use_lab=use_lab)
            self.layers.append(layer)
        total_chs = in_chs + layer_num * mid_chs
        self.aggregation = nn.Sequential(
            ConvBNAct(total_chs, out_chs // 2, 1, use_lab=use_lab),
            ConvBNAct(out_chs // 2, out_chs, 1, use_lab=use_lab),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = [x]
        y = x
        for layer in self.layers:
            y = layer(y)
            outputs.append(y)
        y = self.aggregation(torch.cat(outputs, dim=1))
        return y + x if self.residual else y


class HGStage(nn.Module):
    """Optional depthwise stride-2 downsample, then ``block_num`` HG blocks."""

    def __init__(
        self,
        in_chs: int,
        mid_chs: int,
        out_chs: int,
        block_num: int,
        layer_num: int,
        downsample: bool = True,
        light_block: bool = False,
        kernel_size: int = 3,
        use_lab: bool = False,
    ) -> None:
        super().__init__()
        if downsample:
            self.downsample = ConvBNAct(
                in_chs, in_chs, 3, stride=2, groups=in_chs, use_act=False, use_lab=use_lab
            )
        else:
            self.downsample = nn.Identity()
        self.blocks = nn.Sequential(
            *(
                HGBlock(
                    in_chs if i == 0 else out_chs,
                    mid_chs,
                    out_chs,
                    layer_num,
                    kernel_size=kernel_size,
                    residual=i > 0,
                    light_block=light_block,
                    use_lab=use_lab,
                )
                for i in range(block_num)
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


def _freeze_batch_norms(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d below ``module`` by a FrozenBatchNorm2d (buffers only)."""
    if isinstance(module, nn.BatchNorm2d):
        return FrozenBatchNorm2d(module.num_features, eps=module.eps)
    for name, child in module.named_children():
        new = _freeze_batch_norms(child)
        if new is not child:
            setattr(module, name, new)
    return module


class HGNetv2(nn.Module):
    """HGNetv2. Input ``[B, 3, H, W]`` → list of feature maps for ``cfg.return_idx``,
    e.g. ``[B, 512, H/16, W/16], [B, 1024, H/32, W/32]`` for B0 with return_idx (2, 3)."""

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        if cfg.name not in HGNETV2_ARCHS:
            raise ValueError(
                f"unknown HGNetv2 variant {cfg.name!r}; choose from {list(HGNETV2_ARCHS)}"
            )
        arch = HGNETV2_ARCHS[cfg.name]
        self.return_idx = tuple(cfg.return_idx)
        self.stem = StemBlock(*arch["stem"], use_lab=cfg.use_lab)
        self.stages = nn.ModuleList(
            HGStage(
                in_chs,
                mid_chs,
                out_chs,
                block_num,
                layer_num,
                downsample,
                light_block,
                kernel_size,
                cfg.use_lab,
            )
            for (
                in_chs,
                mid_chs,
                out_chs,
                block_num,
                downsample,
                light_block,
                kernel_size,
                layer_num,
            ) in arch["stages"]
        )
        if cfg.freeze_stem:
            for p in self.stem.parameters():
                p.requires_grad_(False)
        if cfg.freeze_norm:
            _freeze_batch_norms(self)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        outs = []
        for idx, stage in enumerate(self.stages):
            x = stage(x)
            if idx in self.return_idx:
                outs.append(x)
            if idx >= self.return_idx[-1]:
                break
        return outs
