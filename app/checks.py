"""Checks of the values users send: each returns the clean value or raises a ``UserError``
whose message says what is allowed."""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

from app.errors import UserError
from app.paths import INPUT_SIZES

MAX_DETECTIONS = 300
SIGMA_RANGE = (0.1, 5.0)


def check_image(image: str | None) -> str:
    if image is None or not str(image).strip():
        raise UserError("Upload an image first (or click one of the examples).")
    return str(image)


def check_threshold(threshold: float | None) -> float:
    value = number(threshold, "threshold")
    if not 0.0 <= value <= 1.0:
        raise UserError(f"The score threshold must be between 0 and 1, got {value:g}.")
    return value


def check_size(size: int | str | None) -> int:
    value = number(size, "input size")
    if value not in INPUT_SIZES:
        raise UserError(
            f"The input size must be a multiple of 32 between {INPUT_SIZES[0]} and "
            f"{INPUT_SIZES[-1]} pixels, got {value:g}."
        )
    return int(value)


def check_max_detections(count: int | float | None) -> int:
    value = number(count, "maximum number of detections")
    if value != int(value) or not 1 <= value <= MAX_DETECTIONS:
        raise UserError(
            f"The maximum number of detections must be a whole number from 1 to "
            f"{MAX_DETECTIONS}, got {value:g}."
        )
    return int(value)


def number(value: Any, what: str) -> float:
    """``value`` as a finite float."""
    try:
        result = float(value)
    except (TypeError, ValueError):
        raise UserError(f"The {what} must be a number, got {value!r}.") from None
    if not math.isfinite(result):
        raise UserError(f"The {what} must be a finite number, got {value!r}.")
    return result


def first_int(value: Any, what: str) -> int | None:
    """The index a picker value stands for: ``3``, ``"3"``, ``"3: person 0.91"`` or
    ``"query 12: …"`` (the first whole number in it); ``None`` for an empty value."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    found = re.search(r"\d+", str(value))
    if found is None:
        raise UserError(f"Cannot tell which {what} {value!r} means; pick one from the list.")
    return int(found.group())


def check_stage(stage: int | float, stages: int) -> int:
    value = number(stage, "stage")
    if value != int(value) or not 0 <= value < stages:
        raise UserError(
            f"The stage must be a whole number from 0 (encoder b0) to {stages - 1} "
            f"(decoder layer {stages - 2}), got {value:g}."
        )
    return int(value)


def check_sigma(scale: float) -> float:
    value = number(scale, "σ scale")
    lo, hi = SIGMA_RANGE
    if not lo <= value <= hi:
        raise UserError(f"The σ scale must be between {lo:g} and {hi:g}, got {value:g}.")
    return value
