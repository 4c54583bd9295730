"""Components chosen by `_target_`: import the callable, read its signature, decide which config keys it gets.

A `model` or `dataset` node names a class or function by import path (`_target_`) and gives its
keyword arguments; the pipeline adds a few values of its own (`in_channels`, `image_size`, `seed`)
when the callable has parameters of those names. `choose_keys` holds the one rule for keys the
callable does not take: typed on the command line, an error; inherited from a group file or a
preset (the default `model=unet_tiny` under a user's `model._target_=...`), dropped with a log line.
The `sampler` and `diffusion` groups name a function the same way, with fixed settings
(diffusion/config.py).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import logging
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Optional

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from diffquant.errors import DiffquantError

OVERRIDE_KEY = re.compile(r"^\+{0,2}([A-Za-z_][\w.]*)=")


@dataclass(frozen=True)
class Signature:
    """The keyword parameters a callable takes, those without a default, and whether it takes **kwargs."""

    names: tuple[str, ...]
    required: tuple[str, ...]
    any_keyword: bool


@dataclass(frozen=True)
class Component:
    """A validated `_target_` node: the import path, the config's keyword arguments, and what the pipeline adds."""

    group: str
    target: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    supplied: tuple[str, ...] = ()  # pipeline-supplied parameters the callable takes (a subset of the group's)
    checkpoint: Optional[str] = None  # model only: FP32 weights to use instead of training

    def arguments(self, **supplied: Any) -> dict[str, Any]:
        """The keyword arguments of the call: the config's, plus the pipeline's values the callable takes."""
        return {**self.kwargs, **{k: v for k, v in supplied.items() if k in self.supplied}}

    def key(self, **supplied: Any) -> dict[str, Any]:
        """What the call depends on, for cache keys: the import path and every argument passed."""
        return {"_target_": self.target, **self.arguments(**supplied)}

    def build(self, **supplied: Any) -> Any:
        """Import and call the target; an exception inside it becomes one line naming `<group>._target_`."""
        fn = import_target(self.target, f"{self.group}._target_")
        try:
            return fn(**self.arguments(**supplied))
        except DiffquantError:
            raise
        except Exception as exc:  # noqa: BLE001 - user code: any error is reported as one line
            detail = " ".join(str(exc).split())[:300]
            raise DiffquantError(
                f"{self.group}._target_={self.target} failed when called ({type(exc).__name__}: {detail}); "
                f"check the {self.group} group's settings"
            ) from None


def import_target(path: str, setting: str) -> Callable[..., Any]:
    """The callable at `module.attr[.attr]`; a failure names the module or attribute that did not import."""
    if not isinstance(path, str) or not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+", path):
        raise DiffquantError(f"{setting}={path!r} is not an import path; expected package.module.Name")
    parts = path.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:cut])
        try:
            obj: Any = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and (module_name == exc.name or module_name.startswith(f"{exc.name}.")):
                continue  # this prefix is not a module: try a shorter one
            raise DiffquantError(
                f"{setting}={path}: importing module {module_name!r} failed (ModuleNotFoundError: {exc})"
            ) from None
        except Exception as exc:  # noqa: BLE001 - the user's module raised while importing
            detail = " ".join(str(exc).split())[:300]
            raise DiffquantError(
                f"{setting}={path}: importing module {module_name!r} failed ({type(exc).__name__}: {detail})"
            ) from None
        for depth, attr in enumerate(parts[cut:]):
            if not hasattr(obj, attr):
                owner = ".".join(parts[: cut + depth])
                names = [n for n in dir(obj) if not n.startswith("_")]
                guess = difflib.get_close_matches(attr, names, n=1)
                hint = f"; did you mean {owner}.{guess[0]}?" if guess else ""
                raise DiffquantError(f"{setting}={path}: module {owner!r} has no attribute {attr!r}{hint}")
            obj = getattr(obj, attr)
        if not callable(obj):
            raise DiffquantError(f"{setting}={path} is a {type(obj).__name__}, not a class or function")
        return obj
    raise DiffquantError(f"{setting}={path}: no module named {parts[0]!r} (is its package installed, or on PYTHONPATH?)")


def import_path(fn: Callable[..., Any]) -> str:
    """The `_target_` that imports `fn`: its module and qualified name."""
    return f"{fn.__module__}.{fn.__qualname__}"


def signature_of(fn: Callable[..., Any], setting: str) -> Signature:
    """The keyword parameters of `fn` (a class: its constructor's)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        raise DiffquantError(f"{setting}: the signature of {fn!r} cannot be read; wrap it in a Python function") from None
    keyword = [p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    positional_only = [p.name for p in params if p.kind == p.POSITIONAL_ONLY and p.default is p.empty]
    if positional_only:
        raise DiffquantError(f"{setting}: {fn!r} has required positional-only parameters ({', '.join(positional_only)})")
    return Signature(
        names=tuple(p.name for p in keyword),
        required=tuple(p.name for p in keyword if p.default is p.empty),
        any_keyword=any(p.kind == p.VAR_KEYWORD for p in params),
    )


def explicit_keys(overrides: Iterable[str], group: str) -> set[str]:
    """Top-level keys of `group` set by command-line overrides (`model.x=`, `+model.x=`, `++model.x=`)."""
    keys = set()
    for override in overrides:
        match = OVERRIDE_KEY.match(override)  # `~model.x` deletes a key and `model=name` picks a file: neither sets a key
        dotted = match.group(1).split(".") if match else []
        if len(dotted) > 1 and dotted[0] == group:
            keys.add(dotted[1])
    return keys


def choose_keys(
    group: str, target: str, given: Mapping[str, Any], accepted: Collection[str], explicit: Collection[str], any_keyword: bool
) -> tuple[dict[str, Any], list[str]]:
    """Split `given` into the keys the target gets and the inherited ones it ignores; reject unknown explicit keys.

    A key the target takes is kept. Any other key typed on the command line (`explicit`) is an error
    naming it and the parameters the target takes; one inherited from a group file or a preset is
    returned in the ignored list. A target taking **kwargs (`any_keyword`) also gets the explicit keys.
    """
    kept, ignored = {}, []
    for key, value in given.items():
        if key in accepted or (any_keyword and key in explicit):
            kept[key] = value
        elif key in explicit:
            guess = difflib.get_close_matches(key, list(accepted), n=1)
            hint = f"did you mean {group}.{guess[0]}? " if guess else ""
            takes = ", ".join(accepted) if accepted else "no settings of its own"
            raise DiffquantError(f"{group}.{key}={value!r} is not a parameter of {target}; {hint}it takes: {takes}")
        else:
            ignored.append(key)
    return kept, ignored


def make_component(
    group: str,
    node: Mapping[str, Any],
    explicit: Collection[str],
    schemas: Iterable[type],
    supplied: Mapping[str, str],
    own: Collection[str],
) -> Component:
    """Validate a `_target_` node into a Component.

    `schemas`: typed schemas of built-in targets (a class attribute `targets` names theirs); `supplied`:
    parameters the pipeline passes, with where their value comes from; `own`: diffquant's keys of the
    group (`_target_`, `name`, ...), never passed to the target.
    """
    target = node.get("_target_")
    if target in (None, "", MISSING):
        raise DiffquantError(f"{group}._target_ is not set; give {group}._target_=package.module.Name (a class or function)")
    fn = import_target(target, f"{group}._target_")
    sig = signature_of(fn, f"{group}._target_={target}")
    schema = next((s for s in schemas if target in s.targets), None)
    given = {k: v for k, v in node.items() if k not in own}
    for key, value in given.items():
        if value == MISSING and key in sig.names:
            raise DiffquantError(f"{group}.{key} is ??? (not set); give {group}.{key}=<value>")
        if key in supplied and key in explicit:
            raise DiffquantError(f"{group}.{key}={value!r} cannot be set: diffquant passes {supplied[key]}")
    accepted = [f.name for f in fields(schema)] if schema else [n for n in sig.names if n not in supplied]
    passable = {k: v for k, v in given.items() if k not in supplied}
    kept, ignored = choose_keys(group, target, passable, accepted, explicit, sig.any_keyword and schema is None)
    ignored += [k for k in given if k in supplied]
    if ignored:
        logging.getLogger("diffquant").info(
            "%s._target_=%s does not take %s (inherited from a group file or preset): ignored", group, target, ", ".join(ignored)
        )
    kwargs = validate_fields(group, schema, kept) if schema else kept
    missing = [n for n in sig.required if n not in kwargs and n not in supplied]
    if missing:
        raise DiffquantError(
            f"{group}._target_={target} needs {group}.{missing[0]} (no default); add +{group}.{missing[0]}=<value>"
        )
    keep_name = node.get("name") and ("name" in explicit or "_target_" not in explicit)  # a stale inherited name is dropped
    return Component(
        group=group,
        target=target,
        kwargs=kwargs,
        name=str(node["name"]) if keep_name else target.rsplit(".", 1)[-1],
        supplied=tuple(n for n in supplied if n in sig.names),
        checkpoint=node.get("checkpoint") if "checkpoint" in own else None,
    )


def validate_fields(group: str, schema: type, values: Mapping[str, Any]) -> dict[str, Any]:
    """Types by OmegaConf, ranges by the schema's `__post_init__`; lists come back as tuples (hashable, as constructors take them)."""
    try:
        merged = OmegaConf.to_container(OmegaConf.merge(OmegaConf.structured(schema), dict(values)), throw_on_missing=True)
    except OmegaConfBaseException as exc:
        key = str(getattr(exc, "full_key", "") or getattr(exc, "key", "") or "")
        detail = str(exc).splitlines()[0]
        raise DiffquantError(
            f"{group}.{key}={values.get(key.split('.')[0])!r}: {detail}" if key else f"{group}: {detail}"
        ) from None
    assert isinstance(merged, dict)
    obj = schema(**merged)
    return {k: tuple(v) if isinstance(v, list) else v for k, v in asdict(obj).items()}


def plain_node(cfg: DictConfig, group: str) -> dict[str, Any]:
    """The group's node as plain values, interpolations resolved, `???` kept as the string."""
    node = cfg.get(group)
    if not isinstance(node, DictConfig):
        raise DiffquantError(f"{group}={node!r} is not a config node; pick a file ({group}=<name>) or set {group}._target_")
    try:
        plain = OmegaConf.to_container(node, resolve=True, throw_on_missing=False)
    except OmegaConfBaseException as exc:
        raise DiffquantError(f"{group}: {str(exc).splitlines()[0]}") from None
    assert isinstance(plain, dict)
    return {str(k): v for k, v in plain.items()}
