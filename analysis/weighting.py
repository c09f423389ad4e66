"""The weighting function W(n) for any (reg_max, up, reg_scale), and its comparison with
evenly spaced bins.

GFocal / DFL regresses each edge over the integer bins ``0 … reg_max`` (in units of the
feature stride): evenly spaced. D-FINE's W(n) spans ``[-2a, 2a]`` (``a = up × reg_scale``) with
spacing that grows geometrically away from 0: fine steps for small corrections, coarse ones
for large. For a fair comparison of *shape* the uniform curve here is ``reg_max + 1`` evenly
spaced values over the same range ``[W(0), W(reg_max)]`` — not GFocal's own 0…reg_max units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from dfine.errors import InvalidArgumentError
from dfine.nn.decoder import DecoderTrace, NoDistributionsError
from dfine.nn.fdr import check_reg_max, weighting_function

REG_MAX_RANGE = (4, 128)
UP_RANGE = (0.0, 5.0)  # (exclusive, inclusive]
REG_SCALE_RANGE = (0.0, 32.0)  # (exclusive, inclusive]

UNIFORM_NOTE = (
    "uniform = reg_max+1 evenly spaced values over the same range [W(0), W(reg_max)] "
    "(GFocal/DFL uses integer bins 0..reg_max in units of the stride; rescaled here to "
    "compare shapes)"
)


@dataclass(frozen=True)
class WeightingCurve:
    """W(n) and the evenly spaced comparison, for one (reg_max, up, reg_scale).

    W values are in FDR units: an edge moves outward by ``W(n) × box size / reg_scale``;
    ``box_fraction`` gives the same values as a fraction of the reference box's width (left /
    right edges) or height (top / bottom).

    Attributes:
        reg_max, up, reg_scale: the parameters.
        n: ``[R+1]`` int64 bin indices 0..reg_max.
        w: ``[R+1]`` float32 W(n) exactly as ``dfine.nn.fdr.weighting_function`` computes it.
        uniform: ``[R+1]`` float64 evenly spaced values from ``W(0)`` to ``W(reg_max)``.
        step: the geometric ratio ``(a + 1)^(2 / (reg_max - 2))`` with ``a = up·reg_scale``:
            ``W(reg_max/2 ± i) = ±(step^i − 1)`` for ``0 < i < reg_max/2``.
        min_spacing, max_spacing: smallest and largest ``W(n+1) − W(n)``, FDR units.
        source: ``"parameters"`` or ``"model"`` (a model's own W(n), from its trace).
    """

    reg_max: int
    up: float
    reg_scale: float
    n: np.ndarray
    w: np.ndarray
    uniform: np.ndarray
    step: float
    min_spacing: float
    max_spacing: float
    source: str = "parameters"

    @property
    def box_fraction(self) -> np.ndarray:
        """``[R+1]`` W(n) / reg_scale: the edge displacement as a fraction of the box size."""
        return self.w.astype(np.float64) / abs(self.reg_scale)

    @property
    def uniform_box_fraction(self) -> np.ndarray:
        return self.uniform / abs(self.reg_scale)

    @property
    def spacing(self) -> np.ndarray:
        """``[R]`` W(n+1) − W(n), FDR units."""
        return np.diff(self.w.astype(np.float64))

    @property
    def spacing_ratio(self) -> float:
        """Largest over smallest spacing (the uniform bins have 1)."""
        return self.max_spacing / self.min_spacing

    def to_table(self) -> list[dict[str, float]]:
        """One row per bin: n, W(n), W(n)/reg_scale, uniform value, spacing to the next bin."""
        spacing = [*self.spacing.tolist(), None]
        return [
            {
                "n": int(n),
                "W(n)": float(w),
                "W(n)/reg_scale": float(f),
                "uniform": float(u),
                "spacing_to_next": None if s is None else float(s),
            }
            for n, w, f, u, s in zip(self.n, self.w, self.box_fraction, self.uniform, spacing)
        ]


def check_parameters(reg_max: int, up: float, reg_scale: float) -> tuple[int, float, float]:
    """Validated ``(reg_max, up, reg_scale)``: reg_max an even integer in 4..128, up in
    (0, 5], reg_scale in (0, 32]; ``ValueError`` naming the parameter otherwise."""
    reg_max = check_reg_max(reg_max)
    lo, hi = REG_MAX_RANGE
    if not lo <= reg_max <= hi:
        raise InvalidArgumentError(
            f"reg_max must be an even whole number in {lo}..{hi}, got {reg_max}"
        )
    up, reg_scale = float(up), float(reg_scale)
    if not (math.isfinite(up) and UP_RANGE[0] < up <= UP_RANGE[1]):
        raise InvalidArgumentError(f"up must be in ({UP_RANGE[0]:g}, {UP_RANGE[1]:g}], got {up}")
    if not (math.isfinite(reg_scale) and REG_SCALE_RANGE[0] < reg_scale <= REG_SCALE_RANGE[1]):
        raise InvalidArgumentError(
            f"reg_scale must be in ({REG_SCALE_RANGE[0]:g}, {REG_SCALE_RANGE[1]:g}], got {reg_scale}"
        )
    return reg_max, up, reg_scale


def weighting_curve(reg_max: int = 32, up: float = 0.5, reg_scale: float = 4.0) -> WeightingCurve:
    """W(n) for the given parameters (validated, see :func:`check_parameters`), computed by
    ``dfine.nn.fdr.weighting_function`` — the model's own implementation."""
    reg_max, up, reg_scale = check_parameters(reg_max, up, reg_scale)
    w = weighting_function(reg_max, torch.tensor([up]), torch.tensor([reg_scale]))
    return _curve(w, reg_max, up, reg_scale, "parameters")


def model_weighting(source: DecoderTrace | torch.nn.Module) -> WeightingCurve:
    """A model's own W(n) (no range checks), from a decoder trace's ``project`` or from the
    model itself (a :class:`dfine.DFINE` or its decoder). A model without distributions
    (``--ablate fdr``) raises :class:`NoDistributionsError`."""
    if isinstance(source, DecoderTrace):
        if source.project is None:
            raise NoDistributionsError.about("the model's W(n)")
        w, up, reg_scale = source.project, source.up, source.reg_scale
    else:
        decoder = getattr(source, "decoder", source)
        if not getattr(decoder, "distributions", True):
            raise NoDistributionsError.about("the model's W(n)")
        with torch.no_grad():
            w = decoder.project()
        up, reg_scale = decoder.up, decoder.reg_scale
    w = w.detach().cpu()
    return _curve(w, w.shape[0] - 1, float(up), float(reg_scale), "model")


def _curve(
    w: torch.Tensor, reg_max: int, up: float, reg_scale: float, source: str
) -> WeightingCurve:
    w_np = w.to(torch.float32).numpy().copy()
    spacing = np.diff(w_np.astype(np.float64))
    a = abs(up) * abs(reg_scale)
    return WeightingCurve(
        reg_max=reg_max,
        up=up,
        reg_scale=reg_scale,
        n=np.arange(reg_max + 1, dtype=np.int64),
        w=w_np,
        uniform=np.linspace(float(w_np[0]), float(w_np[-1]), reg_max + 1),
        step=float((a + 1) ** (2 / (reg_max - 2))),
        min_spacing=float(spacing.min()),
        max_spacing=float(spacing.max()),
        source=source,
    )
