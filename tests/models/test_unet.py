"""The UNet: output shapes, time conditioning, and a seeded regression slice."""

from __future__ import annotations

import pytest
import torch

from diffquant.models import build_model
from diffquant.models.unet import UNet, timestep_embedding
from helpers import model_spec


@pytest.mark.parametrize(
    ("kwargs", "shape"),
    [
        (dict(in_channels=1, image_size=16), (2, 1, 16, 16)),
        (dict(in_channels=3, image_size=8, base_channels=8, groups=4, channel_mults=(1, 2)), (2, 3, 8, 8)),
        (dict(in_channels=1, image_size=16, base_channels=8, groups=4, num_res_blocks=2, attn_resolutions=(8,)), (2, 1, 16, 16)),
    ],
    ids=["default", "rgb-8px", "attn-2blocks"],
)
def test_output_shape_matches_input(kwargs, shape) -> None:
    model = UNet(**kwargs).eval()
    out = model(torch.randn(shape), torch.tensor([0, 999]))
    assert out.shape == shape
    assert torch.isfinite(out).all()


def test_default_unet_size() -> None:
    params = sum(p.numel() for p in UNet().parameters())
    assert 1.0e6 < params < 1.1e6  # the unet_tiny config: ~1.06 M parameters


def test_output_depends_on_timestep() -> None:
    torch.manual_seed(0)
    model = UNet(base_channels=8, groups=4, channel_mults=(1, 2), image_size=8).eval()
    x = torch.randn(1, 1, 8, 8)
    assert not torch.allclose(model(x, torch.tensor([10])), model(x, torch.tensor([900])))


def test_timestep_embedding_values() -> None:
    emb = timestep_embedding(torch.tensor([0, 5]), 8)
    assert emb.shape == (2, 8)
    torch.testing.assert_close(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    assert emb[1, 0].item() == pytest.approx(torch.cos(torch.tensor(5.0)).item())


def test_build_model_and_config_roundtrip() -> None:
    model = build_model(model_spec("diffquant.models.unet.UNet", base_channels=8, groups=4, channel_mults=(1, 2)), 1, 8)
    rebuilt = UNet(
        **{
            **model.config,
            "channel_mults": tuple(model.config["channel_mults"]),
            "attn_resolutions": tuple(model.config["attn_resolutions"]),
        }
    )
    rebuilt.load_state_dict(model.state_dict())
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 400])
    torch.testing.assert_close(rebuilt(x, t), model(x, t))


def test_seeded_tiny_unet_reproduces_its_expected_slice() -> None:
    """Regression (diffusers style): a change to the architecture, its init or its numerics shows up here."""
    torch.manual_seed(0)
    model = UNet(in_channels=1, image_size=8, base_channels=8, channel_mults=(1, 2), groups=4).eval()
    gen = torch.Generator().manual_seed(1)
    x, t = torch.randn(2, 1, 8, 8, generator=gen), torch.tensor([10, 500])
    with torch.no_grad():
        out = model(x, t)
    expected_row = torch.tensor([-0.13697, -0.13651, 0.10391, 0.24855, -0.09508, 0.26735, 0.21785, -0.14189])
    expected_col = torch.tensor([-0.05843, -0.32827, -0.11164, 0.14326])
    torch.testing.assert_close(out[0, 0, 3, :], expected_row, atol=2e-4, rtol=0)
    torch.testing.assert_close(out[1, 0, :4, 5], expected_col, atol=2e-4, rtol=0)
