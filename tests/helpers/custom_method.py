"""A user's own quantization method, as a package outside diffquant would write it (diffquant never imports this).

`round_weights` is weight-only round-to-nearest: every Conv2d / Linear weight rounded per output
channel on a symmetric grid of `quant.weight_bits`, activations left in float, run as fake quantization.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from diffquant.quant.methods import MethodInputs
from diffquant.quant.plan import QuantContext, QuantOutcome


def round_per_channel(weight: Tensor, bits: int) -> Tensor:
    """Symmetric round-to-nearest per output channel (the reference the tests compare with)."""
    qmax = 2 ** (bits - 1) - 1
    scale = weight.abs().flatten(1).amax(1).clamp_min(1e-12) / qmax
    shape = (-1,) + (1,) * (weight.dim() - 1)
    return (weight / scale.view(shape)).round().clamp(-qmax - 1, qmax) * scale.view(shape)


class RoundWeights:
    """Weight-only RTN on a copy of the model (the FP32 model is left as it was)."""

    def __init__(self, bits: int) -> None:
        self.bits = bits

    def quantize(self, model: nn.Module, ctx: QuantContext) -> QuantOutcome:
        qmodel = copy.deepcopy(model)
        names = []
        with torch.no_grad():
            for name, module in qmodel.named_modules():
                if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
                    module.weight.copy_(round_per_channel(module.weight, self.bits))
                    names.append(name)
        return QuantOutcome(model=qmodel, execution="fakequant", wrapped_layers=names)


def round_weights(inputs: MethodInputs) -> RoundWeights:
    """The factory `quant._target_` names: it reads `quant.weight_bits` from the group."""
    return RoundWeights(inputs.quant.weight_bits)


def not_a_strategy(inputs: MethodInputs) -> int:
    """Broken on purpose: returns no strategy."""
    return 3
