"""DeferredFakeQuantize and the per-timestep tables derive (scale, zero point) when used, with torch.ao's numbers."""

from __future__ import annotations

import pytest
import torch
from torch.ao.quantization import FakeQuantize
from torch.ao.quantization.observer import HistogramObserver, MinMaxObserver

from diffquant.quant.observers import DeferredFakeQuantize
from diffquant.quant.timestep_scales import StepClock, TimestepFakeQuantize

KW = {"quant_min": 0, "quant_max": 15, "dtype": torch.quint8, "qscheme": torch.per_tensor_affine}


def batches(n: int = 6) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(4, 8, 5, generator=gen) * (1 + i) + i * 0.3 for i in range(n)]


def count_qparams(module: torch.nn.Module, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls = [0]
    inner = module.activation_post_process.calculate_qparams

    def counted() -> tuple[torch.Tensor, torch.Tensor]:
        calls[0] += 1
        return inner()

    monkeypatch.setattr(module.activation_post_process, "calculate_qparams", counted)
    return calls


@pytest.mark.parametrize("observer", [HistogramObserver, MinMaxObserver])
def test_calibration_reads_the_observer_once_and_ends_with_torch_aos_qparams(observer, monkeypatch) -> None:
    ref, lazy = FakeQuantize(observer=observer, **KW), DeferredFakeQuantize(observer=observer, **KW)
    calls = count_qparams(lazy, monkeypatch)
    for fq in (ref, lazy):
        fq.disable_fake_quant()
        for x in batches():
            torch.testing.assert_close(fq(x), x, rtol=0, atol=0)  # calibration: values pass unchanged
    assert calls[0] == 0  # nothing derived while only observing
    lazy.disable_observer()
    lazy.enable_fake_quant()
    assert calls[0] == 1
    torch.testing.assert_close(lazy.scale, ref.scale, rtol=0, atol=0)
    torch.testing.assert_close(lazy.zero_point, ref.zero_point, rtol=0, atol=0)
    ref.disable_observer()
    ref.enable_fake_quant()
    x = batches(7)[-1]
    torch.testing.assert_close(lazy(x), ref(x), rtol=0, atol=0)


def test_observing_while_fake_quantizing_matches_torch_ao_call_for_call() -> None:
    ref, lazy = FakeQuantize(observer=HistogramObserver, **KW), DeferredFakeQuantize(observer=HistogramObserver, **KW)
    for x in batches():  # QAT with observers on: every call uses the ranges including its own batch
        torch.testing.assert_close(lazy(x), ref(x), rtol=0, atol=0)
    assert float((ref(x) - x).abs().max()) > 0  # the comparison is of quantized values


def test_a_state_dict_taken_mid_calibration_holds_the_current_qparams() -> None:
    ref, lazy = FakeQuantize(observer=MinMaxObserver, **KW), DeferredFakeQuantize(observer=MinMaxObserver, **KW)
    for fq in (ref, lazy):
        fq.disable_fake_quant()
        for x in batches(3):
            fq(x)
    state = lazy.state_dict()
    torch.testing.assert_close(state["scale"], ref.scale, rtol=0, atol=0)
    assert float(state["scale"]) != 1.0  # not the initial value


def test_timestep_table_rows_are_derived_once_per_group_and_equal_each_groups_observer() -> None:
    clock = StepClock(groups=2, num_timesteps=10)
    fq = TimestepFakeQuantize(MinMaxObserver.with_args(**KW)(), 0, 15, clock)
    fq.disable_fake_quant()
    data = batches(4)
    for i, x in enumerate(data):  # groups 0, 1, 0, 1
        clock.set(torch.full((x.shape[0],), 2 if i % 2 == 0 else 7))
        fq(x)
    assert fq.stale == {0, 1}
    scale, zero_point = fq.table()
    assert not fq.stale
    for g in (0, 1):
        ref = MinMaxObserver(**KW)
        for x in data[g::2]:
            ref(x)
        want_scale, want_zp = ref.calculate_qparams()
        torch.testing.assert_close(scale[g], want_scale.reshape(()), rtol=0, atol=0)
        assert int(zero_point[g]) == int(want_zp)
