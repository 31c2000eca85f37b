"""On-disk cache of built splits and downloaded corpora.

The directory is ``$KFAC_CACHE`` if set, else ``~/.cache/kfac_tutorial``. Every file
is written atomically (a temporary file in the same directory, then ``os.replace``),
so parallel processes or an interrupted run never leave a half-written file behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

__all__ = ["cache_dir", "atomic_write_bytes", "atomic_write_json", "read_json", "fetch"]


def cache_dir() -> Path:
    """The cache directory (created on demand)."""
    root = os.environ.get("KFAC_CACHE") or os.path.join("~", ".cache", "kfac_tutorial")
    path = Path(root).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600 files
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write ``obj`` as compact UTF-8 JSON."""
    data = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    atomic_write_bytes(path, data.encode("utf-8"))


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def fetch(url: str, *, timeout: float = 120.0) -> Path:
    """Download ``url`` once into ``cache_dir()/downloads`` and return the local path.

    Only ``http``/``https`` URLs; the file name keeps the URL's base name (so ``.gz`` and
    ``.zip`` suffixes still work) behind a short hash of the full URL.
    """
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("http", "https"):
        raise ValueError(f"only http(s) URLs can be downloaded, got {url!r}")
    base = os.path.basename(parsed.path) or "download"
    digest = hashlib.sha1(url.encode("utf-8")).hexdigest()[:10]
    path = cache_dir() / "downloads" / f"{digest}-{base}"
    if not path.exists():
        request = urllib.request.Request(url, headers={"User-Agent": "kfac-tutorial"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            atomic_write_bytes(path, response.read())
    return path
