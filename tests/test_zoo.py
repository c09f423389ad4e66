"""dfine.zoo: the name table, name lookup, the cache folder, and downloads (torch.hub) from a
local HTTP server (never the internet): fresh, cached, verified, refused; the Hugging Face copy
(huggingface_hub) offline."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dfine import zoo
from dfine.zoo import ZooDownloadError

FILE = "dfine_n_coco.pth"
PAYLOAD = os.urandom(300 * 1024)


# ---------------------------------------------------------------------------- local server
class _Server(http.server.ThreadingHTTPServer):
    """Serves ``root``; ``drop_after`` bytes then hangs up (once); ``ranges`` toggles 206."""

    daemon_threads = True

    def __init__(self, root: Path) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root = root
        self.drop_after: int | None = None
        self.ranges = True
        self.chunk_delay = 0.0
        self.requests: list[dict[str, str]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        srv = self.server
        srv.requests.append(dict(self.headers))
        path = srv.root / self.path.lstrip("/")
        if not path.is_file():
            self.send_error(404, "Not Found")
            return
        data = path.read_bytes()
        start = self._range_start()
        if start is not None and start >= len(data):
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self._send_headers(start, len(data))
        self._send_body(data[start or 0 :])

    def _range_start(self) -> int | None:
        m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        return int(m[1]) if m and self.server.ranges else None

    def _send_headers(self, start: int | None, size: int) -> None:
        if start is None:
            self.send_response(200)
        else:
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        self.send_header("Content-Length", str(size - (start or 0)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()

    def _send_body(self, body: bytes) -> None:
        srv = self.server
        if srv.drop_after is not None and len(body) > srv.drop_after:
            body, srv.drop_after = body[: srv.drop_after], None
            self.close_connection = True
        for i in range(0, len(body), 32 * 1024):
            self.wfile.write(body[i : i + 32 * 1024])
            time.sleep(srv.chunk_delay)
        self.wfile.flush()


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own cache folder and no mirror from the environment."""
    home = tmp_path / "dfine_home"
    monkeypatch.setenv("DFINE_HOME", str(home))
    monkeypatch.delenv("DFINE_ZOO_URL", raising=False)
    return home


@pytest.fixture
def server(tmp_path: Path) -> Iterator[_Server]:
    root = tmp_path / "served"
    root.mkdir()
    (root / FILE).write_bytes(PAYLOAD)
    srv = _Server(root)
    thread = threading.Thread(target=srv.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(5)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fetch(srv: _Server, name: str = "dfine_n_coco", **kw: object) -> Path:
    return zoo.download(name, base_url=srv.url, progress=False, **kw)


# ---------------------------------------------------------------------------- the table
def test_table_has_every_official_checkpoint() -> None:
    by_dataset = {
        d: [e.name for e in zoo.MODELS.values() if e.dataset == d and e.name.startswith("dfine")]
        for d in ("coco", "obj2coco", "obj365")
    }
    assert by_dataset["coco"] == [f"dfine_{s}_coco" for s in "nsmlx"]
    assert by_dataset["obj2coco"] == [f"dfine_{s}_obj2coco" for s in "smlx"]
    assert sorted(by_dataset["obj365"]) == sorted(
        [*(f"dfine_{s}_obj365" for s in "smlx"), "dfine_l_obj365_e25"]
    )
    assert zoo.names() == list(zoo.MODELS) and len(zoo.names()) == 14 + 6


def test_table_entries_are_well_formed() -> None:
    for name, e in zoo.MODELS.items():
        if name.startswith("deim"):
            continue  # test_deim.py
        assert e.name == name and e.size in "nsmlx" and len(e.size) == 1
        assert e.url == f"{zoo.DEFAULT_BASE_URL}/{e.filename}"
        assert re.fullmatch(
            r"https://github\.com/Peterande/storage/releases/download/dfinev1\.0/dfine_[nsmlx]_\w+\.pth",
            e.url,
        )
        assert e.num_classes == (366 if e.dataset == "obj365" else 80)
        assert 0 < e.ap < 100 and e.params_m > 0 and e.sha256 is None
        assert e.hf_repo is None or e.hf_repo.startswith("ustc-community/dfine-")


def test_table_values_from_the_readme() -> None:
    assert zoo.get("dfine_l_obj2coco").filename == "dfine_l_obj2coco_e25.pth"
    assert zoo.get("dfine_l_obj365_e25").filename == "dfine_l_obj365_e25.pth"
    assert zoo.get("dfine_l_obj365").filename == "dfine_l_obj365.pth"
    assert [zoo.get(f"dfine_{s}_coco").ap for s in "nsmlx"] == [42.8, 48.5, 52.3, 54.0, 55.8]
    assert [zoo.get(f"dfine_{s}_obj2coco").ap for s in "smlx"] == [50.7, 55.1, 57.3, 59.3]
    assert [zoo.get(f"dfine_{s}_coco").params_m for s in "nsmlx"] == [4, 10, 19, 31, 62]
    assert zoo.get("dfine_n_coco").hf_repo == "ustc-community/dfine-nano-coco"
    assert zoo.get("dfine_l_obj2coco").hf_repo == "ustc-community/dfine-large-obj2coco-e25"


def test_class_names() -> None:
    from dfine.obj365 import OBJ365_CLASSES

    assert len(zoo.class_names("dfine_n_coco")) == 80
    names = zoo.class_names("dfine_x_obj365")
    assert len(names) == 366 and names[1] == "Person" and names[1:] == OBJ365_CLASSES
    assert len(set(OBJ365_CLASSES)) == 365 and OBJ365_CLASSES[-1] == "Table Tennis"


# ---------------------------------------------------------------------------- names
@pytest.mark.parametrize(
    ("spelling", "canonical"),
    [
        ("dfine_l_coco", "dfine_l_coco"),
        ("dfine-l-coco", "dfine_l_coco"),
        ("DFINE-L-COCO", "dfine_l_coco"),
        ("D-FINE-L-COCO", "dfine_l_coco"),
        (" dfine_large_coco ", "dfine_l_coco"),
        ("dfine-xlarge-obj365", "dfine_x_obj365"),
        ("dfine_n_coco.pth", "dfine_n_coco"),
        ("dfine_l_obj2coco_e25", "dfine_l_obj2coco"),
        ("dfine-l-obj365-e25", "dfine_l_obj365_e25"),
    ],
)
def test_name_normalisation(spelling: str, canonical: str) -> None:
    assert zoo.is_zoo_name(spelling)
    assert zoo.get(spelling).name == canonical


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "dfine",
        "dfine_n_obj365",
        "dfine_s_obj365_e25",
        "dfine_l_coco_e25",
        "yolo.pth",
        "dfine_q_coco",
    ],
)
def test_not_zoo_names(bad: str) -> None:
    assert not zoo.is_zoo_name(bad)
    with pytest.raises(ValueError, match="unknown model-zoo name"):
        zoo.get(bad)


def test_close_name_suggestions() -> None:
    with pytest.raises(ValueError, match=r"Did you mean dfine_l_coco") as info:
        zoo.get("dfine_l_cocco")
    assert "dfine_x_obj365" in str(info.value)  # the full list follows
    with pytest.raises(ValueError, match=r"dfine_m_obj365"):
        zoo.get("dfine-m-obj356")


# ---------------------------------------------------------------------------- cache folder
def test_dfine_home_is_respected_and_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "a" / "b"
    monkeypatch.setenv("DFINE_HOME", str(home))
    assert not home.exists()
    assert zoo.cache_dir() == home and home.is_dir()


@pytest.mark.skipif(sys.platform in ("win32", "darwin"), reason="XDG layout")
def test_default_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DFINE_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert zoo.cache_dir() == tmp_path / "xdg" / "dfine"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert zoo.cache_dir() == tmp_path / "home" / ".cache" / "dfine"


# ---------------------------------------------------------------------------- downloads
def test_fresh_download_equals_served_bytes(server: _Server, _isolated_cache: Path) -> None:
    path = _fetch(server)
    assert path == _isolated_cache / FILE
    assert path.read_bytes() == PAYLOAD
    assert sorted(p.name for p in path.parent.iterdir()) == [FILE]  # no .part, no .lock
    assert "Range" not in server.requests[0]


def test_cache_hit_needs_no_network(server: _Server) -> None:
    first = _fetch(server)
    server.shutdown()
    again = zoo.download(
        "dfine_n_coco", base_url=f"http://127.0.0.1:{_closed_port()}", progress=False
    )
    assert again == first and again.read_bytes() == PAYLOAD
    assert len(server.requests) == 1


def test_sha256_verified(
    server: _Server, monkeypatch: pytest.MonkeyPatch, _isolated_cache: Path
) -> None:
    entry = zoo.MODELS["dfine_n_coco"]
    good = hashlib.sha256(PAYLOAD).hexdigest()
    monkeypatch.setitem(zoo.MODELS, "dfine_n_coco", dataclasses.replace(entry, sha256="0" * 64))
    with pytest.raises(ZooDownloadError, match="sha256 mismatch"):
        _fetch(server)
    assert not any(_isolated_cache.iterdir())  # nothing half-written left behind
    monkeypatch.setitem(zoo.MODELS, "dfine_n_coco", dataclasses.replace(entry, sha256=good.upper()))
    assert _fetch(server).read_bytes() == PAYLOAD


def test_offline_fails_fast_with_instructions(_isolated_cache: Path) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    t0 = time.monotonic()
    with pytest.raises(ZooDownloadError) as info:
        zoo.download("dfine_l_coco", base_url=url, progress=False)
    assert time.monotonic() - t0 < 5
    msg = str(info.value)
    assert f"{url}/dfine_l_coco.pth" in msg and "dfine_l_coco" in msg
    assert str(_isolated_cache / "dfine_l_coco.pth") in msg and "save it as" in msg
    assert "about 127 MB" in msg  # its size
    assert "refused" in msg.lower()
    assert not any(_isolated_cache.iterdir())


def test_http_error_names_status(server: _Server) -> None:
    with pytest.raises(ZooDownloadError, match=r"\(HTTP 404 Not Found\)"):
        _fetch(server, "dfine_x_coco")


def test_mirror_from_environment(server: _Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DFINE_ZOO_URL", server.url + "/")
    assert zoo.download("dfine-n-coco", progress=False).read_bytes() == PAYLOAD


def test_urls_and_dest(server: _Server, tmp_path: Path, _isolated_cache: Path) -> None:
    direct = zoo.download(f"{server.url}/{FILE}", progress=False)
    assert direct == _isolated_cache / FILE
    official = f"{zoo.DEFAULT_BASE_URL}/{FILE}"  # the prefix is swapped for the mirror
    into_dir = zoo.download(official, dest=tmp_path, base_url=server.url, progress=False)
    assert into_dir == tmp_path / FILE
    as_file = _fetch(server, dest=tmp_path / "sub" / "n.pth")
    assert as_file == tmp_path / "sub" / "n.pth"
    assert direct.read_bytes() == into_dir.read_bytes() == as_file.read_bytes() == PAYLOAD


def test_progress_bar(server: _Server, capsys: pytest.CaptureFixture[str]) -> None:
    assert zoo.download("dfine_n_coco", base_url=server.url).read_bytes() == PAYLOAD
    assert "dfine_n_coco.pth" in capsys.readouterr().err


def test_concurrent_downloads_leave_one_complete_file(server: _Server) -> None:
    server.chunk_delay = 0.02
    results: list[Path | BaseException] = []

    def worker() -> None:
        try:
            results.append(_fetch(server))
        except BaseException as exc:  # surfaced by the assert below
            results.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(results) == 3 and all(isinstance(r, Path) for r in results)
    assert len(set(results)) == 1 and results[0].read_bytes() == PAYLOAD  # type: ignore[union-attr]
    assert sorted(p.name for p in results[0].parent.iterdir()) == [FILE]  # no temporaries


def test_hugging_face_copy_offline_says_what_to_do(
    monkeypatch: pytest.MonkeyPatch, _isolated_cache: Path
) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ZooDownloadError) as info:
        zoo.download_hf("dfine_n_coco")
    msg = str(info.value)
    folder = _isolated_cache / "hf" / "ustc-community" / "dfine-nano-coco"
    assert "https://huggingface.co/ustc-community/dfine-nano-coco" in msg and str(folder) in msg
    assert "\n" not in msg
    with pytest.raises(ValueError, match="no Hugging Face copy"):
        zoo.download_hf("dfine_l_obj365_e25")


def test_hugging_face_copy_in_place_needs_no_network(_isolated_cache: Path) -> None:
    folder = _isolated_cache / "hf" / "ustc-community" / "dfine-nano-coco"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"")
    assert zoo.download_hf("dfine-n-coco") == folder
