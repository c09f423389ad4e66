"""The official D-FINE checkpoints by name, and a cached, resumable download of them.

>>> from dfine import zoo
>>> zoo.get("dfine-l-coco").ap
54.0
>>> path = zoo.download("dfine_n_coco")  # doctest: +SKIP

Names are ``dfine_{size}_{dataset}`` with size ``n s m l x`` and dataset ``coco`` (trained on
COCO), ``obj2coco`` (Objects365 pre-training, COCO fine-tuning) or ``obj365`` (Objects365
only), plus ``dfine_l_obj365_e25``. Lookups ignore case and accept ``-`` for ``_``, a
``.pth`` suffix and the size words ``nano small medium large xlarge``.

Files land in :func:`cache_dir` (``$DFINE_HOME``, else the user cache folder). The reference's
release files come through :func:`torch.hub.download_url_to_file` (progress bar, sha256 check,
moved into place only when complete, so a half-written checkpoint never carries the final
name); the Hugging Face copies (transformers layout) through ``huggingface_hub``
(:func:`download_hf`). ``base_url=`` or ``$DFINE_ZOO_URL`` points the downloads at a mirror.
Without a network the error says where to put the file by hand.
"""

from __future__ import annotations

import difflib
import http.client
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch.hub

from dfine.coco import COCO_CLASSES
from dfine.errors import DFineError, InvalidArgumentError
from dfine.obj365 import OBJ365_LABEL_NAMES

__all__ = [
    "DEFAULT_BASE_URL",
    "MODELS",
    "ZooDownloadError",
    "ZooEntry",
    "cache_dir",
    "class_names",
    "download",
    "download_hf",
    "family_of_file",
    "get",
    "is_zoo_name",
    "names",
]

DEFAULT_BASE_URL = "https://github.com/Peterande/storage/releases/download/dfinev1.0"
"""Where the reference README links every official checkpoint."""

HOME_ENV = "DFINE_HOME"
URL_ENV = "DFINE_ZOO_URL"


@dataclass(frozen=True)
class ZooEntry:
    """One official checkpoint.

    ``num_classes`` is the width of the classification head in the file: 80 for ``coco`` and
    ``obj2coco``; 366 for ``obj365``, whose heads are indexed by the raw Objects365 category
    id 1..365 (logit 0 unused, see :mod:`dfine.obj365`). ``ap`` is COCO val2017 AP for
    ``coco``/``obj2coco`` and, for ``obj365``, AP on the first 5000 Objects365 val images
    (the README's AP^5000, the one figure it gives for every Objects365 model). ``params_m``
    is the README's parameter count in millions. ``hf_repo`` names the Hugging Face copy in
    the transformers layout (see :func:`download_hf`).
    ``sha256`` is checked after a download when known. ``family`` is the model family the
    file is built as (``dfine`` or ``deim``, see :data:`dfine.config.FAMILIES`).
    """

    name: str
    size: str
    dataset: str
    url: str
    filename: str
    num_classes: int
    ap: float
    params_m: float
    hf_repo: str | None
    sha256: str | None = None
    family: str = "dfine"

    @property
    def needs_browser(self) -> bool:
        """Whether the file lives where only a browser can fetch it (Google Drive)."""
        return self.url.startswith(DRIVE_URL)


class ZooDownloadError(DFineError, RuntimeError):
    """A checkpoint could not be downloaded; the message says where to put it by hand."""


_SIZE_WORDS = {"nano": "n", "small": "s", "medium": "m", "large": "l", "xlarge": "x"}
_HF_SIZE = {v: k for k, v in _SIZE_WORDS.items()}
_PARAMS_M = {"n": 4.0, "s": 10.0, "m": 19.0, "l": 31.0, "x": 62.0}
_NUM_CLASSES = {"coco": 80, "obj2coco": 80, "obj365": 366}

# (size, dataset, AP, file stem, Hugging Face repo id or None). AP and files from the
# reference README (Peterande/D-FINE @ 4a1f73a, "Model Zoo"). Objects365 full-val APs, for
# reference: S 31.0, M 38.6, L (E25) 44.7, X 49.5 (none given for the first L run).
# The hub ids are those of transformers' conversion script and the ustc-community org page;
# its dfine-large-obj365 was converted from dfine_l_obj365.pth (the first L run), so the E25
# file has no hub copy.
_TABLE: tuple[tuple[str, str, float, str, str | None], ...] = (
    ("n", "coco", 42.8, "dfine_n_coco", "dfine-nano-coco"),
    ("s", "coco", 48.5, "dfine_s_coco", "dfine-small-coco"),
    ("m", "coco", 52.3, "dfine_m_coco", "dfine-medium-coco"),
    ("l", "coco", 54.0, "dfine_l_coco", "dfine-large-coco"),
    ("x", "coco", 55.8, "dfine_x_coco", "dfine-xlarge-coco"),
    ("s", "obj2coco", 50.7, "dfine_s_obj2coco", "dfine-small-obj2coco"),
    ("m", "obj2coco", 55.1, "dfine_m_obj2coco", "dfine-medium-obj2coco"),
    ("l", "obj2coco", 57.3, "dfine_l_obj2coco_e25", "dfine-large-obj2coco-e25"),
    ("x", "obj2coco", 59.3, "dfine_x_obj2coco", "dfine-xlarge-obj2coco"),
    ("s", "obj365", 30.5, "dfine_s_obj365", "dfine-small-obj365"),
    ("m", "obj365", 37.4, "dfine_m_obj365", "dfine-medium-obj365"),
    ("l", "obj365", 40.6, "dfine_l_obj365", "dfine-large-obj365"),
    ("l", "obj365", 42.6, "dfine_l_obj365_e25", None),
    ("x", "obj365", 46.5, "dfine_x_obj365", "dfine-xlarge-obj365"),
)


def _entry(size: str, dataset: str, ap: float, stem: str, hf: str | None) -> ZooEntry:
    name = stem if stem.endswith("obj365_e25") else f"dfine_{size}_{dataset}"
    return ZooEntry(
        name=name,
        size=size,
        dataset=dataset,
        url=f"{DEFAULT_BASE_URL}/{stem}.pth",
        filename=f"{stem}.pth",
        num_classes=_NUM_CLASSES[dataset],
        ap=ap,
        params_m=_PARAMS_M[size],
        hf_repo=f"ustc-community/{hf}" if hf else None,
    )


DRIVE_URL = "https://drive.google.com/"

# DEIM-D-FINE (ShihuaHuang95/DEIM README, "Model Zoo", DEIM-D-FINE table): (size, dataset, AP,
# Google Drive file id, family). COCO models train with DEIM's SiLU decoder
# (configs/deim_dfine/deim_hgnetv2_*_coco.yml include configs/base/deim.yml). The Objects365 →
# COCO X (README news of 2025.03.12, 59.5 AP after 24 COCO epochs) is D-FINE's architecture:
# configs/deim_dfine/object365/deim_hgnetv2_x_obj2coco_24e.yml sets ``activation: relu`` and
# ``mlp_act: relu`` and freezes the backbone BatchNorm again.
_DEIM_TABLE: tuple[tuple[str, str, float, str, str], ...] = (
    ("n", "coco", 43.0, "1ZPEhiU9nhW4M5jLnYOFwTSLQC1Ugf62e", "deim"),
    ("s", "coco", 49.0, "1tB8gVJNrfb6dhFvoHJECKOF5VpkthhfC", "deim"),
    ("m", "coco", 52.7, "18Lj2a6UN6k_n_UzqnJyiaiLGpDzQQit8", "deim"),
    ("l", "coco", 54.7, "1PIRf02XkrA2xAD3wEiKE2FaamZgSGTAr", "deim"),
    ("x", "coco", 56.5, "1dPtbgtGgq1Oa7k_LgH1GXPelg1IVeu0j", "deim"),
    ("x", "obj2coco", 59.5, "1RMNrHh3bYN0FfT5ZlWhXtQxkG23xb2xj", "dfine"),
)


def _deim_entry(size: str, dataset: str, ap: float, drive_id: str, family: str) -> ZooEntry:
    name = f"deim_dfine_hgnetv2_{size}_{dataset}"
    return ZooEntry(
        name=name,
        size=size,
        dataset=dataset,
        url=f"{DRIVE_URL}file/d/{drive_id}/view",
        filename=f"{name}.pth",
        num_classes=_NUM_CLASSES[dataset],
        ap=ap,
        params_m=_PARAMS_M[size],
        hf_repo=None,
        family=family,
    )


MODELS: dict[str, ZooEntry] = {
    e.name: e
    for e in (
        *(_entry(*row) for row in _TABLE),
        *(_deim_entry(*row) for row in _DEIM_TABLE),
    )
}
"""Every official checkpoint, by canonical name (``dfine_l_coco``, ``dfine_l_obj365_e25``),
then DEIM's D-FINE-architecture releases (``deim_dfine_hgnetv2_n_coco``, which only a browser
can download: :func:`download` says where to save the file)."""


# ---------------------------------------------------------------------------- names
_NAME_RE = re.compile(
    r"d_?fine_(?P<size>n|s|m|l|x|nano|small|medium|large|xlarge)"
    r"_(?P<dataset>coco|obj2coco|obj365)(?P<e25>_e25)?"
)


_DEIM_RE = re.compile(
    r"deim_(?:d_?fine_)?(?:hgnetv2_)?(?P<size>n|s|m|l|x|nano|small|medium|large|xlarge)"
    r"_(?P<dataset>coco|obj2coco)(?:_24e)?"
)


def names() -> list[str]:
    """Canonical names of all official checkpoints, COCO first, in table order."""
    return list(MODELS)


def _normalize(name: str) -> str:
    """``'D-FINE-Large-COCO.pth'`` -> ``'d_fine_large_coco'`` (not yet canonical)."""
    s = name.strip().lower().replace("-", "_").replace(" ", "_")
    return s.removesuffix(".pth")


def _canonical(name: str) -> str | None:
    """The key of ``MODELS`` that ``name`` spells, or None."""
    deim = _DEIM_RE.fullmatch(_normalize(name))
    if deim is not None:
        size = _SIZE_WORDS.get(deim["size"], deim["size"])
        key = f"deim_dfine_hgnetv2_{size}_{deim['dataset']}"
        return key if key in MODELS else None
    m = _NAME_RE.fullmatch(_normalize(name))
    if m is None:
        return None
    size = _SIZE_WORDS.get(m["size"], m["size"])
    key = f"dfine_{size}_{m['dataset']}"
    if m["e25"]:
        # the L obj2coco file is the E25 run; obj365 has both runs under two names
        key = {"dfine_l_obj2coco": key, "dfine_l_obj365": f"{key}_e25"}.get(key, "")
    return key if key in MODELS else None


def is_zoo_name(name: str) -> bool:
    """Whether ``name`` names an official checkpoint (``dfine_l_coco``, ``dfine-L-coco``...)."""
    return _canonical(name) is not None


def get(name: str) -> ZooEntry:
    """The entry of an official checkpoint; a ValueError naming close matches otherwise."""
    key = _canonical(name)
    if key is not None:
        return MODELS[key]
    close = difflib.get_close_matches(_normalize(name).replace("d_fine", "dfine"), names(), 3, 0.6)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise InvalidArgumentError(
        f"unknown model-zoo name {name!r}.{hint} Known: {', '.join(names())}"
    )


def family_of_file(filename: str) -> str | None:
    """The family of the zoo checkpoint whose file is called ``filename``, or None."""
    for entry in MODELS.values():
        if entry.filename == filename:
            return entry.family
    return None


def class_names(name: str) -> tuple[str, ...]:
    """Name of every logit of the checkpoint ``name`` (80 COCO or 366 Objects365 entries)."""
    entry = get(name)
    if entry.dataset == "obj365":
        return OBJ365_LABEL_NAMES
    return COCO_CLASSES


# ---------------------------------------------------------------------------- cache folder
def _user_cache_root() -> Path:
    """The platform's per-user cache folder (XDG on Linux)."""
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")


def cache_dir() -> Path:
    """Where checkpoints are kept: ``$DFINE_HOME``, else ``~/.cache/dfine`` (or the
    platform's user cache); created on demand."""
    env = os.environ.get(HOME_ENV)
    path = Path(env).expanduser() if env else _user_cache_root() / "dfine"
    path.mkdir(parents=True, exist_ok=True)
    return path


# ---------------------------------------------------------------------------- download
@dataclass(frozen=True)
class _Target:
    label: str  # what the error message calls it
    url: str
    path: Path
    sha256: str | None
    approx_mb: float | None = None  # float32 weights of the zoo entry's parameter count


def _base_url(base_url: str | None) -> str:
    return (base_url or os.environ.get(URL_ENV) or DEFAULT_BASE_URL).rstrip("/")


def _resolve(
    name_or_url: str, dest: str | os.PathLike[str] | None, base_url: str | None
) -> _Target:
    """What to fetch from where, and the final path to write."""
    approx_mb = None
    if re.match(r"^(https?|file)://", name_or_url):
        url, sha, label = name_or_url, None, name_or_url
        if url.startswith(DEFAULT_BASE_URL + "/"):
            url = _base_url(base_url) + url[len(DEFAULT_BASE_URL) :]
        filename = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name
        if not filename:
            raise InvalidArgumentError(f"cannot tell a file name from the URL {url!r}; pass dest=")
    else:
        entry = get(name_or_url)
        url = entry.url if entry.needs_browser else f"{_base_url(base_url)}/{entry.filename}"
        sha, label = entry.sha256, entry.name
        filename = entry.filename
        approx_mb = entry.params_m * 4.1  # 4 bytes per float32 weight, plus the pickle
    if dest is None:
        path = cache_dir() / filename
    else:
        path = Path(dest).expanduser()
        path = path / filename if path.is_dir() else path
    return _Target(label, url, path, sha, approx_mb)


def download(
    name_or_url: str,
    *,
    dest: str | os.PathLike[str] | None = None,
    progress: bool = True,
    base_url: str | None = None,
) -> Path:
    """The local path of a checkpoint, downloading it first if it is not there yet.

    ``name_or_url``: a zoo name (see :func:`names`) or an ``http(s)://`` / ``file://`` URL.
    ``dest``: the file to write, or a folder to put it in under its official name (default:
    :func:`cache_dir`). An existing file is returned at once, without touching the network.
    Otherwise :func:`torch.hub.download_url_to_file` fetches it (progress bar, sha256 check
    when the hash is known) into a temporary file beside ``dest`` and moves it into place only
    when complete, so a half-written checkpoint never carries the final name; concurrent
    callers each download and the last complete file wins. ``base_url`` (else
    ``$DFINE_ZOO_URL``) replaces :data:`DEFAULT_BASE_URL`.

    Raises :class:`ZooDownloadError` (network, HTTP or checksum failure; the message names
    the URL, the reason and the path to save the file at by hand) and ValueError (unknown
    name).
    """
    target = _resolve(name_or_url, dest, base_url)
    if target.path.is_file():
        return target.path
    if target.url.startswith(DRIVE_URL):
        size = f" (about {target.approx_mb:.0f} MB)" if target.approx_mb else ""
        raise ZooDownloadError(
            f"{target.label} is on Google Drive, which needs a browser: open {target.url}, "
            f"download the file{size} and save it as {target.path}: it is found there from then on."
        )
    target.path.parent.mkdir(parents=True, exist_ok=True)
    if progress:
        print(f"downloading {target.url} -> {target.path}", file=sys.stderr)
    try:
        torch.hub.download_url_to_file(
            target.url,
            str(target.path),
            hash_prefix=target.sha256.lower() if target.sha256 else None,
            progress=progress,
        )
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise _fail(target, _reason(exc)) from exc
    except RuntimeError as exc:  # torch.hub's hash check
        if "hash" not in str(exc):
            raise
        raise _fail(target, f"sha256 mismatch: {exc}") from exc
    return target.path


def _fail(target: _Target, reason: str) -> ZooDownloadError:
    size = f" (about {target.approx_mb:.0f} MB)" if target.approx_mb else ""
    return ZooDownloadError(
        f"Could not download {target.label} from {target.url} ({reason}). Download that "
        f"file{size} yourself and save it as {target.path}: it is found there from then on."
    )


def _reason(exc: BaseException) -> str:
    """A short human reason for a network exception."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        reason = exc.reason
        return _reason(reason) if isinstance(reason, BaseException) else str(reason)
    if isinstance(exc, TimeoutError):
        return f"timed out: {exc}" if str(exc) else "timed out"
    return f"{type(exc).__name__}: {exc}"


# ---------------------------------------------------------------------------- Hugging Face
def download_hf(name: str, *, dest: str | os.PathLike[str] | None = None) -> Path:
    """The Hugging Face Hub copy of an official checkpoint (transformers layout: a folder with
    ``config.json`` and ``model.safetensors``, which :func:`dfine.load_model` reads), fetched
    with ``huggingface_hub`` into ``dest`` (default ``cache_dir()/hf/<repo>``). Offline, an
    existing folder is used; otherwise :class:`ZooDownloadError` says what to do."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    entry = get(name)
    if entry.hf_repo is None:
        raise InvalidArgumentError(
            f"{entry.name} has no Hugging Face copy; use download({entry.name!r})"
        )
    folder = Path(dest).expanduser() if dest else cache_dir() / "hf" / entry.hf_repo
    if (folder / "config.json").is_file() and any(folder.glob("*.safetensors")):
        return folder
    url = f"https://huggingface.co/{entry.hf_repo}"
    try:
        snapshot_download(
            entry.hf_repo,
            local_dir=str(folder),
            allow_patterns=["config.json", "preprocessor_config.json", "*.safetensors*"],
        )
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
        raise ZooDownloadError(
            f"Could not download {entry.name} from {url} ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'offline'}). Download its config.json "
            f"and model.safetensors yourself into {folder}."
        ) from exc
    return folder
