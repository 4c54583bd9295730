"""An x86_inductor model saved as a torch.export program and loaded in a fresh process: the same outputs bit for bit."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

import diffquant
from diffquant.models.unet import UNet
from diffquant.quant.api import RECIPE_ATTR

pytest.importorskip("torchao")


@pytest.mark.heavy
@pytest.mark.slow
def test_an_x86_inductor_model_round_trips_through_save_and_load(tmp_path) -> None:
    torch.manual_seed(0)
    model = UNet(base_channels=8, channel_mults=(1, 2), image_size=8, groups=4).eval()
    pairs = diffquant.calibration_pairs(model, shape=(1, 8, 8), steps=10, num_samples=8, timesteps=2)
    qmodel = diffquant.quantize(model, pairs, backend="x86_inductor")  # compiles at the warm-up batch, 16 pairs
    assert getattr(qmodel, RECIPE_ATTR)["execution"] == "int8_inductor"
    x, t = pairs.cycled(16)
    with torch.no_grad():
        expected = qmodel(x, t)
    path = diffquant.save(qmodel, tmp_path / "q.pt")
    torch.save({"x": x, "t": t, "expected": expected}, tmp_path / "probe.pt")
    code = textwrap.dedent(
        f"""
        import torch, diffquant
        probe = torch.load({str(tmp_path / "probe.pt")!r})
        model = diffquant.load({str(path)!r})  # the exported program, compiled again at this shape
        assert model.diffquant_recipe["execution"] == "int8_inductor"
        with torch.no_grad():
            out = model(probe["x"], probe["t"])
        assert torch.equal(out, probe["expected"]), float((out - probe["expected"]).abs().max())
        print("identical")
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0 and "identical" in proc.stdout, proc.stderr[-3000:]
