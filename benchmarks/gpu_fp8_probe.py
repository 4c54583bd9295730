"""Probe for the GPU issue: calibrated *static* fp8 Linears (torch._scaled_mm) against bf16, on the project's DiT.

One process, side by side: bf16 eager, bf16 + torch.compile, and every Linear of the DiT replaced by
an fp8 (E4M3) GEMM whose activation scale is fixed from a calibration pass (per tensor), weights
per tensor ("tensorwise") or per output row ("rowwise", the activation scale broadcast to a column),
each compiled. The quantization of an activation then fuses into the op that produces it; torchao's
dynamic fp8 computes each activation's scale on every call instead. Random weights (DiT's own init,
then N(0, 0.02) everywhere so outputs are not zero), 32x32, one forward, median of `--iters` CUDA-
event timings after warm-up. `rel_err` is ‖y − y_fp32‖ / ‖y_fp32‖ of the same forward in FP32.

    python benchmarks/gpu_fp8_probe.py [--iters 20]
"""

from __future__ import annotations

import argparse
import copy
import statistics

import torch
from torch import Tensor, nn

from diffquant.models.dit import DiT

E4M3_MAX = 448.0


class StaticFp8Linear(nn.Module):
    """y = x W^T + b with x and W in float8_e4m3fn: a fixed activation scale, weights per tensor or per row."""

    def __init__(self, linear: nn.Linear, act_amax: float, rowwise: bool) -> None:
        super().__init__()
        w = linear.weight.detach().float()
        w_amax = w.abs().amax(dim=1, keepdim=True) if rowwise else w.abs().amax()
        w_scale = (w_amax / E4M3_MAX).clamp(min=1e-12)
        self.register_buffer("w_fp8", (w / w_scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn).contiguous())
        self.register_buffer("w_scale", w_scale.reshape(1, -1).contiguous() if rowwise else w_scale.reshape(()))
        self.register_buffer("a_scale", torch.tensor(max(act_amax, 1e-12) / E4M3_MAX, device=w.device))
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().to(torch.bfloat16), requires_grad=False)
        self.rowwise, self.out_features = rowwise, linear.out_features

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        a = x.reshape(-1, shape[-1])
        a_fp8 = (a / self.a_scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
        scale_a = self.a_scale.expand(a.shape[0], 1).contiguous() if self.rowwise else self.a_scale
        out = torch._scaled_mm(
            a_fp8, self.w_fp8.t(), scale_a=scale_a, scale_b=self.w_scale, bias=self.bias, out_dtype=torch.bfloat16
        )
        return out.reshape(*shape[:-1], self.out_features)


def calibrate_amax(model: nn.Module, inputs: tuple[Tensor, ...]) -> dict[str, float]:
    """Largest |input| of every Linear over one forward (the static scale's calibration)."""
    amax: dict[str, float] = {}
    hooks = [
        m.register_forward_pre_hook(lambda _m, args, n=n: amax.__setitem__(n, max(amax.get(n, 0.0), float(args[0].abs().max()))))
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear)
    ]
    with torch.no_grad():
        model(*inputs)
    for h in hooks:
        h.remove()
    return amax


def to_static_fp8(model: nn.Module, amax: dict[str, float], rowwise: bool) -> tuple[nn.Module, int, int]:
    """A copy with every Linear whose dims are multiples of 16 in fp8; (model, replaced, kept)."""
    model = copy.deepcopy(model)
    replaced = kept = 0
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if isinstance(child, nn.Linear):
                if child.in_features % 16 == 0 and child.out_features % 16 == 0:
                    setattr(module, child_name, StaticFp8Linear(child, amax[full], rowwise))
                    replaced += 1
                else:
                    kept += 1
    return model, replaced, kept


def autocast_call(model: nn.Module, *args: Tensor) -> Tensor:
    """The bf16 model's forward under bf16 autocast (its sinusoidal time features are computed in float32)."""
    with torch.autocast("cuda", dtype=torch.bfloat16):
        return model(*args)


def median_ms(fn, iters: int) -> float:
    times = []
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--iters", type=int, default=20)
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    configs = {
        "DiT-B/2": dict(hidden_size=768, depth=12, num_heads=12),
        "DiT-XL/2-sized": dict(hidden_size=1152, depth=28, num_heads=16),
    }
    for label, batch in (("DiT-B/2", 256), ("DiT-XL/2-sized", 128)):
        torch.manual_seed(0)
        fp32 = DiT(in_channels=4, image_size=32, patch_size=2, **configs[label]).cuda().eval()
        with torch.no_grad():
            for p in fp32.parameters():
                p.normal_(0, 0.02)
        x = torch.randn(batch, 4, 32, 32, device="cuda")
        t = torch.randint(0, 1000, (batch,), device="cuda")
        with torch.no_grad():
            ref = fp32(x, t).float()
        amax = calibrate_amax(fp32, (x, t))
        bf16 = copy.deepcopy(fp32).to(torch.bfloat16)
        xb = x.to(torch.bfloat16)
        variants = {"bf16 eager": bf16, "bf16 compiled": torch.compile(bf16)}
        for rowwise in (False, True):
            fp8, replaced, kept = to_static_fp8(bf16, amax, rowwise)
            variants[f"fp8 static {'rowwise' if rowwise else 'tensorwise'} compiled"] = torch.compile(fp8)
        print(f"\n{label}, batch {batch}, 32x32 (Linears in fp8: {replaced}, kept bf16: {kept})")
        base = None
        with torch.no_grad():
            for name, model in variants.items():
                ms = median_ms(lambda model=model, xb=xb, t=t: autocast_call(model, xb, t), args.iters)
                out = autocast_call(model, xb, t).float()
                err = float((out - ref).norm() / ref.norm())
                base = ms if name == "bf16 compiled" else base
                ratio = f"{base / ms:.2f}x" if base else "-"
                print(
                    f"  {name:38s} {ms:8.2f} ms  {batch / ms * 1000:9.0f} img/s  vs bf16 compiled {ratio:>6s}  rel_err {err:.4f}"
                )


if __name__ == "__main__":
    main()
