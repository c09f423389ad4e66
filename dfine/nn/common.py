"""Small building blocks shared by the backbone, encoder and decoder."""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d


def get_activation(name: str | None) -> nn.Module:
    """Activation module by name (``relu``, ``silu``, ``gelu``, ...); ``None`` gives Identity."""
    if name is None:
        return nn.Identity()
    table = {
        "relu": nn.ReLU,
        "silu": nn.SiLU,
        "swish": nn.SiLU,
        "gelu": nn.GELU,
        "leaky_relu": nn.LeakyReLU,
        "hardsigmoid": nn.Hardsigmoid,
    }
    key = name.lower()
    if key not in table:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(table)}")
    return table[key]()


class MLP(nn.Module):
    """``num_layers`` Linear layers with an activation between them (none after the last).

    Input ``[..., input_dim]`` → output ``[..., output_dim]``.
    """

    def __init__(
        self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int, act: str = "relu"
    ) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(dims))
        self.act = get_activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last:
                x = self.act(x)
        return x


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """logit(x) with x clipped to [0, 1] and both terms kept above ``eps``."""
    x = x.clip(min=0.0, max=1.0)
    return torch.log(x.clip(min=eps) / (1 - x).clip(min=eps))


def bias_init_with_prob(prior_prob: float = 0.01) -> float:
    """Bias that makes ``sigmoid(bias) == prior_prob``."""
    return float(-math.log((1 - prior_prob) / prior_prob))


def pad_kernel_to(kernel: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad a ``[O, I, k, k]`` kernel to ``[O, I, size, size]`` (centered)."""
    p = (size - kernel.shape[-1]) // 2
    return F.pad(kernel, [p, p, p, p])


__all__ = [
    "MLP",
    "FrozenBatchNorm2d",
    "bias_init_with_prob",
    "get_activation",
    "inverse_sigmoid",
    "pad_kernel_to",
]
