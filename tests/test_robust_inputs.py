"""Issue #7, end to end: hostile images, checkpoints and annotation files from strangers.

Every hostile image goes through the ``Detector``, the ``dfine predict`` command, the app's
``/detect`` handler and (a representative subset) the launched app called with
gradio_client; hostile checkpoints go through the app's model upload on the launched
server; malformed COCO annotation files go through ``dfine val`` and ``dfine train``.
Each gets a correct result (the right image size, boxes inside the image) or one clear
error that names the file and the problem: no traceback reaches a user, and the server
answers a normal request afterwards. (Unit-level decoding and checkpoint errors are in
``test_io.py``, ``test_checkpoint.py`` and ``test_data.py``; they are not repeated here.)
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, features

import dfine
from dfine.checkpoint import CheckpointError
from dfine.io import ImageLoadError, load_image
from dfine.predict import Detector
from tests.image_util import encode, png_header_only

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "dfine_n_perturbed_random_official.pth"
PHOTO = ROOT / "assets" / "examples" / "chelsea.jpg"  # 451 x 300
SIZE = 320  # network input: small, so every pass is fast
TIMEOUT = 120  # seconds, for any single client call or command


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """One intra-op thread: many small forward passes, from several server threads at once,
    run faster without a contended thread pool (and CI machines may be shared)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ============================================================================ hostile images
@dataclass(frozen=True)
class Case:
    """One hostile image file: a good one has ``size`` (width, height), a bad one an
    ``error`` (regex of its message); ``either`` accepts both (decoders may differ)."""

    name: str
    data: bytes
    size: tuple[int, int] | None = None
    error: str | None = None

    @property
    def good(self) -> bool:
        return self.error is None


def _photo(height: int = 48, width: int = 64) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 5 % 256, y * 7 % 256, (x * y + 40) % 256], -1).astype(np.uint8)


def _overwrite(data: bytes, start: int, count: int) -> bytes:
    out = bytearray(data)
    out[start : start + count] = bytes((i * 37 + 11) % 256 for i in range(count))
    return bytes(out)


def _exif_rotated_jpeg() -> bytes:
    """Stored 64 wide x 48 high, EXIF orientation 6: shown 48 wide x 64 high."""
    image = Image.fromarray(_photo(48, 64))
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(image, "JPEG", quality=92, exif=exif.tobytes())


def _animation(fmt: str) -> bytes:
    frames = [Image.new("RGB", (40, 30), c) for c in ((220, 20, 30), (20, 200, 40), (30, 40, 210))]
    extra = {"lossless": True} if fmt == "WEBP" else {}
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=50, **extra)


def hostile_images() -> list[Case]:
    rgb = Image.fromarray(_photo())
    jpeg = encode(rgb, "JPEG", quality=90)
    png = encode(rgb, "PNG")
    sof = jpeg.find(b"\xff\xc0")  # the JPEG frame header
    gray16 = (np.linspace(0, 65535, 48 * 64).reshape(48, 64)).astype(np.uint16)
    rgba = np.dstack([_photo(), np.full((48, 64), 90, np.uint8)])
    cases = [
        Case("truncated_jpeg.jpg", jpeg[: len(jpeg) // 2], error="truncated or corrupt JPEG"),
        Case("truncated_png.png", png[: len(png) // 2], error="truncated or corrupt PNG"),
        Case("corrupt_header.jpg", _overwrite(jpeg, sof, 12), error="truncated or corrupt JPEG"),
        Case("corrupt_data.png", _overwrite(png, len(png) // 2, 16), error="corrupt PNG data"),
        # garbled entropy-coded data: JPEG decoders resynchronise and return the right size
        Case(
            "scrambled_scan.jpg",
            _overwrite(jpeg, (jpeg.find(b"\xff\xda") + len(jpeg)) // 2, 64),
            size=(64, 48),
            error="truncated or corrupt JPEG",
        ),
        Case("zero_bytes.jpg", b"", error=r"empty (file|data) \(0 bytes\)"),
        Case("text_file.jpg", b"this is a text file, not a picture\n" * 4, error="not an image"),
        Case("one_pixel.png", encode(Image.new("RGB", (1, 1), (200, 30, 60)), "PNG"), (1, 1)),
        Case(
            "bomb_30000x30000.png",
            png_header_only(30000, 30000),
            error=r"too large \(.*900,000,000 pixels, limit 40,000,000\)",
        ),
        Case("gray_16bit.png", encode(Image.fromarray(gray16), "PNG"), (64, 48)),
        Case("cmyk.jpg", encode(rgb.convert("CMYK"), "JPEG", quality=90), (64, 48)),
        Case(
            "palette.png",
            encode(rgb.convert("P", palette=Image.Palette.ADAPTIVE), "PNG"),
            (64, 48),
        ),
        Case("rgba.png", encode(Image.fromarray(rgba, "RGBA"), "PNG"), (64, 48)),
        Case("grayscale.jpg", encode(rgb.convert("L"), "JPEG", quality=90), (64, 48)),
        Case("exif_rotated.jpg", _exif_rotated_jpeg(), (48, 64)),
        Case("animated_gif.gif", _animation("GIF"), (40, 30)),
    ]
    if features.check("webp"):
        cases.append(Case("animated_webp.webp", _animation("WEBP"), (40, 30)))
    return cases


CASES = hostile_images()
BAD = [c for c in CASES if not c.good]
GOOD = [c for c in CASES if c.good]


def _ids(cases: list[Case]) -> list[str]:
    return [c.name for c in cases]


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hostile_images")
    for case in CASES:
        (folder / case.name).write_bytes(case.data)
    return folder


def test_the_bomb_is_tiny_and_all_files_differ():
    bomb = next(c for c in CASES if c.name.startswith("bomb"))
    assert len(bomb.data) < 100
    assert len({c.data for c in CASES}) == len(CASES)


def _assert_inside(boxes: np.ndarray, width: int, height: int) -> None:
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    assert np.isfinite(boxes).all()
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= width).all()
    assert (boxes[:, 1] >= 0).all() and (boxes[:, 3] <= height).all()
    assert (boxes[:, 0] <= boxes[:, 2]).all() and (boxes[:, 1] <= boxes[:, 3]).all()


def _readable(message: str) -> str:
    """A message a user may see: no traceback, no server temp folders."""
    assert "Traceback" not in message and 'File "' not in message
    assert "/tmp/" not in message and "gradio" not in message.lower()
    return message


# ---------------------------------------------------------------------------- (a) Detector
@pytest.fixture(scope="module")
def detector() -> Detector:
    return Detector(str(FIXTURE), threshold=0.0, size=SIZE)


def _detect_or_error(detector: Detector, source) -> tuple[object, ImageLoadError | None]:
    try:
        return detector(source), None
    except ImageLoadError as e:
        return None, e


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_detector(detector, image_dir, case):
    path = image_dir / case.name
    start = time.perf_counter()
    dets, err = _detect_or_error(detector, path)
    elapsed = time.perf_counter() - start
    if err is not None:
        assert case.error is not None, f"{case.name} should load: {err}"
        assert re.search(case.error, str(err)), str(err)
        assert case.name in str(err)  # names the file
    else:
        assert case.size is not None, f"{case.name} should be refused"
        assert dets.image_size == case.size
        assert dets.image.shape == (case.size[1], case.size[0], 3)
        assert len(dets) == 300  # threshold 0: every query
        _assert_inside(dets.boxes, *case.size)
        assert np.isfinite(dets.scores).all()
    if case.name.startswith("bomb"):
        assert elapsed < 1.0  # refused from the header, nothing decoded


def test_detector_bytes_and_file_objects_agree_with_paths(detector, image_dir):
    for case in CASES:
        with (image_dir / case.name).open("rb") as f:
            for source in (case.data, f):
                dets, err = _detect_or_error(detector, source)
                if err is None:
                    assert case.size is not None and dets.image_size == case.size, case.name
                else:
                    assert case.error is not None and re.search(case.error, str(err)), case.name


# ---------------------------------------------------------------------------- (b) the CLI
def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _dfine(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """The ``dfine`` command in a fresh process (what a user runs)."""
    return subprocess.run(
        [sys.executable, "-m", "dfine.cli", *args],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=ROOT,
        timeout=timeout,
    )


def test_cli_predict_skips_bad_images_and_writes_the_good_ones(image_dir, tmp_path):
    out = tmp_path / "out"
    missing = image_dir / "does_not_exist.png"
    args = [str(image_dir), str(missing), "--weights", str(FIXTURE), "--threshold", "0"]
    done = _dfine("predict", *args, "--size", str(SIZE), "--out", str(out), "-q")
    assert done.returncode == 1, done.stderr[-3000:]
    err = done.stderr
    assert "Traceback" not in err
    lines = {
        line.split(": ", 1)[0]: line for line in err.splitlines() if line.startswith("skipped ")
    }
    assert f"skipped {missing}" in lines and "file not found" in lines[f"skipped {missing}"]
    for case in CASES:
        written = out / f"{Path(case.name).stem}.json"
        line = lines.get(f"skipped {image_dir / case.name}")
        if line is not None:  # refused: one line naming the file and the problem
            assert case.error is not None and re.search(case.error, line), line
            assert not written.exists()
            continue
        assert case.size is not None, f"{case.name} was not reported: {err[-2000:]}"
        record = json.loads(written.read_text())
        assert record["image_size"] == {"width": case.size[0], "height": case.size[1]}
        assert record["source"] == str(image_dir / case.name)
        boxes = [d["box"] for d in record["detections"]]
        assert len(boxes) == 300
        _assert_inside(np.array(boxes), *case.size)
        with Image.open(out / f"{Path(case.name).stem}.jpg") as drawn:
            assert drawn.size == case.size
    reported = {Path(key.removeprefix("skipped ")).name for key in lines}
    assert {c.name for c in BAD if c.size is None} | {missing.name} <= reported
    assert reported <= {c.name for c in BAD} | {missing.name}


def test_cli_predict_on_only_bad_images_fails_naming_each(image_dir, tmp_path):
    bad = [str(image_dir / c.name) for c in BAD if c.size is None]
    done = _dfine("predict", *bad, "--weights", str(FIXTURE), "--out", str(tmp_path / "o"), "-q")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    for path in bad:
        assert f"skipped {path}: Cannot load image" in done.stderr
    assert "wrote" not in done.stdout
    assert not list((tmp_path / "o").glob("*.json"))


# ---------------------------------------------------------------------- (c) the /detect handler
gr = pytest.importorskip("gradio", reason="the app needs gradio")
client_lib = pytest.importorskip("gradio_client", reason="the API test needs gradio_client")

from app.state import AppState  # noqa: E402
from app.tables import DETECTION_COLUMNS  # noqa: E402
from app.tabs import detect  # noqa: E402
from tests.app_util import (  # noqa: E402
    app_state,
    load_app_py,
    serve,
)
from tests.app_util import call as call_app  # noqa: E402


@pytest.fixture(scope="module")
def handlers(tmp_path_factory) -> AppState:
    tmp = tmp_path_factory.mktemp("robust_app")
    return app_state(tmp, FIXTURE)


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_detect_handler(handlers, image_dir, case):
    path = image_dir / case.name
    try:
        annotated, table, json_path, summary = detect.detect(
            handlers, str(path), 0.0, SIZE, "default", 300
        )
    except gr.Error as e:
        assert case.error is not None, f"{case.name} should load: {e.message}"
        assert e.title == "Cannot read the image"
        message = _readable(e.message)
        assert re.search(case.error, message) and case.name in message
        return
    assert case.size is not None, f"{case.name} should be refused"
    assert annotated.size == case.size
    assert list(table.columns) == DETECTION_COLUMNS and len(table) == 300
    _assert_inside(table[DETECTION_COLUMNS[3:]].to_numpy(), *case.size)
    record = json.loads(Path(json_path).read_text())
    assert record["image_size"] == {"width": case.size[0], "height": case.size[1]}
    assert f"image {case.size[0]}×{case.size[1]} px" in summary


def test_handler_still_answers_after_every_bad_image(handlers, image_dir):
    for case in BAD:
        if case.size is None:  # always refused
            with pytest.raises(gr.Error):
                detect.detect(handlers, str(image_dir / case.name), 0.0, SIZE, "default", 300)
    _, table, _, _ = detect.detect(handlers, str(PHOTO), 0.0, SIZE, "default", 300)
    assert len(table) == 300
    _assert_inside(table[DETECTION_COLUMNS[3:]].to_numpy(), 451, 300)


# ---------------------------------------------------------------------- (d) the launched app
@pytest.fixture(scope="module")
def server():
    demo = load_app_py("dfine_app_main_robust").create_demo(str(FIXTURE))
    with serve(demo) as url:
        yield demo, url


@pytest.fixture(scope="module")
def client(server):
    return client_lib.Client(server[1], verbose=False, httpx_kwargs={"timeout": TIMEOUT})


def call(client, *args, api_name: str):
    return call_app(client, *args, api_name=api_name, timeout=TIMEOUT)


def _detect_photo(client) -> None:
    """The server still answers a normal request, correctly."""
    _, table, json_path, _ = call(
        client, client_lib.handle_file(PHOTO), 0.0, SIZE, "default", 300, api_name="/detect"
    )
    assert len(table["data"]) == 300
    assert json.loads(Path(json_path).read_text())["image_size"] == {"width": 451, "height": 300}
    _assert_inside(np.array([row[3:] for row in table["data"]]), 451, 300)


SERVER_BAD = ["corrupt_header.jpg", "text_file.jpg", "bomb_30000x30000.png", "zero_bytes.jpg"]


@pytest.mark.parametrize("name", SERVER_BAD)
def test_server_refuses_bad_images_readably_and_keeps_serving(client, image_dir, name):
    case = next(c for c in CASES if c.name == name)
    start = time.perf_counter()
    with pytest.raises(client_lib.exceptions.AppError) as err:
        call(client, client_lib.handle_file(image_dir / name), 0.0, SIZE, "default", 300,
             api_name="/detect")  # fmt: skip
    assert time.perf_counter() - start < 30
    message = _readable(str(err.value))
    assert re.search(case.error, message) and name in message
    assert err.value.title == "Cannot read the image"
    _detect_photo(client)


@pytest.mark.parametrize("name", ["exif_rotated.jpg", "gray_16bit.png", "animated_gif.gif"])
def test_server_detects_on_awkward_good_images(client, image_dir, name):
    case = next(c for c in CASES if c.name == name)
    annotated, table, json_path, _ = call(
        client, client_lib.handle_file(image_dir / name), 0.0, SIZE, "default", 300,
        api_name="/detect",
    )  # fmt: skip
    assert load_image(annotated).shape == (case.size[1], case.size[0], 3)
    record = json.loads(Path(json_path).read_text())
    assert record["image_size"] == {"width": case.size[0], "height": case.size[1]}
    _assert_inside(np.array([row[3:] for row in table["data"]]), *case.size)


# ============================================================================ hostile checkpoints
class _RunsCode:
    """Unpickling this runs ``touch MARKER``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _fixture_state_dict() -> dict[str, torch.Tensor]:
    obj = torch.load(FIXTURE, map_location="cpu", weights_only=True)
    if "ema" in obj:
        return dict(obj["ema"]["module"])
    return dict(obj.get("model", obj))


def _safetensors_with_metadata(path: Path, num_classes: int, **meta) -> Path:
    from safetensors import safe_open
    from safetensors.torch import save_file

    torch.manual_seed(0)
    dfine.save_model(dfine.build_model("n", num_classes=num_classes).eval(), path)
    with safe_open(str(path), "pt") as f:
        stored = json.loads(f.metadata()["dfine"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    stored.update(meta)
    save_file(tensors, str(path), metadata={"dfine": json.dumps(stored), "format": "pt"})
    return path


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hostile_checkpoints")


@pytest.fixture(scope="module")
def marker(checkpoint_dir) -> Path:
    """The file the pickled payloads would create if they ran."""
    return checkpoint_dir / "payload_ran"


@pytest.fixture(scope="module")
def checkpoints(checkpoint_dir, marker) -> dict[str, tuple[Path, str]]:
    """name -> (file, regex of the error the upload must give)."""
    tmp = checkpoint_dir
    files: dict[str, tuple[Path, str]] = {}
    raw = tmp / "raw_pickle.pth"
    raw.write_bytes(pickle.dumps({"model": _RunsCode(marker)}))
    files["raw pickle running code"] = (raw, r"raw pickle \(which could run code")
    zipped = tmp / "pickled_code.pth"
    torch.save({"model": {"backbone.x": _RunsCode(marker)}}, zipped)
    files["torch.save with code"] = (zipped, r"pickled Python objects \(posix\.system\)")
    disguised = tmp / "pickle_named.safetensors"
    disguised.write_bytes(raw.read_bytes())
    files["pickle named .safetensors"] = (disguised, "not a readable safetensors file")
    data = FIXTURE.read_bytes()
    cut = tmp / "truncated.pth"
    cut.write_bytes(data[: len(data) // 2])
    files["truncated"] = (
        cut,
        r"not a readable PyTorch checkpoint: it is truncated or corrupt \(\w+\)",
    )
    empty = tmp / "empty.pth"
    empty.write_bytes(b"")
    files["empty"] = (empty, r"empty \(0 bytes\)")
    import torchvision

    torch.manual_seed(0)
    resnet = tmp / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), resnet)
    files["resnet18 (another architecture)"] = (resnet, "does not look like a D-FINE checkpoint")
    sd = _fixture_state_dict()
    heads = dict(sd)
    for key in ("decoder.enc_score_head.weight", "decoder.enc_score_head.bias"):
        heads[key] = sd[key][:20].clone()  # 20 classes here, 80 in the decoder heads
    torch.save({"model": heads}, tmp / "class_count.pth")
    files["wrong class count (heads disagree)"] = (
        tmp / "class_count.pth",
        r"does not fit a D-FINE-N: .*dec_score_head\.0\.weight: file \(80, 128\) vs model \(20, 128\)",
    )
    names = _safetensors_with_metadata(tmp / "names.safetensors", 3, class_names=["a", "b"])
    files["wrong class count (names)"] = (names, "metadata lists 2 class names for 3 classes")
    nan = {k: v.clone() for k, v in sd.items()}
    nan["decoder.dec_score_head.0.weight"][0, 0] = float("nan")
    torch.save({"model": nan}, tmp / "nan.pth")
    files["NaN weights"] = (tmp / "nan.pth", r"non-finite \(NaN/inf\) weights in: decoder\.dec")
    huge = _safetensors_with_metadata(tmp / "huge_input.safetensors", 3, input_size=[10**5] * 2)
    files["metadata asking for a 100000 px input"] = (huge, "input_size must be")
    listed = _safetensors_with_metadata(tmp / "names_type.safetensors", 3, class_names=7)
    files["metadata class_names not a list"] = (listed, "class_names must be a list of strings")
    return files


CHECKPOINT_CASES = [
    "raw pickle running code",
    "torch.save with code",
    "pickle named .safetensors",
    "truncated",
    "empty",
    "resnet18 (another architecture)",
    "wrong class count (heads disagree)",
    "wrong class count (names)",
    "NaN weights",
    "metadata asking for a 100000 px input",
    "metadata class_names not a list",
]


@pytest.mark.parametrize("name", CHECKPOINT_CASES)
def test_library_refuses_hostile_checkpoints(checkpoints, marker, name):
    path, error = checkpoints[name]
    with pytest.raises(CheckpointError, match=error):
        dfine.load_model(path)
    assert not marker.exists(), "the pickled payload ran"


@pytest.mark.parametrize("name", CHECKPOINT_CASES)
def test_server_refuses_hostile_checkpoint_uploads(client, checkpoints, marker, name):
    path, error = checkpoints[name]
    with pytest.raises(client_lib.exceptions.AppError) as err:
        call(client, "default", client_lib.handle_file(path), api_name="/model")
    message = _readable(str(err.value))
    assert re.search(error, message), message
    assert path.name in message
    assert err.value.title == "Cannot use this checkpoint"
    assert not marker.exists(), "the pickled payload ran"
    info, key = call(client, "default", None, api_name="/model")
    assert key == "default" and "D-FINE-N" in info
    _detect_photo(client)


def test_refused_uploads_leave_no_model_behind(server, client, checkpoints):
    demo, _ = server
    store = demo.dfine_state.store
    for name in CHECKPOINT_CASES[:3]:
        with pytest.raises(client_lib.exceptions.AppError):
            call(client, "default", client_lib.handle_file(checkpoints[name][0]), api_name="/model")
    assert not [k for _, k in store.choices() if k.startswith("upload-")]
    assert not list(store.upload_dir.iterdir())


def test_server_accepts_a_model_of_another_class_count(client, tmp_path):
    """Not hostile, but near the edge: 3 classes load and detect with labels 0..2."""
    path = _safetensors_with_metadata(
        tmp_path / "three.safetensors", 3, class_names=["a", "b", "c"]
    )
    info, key = call(client, "default", client_lib.handle_file(path), api_name="/model")
    assert key.startswith("upload-") and "three.safetensors" in info
    _, table, _, _ = call(
        client, client_lib.handle_file(PHOTO), 0.0, SIZE, key, 300, api_name="/detect"
    )
    assert {row[1] for row in table["data"]} <= {"a", "b", "c"} and len(table["data"]) == 300


@pytest.mark.parametrize("raw", ["[1, 2]", '"text"', "null"])
def test_metadata_that_is_not_an_object_is_refused(tmp_path, raw):
    from safetensors.torch import save_file

    path = tmp_path / "odd_metadata.safetensors"
    save_file({"backbone.x": torch.zeros(2)}, str(path), metadata={"dfine": raw})
    with pytest.raises(CheckpointError, match=r"its metadata is a \w+, not an object"):
        dfine.load_model(path)


def test_cli_refuses_hostile_checkpoints(checkpoints, marker, tmp_path):
    for name in ("torch.save with code", "metadata asking for a 100000 px input"):
        path, error = checkpoints[name]
        done = _dfine("predict", str(PHOTO), "--weights", str(path), "--out", str(tmp_path), "-q")
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert done.stderr.startswith("error: ") and re.search(error, done.stderr)
    assert not marker.exists()


# ============================================================================ hostile annotations
@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    from dfine.data.synth import make_synthetic_dataset

    root = tmp_path_factory.mktemp("synth_robust")
    make_synthetic_dataset(root, num_train=4, num_val=4, image_size=(256, 256), seed=0,
                           photo_fraction=0.0)  # fmt: skip
    return root


@pytest.fixture(scope="module")
def weights8(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights8") / "synth8.safetensors"
    return dfine.save_model(dfine.build_model("n", num_classes=8).eval(), path)


def _mutate(data: dict, case: str) -> dict:
    anns, images = data["annotations"], data["images"]
    first = anns[0]["image_id"]
    if case == "missing_list":
        del data["annotations"]
    elif case == "missing_fields":
        del anns[0]["bbox"]  # one annotation without a box
        other = next(i for i in images if i["id"] != first)
        del other["width"]  # one image without a width
        del anns[2]["image_id"]  # one annotation of no image
    elif case == "unknown_category":
        anns[0]["category_id"] = 99
    elif case == "bad_boxes":
        anns[0]["bbox"] = [10, 10, -5, 20]
        anns[1]["bbox"] = [10, 10, 0, 0]
    elif case == "missing_on_disk":
        images[0]["file_name"] = "gone.jpg"
    return data


# case -> (exit code, regex on stderr of an error, or of the logged skip summary)
ANNOTATION_CASES = {
    "malformed_json": (2, r"not valid JSON \(line 1, column \d+"),
    "missing_list": (2, "missing the 'annotations' list of a COCO detection file"),
    "missing_fields": (
        0,
        r"skipped 3 invalid record\(s\): 1 invalid_bbox, 1 invalid_image, 1 unknown_image_id",
    ),
    "unknown_category": (
        0,
        r"skipped 1 invalid record\(s\): 1 unknown_category_id; .*category_id 99 is not in",
    ),
    "bad_boxes": (0, r"skipped 2 invalid record\(s\): 2 non_positive_size"),
    "missing_on_disk": (2, r"image id \d+: Cannot load image '.*gone\.jpg': file not found"),
}


def _write_case(synth: Path, split: str, case: str, folder: Path) -> Path:
    text = (synth / "annotations" / f"instances_{split}.json").read_text()
    path = folder / f"{split}_{case}.json"
    if case == "malformed_json":
        path.write_text(text[: len(text) // 2])
    else:
        path.write_text(json.dumps(_mutate(json.loads(text), case)))
    return path


def _run_inprocess(args: list[str], capsys) -> tuple[int, str]:
    from dfine.cli import main

    rc = main(args)
    return rc, capsys.readouterr().err


def _run_case(case: str, args: list[str], subprocess_args: list[str], capsys, caplog) -> list[str]:
    """Run ``dfine ARGS`` on a hostile annotation case and check the exit code and error text
    (no traceback; ``error: `` and the case's pattern). ``missing_on_disk`` runs in a
    subprocess with loader workers (``subprocess_args``), so the error crosses a process; the
    other cases run in-process with no workers. Returns the ``dfine.data`` log messages."""
    expected_rc, pattern = ANNOTATION_CASES[case]
    if case == "missing_on_disk":
        done = _dfine(*args, *subprocess_args)
        rc, err = done.returncode, done.stderr
    else:
        with caplog.at_level(logging.WARNING, logger="dfine.data"):
            rc, err = _run_inprocess([*args, "--workers", "0"], capsys)
    assert rc == expected_rc, err[-3000:]
    assert "Traceback" not in err
    if expected_rc:
        assert err.startswith("error: ") and re.search(pattern, err), err
    return [r.getMessage() for r in caplog.records if r.name == "dfine.data"]


@pytest.mark.parametrize("case", list(ANNOTATION_CASES))
def test_val_on_hostile_annotations(synth, weights8, tmp_path, case, capsys, caplog):
    ann = _write_case(synth, "val", case, tmp_path)
    args = ["val", "--weights", str(weights8), "--data", str(ann), "--images", str(synth / "val"),
            "--size", "256", "--batch-size", "4", "--json", "--quiet", "--device", "cpu"]  # fmt: skip
    logged = _run_case(case, args, [], capsys, caplog)  # default loader workers
    expected_rc, pattern = ANNOTATION_CASES[case]
    if not expected_rc:
        assert len(logged) == 1 and re.search(pattern, logged[0]), logged
        assert str(ann) in logged[0]


@pytest.mark.parametrize("case", list(ANNOTATION_CASES))
def test_train_on_hostile_annotations(synth, tmp_path, case, capsys, caplog):
    ann = _write_case(synth, "train", case, tmp_path)
    out = tmp_path / "run"
    args = ["train", "--data", str(ann), "--images", str(synth / "train"), "--out", str(out),
            "--epochs", "1", "--max-steps-per-epoch", "2", "--batch-size", "2",
            "--input-size", "256", "--no-val", "--quiet", "--no-tensorboard",
            "--device", "cpu"]  # fmt: skip
    logged = _run_case(case, args, ["--workers", "2"], capsys, caplog)
    expected_rc, pattern = ANNOTATION_CASES[case]
    if expected_rc:
        assert not (out / "final.safetensors").exists()
    else:
        assert logged and re.search(pattern, logged[0]), logged
        assert (out / "final.safetensors").exists()  # trained on what was valid
        model = dfine.load_model(out / "final.safetensors")
        assert model.num_classes == 8


def test_worker_tracebacks_are_reduced_to_the_message():
    from dfine.errors import error_text

    wrapped = ValueError(
        "Caught DatasetError in DataLoader worker process 0.\nOriginal Traceback (most recent "
        'call last):\n  File "x.py", line 1, in f\n    raise DatasetError(m)\n'
        "dfine.data.dataset.DatasetError: a.json: image id 3: file not found\n"
    )
    assert error_text(wrapped) == "a.json: image id 3: file not found"
    assert error_text(ValueError("plain: message")) == "plain: message"
