"""Simulated number formats with the block scaling of their specifications: FP8, MXFP4, NVFP4, group-wise integers.

Each `quantize_dequantize(x, fmt)` returns the values the format can hold, nearest to `x`
(round to nearest, ties to even; saturating), in float32:
- `fp8_e4m3` / `fp8_e5m2`: one float32 scale per tensor (amax / format max: 448, 57344), then the
  element cast to PyTorch's float8 dtypes (OCP FP8).
- `mxfp4` (OCP Microscaling v1.0): blocks of 32 consecutive values along the last axis share an
  E8M0 scale 2^(floor(log2(amax)) - 2) (2 = E2M1's largest exponent); elements are E2M1
  ({0, 0.5, 1, 1.5, 2, 3, 4, 6} and negatives).
- `nvfp4` (NVIDIA Blackwell): blocks of 16 share an E4M3 scale of amax / 6, itself scaled by one
  float32 per tensor (amax / (6 · 448)) so that it fits E4M3's range; elements E2M1.
- `int<b>_g<k>`-style group-wise integers are `group_int`: asymmetric min-max per group of `k`
  values along the last axis.
A last axis whose length the block does not divide is padded with zeros for the scales (the
padding does not change the block maximum) and cut off again.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.ao.quantization import FakeQuantizeBase

from diffquant.errors import DiffquantError

E2M1_GRID = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)  # index parity = mantissa bit: ties go to the even index
FP8_MAX = {"fp8_e4m3": 448.0, "fp8_e5m2": 57344.0}
FP8_DTYPE = {"fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}
BLOCK = {"mxfp4": 32, "nvfp4": 16}
FORMATS = ("int", *FP8_MAX, *BLOCK)


def check_format(setting: str, name: str) -> None:
    """`name` must be a known format; one line naming the setting otherwise."""
    if name not in FORMATS:
        raise DiffquantError(f"{setting}={name!r} is not a number format; allowed: {', '.join(FORMATS)}")


def round_e2m1(x: Tensor) -> Tensor:
    """Nearest E2M1 value (saturating at ±6), ties to the even mantissa."""
    grid = torch.tensor(E2M1_GRID, dtype=torch.float32, device=x.device)
    mag = x.abs().float().clamp(max=6.0)
    upper = torch.searchsorted(grid, mag.contiguous()).clamp(max=len(E2M1_GRID) - 1)  # first grid value >= mag
    lower = (upper - 1).clamp(min=0)
    lo, hi = grid[lower], grid[upper]
    d_lo, d_hi = mag - lo, hi - mag
    take_hi = (d_hi < d_lo) | ((d_hi == d_lo) & (upper % 2 == 0))
    return torch.where(take_hi, hi, lo) * torch.sign(x.float())


def blocks(x: Tensor, size: int) -> tuple[Tensor, int]:
    """`x` as [..., n_blocks, size] along its last axis (zero-padded), and the original length."""
    n = x.shape[-1]
    pad = (-n) % size
    if pad:
        x = torch.nn.functional.pad(x, (0, pad))
    return x.reshape(*x.shape[:-1], -1, size), n


def unblock(x: Tensor, n: int) -> Tensor:
    """Inverse of `blocks`."""
    return x.reshape(*x.shape[:-2], -1)[..., :n]


def fp8(x: Tensor, name: str, amax: Tensor | None = None) -> Tensor:
    """Per-tensor scaled FP8 (E4M3 or E5M2); `amax` a calibrated range (else the tensor's own)."""
    top = FP8_MAX[name]
    amax = x.detach().abs().amax().float() if amax is None else amax.float()
    scale = (amax / top).clamp(min=1e-30)
    q = (x.float() / scale).clamp(-top, top).to(FP8_DTYPE[name]).float()
    return q * scale


def mxfp4(x: Tensor) -> Tensor:
    """OCP MXFP4: blocks of 32 with a power-of-two (E8M0) scale, E2M1 elements."""
    b, n = blocks(x.float(), BLOCK["mxfp4"])
    amax = b.abs().amax(dim=-1, keepdim=True)
    exponent = torch.floor(torch.log2(amax.clamp(min=2.0**-126))) - 2  # E2M1's largest exponent is 2
    scale = torch.exp2(exponent.clamp(-127, 127))
    return unblock(round_e2m1(b / scale) * scale, n)


def nvfp4(x: Tensor) -> Tensor:
    """NVFP4: blocks of 16 with an E4M3 scale (amax / 6) under one float32 tensor scale, E2M1 elements."""
    b, n = blocks(x.float(), BLOCK["nvfp4"])
    tensor_scale = (b.abs().amax() / (6.0 * 448.0)).clamp(min=1e-30)
    block_amax = b.abs().amax(dim=-1, keepdim=True)
    block_scale = (block_amax / 6.0 / tensor_scale).clamp(max=448.0).to(torch.float8_e4m3fn).float() * tensor_scale
    safe = torch.where(block_scale > 0, block_scale, torch.ones_like(block_scale))
    return unblock(round_e2m1(b / safe) * block_scale, n)


def group_qparams(b: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    """Scale and zero point of asymmetric min-max integers of `bits` over the last axis of `b` (one group)."""
    lo, hi = b.amin(dim=-1, keepdim=True).clamp(max=0), b.amax(dim=-1, keepdim=True).clamp(min=0)
    scale = ((hi - lo) / (2**bits - 1)).clamp(min=1e-12)
    return scale, torch.round(-lo / scale)


def on_group_grid(b: Tensor, scale: Tensor, zero: Tensor, bits: int) -> Tensor:
    """`b` rounded onto the integers 0..2^bits - 1 of `scale` and `zero` (broadcast), dequantized."""
    q = torch.clamp(torch.round(b / scale) + zero, 0, 2**bits - 1)
    return (q - zero) * scale


def group_int(x: Tensor, bits: int, group: int, scale: Tensor | None = None, zero: Tensor | None = None) -> Tensor:
    """Asymmetric min-max integers of `bits` per group of `group` values along the last axis; `scale` / `zero`
    ([..., n_groups, 1]) fixed ones instead of each group's own min-max."""
    b, n = blocks(x.float(), group)
    if scale is None or zero is None:
        scale, zero = group_qparams(b, bits)
    return unblock(on_group_grid(b, scale, zero, bits), n)


def quantize_dequantize(x: Tensor, name: str, amax: Tensor | None = None) -> Tensor:
    """`x` rounded to format `name` (fp8_e4m3, fp8_e5m2, mxfp4, nvfp4), in float32."""
    if name in FP8_MAX:
        return fp8(x, name, amax)
    if name == "mxfp4":
        return mxfp4(x)
    if name == "nvfp4":
        return nvfp4(x)
    raise DiffquantError(f"format {name!r} has no simulation here; allowed: {', '.join(FORMATS[1:])}")


class FormatFakeQuantize(FakeQuantizeBase):
    """Fake quantization to a simulated format (`quantize_dequantize`, or group-wise integers), straight-through.

    Weights (`weight=True`) are blocked along each output row's flattened inputs (the GEMM's reduction
    axis); activations along channels (axis 1 of 4-D conv inputs, else the last axis). FP8 activations
    keep one calibrated amax (observed while `observer_enabled`); block formats scale every block
    from its own values, as their hardware does.
    """

    def __init__(
        self, fmt: str = "fp8_e4m3", weight: bool = False, bits: int = 4, group_size: int = 0, **factory: object
    ) -> None:
        super().__init__()  # `factory`: torch.ao's qat modules pass factory_kwargs (device, dtype): nothing to allocate
        check_format("quant format", fmt)
        self.fmt, self.weight, self.bits, self.group_size = fmt, weight, bits, group_size
        self.dynamic = False  # quant.dynamic_input: fp8 activations scaled by each call's own range
        element_bits = bits if fmt == "int" else 8 if fmt in FP8_MAX else 4
        self.quant_min, self.quant_max = -(2 ** (element_bits - 1)), 2 ** (element_bits - 1) - 1  # bits per element
        self.register_buffer("amax", torch.tensor(0.0))
        # Group-wise weights rounded by GPTQ keep the group scales GPTQ chose (`freeze_groups`): recomputing
        # min-max from the rounded weights would give other scales. Not persistent: a prepared model's
        # state_dict (QAT checkpoints) stays as it was; the pickled quantized model keeps them.
        self.register_buffer("group_scale", torch.empty(0), persistent=False)
        self.register_buffer("group_zero", torch.empty(0), persistent=False)
        self.dtype = torch.qint8 if weight else torch.quint8  # what torch.ao reads off fake quantizers
        self.qscheme = torch.per_tensor_affine

    def rounded(self, x: Tensor) -> Tensor:
        """`x` in the format (float32, the shape of `x`)."""
        if self.weight:
            rows = x.reshape(x.shape[0], -1)
        else:
            rows = x.movedim(1, -1) if x.dim() == 4 else x
        if self.fmt == "int":
            frozen = self.weight and self.group_scale.numel() > 0
            out = group_int(rows, self.bits, self.group_size, *((self.group_scale, self.group_zero) if frozen else ()))
        else:
            calibrated = self.fmt in FP8_MAX and not self.weight and not self.dynamic and float(self.amax) > 0
            amax = self.amax if calibrated else None
            out = quantize_dequantize(rows, self.fmt, amax)
        if self.weight:
            return out.reshape(x.shape)
        return out.movedim(-1, 1) if x.dim() == 4 else out

    def forward(self, x: Tensor) -> Tensor:
        if self.observer_enabled[0] == 1 and not self.weight:
            self.amax = torch.maximum(self.amax, x.detach().abs().amax().float().to(self.amax.device))
        if self.fake_quant_enabled[0] == 1:
            x = x + (self.rounded(x).to(x.dtype) - x).detach()
        return x

    def freeze_groups(self, scale: Tensor, zero: Tensor) -> None:
        """Round weights with these group scales and zero points ([out, n_groups, 1]) from now on."""
        self.group_scale, self.group_zero = scale.detach().float().clone(), zero.detach().float().clone()

    def calculate_qparams(self) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        """Unit scale, zero offset: simulated formats never convert to torch.ao's int8 kernels."""
        return torch.tensor([1.0]), torch.tensor([0])

    def extra_repr(self) -> str:
        kind = f"int{self.bits} groups of {self.group_size}" if self.fmt == "int" else self.fmt
        return f"{kind}, {'weight' if self.weight else 'activation'} (simulated)"
