"""`save(qmodel, path)` and `load(path)`: a quantized model in one file with its recipe, versions and engine.

The file is a `torch.save` dict of plain values (read with `weights_only=True`, so its checks run
before any code is unpickled): the format version, the recipe `quantize` attached, the torch and
diffquant versions, the engine, the pickled module and, for TorchScript int8 models, the frozen
graphs traced so far; an `x86_inductor` model is its quantized graph as a `torch.export` program
instead (recompiled by AOTInductor at each input shape on first use, minutes on a small CPU). `load` refuses a file made by another torch minor version (int8 packed
weights and TorchScript graphs do not carry across) or for an engine this machine lacks. The module
needs its classes importable; where they are not, an int8 model's frozen graphs still serve the
input shapes they were traced at.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import Tensor, nn

from diffquant import __version__
from diffquant.cache.store import atomic_torch_save
from diffquant.errors import DiffquantError
from diffquant.quant.api import RECIPE_ATTR
from diffquant.quant.config import BackendConfig, QuantConfig
from diffquant.quant.engine import EAGER_ENGINE, set_engine, supported_engines
from diffquant.quant.execution.scripted import ScriptedInt8
from diffquant.quant.gpu.runtime import is_gpu_execution, uncompiled_state
from diffquant.quant.plan import QuantOutcome

FORMAT = "diffquant.quantized"
VERSION = 1
ShapeKey = tuple[tuple[int, ...], ...]


def minor(version: str) -> str:
    """`2.14.1+cu130` -> `2.14`."""
    return ".".join(version.split("+")[0].split(".")[:2])


@contextmanager
def qconfigs_detached(model: nn.Module) -> Iterator[None]:
    """Drop what does not pickle while pickling: the `qconfig` attributes torch.ao leaves on prepared modules (local
    functions) and the compiled callables `nn.Module.compile` leaves on a GPU model's blocks."""
    held = {m: m.__dict__.pop("qconfig") for m in model.modules() if "qconfig" in m.__dict__}
    compiled = uncompiled_state(model)
    try:
        yield
    finally:
        for m, qconfig in held.items():
            m.qconfig = qconfig
        for m, impl in compiled.items():
            m.__dict__["_compiled_call_impl"] = impl


def save(qmodel: nn.Module, path: str | Path) -> Path:
    """Write `qmodel` (a model `diffquant.quantize` returned) to `path` atomically; returns the path."""
    recipe = getattr(qmodel, RECIPE_ATTR, None)
    if recipe is None:
        raise DiffquantError(
            f"save: {type(qmodel).__name__} carries no recipe; save a model returned by diffquant.quantize (or a CLI run)"
        )
    exported, example = None, None  # None, not b"": an empty bytes object pickles as a call weights_only refuses
    module = io.BytesIO()
    if recipe["backend"]["engine"] == "x86_inductor":  # a torch.export program: its rewritten graph does not pickle
        exported, example = qmodel.exported(), list(qmodel.example)
    else:
        with qconfigs_detached(qmodel):
            torch.save(qmodel, module)
    graphs: list[dict[str, Any]] = []
    if isinstance(qmodel, ScriptedInt8):
        for key, graph in qmodel._graphs.items():
            if graph is not None:
                buffer = io.BytesIO()
                torch.jit.save(graph, buffer)
                graphs.append({"shapes": [list(shape) for shape in key], "graph": buffer.getvalue()})
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "recipe": recipe,
        "engine": EAGER_ENGINE.get(recipe["backend"]["engine"], recipe["backend"]["engine"]),
        "torch": str(torch.__version__),
        "diffquant": __version__,
        "module_class": f"{type(qmodel).__module__}.{type(qmodel).__qualname__}",
        "module": module.getvalue() or None,
        "graphs": graphs,
        "exported": exported,  # x86_inductor: the quantized graph as a torch.export program, compiled on load
        "example": example,
    }
    path = Path(path)
    atomic_torch_save(payload, path)
    return path


def read_payload(path: Path) -> dict[str, Any]:
    """The file's dict, checked: diffquant's format, this torch minor version, an engine this machine has."""
    if not path.is_file():
        raise DiffquantError(f"load: {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same one line
        raise DiffquantError(f"load: {path} is not a diffquant quantized-model file ({type(exc).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise DiffquantError(f"load: {path} is not a diffquant quantized-model file (made by diffquant.save)")
    if payload["version"] > VERSION:
        raise DiffquantError(f"load: {path} has format version {payload['version']}; this diffquant reads up to {VERSION}")
    if minor(payload["torch"]) != minor(torch.__version__):
        raise DiffquantError(
            f"load: {path} was saved with torch {payload['torch']}, this is torch {torch.__version__}; "
            "quantized weights do not carry across torch versions: re-quantize, or load it with that torch"
        )
    execution = payload["recipe"]["execution"]
    if execution.startswith("int8") and not is_gpu_execution(execution) and payload["engine"] not in supported_engines():
        raise DiffquantError(
            f"load: {path} holds an int8 model for engine {payload['engine']}, which this machine lacks "
            f"(available: {', '.join(supported_engines())}); re-quantize with one of those"
        )
    return payload


def restore_module_state(model: nn.Module) -> None:
    """Give every submodule the nn.Module fields its class's `__setstate__` skipped (torch.ao's quantized convs)."""
    template = nn.Module().__dict__
    for module in model.modules():
        for key, value in template.items():
            if key not in module.__dict__:
                module.__dict__[key] = value.copy() if hasattr(value, "copy") else value


class FrozenGraphs(nn.Module):
    """An int8 model's saved frozen graphs, one per input shape, for a process that cannot import its classes."""

    def __init__(self, graphs: dict[ShapeKey, torch.jit.ScriptModule], missing: str) -> None:
        super().__init__()
        self.graphs = graphs
        self.missing = missing

    def forward(self, *args: Tensor) -> Tensor:
        key = tuple(tuple(a.shape) for a in args)
        if key not in self.graphs:
            raise DiffquantError(
                f"load: without {self.missing} this model runs only at the input shapes it was saved with "
                f"({', '.join(map(str, self.graphs))}); got {key}"
            )
        return self.graphs[key](*args)


def load(path: str | Path) -> nn.Module:
    """The model `save` wrote, in eval mode, its outputs equal to the saved model's bit for bit on this machine."""
    path = Path(path)
    payload = read_payload(path)
    recipe = payload["recipe"]
    if recipe["execution"].startswith("int8"):
        set_engine(payload["engine"])  # a GPU backend has no engine to select
    if payload.get("exported"):
        from diffquant.quant.pt2e import CompiledInt8

        model = CompiledInt8.from_exported(payload["exported"], tuple(payload["example"]))
        setattr(model, RECIPE_ATTR, recipe)
        return model.eval()
    try:
        model = torch.load(io.BytesIO(payload["module"]), map_location="cpu", weights_only=False)
    except (ModuleNotFoundError, AttributeError) as exc:
        if not payload["graphs"]:
            raise DiffquantError(
                f"load: {path} needs the class of its model importable ({type(exc).__name__}: {exc}); "
                "install or put on PYTHONPATH the package that defines it"
            ) from None
        logging.getLogger("diffquant").warning("load: %s; serving the saved frozen graphs only", exc)
        graphs = {tuple(map(tuple, g["shapes"])): torch.jit.load(io.BytesIO(g["graph"])) for g in payload["graphs"]}
        model = FrozenGraphs(graphs, f"{exc}")
    restore_module_state(model)
    if is_gpu_execution(recipe["execution"]) and torch.cuda.is_available():
        model.prepare(torch.device("cuda"))  # a GPU backend's model loads onto the GPU where there is one
    setattr(model, RECIPE_ATTR, recipe)
    return model.eval()


@dataclass(frozen=True)
class SavedRun:
    """`quant.load=<file>`: the file's recipe as the run's `quant` and `backend` groups, and its model."""

    path: Path
    recipe: dict[str, Any]
    quant: QuantConfig
    backend: BackendConfig

    @classmethod
    def read(cls, path: str) -> SavedRun:
        """The recipe of `path` (checked as `load` checks it; nothing unpickled yet)."""
        recipe = read_payload(Path(path))["recipe"]
        try:
            quant = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(QuantConfig), recipe["quant"], {"load": path}))
        except OmegaConfBaseException as exc:
            raise DiffquantError(
                f"quant.load={path}: its recipe does not fit this diffquant ({str(exc).splitlines()[0]})"
            ) from None
        assert isinstance(quant, QuantConfig)
        return cls(Path(path), recipe, quant, BackendConfig(**recipe["backend"]))

    def outcome(self, fp32_key: str) -> QuantOutcome:
        """The loaded model; refused when the file was quantized from another FP32 model than this run's."""
        saved_key = self.recipe.get("fp32_key")
        if saved_key is not None and saved_key != fp32_key:
            raise DiffquantError(
                f"quant.load={self.path}: it was quantized from the FP32 model {saved_key}, this run's is {fp32_key}; "
                "give the model, dataset, train and seed settings of the run that saved it"
            )
        if saved_key is None:
            logging.getLogger("diffquant").warning(
                "quant.load=%s carries no FP32 key (saved from Python): comparing it with this run's FP32 model %s",
                self.path,
                fp32_key,
            )
        model = load(self.path)
        recipe = self.recipe
        return QuantOutcome(
            model, recipe["execution"], list(recipe.get("wrapped_layers", [])), float_layers=dict(recipe.get("float_layers", {}))
        )
