"""GPU sampling speed of every GPU execution side by side in one process: DDIM sampling, images/s, peak memory.

    python benchmarks/gpu_speed.py [--models dit_b2,dit_xl2,unet_cifar] [--steps 50] [--repeats 3]
                                   [--fp32-steps 10] [--out results.json] [--profile]
                                   [--inductor coordinate_descent_tuning=True] [--gelu sigmoid|tanh]

Models at 32x32: DiT-B/2 (hidden 768, depth 12, 12 heads) and a DiT-XL/2-sized DiT (1152, 28, 16) on
4 input channels (a latent-sized input), batches 1 and 256 / 128; `unet_cifar` (35.7 M parameters,
3 channels) at batch 128. Variants: `fp32` (TF32 off) and `tf32` eager, timed over `--fp32-steps`
DDIM steps and scaled to `--steps` (a DDIM step costs the same at every t); `bf16 eager`; `bf16
compiled` and `bf16 compiled autotune` (Inductor's max-autotune: the faster of the two is the
baseline the low-bit rows are divided by); then the GPU backends as the pipeline builds
them (`diffquant.quant.gpu`): fp8 static tensorwise / rowwise, int8 static, int4 weight-only (group
128), each compiled. Each round samples once with every variant in turn; medians over `--repeats`
rounds after a warm-up sampling (compile time reported apart). Weights are random: speed does not
depend on them; `rel_err` (one forward against FP32) is therefore only a sanity check, the quality of
each format on a trained model comes from `diffquant` runs (docs/gpu.md).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from collections.abc import Callable

import torch
from gpu_timing import forward_ms, inductor_config, machine, peak_memory_gib, profile, sample_seconds
from torch import Tensor, nn

from diffquant.diffusion.schedule import GaussianDiffusion, linear_betas
from diffquant.metrics.quality import relative_error
from diffquant.models.dit import DiT
from diffquant.models.unet import UNet
from diffquant.quant.coverage import mac_fraction
from diffquant.quant.gpu.convert import LowBitSpec, convert_model, input_amax, plan_layers
from diffquant.quant.gpu.runtime import Compiling, LowBitModel, bf16_reference
from diffquant.quant.size import tensor_bytes

MODELS: dict[str, tuple[Callable[[], nn.Module], int, tuple[int, ...]]] = {
    "dit_b2": (lambda: DiT(in_channels=4, image_size=32, patch_size=2, hidden_size=768, depth=12, num_heads=12), 4, (1, 256)),
    "dit_xl2": (lambda: DiT(in_channels=4, image_size=32, patch_size=2, hidden_size=1152, depth=28, num_heads=16), 4, (1, 128)),
    "dit_tiny": (
        lambda: DiT(in_channels=4, image_size=32, patch_size=4, hidden_size=128, depth=1, num_heads=2),
        4,
        (8,),
    ),  # smoke
    "unet_cifar": (
        lambda: UNet(
            in_channels=3,
            base_channels=128,
            channel_mults=(1, 2, 2, 2),
            num_res_blocks=2,
            attn_resolutions=(16,),
            image_size=32,
            dropout=0.1,
            groups=32,
        ),
        3,
        (128,),
    ),
}
LOW_BIT = {
    "fp8 tensorwise": LowBitSpec("fp8"),
    "fp8 rowwise": LowBitSpec("fp8", weight_scaling="rowwise"),
    "int8": LowBitSpec("int8"),
    "int4wo g128": LowBitSpec("int4wo", group_size=128),
    "fp8 tensorwise autotune": LowBitSpec("fp8"),  # torch.compile(mode="max-autotune-no-cudagraphs")
}
DEFAULT_VARIANTS = "bf16 compiled,fp8 tensorwise,fp8 rowwise,int8,int4wo g128,bf16 eager,tf32,fp32"  # int4: batches <= 16


class Fp32(nn.Module):
    """The FP32 model itself, with TF32 matmuls / convolutions on or off while it runs."""

    def __init__(self, model: nn.Module, tf32: bool) -> None:
        super().__init__()
        self.model, self.tf32 = model, tf32

    def forward(self, *args: Tensor) -> Tensor:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = self.tf32
        try:
            return self.model(*args)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False


def random_weights(model: nn.Module) -> nn.Module:
    """N(0, 0.02) everywhere (DiT's adaLN-Zero init would make every output zero)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    return model.eval()


def variants(
    model: nn.Module, calib: list[tuple[Tensor, Tensor]], device: torch.device, names: list[str], compiling: Compiling
) -> dict[str, tuple[nn.Module, dict]]:
    """The named executions of `model` on `device` (bf16 compiled always), with what the table says of each."""
    out: dict[str, tuple[nn.Module, dict]] = {
        "fp32": (Fp32(model, tf32=False), {}),
        "tf32": (Fp32(model, tf32=True), {}),
        "bf16 eager": (bf16_reference(model, Compiling(enabled=False)).prepare(device), {}),
        "bf16 compiled": (bf16_reference(model, compiling).prepare(device), {}),
        "bf16 compiled autotune": (bf16_reference(model, autotuned(compiling)).prepare(device), {}),
    }
    out = {k: v for k, v in out.items() if k in names or k == "bf16 compiled"}
    cpu_model = copy.deepcopy(model).cpu()
    example = (calib[0][0][:1].cpu(), calib[0][1][:1].cpu())
    for name, spec in LOW_BIT.items():
        if names and name not in names:
            continue
        plan = plan_layers(model, spec, kept_roles=())
        amax = input_amax(model, plan.converted, calib, device) if spec.static_inputs else {}
        how = autotuned(compiling) if name.endswith("autotune") else compiling
        lowbit = LowBitModel(convert_model(model, spec, plan, amax), spec.execution, how).prepare(device)
        info = {
            "converted": len(plan.converted),
            "kept": len(plan.kept),
            "mac_fraction": mac_fraction(cpu_model, plan.converted, *example),
        }
        out[name] = (lowbit, info)
    order = ["bf16 compiled", *(n for n in names if n != "bf16 compiled")]
    return {name: out[name] for name in order if name in out}


def autotuned(compiling: Compiling) -> Compiling:
    """The same compilation with Inductor's GEMM autotuning (Triton templates, epilogue fusion), no CUDA graphs."""
    return Compiling(True, "max-autotune-no-cudagraphs", compiling.scope, compiling.sigmoid_gelu)


def bench(name: str, batch: int, args: argparse.Namespace, device: torch.device) -> list[dict]:
    """One model at one batch: every variant's sampling time, images/s, peak memory, bytes and a sanity rel_err."""
    build, channels, _ = MODELS[name]
    model = random_weights(build()).to(device)
    diffusion = GaussianDiffusion(linear_betas(1000))
    gen = torch.Generator(device=device).manual_seed(1)
    noise = torch.randn(batch, channels, 32, 32, device=device, generator=gen)
    calib = [
        (
            torch.randn(min(batch, 64), channels, 32, 32, device=device, generator=gen),
            torch.full((min(batch, 64),), t, device=device),
        )
        for t in (999, 500, 20)
    ]
    t_probe = torch.full((batch,), 500, device=device)
    with torch.no_grad():
        ref = model(noise, t_probe).float()
    rows = []
    names = args.variants.split(",")
    if batch > 16 and args.variants == DEFAULT_VARIANTS:  # tinygemm's int4 GEMM is for small batches: minutes at 128
        names = [n for n in names if not n.startswith("int4")]
    table = variants(model, calib, device, names, Compiling(True, args.compile_mode, args.compile_scope, args.gelu == "sigmoid"))
    timings: dict[str, list[float]] = {v: [] for v in table}
    extra: dict[str, dict] = {}
    with torch.no_grad():
        for variant, (runner, info) in table.items():
            steps = args.fp32_steps if variant in ("fp32", "tf32") else args.steps
            start = time.perf_counter()
            sample_seconds(runner, diffusion, noise, min(steps, 2))  # warm-up: compiles at this shape
            extra[variant] = {
                **info,
                "compile_s": time.perf_counter() - start,
                "forward_ms": forward_ms(runner, noise, t_probe),
                "rel_err": relative_error(runner(noise, t_probe).float(), ref),
            }
            print(f"  ready: {name} b{batch} {variant}: {extra[variant]}", flush=True)
        for round_ in range(args.repeats):
            for variant, (runner, _info) in table.items():
                steps = args.fp32_steps if variant in ("fp32", "tf32") else args.steps
                timings[variant].append(sample_seconds(runner, diffusion, noise, steps) * args.steps / steps)
            print(f"  round {round_}: " + ", ".join(f"{v} {t[-1]:.3f} s" for v, t in timings.items()), flush=True)
        for variant, (runner, _info) in table.items():
            extra[variant]["peak_mem_gib"] = peak_memory_gib(runner, diffusion, noise)
    base = min(statistics.median(timings[v]) for v in timings if v.startswith("bf16 compiled"))  # the faster bf16 compile
    bf16_bytes = tensor_bytes(table["bf16 compiled"][0])
    for variant, (runner, _info) in table.items():
        seconds = statistics.median(timings[variant])
        row = {
            "model": name,
            "batch": batch,
            "variant": variant,
            "s_per_sampling": seconds,
            "images_per_s": batch / seconds,
            "vs_bf16_compiled": base / seconds,
            "weight_bytes": tensor_bytes(runner),
            "bytes_vs_bf16": tensor_bytes(runner) / bf16_bytes,
            "timed": f"{args.fp32_steps} steps x{args.steps / args.fp32_steps:g}"
            if variant in ("fp32", "tf32")
            else f"{args.steps} steps",
            **extra[variant],
        }
        rows.append(row)
        print(
            f"{name:10s} {batch:4d} {variant:15s} {seconds:8.3f} s {row['images_per_s']:9.1f} img/s "
            f"{row['vs_bf16_compiled']:5.2f}x  mem {row['peak_mem_gib']:6.2f} GiB  bytes {row['bytes_vs_bf16']:.3f}  "
            f"fwd {row['forward_ms']:7.2f} ms  rel_err {row['rel_err']:.4f}  compile {row['compile_s']:5.1f} s  "
            f"mac {row.get('mac_fraction', 0):.3f} ({row['timed']})",
            flush=True,
        )
    if args.profile and device.type == "cuda":
        for variant in ("bf16 compiled", "fp8 tensorwise"):
            if variant in table:
                profile(variant, table[variant][0], noise, t_probe)
    del table
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="dit_b2,dit_xl2,unet_cifar")
    parser.add_argument("--batches", default="", help="comma list overriding every model's batches")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--fp32-steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="")
    parser.add_argument("--device", default="cuda", help="cpu: a smoke run of the script itself (model dit_tiny)")
    parser.add_argument("--compile-mode", default="default", help="torch.compile mode of every compiled variant")
    parser.add_argument("--compile-scope", default="model", help="model (one graph) | blocks (regional compilation)")
    parser.add_argument("--variants", default=DEFAULT_VARIANTS, help="comma list; bf16 compiled (the baseline) always runs")
    parser.add_argument(
        "--gelu",
        default="sigmoid",
        choices=("sigmoid", "tanh"),
        help="how every compiled variant computes tanh-form GELUs: x*sigmoid(2u) (backend.sigmoid_gelu, the default) or tanh",
    )
    parser.add_argument("--profile", action="store_true", help="print the top CUDA kernels of bf16 compiled and fp8 tensorwise")
    parser.add_argument(
        "--inductor",
        default="",
        help="comma list of torch._inductor.config settings for every variant: coordinate_descent_tuning=True",
    )
    args = parser.parse_args()
    inductor_config(args.inductor)
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    info = machine(device)
    print(json.dumps(info), flush=True)
    rows = []
    for name in args.models.split(","):
        batches = tuple(int(b) for b in args.batches.split(",")) if args.batches else MODELS[name][2]
        for batch in batches:
            rows += bench(name, batch, args, device)
            if args.out:
                with open(args.out, "w") as f:
                    json.dump({"machine": info, "args": vars(args), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
