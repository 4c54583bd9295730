"""SVDQuant (Li et al., ICLR 2025) low-rank branches: a layer's weight outliers absorbed by a float rank-r product.

The (smoothed, rotated) weight Ŵ, as a matrix [out, in·kh·kw], splits as Ŵ = L1·L2 + R, with L1·L2 its best rank-r
approximation (truncated SVD, split evenly: L1 = U_r·√Σ_r, L2 = √Σ_r·V_rᵀ, so neither factor carries the whole
range). R, whose largest singular values are gone, replaces the layer's weight and is what gets quantized; the
branch L1(L2·x) runs in float32 on the layer's unquantized input and is added to the dequantized output.
By linearity the float model is unchanged. The branch sits beside the quant -> layer -> dequant sandwich
(`LowRankWrapper`, a `QuantWrapper` with one more child that torch.ao leaves alone), so a W8A8 model still runs
int8 kernels for R. A conv's branch is a conv with `rank` output channels (the layer's kernel, stride, padding,
dilation) followed by a 1x1 conv. Layers it cannot split exactly stay unsplit, logged with why: fused
Conv/Linear+ReLU (relu(Rx + Lx) is not relu(Rx) + Lx), grouped or transposed convs, non-zero padding modes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.ao.quantization import QuantWrapper

from diffquant.errors import DiffquantError

BRANCH_BYTES_PER_PARAM = 2  # SVDQuant keeps its branches in 16 bits; costs are reported at that width


def splittable(module: nn.Module) -> bool:
    """Plain Linear, or Conv2d with one group and zero padding: layers whose output is linear in the weight matrix."""
    if type(module) is nn.Linear:
        return True
    return type(module) is nn.Conv2d and module.groups == 1 and module.padding_mode == "zeros"


def max_rank(module: nn.Module) -> int:
    """min(out, in·kh·kw): the rank of the layer's weight as a matrix."""
    return min(module.weight.shape[0], module.weight[0].numel())


def check_rank(model: nn.Module, rank: int, float_patterns: Iterable[str]) -> None:
    """Every layer that would get a branch must have a weight of rank >= `rank`; else one line naming the layer."""
    patterns = tuple(float_patterns)
    for name, module in model.named_modules():
        if not name or not splittable(module) or any(fnmatchcase(name, p) for p in patterns):
            continue
        if rank > max_rank(module):
            out, inner = module.weight.shape[0], module.weight[0].numel()
            raise DiffquantError(
                f"quant.lowrank_rank={rank} is more than layer {name} allows (min(out {out}, in {inner}) = {max_rank(module)}); "
                f"allowed: 0..{max_rank(module)}, or quant.skip=[{name}]"
            )


@torch.no_grad()
def low_rank_split(weight: Tensor, rank: int) -> tuple[Tensor, Tensor, Tensor]:
    """(up [out, r], down [r, in·kh·kw], residual like `weight`): up @ down is the best rank-r approximation."""
    matrix = weight.detach().reshape(weight.shape[0], -1).double()  # float64: the residual of large weights stays exact
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    root = s[:rank].sqrt()
    up, down = u[:, :rank] * root, root[:, None] * vh[:rank]
    residual = (matrix - up @ down).reshape(weight.shape)
    return up.to(weight.dtype), down.to(weight.dtype), residual.to(weight.dtype)


class LowRankBranch(nn.Module):
    """x -> up(down(x)) in float: two Linears, or a rank-channel conv and a 1x1 conv. `layer`: whose branch it is."""

    def __init__(self, layer: str, up: Tensor, down: Tensor, conv: nn.Conv2d | None = None) -> None:
        super().__init__()
        self.layer = layer
        self.qconfig = None  # torch.ao must neither observe nor convert it: it stays float
        if conv is None:
            self.up, self.down = nn.Parameter(up), nn.Parameter(down)
            self.stride, self.padding, self.dilation = (1, 1), (0, 0), (1, 1)
        else:
            self.up = nn.Parameter(up.reshape(*up.shape, 1, 1))
            self.down = nn.Parameter(down.reshape(down.shape[0], *conv.weight.shape[1:]))
            self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation

    def forward(self, x: Tensor) -> Tensor:
        if self.down.dim() == 2:
            return F.linear(F.linear(x, self.down), self.up)
        h = F.conv2d(x, self.down, None, self.stride, self.padding, self.dilation)
        return F.conv2d(h, self.up)

    def extra_repr(self) -> str:
        return f"layer={self.layer!r}, rank={self.rank}"

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    def mac_ratio(self) -> float:
        """Branch MACs per MAC of its layer: r·(in + out) / (in·out) at the same output positions."""
        out, inner = self.up.shape[0], self.down[0].numel()
        return self.rank * (inner + out) / (inner * out)


class LowRankWrapper(QuantWrapper):
    """quant -> layer -> dequant on the residual weight, plus the float branch on the same (transformed) input."""

    lowrank: LowRankBranch

    def forward(self, X: Tensor) -> Tensor:
        return self.dequant(self.module(self.quant(X))) + self.lowrank(X)


@torch.no_grad()
def add_low_rank_branches(model: nn.Module, wrapped: list[str], rank: int) -> dict[str, str]:
    """In place, on wrapped layers (before `prepare_qat`): residual weights and branches; the layers left unsplit -> why."""
    unsplit: dict[str, str] = {}
    whole: list[str] = []  # rank >= the layer's: the residual is ~0, the layer runs in float in all but name
    for name in wrapped:
        wrapper = model.get_submodule(name)
        layer = wrapper.module
        if not splittable(layer):
            unsplit[name] = f"{type(layer).__name__} is not a plain Linear or ungrouped zero-padded Conv2d"
            continue
        if rank > max_rank(layer):  # `check_rank` refused these on the unfused model already
            raise DiffquantError(f"quant.lowrank_rank={rank} is more than layer {name} allows; allowed: 0..{max_rank(layer)}")
        if rank == max_rank(layer):
            whole.append(name)
        up, down, residual = low_rank_split(layer.weight, rank)
        layer.weight.data = residual
        wrapper.__class__ = LowRankWrapper  # keeps its input transforms (pre-hooks) and qconfig
        wrapper.add_module("lowrank", LowRankBranch(name, up, down, layer if isinstance(layer, nn.Conv2d) else None))
    log = logging.getLogger("diffquant")
    for name, why in unsplit.items():
        log.info("No low-rank branch for %s: %s", name, why)
    if whole:
        log.warning(
            "quant.lowrank_rank=%d is the full rank of %d layer(s) (%s): their branch holds the whole weight in float",
            rank,
            len(whole),
            ", ".join(whole),
        )
    return unsplit


def branches(model: nn.Module) -> list[LowRankBranch]:
    """Every low-rank branch of a (quantized, scripted or loaded) model."""
    return [m for m in model.modules() if isinstance(m, LowRankBranch)]


@dataclass(frozen=True)
class BranchCost:
    """What the branches add: parameters, their bytes at 16 bits, and MACs as a fraction of the float forward's."""

    params: int
    bytes: int
    param_fraction: float  # of the FP32 model's parameters
    mac_fraction: float  # of all multiply-accumulates of one FP32 forward

    def summary(self) -> str:
        """The log line: what the branches cost beside the quantized weights."""
        return (
            f"Low-rank branches: {self.params} params ({100 * self.param_fraction:.1f} % of the FP32 parameters) in 16-bit "
            f"({self.bytes} bytes), {100 * self.mac_fraction:.1f} % extra MACs per forward (run in float32)"
        )

    def metrics(self) -> dict[str, float]:
        """The `model/lowrank_*` keys of results.json."""
        return {
            "model/lowrank_params": self.params,
            "model/lowrank_bytes": self.bytes,
            "model/lowrank_param_fraction": self.param_fraction,
            "model/lowrank_mac_fraction": self.mac_fraction,
        }


def branch_cost(qmodel: nn.Module, fp32: nn.Module, *example: Tensor) -> BranchCost | None:
    """The cost of `qmodel`'s branches (None: it has none), MACs counted on `fp32` at `example` ((x, t[, cond]))."""
    found = branches(qmodel)
    if not found:
        return None
    from diffquant.quant.coverage import layer_macs  # coverage imports wrap; kept local like the other late imports

    per_module, total = layer_macs(fp32, *example)
    params = sum(p.numel() for b in found for p in b.parameters())
    macs = sum(per_module.get(b.layer, 0) * b.mac_ratio() for b in found)
    fp32_params = sum(p.numel() for p in fp32.parameters())
    return BranchCost(params, params * BRANCH_BYTES_PER_PARAM, params / fp32_params, macs / total if total else 0.0)
