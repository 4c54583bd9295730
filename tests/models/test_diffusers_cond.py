"""model=diffusers_dit and model=diffusers_cond_unet: conditional diffusers models built, loaded, quantized and run by the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from diffquant.diffusion.guidance import guide_for
from diffquant.errors import DiffquantError
from diffquant.models import build_model
from diffquant.models.diffusers_cond import read_conditions
from helpers import model_spec
from helpers.cli import diffquant

diffusers = pytest.importorskip("diffusers")
DIT = "diffquant.models.diffusers_cond.build_diffusers_dit"
COND_UNET = "diffquant.models.diffusers_cond.build_diffusers_cond_unet"


def save_random_dit(folder: Path) -> nn.Module:
    """A tiny random DiTTransformer2DModel (8x8, 1 channel, 4 classes, learned σ) saved to `folder`, past its zero init."""
    torch.manual_seed(0)
    dit = diffusers.DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=1,
        out_channels=2,
        num_layers=2,
        sample_size=8,
        num_embeds_ada_norm=10,
    ).eval()
    with torch.no_grad():
        for p in dit.parameters():
            if p.ndim > 1:
                p.normal_(0, 0.05)
    dit.save_pretrained(folder)
    return dit


def save_random_cond_unet(folder: Path) -> nn.Module:
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16,
        attention_head_dim=4,
        norm_num_groups=4,
    ).eval()
    unet.save_pretrained(folder)
    return unet


def test_a_saved_dit_is_class_conditional_with_its_null_row_and_gives_its_eps_half(tmp_path: Path) -> None:
    dit = save_random_dit(tmp_path / "dit")
    model = build_model(model_spec(DIT, pretrained=str(tmp_path / "dit")), 1, 8).eval()
    assert model.num_classes == 10 and guide_for(model).num_classes == 10
    x, t, y = torch.randn(3, 1, 8, 8), torch.tensor([1, 400, 900]), torch.tensor([0, 4, 9])
    with torch.no_grad():
        full = dit(x, timestep=t, class_labels=y, return_dict=False)[0]
        assert full.shape == (3, 2, 8, 8)
        torch.testing.assert_close(model(x, t, y), full[:, :1], rtol=0, atol=0)
        torch.testing.assert_close(model(x, t), model(x, t, torch.full((3,), 10)), rtol=0, atol=0)
        assert (model(x, t, y) - model(x, t, torch.tensor([1, 2, 3]))).abs().max() > 1e-4


def test_the_cond_unet_reads_its_pool_and_checks_it(tmp_path: Path) -> None:
    save_random_cond_unet(tmp_path / "unet")
    torch.save(torch.randn(10, 5, 16), tmp_path / "pool.pt")
    model = build_model(model_spec(COND_UNET, pretrained=str(tmp_path / "unet"), conditions=str(tmp_path / "pool.pt")), 1, 8)
    guide = guide_for(model.eval(), 2.0)
    assert guide.num_labels == 10 and tuple(guide.null.shape) == (5, 16)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 700])
    with torch.no_grad():
        torch.testing.assert_close(model(x, t), model(x, t, torch.zeros(2, 5, 16)), rtol=0, atol=0)
        assert (model(x, t, guide.from_labels(torch.tensor([0, 1]))) - model(x, t)).abs().max() > 1e-4
    torch.save(torch.randn(4, 5, 8), tmp_path / "narrow.pt")
    with pytest.raises(DiffquantError, match="holds 8-wide embeddings; the UNet's cross_attention_dim is 16"):
        build_model(model_spec(COND_UNET, pretrained=str(tmp_path / "unet"), conditions=str(tmp_path / "narrow.pt")), 1, 8)
    torch.save(torch.randn(4, 16), tmp_path / "flat.pt")
    with pytest.raises(DiffquantError, match=r"gave shape \(4, 16\) torch.float32; expected a float tensor \[M, L, D\]"):
        read_conditions(str(tmp_path / "flat.pt"))
    with pytest.raises(DiffquantError, match="model.conditions is required"):
        read_conditions(None)
    (tmp_path / "bad.pt").write_bytes(b"not a tensor")
    with pytest.raises(DiffquantError, match="not a readable tensor file"):
        read_conditions(str(tmp_path / "bad.pt"))


def check_results(folder: Path, method: str, execution: str) -> dict:
    results = json.loads((folder / "results.json").read_text())
    assert (results["method"], results["execution"]) == (method, execution)
    metrics = results["metrics"]
    for key in ("eval/fid_cls", "eval/eps_rel_err", "eval/class_accuracy", "eval/class_accuracy_fp32"):
        assert math.isfinite(metrics[key]), key
    low, high = metrics["eval/class_accuracy_delta_ci95"]
    assert low <= metrics["eval/class_accuracy_delta"] <= high
    assert (folder / "samples_by_class.png").is_file()
    return results


@pytest.mark.heavy
@pytest.mark.slow
def test_cli_runs_a_saved_dit_through_ptq_int8_and_qat(tmp_path: Path) -> None:
    save_random_dit(tmp_path / "dit")
    common = ("model=diffusers_dit", f"model.pretrained={tmp_path / 'dit'}", "sampler.guidance_scale=2")
    ptq = diffquant(tmp_path, *common, "quant=ptq")
    assert ptq.returncode == 0, ptq.stderr[-3000:]
    results = check_results(tmp_path / "run", "ptq", "int8")
    wrapped = results["wrapped_layers"]
    for layer in ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "ff.net.0.proj", "ff.net.2", "norm1.linear"):
        assert f"dit.transformer_blocks.0.{layer}" in wrapped, layer
    assert results["perf_context"]["batched_guidance"] is True
    qat = diffquant(tmp_path, *common, "quant=qat", "quant.qat.steps=4", run_dir="qat")
    assert qat.returncode == 0, qat.stderr[-3000:]
    check_results(tmp_path / "qat", "qat", "int8")  # W8A8 QAT converts to int8 kernels


@pytest.mark.heavy
@pytest.mark.slow
def test_cli_runs_a_saved_cond_unet_on_its_conditions_file_through_ptq_int8_and_qat(tmp_path: Path) -> None:
    save_random_cond_unet(tmp_path / "unet")
    torch.save(torch.randn(10, 5, 16), tmp_path / "pool.pt")
    common = ("model=diffusers_cond_unet", f"model.pretrained={tmp_path / 'unet'}", f"model.conditions={tmp_path / 'pool.pt'}")
    ptq = diffquant(tmp_path, *common, "quant=ptq")
    assert ptq.returncode == 0, ptq.stderr[-3000:]
    results = check_results(tmp_path / "run", "ptq", "int8")
    cross = [n for n in results["wrapped_layers"] if ".attn2." in n]  # the cross-attention projections run in int8
    assert {n.rsplit(".attn2.", 1)[1] for n in cross} == {"to_q", "to_k", "to_v", "to_out.0"}
    assert "embeddings (5, 16)" in ptq.stdout
    qat = diffquant(tmp_path, *common, "quant=qat", "quant.qat.steps=4", run_dir="qat")
    assert qat.returncode == 0, qat.stderr[-3000:]
    check_results(tmp_path / "qat", "qat", "int8")  # W8A8 QAT converts to int8 kernels


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["fbgemm", "x86", "qnnpack"])
def test_a_dits_attention_and_feed_forward_run_int8_on_every_engine(tmp_path: Path, engine: str) -> None:
    import diffquant
    from diffquant.metrics.quality import sqnr_db
    from diffquant.quant.engine import supported_engines

    if engine not in supported_engines():
        pytest.skip(f"engine {engine} is not built into this torch")
    save_random_dit(tmp_path / "dit")
    model = build_model(model_spec(DIT, pretrained=str(tmp_path / "dit")), 1, 8).eval()
    pairs = diffquant.calibration_pairs(model, shape=(1, 8, 8), steps=8, num_samples=10, timesteps=4, guidance_scale=2.0)
    qmodel = diffquant.quantize(model, pairs, backend=engine)
    recipe = qmodel.diffquant_recipe
    assert recipe["execution"] == "int8"
    eager = qmodel.eager
    for layer in ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "ff.net.0.proj", "ff.net.2"):
        for block in (0, 1):
            name = f"dit.transformer_blocks.{block}.{layer}"
            assert name in recipe["wrapped_layers"]
            assert type(eager.get_submodule(name).module).__module__.startswith("torch.ao.nn.quantized"), name
    inputs = pairs.cycled(40)
    with torch.no_grad():
        assert sqnr_db(model(*inputs), qmodel(*inputs)) > 20


def test_the_conditions_file_keys_the_fp32_cache_by_content(tmp_path: Path) -> None:
    from diffquant.cache.artifacts import fp32_key
    from diffquant.config import TrainConfig
    from diffquant.diffusion.config import DiffusionConfig
    from diffquant.models import weights_key

    pool = tmp_path / "pool.pt"
    torch.save(torch.zeros(2, 3, 16), pool)
    spec = model_spec(COND_UNET, conditions=str(pool))
    dataset = model_spec("diffquant.data.datasets.load_digits")
    key = fp32_key(spec, dataset, DiffusionConfig(), TrainConfig(), 0, 1, 8, True)
    assert fp32_key(spec, dataset, DiffusionConfig(), TrainConfig(), 0, 1, 8, True) == key
    save_random_cond_unet(tmp_path / "unet")
    loaded = model_spec(COND_UNET, pretrained=str(tmp_path / "unet"), conditions=str(pool))
    before = weights_key(build_model(loaded, 1, 8))
    torch.save(torch.ones(2, 3, 16), pool)  # the same path, other conditions
    assert fp32_key(spec, dataset, DiffusionConfig(), TrainConfig(), 0, 1, 8, True) != key
    assert weights_key(build_model(loaded, 1, 8)) != before  # a pretrained model's key covers its pool too
