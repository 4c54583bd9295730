"""Make any nn.Module quantizable in eager mode: fuse, then wrap each Conv2d / Linear as quant -> layer -> dequant.

This "sandwich" needs no change to the model's forward: everything between the wrapped layers
(GroupNorm, SiLU, adds, concatenations, attention) keeps running in float.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from fnmatch import fnmatchcase

from torch import nn
from torch.ao.nn import intrinsic as nni
from torch.ao.quantization import QConfig, QuantWrapper, fuse_modules, fuse_modules_qat

from diffquant.quant.smoothing import move_input_transforms


def quantizable_types() -> tuple[type[nn.Module], ...]:
    """Layer types that get a quant -> layer -> dequant wrapper (fused intrinsics included)."""
    return (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nni.ConvReLU2d, nni.LinearReLU, nni.ConvBn2d, nni.ConvBnReLU2d)


def is_skipped(name: str, skip: list[str] | tuple[str, ...]) -> bool:
    """True if the module name matches one of the fnmatch patterns (`time_embed.*`, `conv_in`)."""
    return any(fnmatchcase(name, pattern) for pattern in skip)


def layer_width(name: str, layer_bits: Iterable[tuple[str, int]], default: int) -> int:
    """The weight width of layer `name`: the first `layer_bits` pattern (fnmatch) it matches, else `default`."""
    return next((bits for pattern, bits in layer_bits if fnmatchcase(name, pattern)), default)


def fusable_groups(model: nn.Module) -> list[list[str]]:
    """Conv2d[-BatchNorm2d][-ReLU] and Linear-ReLU runs inside nn.Sequential containers."""
    groups: list[list[str]] = []
    for name, seq in model.named_modules():
        if not isinstance(seq, nn.Sequential):
            continue
        mods, prefix = list(seq.named_children()), f"{name}." if name else ""
        i = 0
        while i < len(mods):
            run, j = [mods[i][0]], i + 1
            if isinstance(mods[i][1], nn.Conv2d):
                if j < len(mods) and isinstance(mods[j][1], nn.BatchNorm2d):
                    run.append(mods[j][0])
                    j += 1
            if isinstance(mods[i][1], (nn.Conv2d, nn.Linear)) and j < len(mods) and isinstance(mods[j][1], nn.ReLU):
                run.append(mods[j][0])
                j += 1
            if len(run) > 1:
                groups.append([prefix + n for n in run])
            i = j
    return groups


def fuse(model: nn.Module, qat: bool) -> list[list[str]]:
    """Fuse every fusable group in place (eval-mode fusion folds BatchNorm); return the groups fused."""
    groups = fusable_groups(model)
    if groups:
        (fuse_modules_qat if qat else fuse_modules)(model, groups, inplace=True)
    return groups


def wrap_layers(
    model: nn.Module, qconfig_for: Callable[[str, nn.Module], QConfig], skip: list[str] | tuple[str, ...] = ()
) -> list[str]:
    """Replace each quantizable layer not matching `skip` by a QuantWrapper carrying `qconfig_for(name, layer)`, in place.

    Returns the names of the wrapped layers.
    """
    targets: list[tuple[str, nn.Module]] = []
    covered: list[str] = []  # quantizable layers wrapped or skipped: the layers inside them (a ConvReLU2d's Conv2d) are theirs
    for name, mod in model.named_modules():
        if not name or not isinstance(mod, quantizable_types()) or any(name.startswith(f"{outer}.") for outer in covered):
            continue
        covered.append(name)
        if not is_skipped(name, skip):
            targets.append((name, mod))
    for name, mod in targets:
        wrapper = QuantWrapper(mod)
        move_input_transforms(mod, wrapper)  # SmoothQuant's scales and rotations run before the input quantizer
        wrapper.qconfig = qconfig_for(name, mod)
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, wrapper)
    return [name for name, _ in targets]
