"""FP32 models shipped with the package, so the default run need not train on a 2-core CPU.

A bundled model is an ordinary FP32 cache entry (`pretrained/fp32-<key>.pt`) made by diffquant's
own training command, with a manifest (`fp32-<key>.json`: the file's SHA-256, the command and the
machine that produced it). It is used only for the exact configuration whose cache key it carries,
and only when its bytes match the manifest; `train.bundled=false` trains instead. Make one with
`python -m diffquant.cache.bundled <cache_dir>/fp32/<key>/model.pt "<command>"`.
"""

from __future__ import annotations

import json
import logging
import platform
import shutil
import sys
from importlib import resources
from pathlib import Path

import torch

from diffquant.cache.store import atomic_copy, atomic_write_json, file_key


def bundle_dir() -> Path:
    """The package folder that holds bundled FP32 models."""
    return Path(str(resources.files("diffquant") / "pretrained"))


def bundled_model(key: str, folder: Path | None = None) -> Path | None:
    """The bundled model for cache key `key` if there is one and its bytes match its manifest."""
    folder = folder or bundle_dir()
    model, manifest = folder / f"fp32-{key}.pt", folder / f"fp32-{key}.json"
    if not (model.is_file() and manifest.is_file()):
        return None
    expected = json.loads(manifest.read_text())["sha256"]
    if file_key(model, length=64) != expected:
        logging.getLogger("diffquant").warning("Bundled FP32 model %s fails its SHA-256 check; training instead", model)
        return None
    return model


def install_bundled(model: Path, entry_path: Path) -> None:
    """Copy a bundled model into its cache entry (atomically, like every cache write)."""
    atomic_copy(model, entry_path)


def make_bundle(entry_path: Path, command: str, folder: Path) -> Path:
    """Write a cache entry and its manifest into `folder`; returns the bundled model's path."""
    blob = torch.load(entry_path, map_location="cpu", weights_only=False)
    key = blob["key"]
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"fp32-{key}.pt"
    shutil.copyfile(entry_path, target)
    from diffquant.quant.machine import cpu_info

    manifest = {
        "key": key,
        "sha256": file_key(target, length=64),
        "command": command,
        "config": blob.get("config"),
        "machine": cpu_info().as_dict(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    atomic_write_json(manifest, folder / f"fp32-{key}.json")
    return target


if __name__ == "__main__":
    print(make_bundle(Path(sys.argv[1]), sys.argv[2], bundle_dir()))
