"""Which layers a quantized model runs in int8, found from one forward of the float model.

`edge_layers` resolves the roles of `quant.keep_float` to layer names: `input` the layers that read
the model's input x_t itself (else the first quantizable layer called), `output` the last layer
called (it writes ε). The output layer
of a diffusion model matters most: its 8-bit output grid is the grid of ε itself, and every
sampling step subtracts that error from x_t. `mac_fraction` weighs layers by their multiply-
accumulates, counted by `torch.utils.flop_counter` over everything the forward does (attention
matmuls included), so `model/int8_mac_fraction` says how much of the arithmetic the int8 kernels carry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from diffquant.errors import check_choice
from diffquant.quant.wrap import quantizable_types

ROLES = ("input", "output")


def call_order(model: nn.Module, *inputs: Tensor) -> tuple[list[str], list[str]]:
    """Names of the quantizable layers in the order one forward on `inputs` ((x, t[, cond])) calls them, and those called on x itself."""
    x = inputs[0]
    order: list[str] = []
    readers: list[str] = []

    def record(name: str, args: tuple[object, ...]) -> None:
        order.append(name)
        if args and args[0] is x:
            readers.append(name)

    hooks = [
        module.register_forward_pre_hook(lambda _m, args, name=name: record(name, args))
        for name, module in model.named_modules()
        if name and isinstance(module, quantizable_types())
    ]
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return list(dict.fromkeys(order)), list(dict.fromkeys(readers))


def edge_layers(model: nn.Module, roles: Iterable[str], *inputs: Tensor) -> list[str]:
    """The layer names of `roles` (`input`: the readers of x, `output`: the last layer called) in `model`."""
    roles = list(roles)
    for role in roles:
        check_choice("quant.keep_float", role, ROLES)
    if not roles:
        return []
    order, readers = call_order(model, *inputs)
    picked = {"input": readers or order[:1], "output": order[-1:]}
    return list(dict.fromkeys(name for role in roles for name in picked[role]))


def uncalled_layers(model: nn.Module, *inputs: Tensor) -> list[str]:
    """Quantizable layers the forward never calls as modules: their parent reads the weights directly.

    nn.MultiheadAttention is one: it passes `out_proj.weight` to a functional kernel, so swapping
    `out_proj` for a quant -> layer -> dequant wrapper would break it. Such layers stay float.
    """
    called = set(call_order(model, *inputs)[0])
    return [
        name
        for name, module in model.named_modules()
        if name and isinstance(module, quantizable_types()) and name not in called and not _inside(name, called)
    ]


def _inside(name: str, outer: set[str]) -> bool:
    """True if `name` is a child of one of the `outer` modules (the Conv2d inside a called ConvReLU2d)."""
    return any(name.startswith(f"{o}.") for o in outer)


def cpu_attention_formulas() -> dict[object, Callable[..., int]]:
    """FLOP formulas the counter lacks: scaled_dot_product_attention's CPU kernel (DiT, nn.MultiheadAttention)."""

    def flash_cpu(
        query_shape: tuple[int, ...], key_shape: tuple[int, ...], value_shape: tuple[int, ...], *_: object, **__: object
    ) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    return {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: flash_cpu}


def layer_macs(model: nn.Module, *inputs: Tensor) -> tuple[dict[str, int], int]:
    """Multiply-accumulates per named module and in total (FLOPs / 2) of one forward at `inputs` ((x, t[, cond]))."""
    # nn.MultiheadAttention's inference fast path is one fused op the counter does not count: take the
    # composite path, so attention's matmuls appear in the total (the fraction would overstate int8's share).
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), FlopCounterMode(display=False, depth=None, custom_mapping=cpu_attention_formulas()) as counter:
            model(*inputs)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    counts = counter.get_flop_counts()
    prefix = f"{type(model).__name__}."
    per_module = {name[len(prefix) :]: sum(ops.values()) // 2 for name, ops in counts.items() if name.startswith(prefix)}
    return per_module, sum(counts.get("Global", {}).values()) // 2


def mac_fraction(model: nn.Module, layers: Iterable[str], *inputs: Tensor) -> float:
    """Fraction of all multiply-accumulates of a forward that the named layers compute."""
    per_module, total = layer_macs(model, *inputs)
    return sum(per_module.get(name, 0) for name in layers) / total if total else 0.0
