"""GPU throughput: FP32 training (plain PyTorch loop vs diffquant's loop, fp32 and bf16 autocast) and
fake-quantized DDIM sampling (FP32 vs W8A8 / W4A8 fake quantization) on one CUDA device.

    python benchmarks/gpu.py [size=16] [channels=1] [batch=128] [sample_batch=256] [steps=200] [model=unet_tiny|unet_small]

Weights are random (speed does not depend on them); the fake-quant models are calibrated on a real
DDIM trajectory so their ranges are realistic. Medians of repeated timed windows, after warm-up.
Fake quantization simulates int8 in float arithmetic: it measures cost, not an int8 speedup.
"""

from __future__ import annotations

import sys

import torch
from gpu_timing import median_seconds
from torch import nn

from diffquant.diffusion.samplers import ddim_sample
from diffquant.diffusion.schedule import GaussianDiffusion, linear_betas
from diffquant.quant.calibration import collect_trajectory
from diffquant.quant.lsq import to_device
from diffquant.quant.plan import QuantContext, QuantPlan
from diffquant.quant.preparation import calibrate, prepare_fake_quant
from diffquant.quant.qconfig import QuantSpec
from diffquant.training.loop import TrainSettings, distillation_loss, epsilon_loss, train_diffusion

MODELS = {
    "unet_tiny": dict(base_channels=32, channel_mults=(1, 2, 2)),
    "unet_small": dict(base_channels=64, channel_mults=(1, 2, 2), attn_resolutions=(8,), dropout=0.1),
}


def plain_loop(model: nn.Module, images: torch.Tensor, diffusion: GaussianDiffusion, steps: int, batch: int) -> None:
    """The reference: a bare AdamW ε-prediction loop, no EMA, clipping, guards or logging."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ac = diffusion.alphas_cumprod.float().to(images.device)
    for _ in range(steps):
        x0 = images[torch.randint(0, len(images), (batch,), device=images.device)]
        t = torch.randint(0, len(ac), (batch,), device=images.device)
        noise = torch.randn_like(x0)
        a = ac[t].view(-1, 1, 1, 1)
        loss = nn.functional.mse_loss(model(a.sqrt() * x0 + (1 - a).sqrt() * noise, t), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def main() -> None:
    args = dict(a.split("=", 1) for a in sys.argv[1:])
    size, channels = int(args.get("size", 16)), int(args.get("channels", 1))
    batch, sample_batch, steps = int(args.get("batch", 128)), int(args.get("sample_batch", 256)), int(args.get("steps", 200))
    from diffquant.models.unet import UNet

    arch = MODELS[args.get("model", "unet_tiny")]
    dev = torch.device("cuda")
    make = lambda: UNet(in_channels=channels, image_size=size, **arch)  # noqa: E731
    diffusion = GaussianDiffusion(linear_betas(1000))
    images = torch.rand(2048, channels, size, size) * 2 - 1
    print(
        f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, model {args.get('model', 'unet_tiny')} "
        f"({sum(p.numel() for p in make().parameters()) / 1e6:.2f} M params), {channels}x{size}x{size}"
    )
    rows: list[tuple[str, float, str]] = []
    gpu_images = images.to(dev)
    model = make().to(dev)
    sec = median_seconds(lambda: plain_loop(model, gpu_images, diffusion, steps, batch), repeats=3, device=dev)
    rows.append(("train: plain PyTorch loop, fp32", steps * batch / sec, "images/s"))
    for name, bf16 in (("train: diffquant loop, fp32", False), ("train: diffquant loop, bf16 autocast", True)):
        settings = TrainSettings(steps=steps, lr=1e-4, ema_decay=0.999, device="cuda", bf16=bf16, log_every=10**9)

        def ours() -> None:
            gen = torch.Generator().manual_seed(0)
            batches = (gpu_images[torch.randint(0, len(images), (batch,), generator=gen)] for _ in iter(int, 1))
            train_diffusion(make(), epsilon_loss(diffusion, gen), batches, settings, progress=False)  # noqa: B023 (called within this iteration)

        rows.append((name, steps * batch / median_seconds(ours, repeats=3, device=dev), "images/s"))

    fp32 = make().to(dev).eval()
    noise = torch.randn(sample_batch, channels, size, size, device=dev)
    calib = collect_trajectory(lambda **kw: ddim_sample(fp32, diffusion, steps=50, **kw), 50, 10, noise[:64])
    ctx = QuantContext(
        calibration=lambda: calib, train_batches=iter, diffusion=diffusion, generator=torch.Generator(), progress=False
    )

    def qat() -> None:
        qmodel, _, _ = prepare_fake_quant(fp32.cpu(), QuantPlan(QuantSpec(weight_bits=4)), qat=True)
        calibrate(qmodel, ctx)
        fp32.to(dev)
        to_device(qmodel, dev)
        gen = torch.Generator().manual_seed(0)
        batches = (gpu_images[torch.randint(0, len(images), (batch,), generator=gen)] for _ in iter(int, 1))
        settings = TrainSettings(steps=steps, lr=1e-4, device="cuda", log_every=10**9)
        train_diffusion(qmodel, distillation_loss(fp32, diffusion, gen, 1.0, 1.0), batches, settings, progress=False)

    rows.append(
        (
            "train: QAT W4A8 fake-quant + distillation, diffquant loop",
            steps * batch / median_seconds(qat, repeats=1, device=dev),
            "images/s",
        )
    )

    sample = lambda m: ddim_sample(m, diffusion, noise, steps=50)  # noqa: E731
    rows.append(("sample: fp32, DDIM 50", sample_batch / median_seconds(lambda: sample(fp32), device=dev), "images/s"))
    for bits in (8, 4):
        qmodel, _, _ = prepare_fake_quant(fp32, QuantPlan(QuantSpec(weight_bits=bits, act_bits=8)), qat=False)
        calibrate(qmodel.to(dev), ctx)
        to_device(qmodel.eval(), dev)
        seconds = median_seconds(lambda: sample(qmodel), device=dev)  # noqa: B023 (called within this iteration)
        rows.append((f"sample: W{bits}A8 fake-quant, DDIM 50", sample_batch / seconds, "images/s"))
    print(f"\n| measurement (batch {batch} train / {sample_batch} sample) | throughput | unit |\n|---|---|---|")
    for name, value, unit in rows:
        print(f"| {name} | {value:,.0f} | {unit} |")


if __name__ == "__main__":
    main()
