"""Serialized size of a model's state_dict, the honest measure of what a quantized artefact weighs."""

from __future__ import annotations

import io

import torch
from torch import nn


def state_dict_bytes(model: nn.Module) -> int:
    """Bytes of `torch.save(model.state_dict())` (packed int8 weights for converted modules)."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes
