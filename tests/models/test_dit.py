"""The DiT: shapes, patching, adaLN-Zero's zero start, time conditioning, W8A8 PTQ, config and cache key."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn
from torch.ao.nn import quantized as nnq

from diffquant.config import to_config
from diffquant.errors import DiffquantError
from diffquant.metrics.quality import sqnr_db
from diffquant.models import build_model
from diffquant.models.dit import DiT, sincos_pos_embed
from diffquant.quant.engine import set_engine
from diffquant.quant.plan import QuantPlan
from diffquant.quant.qconfig import QuantSpec
from diffquant.quant.strategies import PTQStrategy
from helpers import calibration_context, fp32_key_of, model_spec

DIT = "diffquant.models.dit.DiT"
TINY = dict(patch_size=2, hidden_size=32, depth=2, num_heads=2, mlp_ratio=2.0)


def trained_like(model: DiT) -> DiT:
    """Random non-zero weights everywhere, as after training (adaLN-Zero layers start at exactly 0)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.2)
                nn.init.normal_(module.bias, std=0.1)
    return model.eval()


@pytest.mark.parametrize(
    ("channels", "size", "patch"), [(1, 8, 2), (3, 16, 4), (1, 16, 1)], ids=["gray-8px", "rgb-16px-p4", "p1"]
)
def test_output_has_the_input_shape(channels: int, size: int, patch: int) -> None:
    model = trained_like(DiT(in_channels=channels, image_size=size, **{**TINY, "patch_size": patch}))
    x = torch.randn(2, channels, size, size)
    out = model(x, torch.tensor([0, 999]))
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert model.pos_embed.shape == (1, (size // patch) ** 2, 32)


def test_adaln_zero_init_gives_zero_output_and_identity_blocks() -> None:
    torch.manual_seed(0)
    model = DiT(in_channels=1, image_size=8, **TINY).eval()
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([1, 500, 999])
    assert torch.equal(model(x, t), torch.zeros_like(x))
    tokens, c = torch.randn(3, 16, 32), torch.randn(3, 32)
    assert torch.equal(model.blocks[0](tokens, c), tokens)  # gates are 0: each block starts as the identity
    assert all(p.abs().sum() > 0 for p in model.patch_embed.parameters() if p.dim() > 1)  # not everything is 0


def test_unpatchify_inverts_patching() -> None:
    model = DiT(in_channels=3, image_size=8, **{**TINY, "patch_size": 4})
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    p = 4  # tokens in row-major patch order, each holding its p x p x C pixels channel-last
    tokens = x.reshape(2, 3, 2, p, 2, p).permute(0, 2, 4, 3, 5, 1).reshape(2, 4, p * p * 3)
    assert torch.equal(model.unpatchify(tokens), x)


def test_sincos_position_embedding_values() -> None:
    emb = sincos_pos_embed(8, 3)
    assert emb.shape == (9, 8)
    torch.testing.assert_close(emb[0], torch.tensor([0.0, 0.0, 1.0, 1.0] * 2))  # position (0, 0)
    assert emb[5, 0].item() == pytest.approx(torch.sin(torch.tensor(1.0)).item())  # row 1 of (1, 2), omega 1
    assert emb[5, 4].item() == pytest.approx(torch.sin(torch.tensor(2.0)).item())  # column 2


def test_output_depends_on_timestep() -> None:
    model = trained_like(DiT(in_channels=1, image_size=8, **TINY))
    x = torch.randn(1, 1, 8, 8)
    assert not torch.allclose(model(x, torch.tensor([10])), model(x, torch.tensor([900])))


def test_w8a8_ptq_converts_every_projection_to_int8() -> None:
    set_engine("fbgemm")
    model = trained_like(build_model(model_spec(DIT, **TINY), 1, 8))
    gen = torch.Generator().manual_seed(1)
    x, t = torch.randn(32, 1, 8, 8, generator=gen), torch.randint(0, 1000, (32,), generator=gen)
    ctx = calibration_context(x, t, gen)
    out = PTQStrategy(QuantPlan(QuantSpec(reduce_range=True))).quantize(model, ctx)
    assert out.execution == "int8"
    assert len(out.wrapped_layers) == 1 + 2 + 2 * 5 + 2  # patch embed, time MLP, 5 Linears per block, final 2
    assert isinstance(out.model.patch_embed.module, nnq.Conv2d)
    assert isinstance(out.model.blocks[1].attn.qkv.module, nnq.Linear)
    assert isinstance(out.model.final.linear.module, nnq.Linear)
    assert not any(type(m) in (nn.Linear, nn.Conv2d) for m in out.model.modules())
    with torch.no_grad():
        assert sqnr_db(model(x, t), out.model(x, t)) > 18.0  # measured 21 dB with 7-bit activations


def test_dit_s_composes_and_its_fields_key_the_cache(compose_cfg) -> None:
    cfg = to_config(compose_cfg("model=dit_s"))
    assert cfg.model.target == DIT
    assert cfg.model.kwargs == dict(patch_size=2, hidden_size=384, depth=12, num_heads=6, mlp_ratio=4.0, num_classes=0)
    deeper = to_config(compose_cfg("model=dit_s", "model.depth=6"))
    inherited = to_config(compose_cfg("model=dit_s", "experiment=tiny"))  # tiny sets UNet fields DiT ignores
    assert fp32_key_of(deeper, 1, 16) != fp32_key_of(cfg, 1, 16)
    assert inherited.model == cfg.model  # fields DiT does not read neither reach it nor key its cache


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.hidden_size=30"], "model.hidden_size=30 must be divisible by 4 and by model.num_heads=6"),
        (["model.depth=0"], "model.depth=0 is out of range"),
        (["+model.pretrained=/x"], "model.pretrained='/x' is not a parameter of diffquant.models.dit.DiT; it takes: patch_size"),
        (["+model.base_channels=64"], "model.base_channels=64 is not a parameter of diffquant.models.dit.DiT"),
    ],
    ids=["hidden-size", "depth", "pretrained", "unet-field-typed"],
)
def test_bad_dit_settings_name_the_setting(compose_cfg, overrides: list[str], message: str) -> None:
    with pytest.raises(DiffquantError, match=re.escape(message)):
        to_config(compose_cfg("model=dit_s", *overrides))


def test_patch_size_must_divide_the_image() -> None:
    with pytest.raises(
        DiffquantError,
        match=r"model._target_=diffquant.models.dit.DiT failed when called \(ValueError: "
        r"image_size=8 is not divisible by patch_size=3\)",
    ):
        build_model(model_spec(DIT, **{**TINY, "patch_size": 3}), 1, 8)
