"""The machine record (CPU model, int8-relevant ISA flags) and thread pinning of range-deciding stages."""

from __future__ import annotations

from pathlib import Path

import torch

from diffquant.models.unet import UNet
from diffquant.quant.engine import set_engine
from diffquant.quant.inspect import activation_ranges
from diffquant.quant.machine import cpu_info, pinned_threads
from diffquant.quant.plan import QuantPlan
from diffquant.quant.preparation import calibrate, prepare_fake_quant
from helpers import calibration_context, machine_spec

ZEN3 = """processor	: 0
vendor_id	: AuthenticAMD
model name	: AMD EPYC 7B13
flags		: fpu sse2 avx avx2 fma bmi2
"""
ZEN5 = ZEN3.replace("7B13", "9B45").replace("bmi2", "bmi2 avx512f avx512bw avx512_vnni avx512_bf16")


def test_cpu_info_reads_the_isa_class(tmp_path: Path) -> None:
    (tmp_path / "zen3").write_text(ZEN3)
    (tmp_path / "zen5").write_text(ZEN5)
    zen3, zen5 = cpu_info(tmp_path / "zen3"), cpu_info(tmp_path / "zen5")
    assert (zen3.model, zen3.isa, zen3.isa_class, zen3.has_vnni) == ("AMD EPYC 7B13", ("avx2", "fma"), "avx2", False)
    assert (zen5.isa_class, zen5.has_vnni) == ("avx512_vnni", True)
    assert zen5.as_dict()["isa"] == ["avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16"]
    assert "AMD EPYC 9B45" in zen5.describe() and "avx512_vnni class" in zen5.describe()
    assert cpu_info(tmp_path / "missing").model  # no /proc/cpuinfo: the platform's name or "unknown"


def test_pinned_threads_restores_the_count() -> None:
    before = torch.get_num_threads()
    with pinned_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_calibrated_ranges_do_not_depend_on_the_thread_count() -> None:
    """MNIST-sized maps (28x28, 32 channels) at 16 threads split SiLU into chunks with scalar tails."""
    set_engine("fbgemm")
    torch.manual_seed(0)
    model = UNet(base_channels=32, channel_mults=(1, 2), image_size=28, groups=8).eval()
    gen = torch.Generator().manual_seed(1)
    data = (torch.randn(16, 1, 28, 28, generator=gen), torch.randint(0, 1000, (16,), generator=gen))
    ranges = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2, 16):
            torch.set_num_threads(threads)
            qmodel, _, _ = prepare_fake_quant(model, QuantPlan(machine_spec(observer="histogram")), qat=False)
            calibrate(qmodel, calibration_context(*data))
            ranges.append(activation_ranges(qmodel))
    finally:
        torch.set_num_threads(before)
    assert ranges[0] == ranges[1] == ranges[2] and len(ranges[0]) > 20
