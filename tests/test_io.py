"""dfine.io.load_image: every source kind, every mode, every error."""

import io
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile, features

from dfine.io import DEFAULT_MAX_PIXELS, ImageLoadError, load_image
from tests.image_util import encode, png_header_only

# ---------------------------------------------------------------------------- helpers


def _photo(height: int = 24, width: int = 32) -> np.ndarray:
    """[H, W, 3] uint8 with no symmetry, so flips, rotations and channel swaps show."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 7 % 256, y * 11 % 256, (x * y + 40) % 256], axis=-1).astype(np.uint8)


def _quadrants(height: int = 48, width: int = 64) -> np.ndarray:
    """[H, W, 3] uint8 of four flat colours: survives JPEG, shows orientation."""
    out = np.zeros((height, width, 3), np.uint8)
    h, w = height // 2, width // 2
    out[:h, :w] = (255, 0, 0)
    out[:h, w:] = (0, 255, 0)
    out[h:, :w] = (0, 0, 255)
    out[h:, w:] = (255, 255, 0)
    return out


def _assert_rgb(out: np.ndarray, height: int, width: int) -> None:
    assert out.shape == (height, width, 3)
    assert out.dtype == np.uint8
    assert out.flags["C_CONTIGUOUS"]


class _StreamOnly:
    """A binary file object that can only be read (a pipe, a socket, an upload stream)."""

    def __init__(self, data: bytes) -> None:
        self._buf = io.BytesIO(data)

    def read(self, size: int = -1) -> bytes:
        return self._buf.read(size)

    def seekable(self) -> bool:
        return False


# ---------------------------------------------------------------------------- sources


def test_every_source_kind_gives_the_same_pixels(tmp_path):
    rgb = _photo()
    png = encode(Image.fromarray(rgb), "PNG")
    path = tmp_path / "photo.png"
    path.write_bytes(png)
    with path.open("rb") as f:
        from_file = load_image(f)
    sources = {
        "str": str(path),
        "Path": path,
        "bytes": png,
        "bytearray": bytearray(png),
        "memoryview": memoryview(png),
        "BytesIO": io.BytesIO(png),
        "stream": _StreamOnly(png),
        "PIL": Image.fromarray(rgb),
        "numpy": rgb,
    }
    for kind, source in sources.items():
        out = load_image(source)
        _assert_rgb(out, 24, 32)
        np.testing.assert_array_equal(out, rgb, err_msg=kind)
    np.testing.assert_array_equal(from_file, rgb)


def test_array_output_is_a_new_array():
    rgb = _photo()
    out = load_image(rgb)
    assert not np.shares_memory(out, rgb)
    out[:] = 0
    assert rgb.any()


def test_non_contiguous_array_gives_contiguous_output():
    rgb = _photo()
    view = rgb[::2, ::-1]
    out = load_image(view)
    _assert_rgb(out, 12, 32)
    np.testing.assert_array_equal(out, view)


def test_bgr_array_is_flipped_to_rgb():
    rgb = _photo()
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    np.testing.assert_array_equal(load_image(bgr, color_order="BGR"), rgb)
    np.testing.assert_array_equal(load_image(bgr, color_order="RGB"), bgr)


def test_bgra_array_is_flipped_and_alpha_dropped():
    rgb = _photo()
    bgra = np.concatenate([rgb[:, :, ::-1], np.full((24, 32, 1), 7, np.uint8)], axis=-1)
    np.testing.assert_array_equal(load_image(bgra, color_order="BGR"), rgb)


def test_color_order_does_not_touch_gray_arrays():
    gray = _photo()[:, :, 0]
    np.testing.assert_array_equal(load_image(gray, color_order="BGR"), load_image(gray))


@pytest.mark.parametrize("bad", ["rgb", "BGRA", "", None])
def test_bad_color_order_names_the_allowed_values(bad):
    with pytest.raises(ValueError, match=r"RGB.*BGR"):
        load_image(_photo(), color_order=bad)


def test_gray_arrays_become_three_equal_channels():
    gray = _photo()[:, :, 1]
    for array in (gray, gray[:, :, None]):
        out = load_image(array)
        _assert_rgb(out, 24, 32)
        for c in range(3):
            np.testing.assert_array_equal(out[:, :, c], gray)


def test_rgba_array_drops_alpha_without_compositing():
    rgb = _photo()
    rgba = np.concatenate([rgb, np.zeros((24, 32, 1), np.uint8)], axis=-1)  # fully transparent
    np.testing.assert_array_equal(load_image(rgba), rgb)


def test_uint16_array_keeps_the_high_byte():
    array = np.array([[0x0000, 0x00FF, 0x1234], [0x8000, 0xFF00, 0xFFFF]], np.uint16)
    out = load_image(array)
    np.testing.assert_array_equal(out[:, :, 0], [[0x00, 0x00, 0x12], [0x80, 0xFF, 0xFF]])


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_float_array_in_unit_range_is_scaled_and_rounded(dtype):
    array = np.array([[0.0, 0.2, 0.5], [0.999, 1.0, 0.002]], dtype)
    out = load_image(array)
    expected = np.clip(np.rint(array.astype(np.float64) * 255), 0, 255)
    np.testing.assert_array_equal(out[:, :, 2], expected)
    assert out[0, 1, 0] == 51 and out[1, 1, 0] == 255


@pytest.mark.parametrize("value", [1.5, -0.1, 255.0, np.nan, np.inf])
def test_float_array_outside_unit_range_is_refused(value):
    array = np.full((4, 4, 3), 0.5, np.float32)
    array[1, 2, 0] = value
    with pytest.raises(ImageLoadError, match=r"\[0, 1\]"):
        load_image(array)


def test_bool_array_is_refused():
    with pytest.raises(ImageLoadError, match="bool"):
        load_image(np.ones((4, 4), bool))


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint32, np.int8, np.complex64])
def test_other_dtypes_are_refused(dtype):
    with pytest.raises(ImageLoadError, match="unsupported dtype"):
        load_image(np.ones((4, 4, 3), dtype))


@pytest.mark.parametrize(
    ("shape", "words"),
    [
        ((3, 24, 32), "channel-first"),
        ((24, 32, 2), "unsupported array shape"),
        ((24, 32, 5), "unsupported array shape"),
        ((32,), "unsupported array shape"),
        ((1, 24, 32, 3), "unsupported array shape"),
    ],
)
def test_bad_array_shapes_are_refused(shape, words):
    with pytest.raises(ImageLoadError, match=words):
        load_image(np.zeros(shape, np.uint8))


@pytest.mark.parametrize("shape", [(0, 5, 3), (5, 0), (0,)])
def test_empty_array_is_refused(shape):
    with pytest.raises(ImageLoadError, match="empty"):
        load_image(np.zeros(shape, np.uint8))


def test_torch_tensor_is_refused_with_advice():
    with pytest.raises(TypeError, match="numpy") as info:
        load_image(torch.zeros(3, 8, 8))
    assert "PIL" in str(info.value)
    with pytest.raises(TypeError, match="numpy"):
        load_image(torch.nn.Parameter(torch.zeros(8, 8, 3)))


@pytest.mark.parametrize("bad", [[[0, 1], [2, 3]], 42, object()])
def test_other_source_types_are_refused(bad):
    with pytest.raises(TypeError, match="path, bytes"):
        load_image(bad)


def test_text_mode_file_object_is_refused(tmp_path):
    path = tmp_path / "photo.png"
    path.write_bytes(encode(Image.fromarray(_photo()), "PNG"))
    with path.open("r", encoding="latin-1") as f, pytest.raises(TypeError, match="'rb'"):
        load_image(f)


def test_home_directory_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    Image.fromarray(_photo()).save(tmp_path / "home.png")
    np.testing.assert_array_equal(load_image("~/home.png"), _photo())


# ---------------------------------------------------------------------------- modes


def test_exif_orientation_6_is_applied(tmp_path):
    rgb = _quadrants()  # 48 x 64
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was turned: display rotated 90 degrees clockwise
    path = tmp_path / "rotated.jpg"
    Image.fromarray(rgb).save(path, quality=95, exif=exif)
    expected = np.rot90(rgb, k=-1)  # clockwise
    for source in (path, path.read_bytes(), Image.open(path)):
        out = load_image(source)
        _assert_rgb(out, 64, 48)
        assert np.abs(out.astype(int) - expected).mean() < 4
    assert tuple(load_image(path)[2, -3]) == pytest.approx((255, 0, 0), abs=12)  # top-right


def test_exif_orientation_exact_with_png():
    rgb = _photo()
    exif = Image.Exif()
    exif[0x0112] = 6
    out = load_image(encode(Image.fromarray(rgb), "PNG", exif=exif))
    np.testing.assert_array_equal(out, np.rot90(rgb, k=-1))


def test_sixteen_bit_gray_png_keeps_its_gradient(tmp_path):
    ramp = np.linspace(0, 65535, 256).round().astype(np.uint16)
    gray16 = np.tile(ramp, (8, 1))
    path = tmp_path / "gray16.png"
    Image.fromarray(gray16).save(path)
    assert Image.open(path).mode.startswith("I")
    out = load_image(path)
    _assert_rgb(out, 8, 256)
    np.testing.assert_array_equal(out[3, :, 1], ramp >> 8)
    assert out.min() == 0 and out.max() == 255
    assert np.all(np.diff(out[0, :, 0].astype(int)) >= 0)
    assert len(np.unique(out)) > 200  # not clipped to white, not crushed


def test_int32_and_float_pil_images():
    ramp = np.linspace(0, 65535, 64).round()
    out = load_image(Image.fromarray(np.tile(ramp, (4, 1)).astype(np.int32)))  # mode "I"
    np.testing.assert_array_equal(out[0, :, 0], ramp.astype(np.int64) >> 8)
    unit = np.tile(np.linspace(0, 1, 64, dtype=np.float32), (4, 1))
    out = load_image(Image.fromarray(unit))  # mode "F"
    np.testing.assert_array_equal(out[0, :, 2], np.rint(unit[0] * 255))


def test_palette_png_gives_the_palette_colours():
    rgb = _quadrants()
    palette_image = Image.fromarray(rgb).quantize(colors=4)
    assert palette_image.mode == "P"
    np.testing.assert_array_equal(load_image(encode(palette_image, "PNG")), rgb)


def test_palette_png_with_transparency_drops_alpha():
    rgb = _quadrants()
    palette_image = Image.fromarray(rgb).quantize(colors=4)
    palette_image.info["transparency"] = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = load_image(encode(palette_image, "PNG", transparency=0))
    np.testing.assert_array_equal(out, rgb)


def test_rgba_png_drops_alpha():
    rgb = _photo()
    rgba = np.concatenate([rgb, np.tile(np.arange(32, dtype=np.uint8), (24, 1))[..., None]], -1)
    np.testing.assert_array_equal(load_image(encode(Image.fromarray(rgba), "PNG")), rgb)


def test_la_png_gives_gray_rgb():
    gray = _photo()[:, :, 0]
    la = Image.merge("LA", [Image.fromarray(gray), Image.new("L", (32, 24), 10)])
    out = load_image(encode(la, "PNG"))
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], gray)


def test_cmyk_jpeg_is_converted_to_rgb():
    rgb = _quadrants()
    data = encode(Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    out = load_image(data)
    _assert_rgb(out, 48, 64)
    assert np.abs(out.astype(int) - rgb).mean() < 6


def test_one_bit_image_gives_black_and_white():
    bits = (np.indices((16, 16)).sum(axis=0) % 2).astype(bool)
    one = Image.fromarray(bits)
    assert one.mode == "1"
    for source in (one, encode(one, "PNG")):
        out = load_image(source)
        np.testing.assert_array_equal(out[:, :, 0], np.where(bits, 255, 0))
        assert set(np.unique(out)) == {0, 255}


def test_grayscale_jpeg_gets_three_channels():
    gray = np.tile(np.linspace(0, 255, 64).astype(np.uint8), (16, 1))
    out = load_image(encode(Image.fromarray(gray), "JPEG", quality=95))
    _assert_rgb(out, 16, 64)
    np.testing.assert_array_equal(out[:, :, 0], out[:, :, 2])


_FRAMES = [(220, 20, 30), (20, 200, 40), (30, 40, 210)]


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "WEBP"])
def test_animation_gives_its_first_frame(fmt):
    if fmt == "WEBP" and not features.check("webp"):
        pytest.skip("Pillow without WebP")
    frames = [Image.new("RGB", (20, 10), color) for color in _FRAMES]
    extra = {"lossless": True} if fmt == "WEBP" else {}
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=50, **extra)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3
    out = load_image(data)
    _assert_rgb(out, 10, 20)
    assert np.abs(out.astype(int) - _FRAMES[0]).max() <= 8


# ---------------------------------------------------------------------------- size limit


def test_default_limit():
    assert DEFAULT_MAX_PIXELS == 40_000_000


def test_huge_png_is_refused_fast_without_decoding(tmp_path):
    data = png_header_only(30000, 30000)
    assert len(data) < 100
    path = tmp_path / "bomb.png"
    path.write_bytes(data)
    resource = pytest.importorskip("resource")
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    for source in (path, data, io.BytesIO(data)):
        with pytest.raises(ImageLoadError, match="too large") as info:
            load_image(source)
        assert "max_pixels" in str(info.value)
        assert "900,000,000" in str(info.value)
        assert "40,000,000" in str(info.value)
    assert time.perf_counter() - start < 0.5
    growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    assert growth * scale < 200 * 2**20  # the pixels would be 2.7 GB


def test_our_limit_names_size_and_limit():
    with pytest.raises(ImageLoadError, match="2000x1500") as info:
        load_image(png_header_only(2000, 1500), max_pixels=1_000_000)
    assert "1,000,000" in str(info.value)
    assert "max_pixels" in str(info.value)


def test_limit_is_overridable_per_call():
    data = encode(Image.fromarray(_photo(100, 100)), "PNG")
    with pytest.raises(ImageLoadError, match="too large"):
        load_image(data, max_pixels=9_999)
    assert load_image(data, max_pixels=10_000).shape == (100, 100, 3)


def test_between_pillow_warning_and_error_no_pillow_warning_escapes():
    data = png_header_only(10000, 10000)  # 1e8: above Pillow's warning limit, below its error
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ImageLoadError, match="10000x10000"):
            load_image(data)
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]


def test_raising_our_limit_past_pillows_says_so():
    with pytest.raises(ImageLoadError, match="MAX_IMAGE_PIXELS"):
        load_image(png_header_only(30000, 30000), max_pixels=10**12)


def test_lazy_pil_image_is_checked_before_decoding():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        lazy = Image.open(io.BytesIO(png_header_only(10000, 10000)))
    with pytest.raises(ImageLoadError, match="too large"):
        load_image(lazy)


@pytest.mark.parametrize("bad", [0, -5, 1.5, True, None])
def test_bad_max_pixels(bad):
    with pytest.raises(ValueError, match="max_pixels"):
        load_image(_photo(), max_pixels=bad)


# ---------------------------------------------------------------------------- errors


def test_missing_file(tmp_path):
    path = tmp_path / "nope.jpg"
    with pytest.raises(ImageLoadError, match="not found") as info:
        load_image(path)
    assert "nope.jpg" in str(info.value)


def test_directory(tmp_path):
    with pytest.raises(ImageLoadError, match="directory"):
        load_image(tmp_path)


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.png"
    path.touch()
    with pytest.raises(ImageLoadError, match="empty") as info:
        load_image(path)
    assert "empty.png" in str(info.value)


def test_empty_bytes():
    with pytest.raises(ImageLoadError, match="empty"):
        load_image(b"")


def test_text_file_named_jpg(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not a picture\n")
    with pytest.raises(ImageLoadError, match="not an image") as info:
        load_image(path)
    assert "notes.jpg" in str(info.value)
    assert info.value.__cause__ is not None


def test_garbage_bytes_and_file_object_name(tmp_path):
    with pytest.raises(ImageLoadError, match="not an image"):
        load_image(b"\x00\x01garbage" * 10)
    path = tmp_path / "junk.webp"
    path.write_bytes(b"junk" * 50)
    with path.open("rb") as f, pytest.raises(ImageLoadError, match=r"junk\.webp"):
        load_image(f)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_file(tmp_path, fmt):
    data = encode(Image.fromarray(_photo(64, 64)), fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match=f"truncated or corrupt {fmt} data") as info:
        load_image(path)
    assert path.name in str(info.value)
    assert info.value.__cause__ is not None
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_unreadable_file(tmp_path):
    if os.name == "nt" or os.geteuid() == 0:
        pytest.skip("root (or Windows) can read a file without read permission")
    path = tmp_path / "secret.png"
    path.write_bytes(encode(Image.fromarray(_photo()), "PNG"))
    path.chmod(0)
    with pytest.raises(ImageLoadError, match=r"secret\.png"):
        load_image(path)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_file_cut_inside_its_header(fmt):
    data = encode(Image.fromarray(_photo(64, 64)), fmt)
    with pytest.raises(ImageLoadError, match="truncated or corrupt") as info:
        load_image(data[:30])
    assert fmt in str(info.value)
    assert info.value.__cause__ is not None


def test_image_load_error_is_a_value_error():
    assert issubclass(ImageLoadError, ValueError)
    with pytest.raises(ValueError):
        load_image(Path("/definitely/not/here.png"))


def test_file_sha256_matches_hashlib_across_blocks(tmp_path):
    import hashlib

    from dfine.files import file_sha256

    data = bytes(range(256)) * 5000  # 1.28 MB: more than one 1 MiB block
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()
    with pytest.raises(FileNotFoundError):
        file_sha256(tmp_path / "missing.bin")
