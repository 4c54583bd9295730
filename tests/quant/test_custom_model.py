"""A hand-written denoiser (tests/helpers/custom_model.SkipNet) through PTQ and QAT in process.

It has what the UNet lacks: Conv-BatchNorm-ReLU runs (fused, BatchNorm folded), a BatchNorm outside
any Sequential, a ConvTranspose2d (int8 with per-tensor weights where the engine's kernel passes its
self-test, else float), nn.MultiheadAttention (its out_proj is
read by weight, never called: stays float) and a fused input layer kept float whole.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.ao.nn import intrinsic as nni
from torch.ao.nn import quantized as nnq
from torch.ao.nn.intrinsic import quantized as nniq

from diffquant.data.datasets import iterate_batches
from diffquant.metrics.quality import sqnr_db
from diffquant.quant.coverage import layer_macs, mac_fraction, uncalled_layers
from diffquant.quant.engine import set_engine
from diffquant.quant.plan import QuantPlan
from diffquant.quant.strategies import PTQStrategy, QATStrategy
from diffquant.quant.transpose import transposed_int8_is_exact
from diffquant.training.loop import TrainSettings
from helpers import calibration_context, machine_spec
from helpers.custom_model import SkipNet, load_blobs

PER_TENSOR = (torch.per_tensor_affine, torch.per_tensor_symmetric)


def trained_like() -> tuple[SkipNet, torch.Tensor, torch.Tensor]:
    """A seeded SkipNet with BatchNorm statistics that are not the identity, and (x, t) inputs."""
    torch.manual_seed(0)
    model = SkipNet()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
    gen = torch.Generator().manual_seed(1)
    return model.eval(), torch.randn(32, 1, 8, 8, generator=gen), torch.randint(0, 1000, (32,), generator=gen)


def test_uncalled_layers_are_the_attention_output_projection() -> None:
    model, x, t = trained_like()
    assert uncalled_layers(model, x[:2], t[:2]) == ["attn.out_proj"]


def test_attention_macs_are_counted_so_the_float_share_is_honest() -> None:
    model, x, t = trained_like()
    per_module, total = layer_macs(model, x[:1], t[:1])
    tokens, dim = 16, 32  # a 4x4 map of 32 channels
    projections = 4 * tokens * dim * dim  # q, k, v in one in-projection, and out_proj
    assert per_module["attn"] == projections + 2 * tokens * tokens * dim  # QK^T and AV: counted on the CPU kernel too
    assert per_module["up"] == 32 * 16 * 2 * 2 * 4 * 4  # ConvTranspose2d: counted in the total
    assert sum(v for k, v in per_module.items() if "." not in k) == total


@pytest.mark.parametrize("engine", ["fbgemm", "x86", "qnnpack"])
def test_ptq_runs_int8_and_leaves_unwrappable_layers_in_float(engine: str) -> None:
    model, x, t = trained_like()
    set_engine(engine)
    plan = QuantPlan(machine_spec(engine), keep_float=("input", "output"))
    out = PTQStrategy(plan).quantize(model, calibration_context(x, t))
    assert out.execution == "int8"
    up_int8 = transposed_int8_is_exact(
        engine, model.up, plan.spec.weight_range(), plan.spec.symmetric
    )  # this machine's self-test decides
    assert out.wrapped_layers == ["time.0", "time.2", "down.0", "res.body.0", "res.body.3", *(["up"] if up_int8 else []), "merge"]
    assert out.float_layers["stem.0"].startswith("quant.keep_float") and "never called" in out.float_layers["attn.out_proj"]
    assert ("up" in out.float_layers) == (not up_int8) and "self-test" in out.float_layers.get("up", "self-test")
    assert ["stem.0", "stem.1", "stem.2"] in out.fused_groups and ["res.body.3", "res.body.4"] in out.fused_groups
    q = out.model.eager if hasattr(out.model, "eager") else out.model
    assert isinstance(q.down[0].module, nniq.ConvReLU2d) and isinstance(q.res.body[3].module, nnq.Conv2d)  # BN folded
    assert type(q.stem[0]) is nni.ConvReLU2d  # the input layer: fused, kept float as a whole
    if up_int8:
        assert type(q.up.module) is nnq.ConvTranspose2d and q.up.module.weight().qscheme() in PER_TENSOR
    else:
        assert type(q.up) is nn.ConvTranspose2d
    assert type(q.attn.out_proj) is nn.modules.linear.NonDynamicallyQuantizableLinear
    assert type(q.merge_bn) is nn.BatchNorm2d  # outside a Sequential: not fused, float between dequant and quant
    share = mac_fraction(model, out.wrapped_layers, x[:1], t[:1])
    assert 0.5 < share < 1.0
    with torch.no_grad():
        assert sqnr_db(model(x, t), out.model(x, t)) > 20.0


def test_qat_trains_batchnorm_in_the_fused_layers_and_converts_to_int8() -> None:
    model, x, t = trained_like()
    set_engine("fbgemm")
    train, *_ = load_blobs(num_train=64, num_heldout=8)
    ctx = calibration_context(x, t)
    ctx.train_batches = lambda: iterate_batches(train, 16, torch.Generator().manual_seed(0))
    settings = TrainSettings(steps=4, lr=1e-4, warmup_steps=1, ema_decay=None, log_every=2)
    plan = QuantPlan(machine_spec("fbgemm"), keep_float=("output",))
    out = QATStrategy(plan, settings, freeze_observer_step=2, batch_size=16).quantize(model, ctx)
    assert out.execution == "int8"
    q = out.model.eager if hasattr(out.model, "eager") else out.model
    assert isinstance(q.stem[0].module, nniq.ConvReLU2d)  # ConvBnReLU2d trained, then folded
    with torch.no_grad():
        assert torch.isfinite(out.model(x, t)).all() and out.model(x, t).shape == x.shape
