"""The Evaluate tab: zip safety (every attack refused with one clear error, nothing written
outside the request's folder), dataset discovery (COCO and YOLO), and the /evaluate endpoint
on the bundled synthetic split through gradio_client (figures and gallery come back; a
gallery click opens the image with its ground truth)."""

from __future__ import annotations

import json
import os
import stat
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("gradio", reason="the app needs gradio")

from app import archive
from app.archive import extract_zip, find_dataset
from app.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
SYNTH = ROOT / "assets" / "examples" / "synth"


@pytest.fixture(scope="module", autouse=True)
def eval_home(tmp_path_factory):
    """One DFINE_HOME for the evaluation tests of the session (cache of the bundled split)."""
    home = tmp_path_factory.getbasetemp() / "dfine_home_evaluate"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DFINE_HOME", str(home))
        yield home


def _zip(path: Path, entries: dict[str, bytes], utf8: bool = True) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def _coco_entries(prefix: str = "") -> dict[str, bytes]:
    ann = json.loads((SYNTH / "instances_val.json").read_text())
    out = {f"{prefix}annotations/instances_val.json": json.dumps(ann).encode()}
    for im in ann["images"]:
        out[f"{prefix}val/{im['file_name']}"] = (SYNTH / im["file_name"]).read_bytes()
    return out


def _refused(tmp_path: Path, zpath: Path, match: str) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(UserError, match=match) as err:
        extract_zip(zpath, dest)
    assert "\n" not in str(err.value)
    outside = {p for p in tmp_path.rglob("*")} - {zpath, dest} - set(dest.rglob("*"))
    assert not outside  # nothing was written outside the destination


def test_zip_path_traversal_refused(tmp_path):
    _refused(tmp_path, _zip(tmp_path / "a.zip", {"ok.txt": b"x", "../evil.txt": b"x"}), r"'\.\.'")


def test_zip_absolute_path_refused(tmp_path):
    _refused(tmp_path, _zip(tmp_path / "a.zip", {"/etc/evil": b"x"}), "absolute path")


def test_zip_symlink_refused(tmp_path):
    z = tmp_path / "a.zip"
    with zipfile.ZipFile(z, "w") as zf:
        info = zipfile.ZipInfo("link.jpg")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    _refused(tmp_path, z, "symbolic link")


def test_zip_bomb_refused(tmp_path):
    z = _zip(tmp_path / "a.zip", {"zeros.bin": b"\0" * (5 * 2**20)})  # ~1000:1
    _refused(tmp_path, z, "zip bomb")


def test_zip_limits_on_count_and_size(tmp_path, monkeypatch):
    monkeypatch.setattr(archive, "MAX_FILES", 3)
    z = _zip(tmp_path / "a.zip", {f"{i}.txt": b"x" for i in range(4)})
    _refused(tmp_path, z, "4 files; the limit is 3")
    monkeypatch.setattr(archive, "MAX_FILES", 2000)
    monkeypatch.setattr(archive, "MAX_TOTAL_BYTES", 1000)
    rnd = os.urandom(600)
    z2 = _zip(tmp_path / "b.zip", {"a.bin": rnd, "b.bin": rnd})
    (tmp_path / "dest2").mkdir()
    with pytest.raises(UserError, match="expands to"):
        extract_zip(z2, tmp_path / "dest2")


def test_zip_non_utf8_names_refused(tmp_path):
    z = tmp_path / "a.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("x.txt", b"x")
    raw = z.read_bytes().replace(b"x.txt", "\xe9.txt".encode("latin-1"))  # cp1252 'é', no flag
    z.write_bytes(raw)
    _refused(tmp_path, z, "not UTF-8")


def test_not_a_zip_refused(tmp_path):
    z = tmp_path / "a.zip"
    z.write_bytes(b"not a zip")
    _refused(tmp_path, z, "not a readable zip")


def test_json_not_matching_images_and_empty_datasets(tmp_path):
    entries = _coco_entries()
    entries.pop(next(k for k in entries if k.endswith(".jpg")))
    dest = tmp_path / "d1"
    dest.mkdir()
    extract_zip(_zip(tmp_path / "a.zip", entries), dest)
    with pytest.raises(UserError, match="does not match the images: 1 of 4"):
        find_dataset(dest)
    dest2 = tmp_path / "d2"
    dest2.mkdir()
    extract_zip(_zip(tmp_path / "b.zip", {"readme.txt": b"hi"}), dest2)
    with pytest.raises(UserError, match="no images"):
        find_dataset(dest2)
    empty = {"a/instances_val.json": b'{"images": [], "annotations": [], "categories": []}',
             "a/x.jpg": (SYNTH / "000001.jpg").read_bytes()}  # fmt: skip
    dest3 = tmp_path / "d3"
    dest3.mkdir()
    extract_zip(_zip(tmp_path / "c.zip", empty), dest3)
    with pytest.raises(UserError, match="lists no images: the dataset is empty"):
        find_dataset(dest3)


def test_coco_and_yolo_layouts_found(tmp_path):
    dest = tmp_path / "coco"
    dest.mkdir()
    extract_zip(_zip(tmp_path / "a.zip", _coco_entries("ds/")), dest)
    found = find_dataset(dest)
    assert found.layout == "coco" and found.images == dest / "ds" / "val"
    ann = json.loads((SYNTH / "instances_val.json").read_text())
    yolo = {
        "data.yaml": ("names: [" + ", ".join(c["name"] for c in ann["categories"]) + "]").encode()
    }
    for im in ann["images"]:
        yolo[f"images/{im['file_name']}"] = (SYNTH / im["file_name"]).read_bytes()
        w, h = im["width"], im["height"]
        lines = [
            f"{a['category_id'] - 1} {(a['bbox'][0] + a['bbox'][2] / 2) / w} "
            f"{(a['bbox'][1] + a['bbox'][3] / 2) / h} {a['bbox'][2] / w} {a['bbox'][3] / h}"
            for a in ann["annotations"] if a["image_id"] == im["id"]
        ]  # fmt: skip
        yolo[f"labels/{Path(im['file_name']).stem}.txt"] = "\n".join(lines).encode()
    dest2 = tmp_path / "yolo"
    dest2.mkdir()
    extract_zip(_zip(tmp_path / "b.zip", yolo), dest2)
    found = find_dataset(dest2)
    assert found.layout == "yolo"
    coco = json.loads(found.annotations.read_text())
    assert len(coco["images"]) == 4 and len(coco["annotations"]) == len(ann["annotations"])


# ------------------------------------------------------------------------------ endpoint
def test_evaluate_endpoint_returns_figures_and_gallery(tmp_path):
    client_lib = pytest.importorskip("gradio_client")
    from app import build_demo
    from tests.app_util import call, serve

    demo = build_demo()
    demo.queue(default_concurrency_limit=2, max_size=20)
    with serve(demo) as url:
        client = client_lib.Client(url, verbose=False, httpx_kwargs={"timeout": 600})
        out = call(
            client, "bundled synthetic val split", None, "default", 0.5, True, True,
            api_name="/evaluate", timeout=600,
        )  # fmt: skip
        # uploading the same data as a zip is refused or evaluated, never half-done
        bad = _zip(tmp_path / "bad.zip", {"../x.jpg": b"x"})
        with pytest.raises(Exception, match=r"'\.\.'"):
            call(
                client, "uploaded zip", client_lib.handle_file(str(bad)), "default", 0.5,
                True, True, api_name="/evaluate", timeout=120,
            )  # fmt: skip
    summary, stages, calib, _classes, *plots, gallery = out
    assert "AP" in summary and "images" in summary
    assert [r[0] for r in stages["data"]] == [
        "encoder",
        "pre-head",
        "layer 1",
        "layer 2",
        "layer 3",
    ]
    assert len(calib["data"]) == 3
    assert len(plots) == 10
    titles = [json.loads(p["plot"])["layout"]["title"]["text"] for p in plots]
    assert any("every stage" in t for t in titles) and any("Confusion" in t for t in titles)
    assert any("Where each layer's attention fell" in t for t in titles)
    assert gallery and all(Path(item["image"]).is_file() for item in gallery)
