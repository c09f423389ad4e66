"""Image decoding shared by every entry point (library, CLI, app).

``load_image`` turns a path, bytes, a binary file object, a ``PIL.Image.Image`` or a numpy
array into one thing: an ``[H, W, 3]`` uint8 RGB array, C-contiguous. Encoded images are
oriented by their EXIF tag, reduced to their first frame and converted to RGB with the
right scaling for 16-bit and float data. Images larger than ``max_pixels`` are refused
from their header, before any pixel data is decoded. Every failure raises
``ImageLoadError`` with a message that names the source and the problem.

File utilities (atomic writes, hashing) are in :mod:`dfine.files`.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import warnings
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from dfine.errors import InvalidArgumentError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ImageLoadError",
    "ImageSource",
    "load_image",
]

DEFAULT_MAX_PIXELS = 40_000_000
"""Largest ``width * height`` that ``load_image`` decodes unless told otherwise."""

COLOR_ORDERS = ("RGB", "BGR")

ImageSource = (
    str | os.PathLike | bytes | bytearray | memoryview | IO[bytes] | Image.Image | np.ndarray
)
"""Everything ``load_image`` accepts."""

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA_MODES = ("RGBA", "RGBa", "RGBX", "LA", "La", "PA", "P")


class ImageLoadError(InvalidArgumentError):
    """An image could not be read: missing, empty, not an image, corrupt, too large, or an
    array of a shape or dtype that is not an image. The message names the source."""


def load_image(
    source: ImageSource,
    *,
    color_order: str = "RGB",
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Decode ``source`` into an RGB uint8 array.

    Args:
        source: a path (``str`` or ``os.PathLike``), encoded bytes, a binary file object, a
            ``PIL.Image.Image`` or a numpy array. Arrays may be ``[H, W]`` (gray),
            ``[H, W, 1]``, ``[H, W, 3]`` or ``[H, W, 4]`` (the alpha channel is dropped, not
            composited); dtype uint8, uint16 (reduced to its high byte, ``>> 8``) or float
            with values in ``[0, 1]`` (``* 255``, rounded). Torch tensors are refused.
        color_order: channel order of a 3- or 4-channel numpy array, ``"RGB"`` or ``"BGR"``
            (OpenCV). Ignored for other sources, which carry their own colour mode.
        max_pixels: largest ``width * height`` accepted. It is checked from the header,
            before decoding, for paths, bytes, file objects and PIL images; arrays are
            already decoded and are not checked. Larger than Pillow's own limit
            (``PIL.Image.MAX_IMAGE_PIXELS``, about 179M pixels for a hard error) also
            needs that raised.

    Returns:
        ``[H, W, 3]`` uint8 RGB array, C-contiguous, never a view of ``source``.

    Raises:
        ImageLoadError: the source cannot be turned into an image (see the message).
        TypeError: ``source`` is of a type not listed above (torch tensors included).
        ValueError: ``color_order`` or ``max_pixels`` is invalid.

    Encoded images and PIL images are rotated/flipped by their EXIF orientation, the first
    frame of an animation is taken, palette / gray / CMYK images are converted to RGB,
    alpha is dropped, 16-bit data (``I;16`` and ``I``) keeps its high byte and ``F`` data
    in ``[0, 1]`` is scaled by 255 (other ``F`` data is clipped to ``[0, 255]``).
    """
    if color_order not in COLOR_ORDERS:
        raise InvalidArgumentError(
            f"color_order must be one of {COLOR_ORDERS}, got {color_order!r}"
        )
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels <= 0:
        raise InvalidArgumentError(f"max_pixels must be a positive int, got {max_pixels!r}")
    if _is_torch_tensor(source):
        raise TypeError(
            "load_image does not take torch tensors; pass a numpy array "
            "(tensor.permute(1, 2, 0).cpu().numpy() for a [3, H, W] tensor) or a PIL image"
        )
    if isinstance(source, np.ndarray):
        return _from_array(source, color_order)
    if isinstance(source, Image.Image):
        return _from_pil(source, "<PIL image>", max_pixels)
    if isinstance(source, (str, os.PathLike)):
        return _from_path(Path(source).expanduser(), max_pixels)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _from_bytes(bytes(source), "<bytes>", max_pixels)
    if isinstance(source, io.TextIOBase):
        raise TypeError("load_image needs a binary file object: open the file with mode 'rb'")
    if hasattr(source, "read"):
        return _from_file(source, max_pixels)
    raise TypeError(
        "load_image takes a path, bytes, a binary file object, a PIL image or a numpy array; "
        f"got {type(source).__name__}"
    )


def _is_torch_tensor(obj: Any) -> bool:
    """True for ``torch.Tensor`` and subclasses, without importing torch."""
    return any(
        c.__name__ == "Tensor" and c.__module__.startswith("torch") for c in type(obj).__mro__
    )


# --------------------------------------------------------------------------- encoded sources


def _from_path(path: Path, max_pixels: int) -> np.ndarray:
    name = f"'{path}'"
    if not path.exists():
        raise ImageLoadError(f"Cannot load image {name}: file not found")
    if path.is_dir():
        raise ImageLoadError(f"Cannot load image {name}: it is a directory, not a file")
    try:
        with path.open("rb") as f:
            if path.stat().st_size == 0:
                raise ImageLoadError(f"Cannot load image {name}: empty file (0 bytes)")
            return _decode(f, name, max_pixels)
    except OSError as e:  # permission denied, I/O error
        raise ImageLoadError(f"Cannot load image {name}: cannot read the file ({e})") from e


def _from_bytes(data: bytes, name: str, max_pixels: int) -> np.ndarray:
    if not data:
        raise ImageLoadError(f"Cannot load image {name}: empty data (0 bytes)")
    return _decode(io.BytesIO(data), name, max_pixels)


def _from_file(fp: IO[bytes], max_pixels: int) -> np.ndarray:
    file_name = getattr(fp, "name", None)
    name = f"'{file_name}'" if isinstance(file_name, (str, os.PathLike)) else "<file object>"
    seekable = getattr(fp, "seekable", None)
    if not (callable(seekable) and seekable()):
        return _from_bytes(fp.read(), name, max_pixels)
    return _decode(fp, name, max_pixels)


def _decode(fp: IO[bytes], name: str, max_pixels: int) -> np.ndarray:
    """Open from a binary file object, check the size from the header, decode, convert."""
    with warnings.catch_warnings():
        # our max_pixels is the limit; Pillow's warning would only duplicate it
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(fp)
        except Image.DecompressionBombError as e:
            raise _pillow_bomb_error(name, e, max_pixels) from e
        except UnidentifiedImageError as e:
            raise _unidentified_error(fp, name) from e
        except Exception as e:  # corrupt header: OSError, SyntaxError, struct.error, ...
            kind = _sniff(fp) or "image"
            raise ImageLoadError(
                f"Cannot load image {name}: truncated or corrupt {kind} header ({e})"
            ) from e
        with image:
            return _from_pil(image, name, max_pixels)


_SIGNATURES = {
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"\xff\xd8\xff": "JPEG",
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
}


def _sniff(fp: IO[bytes]) -> str | None:
    """Format named by the magic bytes at the start of ``fp``, or ``None``."""
    try:
        fp.seek(0)
        head = fp.read(16)
    except Exception:
        return None
    kind = next((k for sig, k in _SIGNATURES.items() if head.startswith(sig)), None)
    if kind is None and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        kind = "WebP"
    return kind


def _unidentified_error(fp: IO[bytes], name: str) -> ImageLoadError:
    """Pillow recognised no format: a damaged image if the magic bytes say so, else not one."""
    kind = _sniff(fp)
    with contextlib.suppress(Exception):  # an empty file object (paths and bytes are checked)
        if fp.seek(0) == 0 and not fp.read(1):
            return ImageLoadError(f"Cannot load image {name}: empty data (0 bytes)")
    if kind is not None:
        return ImageLoadError(
            f"Cannot load image {name}: truncated or corrupt {kind} file (it starts like one, "
            "but Pillow cannot read it)"
        )
    return ImageLoadError(f"Cannot load image {name}: not an image, or a format Pillow cannot read")


def _from_pil(image: Image.Image, name: str, max_pixels: int) -> np.ndarray:
    """Size check, full decode (detects truncation), EXIF orientation, conversion."""
    _check_size(image.size, name, max_pixels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image.load()
        except Image.DecompressionBombError as e:  # a later frame/tile is larger
            raise _pillow_bomb_error(name, e, max_pixels) from e
        except Exception as e:  # OSError "image file is truncated", decoder errors, ...
            raise ImageLoadError(
                f"Cannot load image {name}: truncated or corrupt {image.format or 'image'} data "
                f"({e})"
            ) from e
    # a malformed EXIF block must not make a readable image unreadable
    with contextlib.suppress(Exception):
        image = ImageOps.exif_transpose(image)
    try:
        return _pil_to_rgb(image)
    except Exception as e:
        raise ImageLoadError(
            f"Cannot load image {name}: cannot convert mode {image.mode!r} to RGB ({e})"
        ) from e


def _check_size(size: tuple[int, int], name: str, max_pixels: int) -> None:
    width, height = size
    if width * height > max_pixels:
        raise ImageLoadError(
            f"Cannot load image {name}: image too large ({width}x{height} = "
            f"{width * height:,} pixels, limit {max_pixels:,}). If you trust this file, "
            "raise the limit with load_image(..., max_pixels=N)"
        )
    if width <= 0 or height <= 0:
        raise ImageLoadError(f"Cannot load image {name}: image has zero size ({width}x{height})")


def _pillow_bomb_error(name: str, err: Exception, max_pixels: int) -> ImageLoadError:
    """Our message for Pillow's DecompressionBombError (raised before we see the size)."""
    found = re.search(r"\((\d+) pixels\)", str(err))
    pixels = int(found.group(1)) if found else None
    if pixels is None or pixels > max_pixels:
        count = f"{pixels:,} pixels" if pixels else "more pixels than Pillow allows"
        return ImageLoadError(
            f"Cannot load image {name}: image too large ({count}, limit {max_pixels:,}). If "
            "you trust this file, raise the limit with load_image(..., max_pixels=N) and "
            "PIL.Image.MAX_IMAGE_PIXELS"
        )
    return ImageLoadError(
        f"Cannot load image {name}: image too large for Pillow ({pixels:,} pixels, over its "
        f"limit of {2 * (Image.MAX_IMAGE_PIXELS or 0):,}); raise PIL.Image.MAX_IMAGE_PIXELS too"
    )


def _pil_to_rgb(image: Image.Image) -> np.ndarray:
    """``[H, W, 3]`` uint8 RGB from a loaded PIL image of any mode."""
    mode = image.mode
    if mode == "RGB":
        return np.array(image, dtype=np.uint8)
    if mode in _SIXTEEN_BIT_MODES:
        return _gray_to_rgb((np.asarray(image).astype(np.uint16) >> 8).astype(np.uint8))
    if mode == "I":  # 32-bit int; 16-bit data (TIFF, older Pillow PNG) lands here
        data = np.clip(np.asarray(image), 0, 65535).astype(np.uint16)
        return _gray_to_rgb((data >> 8).astype(np.uint8))
    if mode == "F":
        return _gray_to_rgb(_float_mode_to_uint8(np.asarray(image)))
    if mode in ("L", "1"):
        return _gray_to_rgb(np.asarray(image.convert("L")))
    if mode in _ALPHA_MODES:  # alpha is dropped, not composited
        return np.ascontiguousarray(np.asarray(image.convert("RGBA"))[..., :3])
    return np.array(image.convert("RGB"), dtype=np.uint8)  # CMYK, YCbCr, LAB, HSV, ...


def _float_mode_to_uint8(data: np.ndarray) -> np.ndarray:
    """``F`` mode: ``[0, 1]`` data is scaled by 255, anything else clipped to ``[0, 255]``."""
    data = np.nan_to_num(data.astype(np.float32), nan=0.0, posinf=255.0, neginf=0.0)
    if data.size and data.min() >= 0.0 and data.max() <= 1.0:
        data = data * 255.0
    return np.clip(np.rint(data), 0, 255).astype(np.uint8)


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    """``[H, W]`` -> ``[H, W, 3]``, C-contiguous."""
    return np.repeat(gray[:, :, None], 3, axis=2)


# --------------------------------------------------------------------------- numpy arrays


def _from_array(array: np.ndarray, color_order: str) -> np.ndarray:
    """``[H, W]``, ``[H, W, 1|3|4]`` uint8 / uint16 / float array -> ``[H, W, 3]`` uint8 RGB."""
    name = f"array of shape {array.shape} and dtype {array.dtype}"
    if array.size == 0:
        raise ImageLoadError(f"Cannot load image from {name}: the array is empty (0 elements)")
    channels = _array_channels(array, name)
    data = _array_to_uint8(array, name)
    if channels == 1:
        return _gray_to_rgb(data.reshape(data.shape[0], data.shape[1]))
    rgb = data[:, :, :3]
    if color_order == "BGR":
        rgb = rgb[:, :, ::-1]
    return np.array(rgb, dtype=np.uint8, order="C", copy=True)


def _array_channels(array: np.ndarray, name: str) -> int:
    if array.ndim == 2:
        return 1
    if array.ndim == 3 and array.shape[2] in (1, 3, 4):
        return array.shape[2]
    hint = ""
    if array.ndim == 3 and array.shape[0] in (1, 3, 4):
        hint = "; it looks channel-first, transpose it with array.transpose(1, 2, 0)"
    raise ImageLoadError(
        f"Cannot load image from {name}: unsupported array shape, expected [H, W], "
        f"[H, W, 1], [H, W, 3] or [H, W, 4]{hint}"
    )


def _array_to_uint8(array: np.ndarray, name: str) -> np.ndarray:
    """Scale to uint8: uint16 keeps its high byte, float in [0, 1] is multiplied by 255."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16:
        return (array >> 8).astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        low, high = float(np.min(array)), float(np.max(array))
        if not (np.isfinite(low) and np.isfinite(high) and low >= 0.0 and high <= 1.0):
            raise ImageLoadError(
                f"Cannot load image from {name}: float arrays must hold values in [0, 1], "
                f"got values in [{low:g}, {high:g}]; divide by 255 or pass uint8"
            )
        return np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8)
    hint = " (for a mask use mask.astype(np.uint8) * 255)" if array.dtype == np.bool_ else ""
    raise ImageLoadError(
        f"Cannot load image from {name}: unsupported dtype {array.dtype}, use uint8, uint16 or "
        f"float in [0, 1]{hint}"
    )
