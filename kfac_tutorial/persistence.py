"""Atomic, pickle-free state files: safetensors tensors plus JSON metadata.

A state file is one safetensors file. Its header's metadata holds one entry,
``"kfac_tutorial"``, a JSON document describing the tensors (what kind of state, the
Fisher flavour, parameter names and shapes, the package version). Writes go to a
temporary file in the same directory, are flushed to disk, then renamed over the
target, so a crash never leaves a half-written state behind and never destroys the
previous one.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Union

import torch
from torch import Tensor

METADATA_KEY = "kfac_tutorial"
FORMAT = "kfac_tutorial.consolidation"
FORMAT_VERSION = 2  # 2: symmetric factors stored as upper triangles, low-rank roots

PathLike = Union[str, os.PathLike]


class StateFileError(ValueError):
    """A state file that cannot be read: missing, damaged, or not written by this package."""


class StateMismatchError(ValueError):
    """A state that does not match the model it is loaded into."""


def write_state(path: PathLike, tensors: dict[str, Tensor], meta: dict) -> Path:
    """Write ``tensors`` and ``meta`` to ``path`` atomically (temp file, fsync, rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, **meta}
    payload = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(payload, tmp, metadata={METADATA_KEY: json.dumps(meta, sort_keys=True)})
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def read_state(path: PathLike, device: Union[str, torch.device] = "cpu") -> tuple[dict[str, Tensor], dict]:
    """Read a state file; a clear :class:`StateFileError` for anything unreadable."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise StateFileError(f"no state file at {path}")
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as fh:
            header = fh.metadata() or {}
            tensors = {key: fh.get_tensor(key) for key in fh.keys()}
    except Exception as err:
        raise StateFileError(
            f"{path} is not a readable safetensors state file (damaged, truncated or another format): {err}"
        ) from err
    if METADATA_KEY not in header:
        raise StateFileError(f"{path} is a safetensors file but was not written by kfac_tutorial (no '{METADATA_KEY}' metadata)")
    try:
        meta = json.loads(header[METADATA_KEY])
    except json.JSONDecodeError as err:
        raise StateFileError(f"{path}: the metadata is damaged (invalid JSON: {err})") from err
    if meta.get("format") != FORMAT:
        raise StateFileError(f"{path}: unknown format {meta.get('format')!r}, expected {FORMAT!r}")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise StateFileError(
            f"{path}: format version {meta['format_version']} is newer than this package reads ({FORMAT_VERSION}); upgrade kfac_tutorial"
        )
    return tensors, meta
