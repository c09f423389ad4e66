"""HybridEncoder: intra-scale attention (AIFI) on the top level and cross-scale fusion (CCFF).

CCFF is a top-down FPN followed by a bottom-up PAN whose fusion blocks are RepNCSPELAN4
(CSP-ELAN with re-parameterisable VGG blocks) and whose downsampling is SCDown.
"""

from __future__ import annotations

import copy
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import fuse_conv_bn_eval

from dfine.config import EncoderConfig
from dfine.nn.common import get_activation, pad_kernel_to


class ConvNorm(nn.Module):
    """Conv2d → BatchNorm2d → activation (Identity when ``act`` is None)."""

    def __init__(
        self,
        ch_in: int,
        ch_out: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        padding: int | None = None,
        act: str | None = None,
    ) -> None:
        super().__init__()
        padding = (kernel_size - 1) // 2 if padding is None else padding
        self.conv = nn.Conv2d(
            ch_in, ch_out, kernel_size, stride, groups=groups, padding=padding, bias=False
        )
        self.norm = nn.BatchNorm2d(ch_out)
        self.act = get_activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))

    def fuse(self) -> None:
        """Fold the norm into the conv (inference only)."""
        if isinstance(self.norm, nn.Identity):
            return
        self.conv = fuse_conv_bn_eval(self.conv, self.norm)
        self.norm = nn.Identity()


class SCDown(nn.Module):
    """Spatial-channel decoupled downsampling: pointwise conv, then depthwise strided conv."""

    def __init__(self, c1: int, c2: int, k: int, s: int) -> None:
        super().__init__()
        self.cv1 = ConvNorm(c1, c2, 1, 1)
        self.cv2 = ConvNorm(c2, c2, k, s, groups=c2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv2(self.cv1(x))


class VGGBlock(nn.Module):
    """RepVGG block: ``act(bn(conv3x3(x)) + bn(conv1x1(x)))``; ``fuse()`` merges both into one
    3x3 conv with bias."""

    def __init__(self, ch_in: int, ch_out: int, act: str = "relu") -> None:
        super().__init__()
        self.conv1 = ConvNorm(ch_in, ch_out, 3, 1, padding=1)
        self.conv2 = ConvNorm(ch_in, ch_out, 1, 1, padding=0)
        self.act = get_activation(act)
        self.fused: nn.Conv2d | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused is not None:
            return self.act(self.fused(x))
        return self.act(self.conv1(x) + self.conv2(x))

    def fuse(self) -> None:
        if self.fused is not None:
            return
        c3 = fuse_conv_bn_eval(self.conv1.conv, self.conv1.norm)
        c1 = fuse_conv_bn_eval(self.conv2.conv, self.conv2.norm)
        with torch.no_grad():
            c3.weight.add_(pad_kernel_to(c1.weight, 3))
            c3.bias.add_(c1.bias)
        self.fused = c3
        del self.conv1, self.conv2


class CSPLayer(nn.Module):
    """Two pointwise branches; one goes through ``num_blocks`` VGG blocks; summed.
    ``shortcut_first``: compute the plain branch first (DEIM's order; same outputs, gradients
    accumulated in DEIM's order)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_blocks: int = 3,
        act: str = "silu",
        shortcut_first: bool = False,
    ) -> None:
        super().__init__()
        self.shortcut_first = shortcut_first
        self.conv1 = ConvNorm(in_channels, out_channels, 1, 1, act=act)
        self.conv2 = ConvNorm(in_channels, out_channels, 1, 1, act=act)
        self.bottlenecks = nn.Sequential(
            *(VGGBlock(out_channels, out_channels, act=act) for _ in range(num_blocks))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shortcut_first:
            shortcut = self.conv2(x)
            return self.bottlenecks(self.conv1(x)) + shortcut
        return self.bottlenecks(self.conv1(x)) + self.conv2(x)


class RepNCSPELAN4(nn.Module):
    """CSP-ELAN fusion block: split a pointwise projection in two halves, run two CSP branches
    on the second half in sequence, concatenate all four maps and project to ``c2``."""

    def __init__(
        self,
        c1: int,
        c2: int,
        c3: int,
        c4: int,
        n: int = 3,
        act: str = "silu",
        shortcut_first: bool = False,
    ) -> None:
        super().__init__()
        self.c = c3 // 2
        self.cv1 = ConvNorm(c1, c3, 1, 1, act=act)
        first = shortcut_first
        self.cv2 = nn.Sequential(
            CSPLayer(c3 // 2, c4, n, act=act, shortcut_first=first), ConvNorm(c4, c4, 3, 1, act=act)
        )
        self.cv3 = nn.Sequential(
            CSPLayer(c4, c4, n, act=act, shortcut_first=first), ConvNorm(c4, c4, 3, 1, act=act)
        )
        self.cv4 = ConvNorm(c3 + 2 * c4, c2, 1, 1, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.cv1(x).split((self.c, self.c), 1)
        c = self.cv2(b)
        d = self.cv3(c)
        return self.cv4(torch.cat([a, b, c, d], 1))


class TransformerEncoderLayer(nn.Module):
    """Post-norm transformer encoder layer; the position embedding is added to queries and keys.

    ``exact_attention`` (default True) computes attention the way the reference does
    (``need_weights=True``: explicit softmax), bit for bit; ``deploy`` turns it off to use
    PyTorch's fused scaled-dot-product kernel, which differs by float rounding only.
    """

    exact_attention: bool = True

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout, batch_first=True)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.activation = get_activation(activation)

    def forward(self, src: torch.Tensor, pos_embed: torch.Tensor | None = None) -> torch.Tensor:
        """``src [B, L, C]``, ``pos_embed [1, L, C]`` → ``[B, L, C]``."""
        q = k = src if pos_embed is None else src + pos_embed
        attn, _ = self.self_attn(q, k, value=src, need_weights=self.exact_attention)
        src = self.norm1(src + self.dropout1(attn))
        ffn = self.linear2(self.dropout(self.activation(self.linear1(src))))
        return self.norm2(src + self.dropout2(ffn))


class TransformerEncoder(nn.Module):
    def __init__(
        self, d_model: int, nhead: int, dim_ff: int, dropout: float, act: str, num_layers: int
    ) -> None:
        super().__init__()
        layer = TransformerEncoderLayer(d_model, nhead, dim_ff, dropout, act)
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))

    def forward(self, src: torch.Tensor, pos_embed: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self.layers:
            src = layer(src, pos_embed=pos_embed)
        return src


def sincos_position_embedding(
    w: int, h: int, embed_dim: int = 256, temperature: float = 10000.0
) -> torch.Tensor:
    """2-D sin-cos embedding ``[1, w*h, embed_dim]`` as the reference computes it.

    Note the reference's layout: the grid is built with ``meshgrid(arange(w), arange(h),
    indexing="ij")`` and flattened, so for non-square maps the first half of the channels
    varies along the flattened row index divided by ``h``. It is reproduced as is, since
    trained checkpoints depend on it.
    """
    if embed_dim % 4 != 0:
        raise ValueError("embed_dim must be divisible by 4 for the 2-D sin-cos embedding")
    grid_w, grid_h = torch.meshgrid(
        torch.arange(int(w), dtype=torch.float32),
        torch.arange(int(h), dtype=torch.float32),
        indexing="ij",
    )
    pos_dim = embed_dim // 4
    omega = torch.arange(pos_dim, dtype=torch.float32) / pos_dim
    omega = 1.0 / (temperature**omega)
    out_w = grid_w.flatten()[..., None] @ omega[None]
    out_h = grid_h.flatten()[..., None] @ omega[None]
    return torch.concat([out_w.sin(), out_w.cos(), out_h.sin(), out_h.cos()], dim=1)[None]


class HybridEncoder(nn.Module):
    """Input: backbone maps ``[B, C_i, H_i, W_i]`` (strides ``feat_strides``).
    Output: the same number of maps, each ``[B, hidden_dim, H_i, W_i]``.

    ``shortcut_first``: the CSP layers compute their plain branch first, as DEIM's code does
    (DEIM models): the same outputs, and gradients accumulated in DEIM's order, so training
    steps are bit-identical to DEIM's."""

    def __init__(self, cfg: EncoderConfig, shortcut_first: bool = False) -> None:
        super().__init__()
        self.cfg = cfg
        hidden = cfg.hidden_dim
        self.input_proj = nn.ModuleList(
            nn.Sequential(
                OrderedDict(
                    [
                        ("conv", nn.Conv2d(c, hidden, kernel_size=1, bias=False)),
                        ("norm", nn.BatchNorm2d(hidden)),
                    ]
                )
            )
            for c in cfg.in_channels
        )
        self.encoder = nn.ModuleList(
            TransformerEncoder(
                hidden,
                cfg.nhead,
                cfg.dim_feedforward,
                cfg.dropout,
                cfg.enc_act,
                cfg.num_encoder_layers,
            )
            for _ in cfg.use_encoder_idx
        )
        n_levels = len(cfg.in_channels)
        c4 = round(cfg.expansion * hidden // 2)
        depth = round(3 * cfg.depth_mult)
        self.lateral_convs = nn.ModuleList(
            ConvNorm(hidden, hidden, 1, 1) for _ in range(n_levels - 1)
        )
        self.fpn_blocks = nn.ModuleList(
            RepNCSPELAN4(hidden * 2, hidden, hidden * 2, c4, depth, cfg.act, shortcut_first)
            for _ in range(n_levels - 1)
        )
        self.downsample_convs = nn.ModuleList(
            nn.Sequential(SCDown(hidden, hidden, 3, 2)) for _ in range(n_levels - 1)
        )
        self.pan_blocks = nn.ModuleList(
            RepNCSPELAN4(hidden * 2, hidden, hidden * 2, c4, depth, cfg.act, shortcut_first)
            for _ in range(n_levels - 1)
        )
        self._pos_cache: dict[tuple, torch.Tensor] = {}

    def position_embedding(self, w: int, h: int, device: torch.device) -> torch.Tensor:
        """Cached sin-cos embedding for a ``h x w`` map (computed once per size and device)."""
        key = (w, h, str(device))
        pe = self._pos_cache.get(key)
        if pe is None:
            pe = sincos_position_embedding(w, h, self.cfg.hidden_dim, self.cfg.pe_temperature)
            pe = pe.to(device)
            self._pos_cache[key] = pe
        return pe

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        if len(feats) != len(self.input_proj):
            raise ValueError(f"expected {len(self.input_proj)} feature maps, got {len(feats)}")
        proj = [p(f) for p, f in zip(self.input_proj, feats)]

        # AIFI: self-attention over the flattened top-level map(s)
        for enc, idx in zip(self.encoder, self.cfg.use_encoder_idx):
            _b, c, h, w = proj[idx].shape
            src = proj[idx].flatten(2).permute(0, 2, 1)
            pos = self.position_embedding(w, h, src.device).to(src.dtype)
            memory = enc(src, pos_embed=pos)
            proj[idx] = memory.permute(0, 2, 1).reshape(-1, c, h, w).contiguous()

        # CCFF top-down
        n = len(proj)
        inner = [proj[-1]]
        for k, idx in enumerate(range(n - 1, 0, -1)):
            high = self.lateral_convs[k](inner[0])
            inner[0] = high
            up = F.interpolate(high, scale_factor=2.0, mode="nearest")
            inner.insert(0, self.fpn_blocks[k](torch.concat([up, proj[idx - 1]], dim=1)))

        # CCFF bottom-up
        outs = [inner[0]]
        for k in range(n - 1):
            down = self.downsample_convs[k](outs[-1])
            outs.append(self.pan_blocks[k](torch.concat([down, inner[k + 1]], dim=1)))
        return outs
