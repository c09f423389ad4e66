"""Hugging Face Hub model ids as weights.

``owner/name`` (optionally ``owner/name@revision``: a branch, tag or commit) names a Hub
repository in the transformers ``d_fine`` layout (``config.json`` + ``model.safetensors``, see
:mod:`dfine.hf`). :func:`snapshot` fetches it with ``huggingface_hub.snapshot_download`` into
the Hub's own cache (``HF_HUB_CACHE``, else ``HF_HOME/hub``; ``HF_ENDPOINT`` names another
server) and returns the snapshot folder. Offline (``HF_HUB_OFFLINE=1``, or no network) the
cached copy is used; without one, one line says what to do.

>>> is_hub_id("ustc-community/dfine-nano-coco"), is_hub_id("runs/best.safetensors")
(True, False)
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from dfine.errors import missing
from dfine.zoo import ZooDownloadError

__all__ = ["ALLOW_PATTERNS", "HubError", "cached_repo_id", "is_hub_id", "parse_hub_id", "snapshot"]

_HUB_ID = re.compile(
    r"(?P<repo>[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95})(?:@(?P<revision>[\w./-]+))?"
)
_NOT_IDS = (".pth", ".pt", ".safetensors", ".onnx", ".xml", ".bin", ".json")
ALLOW_PATTERNS = ["config.json", "preprocessor_config.json", "*.safetensors", "*.index.json"]
"""The files of a repository that are fetched: the model's config, its image processor's and
its safetensors weights (a model card or other formats are left on the Hub)."""


class HubError(ZooDownloadError):
    """A Hub model id that could not be fetched; the message says why and what to do."""


def parse_hub_id(text: str) -> tuple[str, str | None] | None:
    """``(repo_id, revision or None)`` when ``text`` spells a Hub model id, else None."""
    m = _HUB_ID.fullmatch(text.strip())
    if m is None or m["repo"].lower().endswith(_NOT_IDS) or ".." in m["repo"]:
        return None
    return m["repo"], m["revision"]


def is_hub_id(text: str) -> bool:
    """Whether ``text`` is spelt like a Hub model id (``owner/name`` or ``owner/name@rev``)."""
    return parse_hub_id(text) is not None


def cached_repo_id(path: str | Path) -> str | None:
    """``owner/name`` when ``path`` is a snapshot folder of the Hub cache
    (``…/models--owner--name/snapshots/<commit>``), else None."""
    parts = Path(path).parts
    if len(parts) < 3 or parts[-2] != "snapshots" or not parts[-3].startswith("models--"):
        return None
    owner, _, name = parts[-3].removeprefix("models--").partition("--")
    return f"{owner}/{name}" if owner and name else None


def _offline() -> bool:
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    return bool(constants.HF_HUB_OFFLINE) or flag in {"1", "ON", "YES", "TRUE"}


def _cache_dir() -> str:
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE


def snapshot(hub_id: str, *, local_only: bool = False) -> Path:
    """The local folder of the Hub model ``hub_id`` (``owner/name[@revision]``), fetched into
    the Hub cache unless a cached copy is current (or the Hub cannot be reached).
    ``local_only``: the cached copy or a :class:`HubError`, never a request to the Hub.

    Raises :class:`HubError` (not on the Hub, no such revision, offline without a cached copy,
    an HTTP failure) and :class:`~dfine.errors.MissingDependencyError`."""
    parsed = parse_hub_id(hub_id)
    if parsed is None:
        raise HubError(f"{hub_id!r} is not a Hugging Face Hub id (owner/name or owner/name@rev)")
    repo, revision = parsed
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (
            GatedRepoError,
            HfHubHTTPError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError as e:
        raise missing("loading a Hugging Face Hub model id", "huggingface_hub") from e
    endpoint = os.environ.get("HF_ENDPOINT") or None
    cache = _cache_dir()
    try:
        folder = snapshot_download(
            repo,
            revision=revision,
            cache_dir=cache,
            endpoint=endpoint,
            allow_patterns=ALLOW_PATTERNS,
            local_files_only=local_only or _offline(),
        )
    except RevisionNotFoundError as e:
        raise HubError(
            f"{repo} has no revision {revision!r} on the Hugging Face Hub: check the branch, tag "
            f"or commit after the @"
        ) from e
    except (RepositoryNotFoundError, GatedRepoError) as e:
        raise HubError(
            f"{hub_id} is not a local file or folder, and not a model on the Hugging Face Hub "
            f"that this machine may read ({type(e).__name__}): check the id, or log in with "
            "`hf auth login` for a private or gated model"
        ) from e
    except LocalEntryNotFoundError as e:
        if "incomplete" in str(e):  # huggingface_hub's IncompleteSnapshotError
            raise HubError(
                f"the cached copy of {hub_id} in {cache} is incomplete and the Hub cannot be "
                "reached: connect to the network and try again"
            ) from e
        raise HubError(
            f"{hub_id} is not in the Hugging Face cache ({cache}) and the Hub cannot be reached"
            f"{' (HF_HUB_OFFLINE is set)' if _offline() else ''}: connect to the network and try "
            "again, or fetch it where there is one (`hf download "
            f"{repo}`) and copy that cache folder here"
        ) from e
    except (HfHubHTTPError, OSError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise HubError(f"fetching {hub_id} from the Hugging Face Hub failed ({first})") from e
    return Path(folder)
