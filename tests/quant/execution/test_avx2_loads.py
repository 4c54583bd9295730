"""AVX2 byte loads in Inductor's C++ kernels: the rewritten line, and kernels that use it computing the same."""

from __future__ import annotations

import re

import pytest
import torch
from torch._inductor.codegen import cpp

from diffquant.quant.execution.avx2_loads import byte_load, fast_byte_loads

SLOW = "at::vec::Vectorized<uint8_t>::loadu(in_ptr0 + static_cast<int64_t>(x2 + 96L*x1), static_cast<int64_t>(8))"


def test_an_eight_lane_byte_load_becomes_one_eight_byte_load_blended_into_ones() -> None:
    fast = byte_load(SLOW, torch.uint8, 8)
    assert fast == (
        "at::vec::Vectorized<uint8_t>(_mm256_blend_epi32(_mm256_set1_epi8(1), _mm256_castsi128_si256("
        "_mm_loadl_epi64(reinterpret_cast<const __m128i*>(in_ptr0 + static_cast<int64_t>(x2 + 96L*x1)))), 3))"
    )
    signed = byte_load(SLOW.replace("uint8_t", "int8_t"), torch.int8, 8)
    assert signed.startswith("at::vec::Vectorized<int8_t>(") and "_mm_loadl_epi64" in signed


@pytest.mark.parametrize(
    ("line", "dtype", "lanes"),
    [
        (SLOW.replace("uint8_t", "float"), torch.float32, 8),  # float loads have their fast path
        (SLOW.replace("(8))", "(5))"), torch.uint8, 5),  # a loop's tail: other counts stay
        (SLOW, torch.uint8, 16),  # AVX-512 widths are not this case
    ],
    ids=["float", "tail", "sixteen-lanes"],
)
def test_other_load_lines_are_left_alone(line: str, dtype: torch.dtype, lanes: int) -> None:
    assert byte_load(line, dtype, lanes) == line


def dequantize_normalize_quantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """A uint8 activation dequantized, scaled per channel, SiLU'd and quantized again: the loops the rewrite targets."""
    x = (q.float() - 124.0) * 0.024 * scale
    return torch.clamp(torch.round(torch.nn.functional.silu(x) * 50.0) + 14.0, 0, 255).to(torch.uint8)


@pytest.mark.parametrize("channels", [96, 36], ids=["whole-vectors", "with-tail"])
def test_avx2_kernels_with_the_rewrite_compute_exactly_what_eager_does(channels: int) -> None:
    from torch._inductor.utils import run_and_get_code

    gen = torch.Generator().manual_seed(0)
    q = torch.randint(0, 256, (4, 64, channels), dtype=torch.uint8, generator=gen)
    scale = torch.rand(channels, generator=gen) + 0.5
    torch._dynamo.reset()
    with (
        torch._inductor.config.patch({"cpp.simdlen": 256, "fx_graph_cache": False}),
        fast_byte_loads(),
        torch.no_grad(),
    ):  # simdlen 256: AVX2 code on any x86 CPU
        out, code = run_and_get_code(torch.compile(dequantize_normalize_quantize, dynamic=False), q, scale)
    torch._dynamo.reset()
    source = "\n".join(code)
    assert "_mm_loadl_epi64" in source  # without the rewrite: Vectorized<uint8_t>::loadu(in_ptr0 + ..., 8)
    assert not re.search(r"Vectorized<uint8_t>::loadu\([^;]*static_cast<int64_t>\(8\)\)", source)
    assert torch.equal(out, dequantize_normalize_quantize(q, scale))
    assert cpp.CppVecKernel._get_vec_load_line.__name__ == "_get_vec_load_line"  # restored on exit


def test_the_rewrite_is_on_only_where_inductor_generates_avx2_code_and_keys_the_compile_cache() -> None:
    from torch._inductor import config, cpu_vec_isa

    original = cpp.CppVecKernel._get_vec_load_line
    with config.patch({"cpp.simdlen": 256}), fast_byte_loads():
        assert cpp.CppVecKernel._get_vec_load_line is not original and config.cpp.simdlen == 256
    with config.patch({"cpp.simdlen": None}):
        avx2 = isinstance(cpu_vec_isa.pick_vec_isa(), cpu_vec_isa.VecAVX2)
        with fast_byte_loads():
            patched = cpp.CppVecKernel._get_vec_load_line is not original
            assert patched == avx2 and config.cpp.simdlen == (256 if avx2 else None)  # AVX-512: nothing changes
        assert config.cpp.simdlen is None
    assert cpp.CppVecKernel._get_vec_load_line is original
