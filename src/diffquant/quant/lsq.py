"""Learned step sizes (LSQ, Esser et al. 2020; LSQ+ offsets) for QAT.

After calibration every `FakeQuantize` is swapped for torch.ao's `_LearnableFakeQuantize`, initialised
from the calibrated scale and zero point, with gradient scaling 1/sqrt(N * q_max). The step sizes are
then trained with the weights; `convert` reads them through `calculate_qparams` like any observer.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.ao.quantization import FakeQuantize, FakeQuantizeBase
from torch.ao.quantization import observer as obs
from torch.ao.quantization._learnable_fake_quantize import _LearnableFakeQuantize

from diffquant.quant.observers import DeferredFakeQuantize

PER_CHANNEL = (torch.per_channel_affine, torch.per_channel_symmetric)


def to_learnable(fq: FakeQuantize) -> _LearnableFakeQuantize:
    """A learnable fake quantizer with the calibrated step size and offset of `fq`, learning switched on."""
    scale, zero_point = fq.calculate_qparams()
    per_channel = fq.qscheme in PER_CHANNEL
    observer: type[obs.ObserverBase] = obs.PerChannelMinMaxObserver if per_channel else obs.MinMaxObserver
    extra: dict[str, Any] = {"ch_axis": fq.ch_axis} if per_channel else {}
    learnable = _LearnableFakeQuantize(
        observer,
        quant_min=fq.quant_min,
        quant_max=fq.quant_max,
        channel_len=scale.numel() if per_channel else -1,
        use_grad_scaling=True,
        dtype=fq.dtype,
        qscheme=fq.qscheme,
        **extra,
    )
    learnable.to(fq.scale.device)
    learnable.scale.data.copy_(scale.float().reshape(learnable.scale.shape))
    learnable.zero_point.data.copy_(zero_point.float().reshape(learnable.zero_point.shape))
    learnable.enable_param_learning()  # observer off, fake quantization on, scale/offset trainable
    return learnable


def use_learned_step_sizes(qmodel: nn.Module) -> int:
    """Swap every calibrated FakeQuantize in `qmodel` for a learnable one; return how many were swapped."""
    swapped = 0
    for module in list(qmodel.modules()):
        for name, child in list(module.named_children()):
            if type(child) in (FakeQuantize, DeferredFakeQuantize):
                setattr(module, name, to_learnable(child))
                swapped += 1
    return swapped


def step_size_param_groups(qmodel: nn.Module, lr: float, factor: float) -> list[dict[str, Any]]:
    """Two optimizer groups: the weights at `lr`, the learned step sizes and offsets (every fake quantizer's own
    parameters: LSQ's and the per-timestep tables') at `lr * factor`."""
    qparams = {id(p) for m in qmodel.modules() if isinstance(m, FakeQuantizeBase) for p in m.parameters(recurse=False)}
    weights = [p for p in qmodel.parameters() if id(p) not in qparams]
    steps = [p for p in qmodel.parameters() if id(p) in qparams]
    return [{"params": weights, "lr": lr}, {"params": steps, "lr": lr * factor}]


def learned_scales(qmodel: nn.Module) -> dict[str, torch.Tensor]:
    """The current step sizes of every learnable quantizer, by module name (for tests and reports)."""
    return {name: m.scale.detach().clone() for name, m in qmodel.named_modules() if isinstance(m, _LearnableFakeQuantize)}


def to_device(qmodel: nn.Module, device: str | torch.device) -> nn.Module:
    """`qmodel.to(device)` in place, keeping each fake quantizer's on/off flags (and LSQ's eps) on the CPU.

    torch.ao reads them with Python `if flag[0] == 1` in every forward: on a GPU each read is a
    device sync, hundreds per training step. On the CPU the read is free; the math stays on the GPU.
    """
    qmodel.to(device)
    for module in qmodel.modules():
        if isinstance(module, FakeQuantizeBase):
            for name in ("fake_quant_enabled", "observer_enabled", "static_enabled", "learning_enabled", "eps"):
                if module._buffers.get(name) is not None:
                    module._buffers[name] = module._buffers[name].cpu()
    return qmodel
