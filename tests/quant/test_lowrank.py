"""SVDQuant low-rank branches: the best rank-r split, an unchanged float model, lower 4-bit error, int8 and saving."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.ao import quantization as tq
from torch.ao.nn import quantized as nnq

import diffquant
from diffquant.errors import DiffquantError
from diffquant.metrics.quality import relative_error
from diffquant.quant.calibration import CalibrationData
from diffquant.quant.lowrank import LowRankBranch, LowRankWrapper, add_low_rank_branches, branch_cost, low_rank_split
from diffquant.quant.smoothing import smoothing_scales
from diffquant.quant.wrap import wrap_layers
from helpers import random_pairs

SETTINGS = {"observer": "minmax", "dynamic_input": False, "bias_correction": 0, "sensitivity": False}


class OutlierNet(nn.Module):
    """A Linear and a strided 3x3 conv whose weight matrices have two large columns (x20) each: the 4-bit grid of
    every output row is stretched by them. The input conv and the 1-channel output conv stay float (`keep_float`)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv_in = nn.Conv2d(1, 16, 3, padding=1)
        self.fc = nn.Linear(16, 64)
        self.conv = nn.Conv2d(64, 32, 3, stride=2, padding=1)
        self.conv_out = nn.Conv2d(32, 1, 1)
        with torch.no_grad():
            self.fc.weight[:, [3, 11]] *= 20.0
            self.conv.weight[:, [5, 40], 1, 1] *= 20.0  # columns of the [out, in·3·3] matrix: the centre taps

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x) + t.float().view(-1, 1, 1, 1) / 1000
        h = self.fc(h.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.conv_out(torch.relu(self.conv(torch.relu(h))))


def pairs() -> CalibrationData:
    return random_pairs(64, (1, 8, 8), seed=1)


def truncated_svd(matrix: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference: U_r Σ_r V_rᵀ and the singular values beyond r (float64)."""
    u, s, vh = torch.linalg.svd(matrix.double(), full_matrices=False)
    return (u[:, :rank] * s[:rank]) @ vh[:rank], s[rank:]


@pytest.mark.parametrize("shape", [(24, 40), (16, 8, 3, 3)], ids=["linear", "conv3x3"])
@pytest.mark.parametrize("rank", [1, 4, 8])
def test_the_branch_is_the_best_rank_r_approximation(shape: tuple[int, ...], rank: int) -> None:
    weight = torch.randn(*shape, generator=torch.Generator().manual_seed(rank))
    up, down, residual = low_rank_split(weight, rank)
    matrix = weight.reshape(shape[0], -1)
    best, rest = truncated_svd(matrix, rank)
    assert up.shape == (shape[0], rank) and down.shape == (rank, matrix.shape[1]) and residual.shape == weight.shape
    torch.testing.assert_close((up @ down).double(), best, rtol=0, atol=1e-5)
    torch.testing.assert_close(residual + (up @ down).reshape(shape), weight, rtol=0, atol=1e-5)
    assert torch.linalg.matrix_norm(residual.reshape(shape[0], -1).double()).item() == pytest.approx(
        rest.square().sum().sqrt().item(), rel=1e-5
    )
    torch.testing.assert_close(up.norm(dim=0), down.norm(dim=1))  # split evenly: column i of up and row i of down alike


@pytest.mark.parametrize("rank", [2, 9])
def test_the_float_model_is_unchanged_by_the_split(rank: int) -> None:
    model, calib = OutlierNet().eval(), pairs()
    x, t = calib.x[:16], calib.t[:16]
    with torch.no_grad():
        before = model(x, t)
        wrapped = wrap_layers(model, lambda _n, _m: tq.default_qconfig, ["conv_out"])  # stubs: identities until prepared
        assert add_low_rank_branches(model, wrapped, rank) == {}
        after = model(x, t)
    assert all(isinstance(model.get_submodule(n), LowRankWrapper) for n in wrapped)
    assert [model.get_submodule(n).lowrank.rank for n in wrapped] == [rank] * 3
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)


def test_the_branch_lowers_the_w4a8_error_on_outlier_columns() -> None:
    model, calib = OutlierNet().eval(), pairs()
    x, t = calib.x[:32], calib.t[:32]
    errors = {}
    for rank in (0, 8, 16):
        q = diffquant.quantize(model, calib, weight_bits=4, simulate=True, lowrank_rank=rank, **SETTINGS)
        assert isinstance(q.fc, LowRankWrapper) == (rank > 0)
        with torch.no_grad():
            errors[rank] = relative_error(q(x, t), model(x, t))
    assert errors[8] < 0.3 * errors[0] and errors[16] < 0.3 * errors[0]  # measured: 0.51, 0.12, 0.072


def test_with_smoothing_the_svd_is_of_the_smoothed_weight() -> None:
    model, calib = OutlierNet().eval(), pairs()
    x, t = calib.x[:16], calib.t[:16]
    amax = torch.zeros(16)  # the reference scales from fc's inputs over all calibration pairs

    def record(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        amax.copy_(torch.maximum(amax, args[0].abs().amax((0, 1, 2))))

    hook = model.fc.register_forward_pre_hook(record)
    with torch.no_grad():
        model(calib.x, calib.t)
    hook.remove()
    smoothed = model.fc.weight.detach() * smoothing_scales(amax, model.fc.weight, 0.5)
    q = diffquant.quantize(model, calib, weight_bits=4, simulate=True, smooth_alpha=0.5, lowrank_rank=4, **SETTINGS)
    branch = q.fc.lowrank
    best, _ = truncated_svd(smoothed, 4)
    torch.testing.assert_close((branch.up @ branch.down).double(), best, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(q.fc.module.weight + branch.up @ branch.down, smoothed, rtol=1e-4, atol=1e-4)
    q.apply(tq.disable_fake_quant)  # quantizers off: smoothing, split and branch together are the float model
    with torch.no_grad():
        torch.testing.assert_close(q(x, t), model(x, t), rtol=1e-4, atol=1e-4)


def test_int8_keeps_the_branch_beside_int8_kernels_and_survives_save_and_load(tmp_path) -> None:
    model, calib = OutlierNet().eval(), pairs()
    x, t = calib.x[:16], calib.t[:16]
    q = diffquant.quantize(model, calib, lowrank_rank=8, backend="fbgemm", **SETTINGS)  # W8A8 (7-bit where AVX2 saturates)
    fake = diffquant.quantize(model, calib, lowrank_rank=8, backend="fbgemm", simulate=True, **SETTINGS)
    assert q.diffquant_recipe["execution"] == "int8"
    eager = q.eager
    assert isinstance(eager.fc.module, nnq.Linear) and isinstance(eager.conv.module, nnq.Conv2d)
    assert [b.layer for b in eager.modules() if isinstance(b, LowRankBranch)] == ["fc", "conv"]
    assert eager.fc.lowrank.down.dtype == torch.float32
    with torch.no_grad():
        out = q(x, t)
        assert relative_error(out, fake(x, t)) < 0.01  # measured 0.0 (AVX512-VNNI, w8a8): the same grids
        assert relative_error(out, model(x, t)) < 0.02  # measured 0.013 (0.063 without the branch)
        loaded = diffquant.load(diffquant.save(q, tmp_path / "q.pt"))
        assert torch.equal(loaded(x, t), out)
    assert torch.equal(loaded.eager.conv.lowrank.up, eager.conv.lowrank.up)


def test_qat_trains_the_branches_with_the_residual() -> None:
    model, calib = OutlierNet().eval(), pairs()
    x, t = calib.x[:16], calib.t[:16]
    qat = {"data_free": True, "steps": 5, "lr": 1e-5, "batch_size": 16, "freeze_observer_step": 0}
    errors = {}
    for rank in (0, 4):
        q = diffquant.quantize(model, calib, method="qat", weight_bits=4, lowrank_rank=rank, qat=qat, **SETTINGS)
        with torch.no_grad():
            errors[rank] = relative_error(q(x, t), model(x, t))
    up, _, _ = low_rank_split(model.fc.weight, 4)
    assert 0 < (q.fc.lowrank.up - up).abs().max() < 1e-3  # trained, from the SVD start
    assert errors[4] < 0.5 * errors[0]  # measured: 0.43 without, 0.064 with


def test_the_cost_counts_branch_parameters_and_macs() -> None:
    model, calib = OutlierNet().eval(), pairs()
    example = (calib.x[:1], calib.t[:1])
    q = diffquant.quantize(model, calib, weight_bits=4, simulate=True, lowrank_rank=4, **SETTINGS)
    cost = branch_cost(q, model, *example)
    assert cost is not None and branch_cost(model, model, *example) is None
    assert cost.params == 4 * (64 + 16) + 4 * (32 + 64 * 9)
    assert cost.bytes == 2 * cost.params
    assert cost.param_fraction == pytest.approx(cost.params / sum(p.numel() for p in model.parameters()))
    # fc: 8x8 positions x r(in + out); conv (stride 2): 4x4 positions x r(in·9 + out); the whole forward by hand
    fc, conv = 64 * 4 * (16 + 64), 16 * 4 * (64 * 9 + 32)
    total = 64 * 16 * 9 + 64 * 16 * 64 + 16 * 32 * 64 * 9 + 16 * 32
    assert cost.mac_fraction == pytest.approx((fc + conv) / total)
    assert "low-rank branches" in cost.summary().lower() and "16-bit" in cost.summary()


def test_a_negative_rank_is_refused() -> None:
    with pytest.raises(DiffquantError, match=r"^quant\.lowrank_rank=-1 is out of range; allowed: >= 0$"):
        diffquant.quantize(OutlierNet().eval(), pairs(), lowrank_rank=-1)


def test_a_rank_above_a_layers_rank_names_the_layer() -> None:
    message = r"^quant\.lowrank_rank=17 is more than layer fc allows \(min\(out 64, in 16\) = 16\); allowed: 0\.\.16"
    with pytest.raises(DiffquantError, match=message):
        diffquant.quantize(OutlierNet().eval(), pairs(), lowrank_rank=17, **SETTINGS)
    q = diffquant.quantize(OutlierNet().eval(), pairs(), lowrank_rank=17, skip=["fc"], simulate=True, **SETTINGS)
    assert q.conv.lowrank.rank == 17 and not isinstance(q.fc, LowRankWrapper)
