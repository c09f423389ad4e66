"""Hugging Face Hub model ids as weights (issue 23), without the network.

A local HTTP server stands in for the Hub (``HF_ENDPOINT``): it answers the three requests
``huggingface_hub.snapshot_download`` makes — the revision's commit
(``/api/models/{repo}/revision/{rev}``), the file tree (``/api/models/{repo}/tree/{commit}``)
and each file (``/{repo}/resolve/{commit}/{file}``, HEAD then GET) — from a random-init model
saved in the transformers layout. The Hub cache (``HF_HUB_CACHE``) lives in ``tmp_path``.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar
from urllib.parse import unquote, urlparse

import pytest
import torch

import dfine
from dfine import hub
from dfine.cli import main
from dfine.hf import save_hf_checkpoint

COMMIT = "0123456789abcdef0123456789abcdef01234567"
REPO = "acme/deim-nano-test"


class _Hub(BaseHTTPRequestHandler):
    files: ClassVar[dict[str, bytes]] = {}
    requests: ClassVar[list[str]] = []

    def log_message(self, *args) -> None:  # quiet
        pass

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for k, v in {"Content-Length": str(len(body)), **headers}.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, data: object) -> None:
        self._send(200, json.dumps(data).encode(), {"Content-Type": "application/json"})

    def _route(self) -> None:
        path = unquote(urlparse(self.path).path)
        self.requests.append(f"{self.command} {path}")
        prefix = f"/api/models/{REPO}/"
        if path.startswith(prefix + "revision/"):
            if path.rsplit("/", 1)[-1] not in ("main", COMMIT):
                return self._send(404, b"{}", {"X-Error-Code": "RevisionNotFound"})
            siblings = [{"rfilename": name} for name in self.files]
            return self._json({"id": REPO, "sha": COMMIT, "siblings": siblings})
        if path == prefix + f"tree/{COMMIT}":
            return self._json(
                [
                    {"type": "file", "path": n, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
                    for n, b in self.files.items()
                ]
            )
        resolve = f"/{REPO}/resolve/{COMMIT}/"
        if path.startswith(resolve) and path[len(resolve) :] in self.files:
            body = self.files[path[len(resolve) :]]
            etag = f'"{hashlib.sha256(body).hexdigest()}"'
            return self._send(200, body, {"X-Repo-Commit": COMMIT, "ETag": etag})
        self._send(404, b"{}", {"X-Error-Code": "RepoNotFound"})

    do_GET = do_HEAD = _route


@pytest.fixture(scope="module")
def deim_model() -> dfine.DFINE:
    torch.manual_seed(0)
    return dfine.build_model("n", num_classes=3, class_names=("a", "b", "c"), family="deim").eval()


@pytest.fixture
def fake_hub(tmp_path, monkeypatch, deim_model) -> Iterator[ThreadingHTTPServer]:
    folder = save_hf_checkpoint(deim_model, tmp_path / "upload")
    _Hub.files = {p.name: p.read_bytes() for p in sorted(folder.iterdir())}
    _Hub.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    yield server
    server.shutdown()
    server.server_close()


def _same_outputs(a: dfine.DFINE, b: dfine.DFINE) -> None:
    x = torch.rand(1, 3, 320, 320, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        out_a, out_b = a(x), b(x)
    assert torch.equal(out_a["pred_logits"], out_b["pred_logits"])
    assert torch.equal(out_a["pred_boxes"], out_b["pred_boxes"])


def test_hub_ids_are_told_from_paths():
    assert hub.parse_hub_id("acme/model@v1.0") == ("acme/model", "v1.0")
    assert hub.parse_hub_id("ustc-community/dfine-nano-coco") == (
        "ustc-community/dfine-nano-coco",
        None,
    )
    for not_id in (
        "runs/best.safetensors",
        "model.pth",
        "a/b/c",
        "/abs/dir",
        "../x",
        "dfine_n_coco",
    ):
        assert not hub.is_hub_id(not_id), not_id


def test_a_hub_id_is_fetched_into_the_cache_and_read_with_its_config(
    fake_hub, deim_model, tmp_path
):
    model = dfine.load_model(REPO)
    assert model.family == "deim" and model.class_names == ("a", "b", "c")  # from config.json
    _same_outputs(model, deim_model)
    snapshots = tmp_path / "hf-cache" / "models--acme--deim-nano-test" / "snapshots" / COMMIT
    assert (snapshots / "config.json").is_file() and (snapshots / "model.safetensors").is_file()
    assert any(r.startswith("GET /api/models/") for r in _Hub.requests)
    # a revision, and the Detector / CLI routes through the same resolver
    assert dfine.load_model(f"{REPO}@{COMMIT}").family == "deim"
    assert dfine.Detector(REPO, deploy=False).class_names == ("a", "b", "c")


def test_offline_the_cached_copy_is_used(fake_hub, deim_model, monkeypatch, capsys):
    dfine.load_model(REPO)  # fills the cache
    fake_hub.shutdown()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _Hub.requests = []
    _same_outputs(dfine.load_model(REPO), deim_model)
    assert _Hub.requests == []
    assert main(["inspect", REPO]) == 0
    assert "family:        deim" in capsys.readouterr().out


def test_a_prefilled_cache_is_read_offline(tmp_path, monkeypatch, deim_model):
    cache = tmp_path / "prefilled"
    repo = cache / "models--someone--deim-copy"
    save_hf_checkpoint(deim_model, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _same_outputs(dfine.load_model("someone/deim-copy"), deim_model)


def test_offline_without_a_cached_copy_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(hub.HubError, match="is not in the Hugging Face cache") as info:
        dfine.load_model("someone/absent")
    assert isinstance(info.value, dfine.errors.DFineError)
    assert "hf download someone/absent" in str(info.value)
    assert main(["predict", str(Path(__file__)), "--weights", "someone/absent"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: someone/absent is not in the Hugging Face")


def test_an_unknown_repo_or_revision_is_one_line(fake_hub):
    with pytest.raises(hub.HubError, match="not a model on the Hugging Face Hub"):
        dfine.load_model("acme/no-such-model")
    with pytest.raises(hub.HubError, match="has no revision 'v9'"):
        dfine.load_model(f"{REPO}@v9")


def test_the_app_loads_a_hub_id_in_the_model_tab_and_as_its_default(fake_hub, tmp_path):
    from app.models import ModelStore

    store = ModelStore(upload_dir=tmp_path / "uploads")
    assert REPO not in [key for _, key in store.choices()]
    loaded = store.get(REPO)  # what the Model tab's dropdown (custom value) asks for
    assert loaded.model.family == "deim" and loaded.entry.kind == "hub"
    assert REPO in [key for _, key in store.choices()]
    default = ModelStore(REPO, upload_dir=tmp_path / "u2").get(None)  # app.py --model REPO
    assert default.model.family == "deim"
