"""Issue #7: a bounded fuzz run (hypothesis) of the two parsers that read strangers' files.

- ``dfine.io.load_image`` on random bytes and on mutations (bit flips, overwrites,
  insertions, deletions, truncations, duplicated runs) of valid PNG, JPEG, GIF, WebP, TIFF
  and BMP files: it returns an ``[H, W, 3]`` uint8 image within ``max_pixels`` or raises
  ``ImageLoadError`` / ``ValueError`` / ``TypeError``, nothing else, and never hangs.
- ``dfine.checkpoint.read_checkpoint`` on mutations of valid ``.pth`` (zip) and
  ``.safetensors`` files: a state dict of tensors or ``CheckpointError`` /
  ``FileNotFoundError``, nothing else, never a hang.

A fixed number of derandomized examples each (``FUZZ_EXAMPLES``), so CI runs the same
inputs every time in well under a minute; raise it locally for a longer hunt.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, features

from dfine.checkpoint import CheckpointError, read_checkpoint
from dfine.io import ImageLoadError, load_image

FUZZ_EXAMPLES = int(os.environ.get("DFINE_FUZZ_EXAMPLES", "200"))
MAX_PIXELS = 64 * 64  # small: no example can make the decoder do much work
SECONDS_PER_INPUT = 10  # a parser that takes longer than this is hanging

FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@contextlib.contextmanager
def time_limit(seconds: int):
    """Fail (instead of hanging forever) when the body runs longer than ``seconds``."""
    usable = hasattr(signal, "SIGALRM") and threading.current_thread() is threading.main_thread()
    if not usable:
        yield
        return

    def expired(signum, frame):
        raise TimeoutError(f"the parser ran longer than {seconds} s (a hang)")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# ------------------------------------------------------------------ mutations
@st.composite
def mutated(draw, seeds: dict[str, bytes]) -> bytes:
    """One of ``seeds`` with 1 to 6 random edits."""
    data = bytearray(seeds[draw(st.sampled_from(sorted(seeds)))])
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "repeat"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and data:
            chunk = draw(st.binary(min_size=1, max_size=8))
            data[pos : pos + len(chunk)] = chunk
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=32))
        elif kind == "delete":
            del data[pos : pos + draw(st.integers(1, 64))]
        elif kind == "truncate":
            del data[pos:]
        elif kind == "repeat" and data:
            data[pos:pos] = data[pos : pos + draw(st.integers(1, 64))] * draw(st.integers(1, 4))
    return bytes(data)


# ------------------------------------------------------------------ images
def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _image_seeds() -> dict[str, bytes]:
    y, x = np.mgrid[0:24, 0:32]
    rgb = Image.fromarray(np.stack([x * 8, y * 10, (x + y) * 4], -1).astype(np.uint8))
    frames = [Image.new("RGB", (16, 12), c) for c in ((200, 10, 10), (10, 200, 10))]
    exif = Image.Exif()
    exif[0x0112] = 6
    seeds = {
        "png": _encode(rgb, "PNG"),
        "png_palette": _encode(rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=8), "PNG"),
        "png_16bit": _encode(Image.fromarray((x * y * 60).astype(np.uint16)), "PNG"),
        "jpeg": _encode(rgb, "JPEG", quality=80, exif=exif.tobytes()),
        "jpeg_progressive": _encode(rgb, "JPEG", quality=80, progressive=True),
        "jpeg_cmyk": _encode(rgb.convert("CMYK"), "JPEG", quality=80),
        "gif": _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=40),
        "tiff": _encode(rgb, "TIFF"),
        "bmp": _encode(rgb, "BMP"),
    }
    if features.check("webp"):
        seeds["webp"] = _encode(rgb, "WEBP", quality=70)
        seeds["webp_animated"] = _encode(
            frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True
        )
    return seeds


IMAGE_SEEDS = _image_seeds()


def _check_load_image(data: bytes) -> None:
    with time_limit(SECONDS_PER_INPUT):
        try:
            out = load_image(data, max_pixels=MAX_PIXELS)
        except (ImageLoadError, ValueError, TypeError):
            return
    assert isinstance(out, np.ndarray) and out.dtype == np.uint8
    assert out.ndim == 3 and out.shape[2] == 3 and out.flags["C_CONTIGUOUS"]
    assert 0 < out.shape[0] * out.shape[1] <= MAX_PIXELS


def test_every_image_seed_loads():
    for name, data in IMAGE_SEEDS.items():
        assert load_image(data, max_pixels=MAX_PIXELS).ndim == 3, name


@FUZZ
@given(st.binary(max_size=4096))
def test_load_image_on_random_bytes(data):
    _check_load_image(data)


@FUZZ
@given(mutated(IMAGE_SEEDS))
def test_load_image_on_mutated_images(data):
    _check_load_image(data)


@FUZZ
@given(mutated(IMAGE_SEEDS))
def test_load_image_on_mutated_files(data):
    """The same through a path (what the CLI and the app use)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "upload.jpg"
        path.write_bytes(data)
        with time_limit(SECONDS_PER_INPUT):
            try:
                out = load_image(path, max_pixels=MAX_PIXELS)
            except ImageLoadError as e:
                assert "upload.jpg" in str(e)
                return
        assert out.ndim == 3 and out.shape[0] * out.shape[1] <= MAX_PIXELS


# ------------------------------------------------------------------ checkpoints
def _checkpoint_seeds() -> dict[str, tuple[str, bytes]]:
    """name -> (suffix, bytes) of small valid checkpoints in each layout."""
    from safetensors.torch import save as save_safetensors

    g = torch.Generator().manual_seed(0)
    sd = {
        "backbone.stem.stem1.conv.weight": torch.randn(4, 3, 3, 3, generator=g),
        "backbone.stem.stem1.bn.running_var": torch.rand(4, generator=g),
        "decoder.up": torch.tensor([0.5]),
        "decoder.reg_scale": torch.tensor([4.0]),
        "decoder.enc_score_head.weight": torch.randn(5, 8, generator=g),
        "decoder.denoising_class_embed.weight": torch.randn(6, 8, generator=g).half(),
        "steps": torch.tensor(7, dtype=torch.int64),
    }
    seeds = {}
    for name, obj in {
        "pth_model": {"model": sd, "date": "2024-10-01"},
        "pth_ema": {"ema": {"module": sd, "updates": 3}, "model": sd},
        "pth_bare": sd,
    }.items():
        buf = io.BytesIO()
        torch.save(obj, buf)
        seeds[name] = (".pth", buf.getvalue())
    meta = {"size": "n", "num_classes": 5, "class_names": list("abcde"), "input_size": [640, 640]}
    tensors = {k: v for k, v in sd.items() if k != "steps"}
    seeds["safetensors"] = (
        ".safetensors",
        save_safetensors(tensors, metadata={"dfine": json.dumps(meta), "format": "pt"}),
    )
    return seeds


CHECKPOINT_SEEDS = _checkpoint_seeds()


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz_checkpoints")


def test_every_checkpoint_seed_reads(checkpoint_dir):
    for name, (suffix, data) in CHECKPOINT_SEEDS.items():
        path = checkpoint_dir / f"seed_{name}{suffix}"
        path.write_bytes(data)
        sd, meta = read_checkpoint(path)
        assert "backbone.stem.stem1.conv.weight" in sd and isinstance(meta, dict), name


def _check_read_checkpoint(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    with time_limit(SECONDS_PER_INPUT):
        try:
            sd, meta = read_checkpoint(path)
        except (CheckpointError, FileNotFoundError):
            return
    assert isinstance(meta, dict)
    assert sd and all(isinstance(v, torch.Tensor) for v in sd.values())
    assert any(k.startswith("backbone.") for k in sd)


@FUZZ
@given(mutated({k: v[1] for k, v in CHECKPOINT_SEEDS.items() if v[0] == ".pth"}))
def test_read_checkpoint_on_mutated_pth(checkpoint_dir, data):
    _check_read_checkpoint(checkpoint_dir / "fuzz.pth", data)


@FUZZ
@given(mutated({k: v[1] for k, v in CHECKPOINT_SEEDS.items() if v[0] == ".safetensors"}))
def test_read_checkpoint_on_mutated_safetensors(checkpoint_dir, data):
    _check_read_checkpoint(checkpoint_dir / "fuzz.safetensors", data)


@FUZZ
@given(st.binary(max_size=2048), st.sampled_from([".pth", ".safetensors"]))
def test_read_checkpoint_on_random_bytes(checkpoint_dir, data, suffix):
    _check_read_checkpoint(checkpoint_dir / f"random{suffix}", data)
