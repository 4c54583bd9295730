"""Low-bit Linear layers with real GEMM kernels: fp8 (E4M3) and int8 with static activation scales, int4 weight-only.

Each replaces an `nn.Linear` of a model that otherwise runs in bfloat16 (`runtime.LowBitModel`):
- `Fp8Linear`: weights in float8_e4m3fn with one scale per tensor or per output row; the input is
  divided by a scale fixed at calibration and cast to fp8 (under `torch.compile` that multiply and
  cast fuse into the op producing the input); `torch._scaled_mm` applies both scales and the bias
  in its epilogue. Needs compute capability 8.9 (Ada, Hopper) on the GPU.
- `Int8Linear`: symmetric int8 weights per output channel, a static symmetric per-tensor input scale;
  `torch._int_mm` (int32 accumulation), then one rescale.
- `Int4WeightOnlyLinear`: group-wise asymmetric 4-bit weights (tinygemm's layout: w = (q - 8) s + z
  per group of input channels), bf16 activations; `torch._weight_int4pack_mm`.
The same code runs on the CPU, where PyTorch has these kernels too (tests), with CPU packing for int4.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from diffquant.quant.number_formats import FP8_MAX

E4M3_MAX = FP8_MAX["fp8_e4m3"]
INT8_MAX = 127.0
INT4_GROUP_SIZES = (32, 64, 128, 256)


def fp8_weight(weight: Tensor, rowwise: bool) -> tuple[Tensor, Tensor]:
    """(float8_e4m3fn weight, float32 scale: [1, out] per row or a scalar) with weight ≈ q · scale."""
    w = weight.detach().float()
    amax = w.abs().amax(dim=1, keepdim=True) if rowwise else w.abs().amax()
    scale = (amax / E4M3_MAX).clamp(min=1e-12)
    q = (w / scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    return q.contiguous(), (scale.reshape(1, -1) if rowwise else scale.reshape(())).contiguous()


def int8_weight(weight: Tensor) -> tuple[Tensor, Tensor]:
    """(int8 weight [out, in], float32 scale [out]): symmetric per output channel on [-127, 127]."""
    w = weight.detach().float()
    scale = (w.abs().amax(dim=1) / INT8_MAX).clamp(min=1e-12)
    return torch.round(w / scale[:, None]).clamp(-INT8_MAX, INT8_MAX).to(torch.int8).contiguous(), scale


def int4_weight(weight: Tensor, group_size: int) -> tuple[Tensor, Tensor]:
    """(uint8 [out, in/2]: two 4-bit values per byte, even column high; bf16 [in/g, out, 2]: scale and zero).

    Per group of `group_size` input channels: s = (max − min) / 15, q = round((w − min) / s) in [0, 15],
    z = min + 8 s, so that w ≈ (q − 8) s + z (tinygemm's convention).
    """
    out_f, in_f = weight.shape
    w = weight.detach().float().reshape(out_f, in_f // group_size, group_size)
    lo, hi = w.amin(dim=2, keepdim=True), w.amax(dim=2, keepdim=True)
    scale = ((hi - lo) / 15.0).clamp(min=1e-8)
    q = torch.round((w - lo) / scale).clamp(0, 15).to(torch.uint8).reshape(out_f, in_f)
    zero = lo + 8.0 * scale
    packed = (q[:, ::2] << 4) | q[:, 1::2]
    scales_and_zeros = torch.stack([scale[..., 0], zero[..., 0]], dim=-1).transpose(0, 1)  # [in/g, out, 2]
    return packed.contiguous(), scales_and_zeros.to(torch.bfloat16).contiguous()


def unpack_int4(packed: Tensor) -> Tensor:
    """uint8 [out, in/2] -> int32 [out, in] values in [0, 15]."""
    high, low = (packed >> 4).to(torch.int32), (packed & 15).to(torch.int32)
    return torch.stack([high, low], dim=-1).reshape(packed.shape[0], -1)


def _bias(linear: nn.Linear) -> Tensor | None:
    return None if linear.bias is None else linear.bias.detach().to(torch.bfloat16).clone()


class Fp8Linear(nn.Module):
    """y = (x / s_x)_{fp8} (W / s_w)_{fp8}^T · s_x s_w + b, bf16 out; s_x fixed at calibration."""

    def __init__(self, linear: nn.Linear, input_amax: float, rowwise: bool = False, fast_accum: bool = True) -> None:
        super().__init__()
        weight, weight_scale = fp8_weight(linear.weight, rowwise)
        input_scale = max(float(input_amax), 1e-12) / E4M3_MAX
        self.register_buffer("weight", weight)
        self.register_buffer("weight_scale", weight_scale)
        self.register_buffer("input_scale", torch.tensor(input_scale, dtype=torch.float32))
        self.register_buffer("input_scale_inv", torch.tensor(1.0 / input_scale, dtype=torch.float32))
        self.register_buffer("bias", _bias(linear))
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.rowwise, self.fast_accum = rowwise, fast_accum

    def forward(self, x: Tensor) -> Tensor:
        a = x.reshape(-1, self.in_features)
        a8 = (a * self.input_scale_inv).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
        scale_a = self.input_scale.expand(a.shape[0], 1).contiguous() if self.rowwise else self.input_scale
        y = torch._scaled_mm(
            a8,
            self.weight.t(),
            scale_a=scale_a,
            scale_b=self.weight_scale,
            bias=self.bias,
            out_dtype=torch.bfloat16,
            use_fast_accum=self.fast_accum,
        )
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        scaling = "rowwise" if self.rowwise else "tensorwise"
        return f"in_features={self.in_features}, out_features={self.out_features}, fp8 e4m3 {scaling}, static input scale"


class Int8Linear(nn.Module):
    """y = round(x / s_x) W_q^T · s_x s_w + b with int32 accumulation (`torch._int_mm`), bf16 out."""

    MIN_ROWS = 17  # cuBLAS int8 GEMM through `_int_mm` needs more than 16 rows: fewer are zero-padded

    def __init__(self, linear: nn.Linear, input_amax: float) -> None:
        super().__init__()
        weight, weight_scale = int8_weight(linear.weight)
        input_scale = max(float(input_amax), 1e-12) / INT8_MAX
        self.register_buffer("weight", weight)
        self.register_buffer("output_scale", (weight_scale * input_scale).to(torch.float32))
        self.register_buffer("input_scale_inv", torch.tensor(1.0 / input_scale, dtype=torch.float32))
        self.register_buffer("bias", _bias(linear))
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: Tensor) -> Tensor:
        a = x.reshape(-1, self.in_features)
        rows = a.shape[0]
        a8 = torch.round(a * self.input_scale_inv).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
        if rows < self.MIN_ROWS:
            a8 = torch.cat([a8, a8.new_zeros(self.MIN_ROWS - rows, self.in_features)])
        acc = torch._int_mm(a8, self.weight.t())[:rows]
        y = acc.float() * self.output_scale
        if self.bias is not None:
            y = y + self.bias.float()
        return y.to(torch.bfloat16).reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-channel, static input scale"


@torch.library.custom_op("diffquant::int4_matmul", mutates_args=())
def int4_matmul(a: Tensor, packed: Tensor, group_size: int, scales_and_zeros: Tensor) -> Tensor:
    """tinygemm's int4 GEMM as an opaque op: Inductor may hand a fallback op a strided A, which the kernel
    refuses, so the op makes it contiguous itself; being a custom op, it stays inside the compiled graph
    (a `torch.compiler.disable` here broke the graph at every layer and recompiled per layer shape)."""
    a = a.contiguous()
    if a.is_cuda:
        return torch.ops.aten._weight_int4pack_mm(a, packed, group_size, scales_and_zeros)
    return torch.ops.aten._weight_int4pack_mm_for_cpu(a, packed, group_size, scales_and_zeros)


@int4_matmul.register_fake
def _(a: Tensor, packed: Tensor, group_size: int, scales_and_zeros: Tensor) -> Tensor:
    return a.new_empty(a.shape[0], scales_and_zeros.shape[1])


class Int4WeightOnlyLinear(nn.Module):
    """bf16 x times group-wise 4-bit W (dequantized inside `_weight_int4pack_mm`), bf16 out."""

    def __init__(self, linear: nn.Linear, group_size: int) -> None:
        super().__init__()
        packed, scales_and_zeros = int4_weight(linear.weight, group_size)
        self.register_buffer("qweight", packed)
        self.register_buffer("scales_and_zeros", scales_and_zeros)
        self.register_buffer("bias", _bias(linear))
        self.register_buffer("kernel_weight", torch.empty(0, dtype=torch.uint8), persistent=False)
        self.in_features, self.out_features, self.group_size = linear.in_features, linear.out_features, group_size
        self.kernel_device = ""

    def inner_k_tiles(self) -> int:
        """The largest tile count tinygemm accepts for this input width (in % (16 · tiles) == 0)."""
        return next(t for t in (8, 4, 2) if self.in_features % (16 * t) == 0)

    def pack_for(self, device: torch.device) -> None:
        """Lay the weight out for the int4 kernel of `device` (CUDA and CPU layouts differ)."""
        tiles = self.inner_k_tiles()
        if device.type == "cuda":
            packed = torch.ops.aten._convert_weight_to_int4pack(self.qweight.to(device), tiles)
        else:
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(unpack_int4(self.qweight.cpu()), tiles)
        self.kernel_weight, self.kernel_device = packed, str(device)

    def forward(self, x: Tensor) -> Tensor:
        if self.kernel_device != str(x.device):
            self.pack_for(x.device)
        a = x.reshape(-1, self.in_features).to(torch.bfloat16)
        y = int4_matmul(a, self.kernel_weight, self.group_size, self.scales_and_zeros)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)

    def dequantized_weight(self) -> Tensor:
        """The float32 weight the kernel multiplies by: (q − 8) s + z per group."""
        q = unpack_int4(self.qweight.cpu()).float()
        sz = self.scales_and_zeros.cpu().float()
        scale = sz[..., 0].t().repeat_interleave(self.group_size, dim=1)
        zero = sz[..., 1].t().repeat_interleave(self.group_size, dim=1)
        return (q - 8.0) * scale + zero

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int4 weight-only, group {self.group_size}"


LOW_BIT_LINEARS = (Fp8Linear, Int8Linear, Int4WeightOnlyLinear)
