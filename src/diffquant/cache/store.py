"""Content-addressed cache entries and atomic writes (temporary file in the same folder, then rename)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from diffquant.errors import DiffquantError


def config_hash(obj: Any, length: int = 16) -> str:
    """Stable short hash of a JSON-serialisable description (keys sorted)."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def file_key(path: str | Path, length: int = 16) -> str:
    """SHA-256 of a file's bytes, shortened to `length` hex digits (64: the whole digest)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:length]


def _atomic_write(path: Path, write: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """torch.save that never leaves a half-written file at `path`."""
    _atomic_write(Path(path), lambda handle: torch.save(obj, handle))


def atomic_copy(source: str | Path, path: str | Path) -> None:
    """Copy a file so that readers of `path` see either nothing / the old file or the complete copy."""
    _atomic_write(Path(path), lambda handle: handle.write(Path(source).read_bytes()))


def atomic_write_text(text: str, path: str | Path) -> None:
    """Write text so that readers see either the old file or the complete new one."""
    _atomic_write(Path(path), lambda handle: handle.write(text.encode()))


def atomic_write_json(obj: Any, path: str | Path) -> None:
    """Pretty-printed JSON, written atomically."""
    atomic_write_text(json.dumps(obj, indent=2, sort_keys=False, allow_nan=True) + "\n", path)


def load_or_none(path: Path, what: str, instead: str, weights_only: bool = True) -> Any | None:
    """`torch.load` a file onto the CPU; None if it is missing, or (warning "<what> <path> is unreadable
    (<error>); <instead>") if it does not unpickle: a damaged file is replaced, never trusted."""
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a damaged file
        logging.getLogger("diffquant").warning("%s %s is unreadable (%s); %s", what, path, type(exc).__name__, instead)
        return None


def load_if_readable(path: Path, what: str) -> Any | None:
    """`torch.load` a cache file; None (with a warning) if it is missing or unreadable, so it gets rebuilt."""
    obj = load_or_none(path, f"Cached {what} file", "rebuilding")
    if obj is not None:
        logging.getLogger("diffquant").info("Reusing cached %s %s", what, path)
    return obj


def load_checkpoint(path: str | Path, setting: str) -> dict[str, Any]:
    """Load a diffquant checkpoint dict; a missing or unreadable file is a DiffquantError naming `setting`."""
    path = Path(path)
    if not path.is_file():
        raise DiffquantError(f"{setting}={str(path)!r} does not exist; give the path of a diffquant .pt checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a corrupt file
        raise DiffquantError(f"{setting}={str(path)!r} is not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise DiffquantError(f"{setting}={str(path)!r} is not a diffquant checkpoint (no 'state_dict' entry)")
    return ckpt
