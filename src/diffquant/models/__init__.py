"""Build the `model._target_` network and check, with one probe forward, that it is an ε-network `forward(x_t, t)`.

Built-in targets: `unet.UNet`, `dit.DiT`, `diffusers_unet.build_diffusers_unet` (schemas in `schemas.py`).
Any other class or factory returning an `nn.Module` works the same way: its keyword arguments come
from the `model` node, `in_channels` and `image_size` from the data when it takes them.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from diffquant.components import Component
from diffquant.errors import DiffquantError
from diffquant.training.distributed import state_digest

EXPECTED = "forward(x_t, t) taking images [B, C, H, W] and integer timesteps [B], returning a tensor shaped like x_t"


def build_model(spec: Component, in_channels: int, image_size: int) -> nn.Module:
    """Call the target with the node's arguments (and the data's channels / size where it takes them)."""
    model = spec.build(in_channels=in_channels, image_size=image_size)
    if not isinstance(model, nn.Module):
        raise DiffquantError(
            f"model._target_={spec.target} returned a {type(model).__name__}; expected an nn.Module with {EXPECTED}"
        )
    return model


def probe_model(model: nn.Module, target: str, in_channels: int, image_size: int) -> None:
    """One forward on a tiny batch in eval mode (no state changes): the signature and output shape must fit."""
    x = torch.randn(2, in_channels, image_size, image_size, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0, 1], dtype=torch.long)
    was_training = model.training
    try:
        with torch.no_grad():
            out = model.eval()(x, t)
    except Exception as exc:  # noqa: BLE001 - user code: any failure of the probe is one line
        detail = " ".join(str(exc).split())[:300]
        raise DiffquantError(
            f"model._target_={target}: a probe forward on x_t {tuple(x.shape)}, t {tuple(t.shape)} failed "
            f"({type(exc).__name__}: {detail}); expected {EXPECTED}"
        ) from None
    finally:
        model.train(was_training)
    if not isinstance(out, Tensor) or out.shape != x.shape:
        got = f"shape {tuple(out.shape)}" if isinstance(out, Tensor) else f"a {type(out).__name__}"
        raise DiffquantError(f"model._target_={target} returned {got} for x_t of shape {tuple(x.shape)}; expected {EXPECTED}")
    if not out.is_floating_point():
        raise DiffquantError(f"model._target_={target} returned {out.dtype} values; expected float ε predictions")


def weights_key(model: nn.Module) -> str:
    """Cache key of a model whose factory loads its weights (`model.pretrained`): a digest of those weights."""
    return "pretrained-" + state_digest(model.state_dict())[:16]
