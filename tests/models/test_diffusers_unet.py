"""model=diffusers_unet: a UNet2DModel built from the UNet fields or loaded from a saved folder, its errors,
in-process W8A8 PTQ, and the acceptance run of the real CLI on a saved random model."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.ao.nn import quantized as nnq

from diffquant.errors import DiffquantError
from diffquant.metrics.quality import sqnr_db
from diffquant.models import build_model, weights_key
from diffquant.models.unet import UNet
from diffquant.quant.engine import set_engine
from diffquant.quant.execution.scripted import ScriptedInt8
from diffquant.quant.plan import QuantPlan
from diffquant.quant.qconfig import QuantSpec
from diffquant.quant.strategies import PTQStrategy
from helpers import calibration_context, model_spec
from helpers.cli import diffquant

diffusers = pytest.importorskip("diffusers")
UNET_TINY = dict(base_channels=32, channel_mults=(1, 2, 2), num_res_blocks=1, attn_resolutions=(), dropout=0.0, groups=8)


def save_random_unet(folder: Path, seed: int = 0) -> nn.Module:
    """A tiny random UNet2DModel (16x16, 1 channel, widths 8 / 16, attention at the 8x8 level) saved to `folder`."""
    torch.manual_seed(seed)
    unet = diffusers.UNet2DModel(
        sample_size=16,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        attention_head_dim=8,
    ).eval()
    unet.save_pretrained(folder)
    return unet


def build(pretrained: str | None, channels: int = 1, size: int = 8) -> nn.Module:
    spec = model_spec("diffquant.models.diffusers_unet.build_diffusers_unet", **UNET_TINY, pretrained=pretrained)
    return build_model(spec, channels, size)


def test_built_from_the_unet_fields_it_matches_unet_tiny() -> None:
    model = build(None, size=16)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in UNet().parameters()) == 1_062_497
    x = torch.randn(2, 1, 16, 16)
    assert model(x, torch.tensor([0, 999])).shape == x.shape


def test_pretrained_folder_loads_the_saved_weights(tmp_path: Path) -> None:
    unet = save_random_unet(tmp_path / "m")
    model = build(str(tmp_path / "m")).eval()
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 700])
    with torch.no_grad():
        torch.testing.assert_close(model(x, t), unet(x, t).sample, rtol=0, atol=0)
    key = weights_key(model)
    assert key.startswith("pretrained-") and key == weights_key(build(str(tmp_path / "m")))
    save_random_unet(tmp_path / "other", seed=1)
    assert weights_key(build(str(tmp_path / "other"))) != key  # the key follows the loaded weights


def test_pipeline_folder_with_a_unet_subfolder_loads(tmp_path: Path) -> None:
    unet = save_random_unet(tmp_path / "pipe" / "unet")
    (tmp_path / "pipe" / "model_index.json").write_text("{}")
    model = build(str(tmp_path / "pipe"))
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in unet.parameters())


@pytest.mark.parametrize("case", ["missing", "no-config", "bad-json", "no-weights", "channels"])
def test_bad_pretrained_gives_one_line_naming_the_setting(tmp_path: Path, case: str) -> None:
    folder = tmp_path / "m"
    if case != "missing":
        save_random_unet(folder)
    if case == "no-config":
        (folder / "config.json").unlink()
    if case == "bad-json":
        (folder / "config.json").write_text("{not json")
    if case == "no-weights":
        for weights in folder.glob("diffusion_pytorch_model.*"):
            weights.unlink()
    with pytest.raises(DiffquantError) as info:
        build(str(folder), channels=3 if case == "channels" else 1)
    message = str(info.value)
    assert message.startswith(f"model.pretrained='{folder}'") and "\n" not in message
    if case == "channels":
        assert "set dataset.channels=1" in message


def test_missing_extra_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "diffusers", None)  # `import diffusers` now raises ImportError
    with pytest.raises(
        DiffquantError, match=r"model.pretrained='.*'\) needs the optional extra: pip install -e '.\[diffusers\]'"
    ):
        build(str(tmp_path))


def test_w8a8_ptq_quantizes_the_diffusers_layers(tmp_path: Path) -> None:
    save_random_unet(tmp_path / "m")
    model = build(str(tmp_path / "m")).eval()
    gen = torch.Generator().manual_seed(1)
    x, t = torch.randn(16, 1, 8, 8, generator=gen), torch.randint(0, 1000, (16,), generator=gen)
    set_engine("fbgemm")
    ctx = calibration_context(x, t, gen)
    out = PTQStrategy(QuantPlan(QuantSpec(reduce_range=True))).quantize(model, ctx)
    assert out.execution == "int8"
    assert isinstance(out.model.unet.mid_block.attentions[0].to_q.module, nnq.Linear)
    assert isinstance(out.model.unet.conv_in.module, nnq.Conv2d)
    assert not any(type(m) in (nn.Linear, nn.Conv2d) for m in out.model.modules())
    with torch.no_grad():
        assert sqnr_db(model(x, t), out.model(x, t)) > 18.0
        scripted = ScriptedInt8(out.model)  # how the pipeline runs it (backend.torchscript=true)
        assert scripted.graph_for(x, t) is not None and torch.equal(scripted(x, t), out.model(x, t))


@pytest.mark.heavy  # the real CLI on a saved model (about 20 s); the layers' int8 path is tested in process above
@pytest.mark.slow
def test_cli_quantizes_a_saved_unet2dmodel_end_to_end(tmp_path: Path) -> None:
    save_random_unet(tmp_path / "saved")
    proc = diffquant(tmp_path, "model=diffusers_unet", f"model.pretrained={tmp_path / 'saved'}", "quant=ptq")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert (results["method"], results["weight_bits"], results["act_bits"], results["execution"]) == ("ptq", 8, 8, "int8")
    assert results["fp32_cache_key"].startswith("pretrained-") and results["fp32_cached"] is True
    metrics = results["metrics"]
    for key in ("eval/fid_cls", "eval/fid_cls_fp32", "eval/psnr_vs_fp32", "eval/eps_rel_err"):
        assert math.isfinite(metrics[key]), key
    assert metrics["model/size_bytes"] < metrics["model/size_bytes_fp32"]
    assert "Using the pretrained FP32 model" in proc.stdout and "Training the FP32 model" not in proc.stdout
