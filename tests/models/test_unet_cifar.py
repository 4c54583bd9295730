"""model=unet_cifar: the DDPM CIFAR-10 UNet's size from the config, and its layout at tiny width through W8A8 PTQ."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn
from torch.ao.nn import quantized as nnq

from diffquant.config import to_config
from diffquant.metrics.quality import sqnr_db
from diffquant.models import build_model
from diffquant.quant.engine import set_engine
from diffquant.quant.plan import QuantPlan
from diffquant.quant.qconfig import QuantSpec
from diffquant.quant.strategies import PTQStrategy
from helpers import calibration_context

DDPM_CIFAR10_PARAMS = 35_746_307  # Ho et al.'s CIFAR-10 model as counted in its PyTorch ports


def test_unet_cifar_composes_and_has_the_ddpm_size(compose_cfg) -> None:
    cfg = to_config(compose_cfg("model=unet_cifar", "dataset=cifar10"))
    m = cfg.model.kwargs
    assert (m["base_channels"], m["channel_mults"], m["num_res_blocks"], m["attn_resolutions"], m["dropout"], m["groups"]) == (
        128,
        (1, 2, 2, 2),
        2,
        (16,),
        0.1,
        32,
    )
    model = build_model(cfg.model, cfg.dataset.kwargs["channels"], cfg.dataset.kwargs["image_size"])
    assert sum(p.numel() for p in model.parameters()) == DDPM_CIFAR10_PARAMS
    attn = [name for name, mod in model.named_modules() if type(mod).__name__ == "AttnBlock"]
    assert len(attn) == 2 + 3 + 1  # 16x16 only: 2 down blocks, 3 up blocks, plus the middle


def test_tiny_width_runs_and_quantizes_to_int8(compose_cfg) -> None:
    cfg = to_config(
        compose_cfg("model=unet_cifar", "dataset=cifar10", "model.base_channels=8", "model.groups=4", "dataset.image_size=8")
    )
    kwargs = cfg.model.kwargs
    assert cfg.model.target == "diffquant.models.unet.UNet" and kwargs == {
        "base_channels": 8,
        "channel_mults": (1, 2, 2, 2),
        "num_res_blocks": 2,
        "attn_resolutions": (16,),
        "dropout": 0.1,
        "groups": 4,
        "num_classes": 0,
    }  # only the UNet's fields
    torch.manual_seed(0)
    model = build_model(
        replace(cfg.model, kwargs={**kwargs, "attn_resolutions": (4,)}), 3, 8
    ).eval()  # 16x16 attention, scaled to 8px
    gen = torch.Generator().manual_seed(1)
    x, t = torch.randn(16, 3, 8, 8, generator=gen), torch.randint(0, 1000, (16,), generator=gen)
    with torch.no_grad():
        ref = model(x, t)
    assert ref.shape == x.shape and torch.isfinite(ref).all()
    set_engine("fbgemm")
    ctx = calibration_context(x, t, gen)
    out = PTQStrategy(QuantPlan(QuantSpec(reduce_range=True))).quantize(model, ctx)
    assert out.execution == "int8"
    assert isinstance(out.model.conv_in.module, nnq.Conv2d) and isinstance(out.model.mid[1].qkv.module, nnq.Conv2d)
    assert not any(type(m) in (nn.Linear, nn.Conv2d) for m in out.model.modules())
    with torch.no_grad():
        assert sqnr_db(ref, out.model(x, t)) > 18.0
