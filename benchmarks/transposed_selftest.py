"""Which ConvTranspose2d geometries each int8 engine computes correctly on this machine (quant/transpose.py's self-test).

Prints one row per geometry: the self-test's verdict per engine and, as a check of the self-test, the
relative error of torch.ao's own eager int8 ConvTranspose2d (prepare / convert, per-tensor weights)
against the float layer. Usage: python benchmarks/transposed_selftest.py
"""

from __future__ import annotations

import platform
import subprocess

import torch
from torch import nn
from torch.ao import quantization as tq

from diffquant.quant.engine import resolve_int8_numerics, supported_engines
from diffquant.quant.transpose import transposed_int8_is_exact

GEOMETRIES = [(2, 2, 0), (3, 1, 1), (3, 2, 1), (4, 2, 1), (2, 1, 0), (1, 1, 0)]  # kernel, stride, padding


def torch_ao_error(engine: str, kernel: int, stride: int, padding: int) -> float:
    """Relative error of torch.ao's int8 ConvTranspose2d (16 -> 8 channels) against float, on [0, 1) inputs."""
    torch.backends.quantized.engine = engine
    torch.manual_seed(0)
    model = nn.Sequential(tq.QuantStub(), nn.ConvTranspose2d(16, 8, kernel, stride=stride, padding=padding), tq.DeQuantStub())
    model.eval().qconfig = tq.QConfig(
        activation=tq.MinMaxObserver.with_args(dtype=torch.quint8),
        weight=tq.MinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric, quant_min=-64, quant_max=63),
    )
    x = torch.rand(2, 16, 5, 5)
    ref = model(x)
    tq.prepare(model, inplace=True)
    model(x)
    tq.convert(model, inplace=True)
    return float((model(x) - ref).norm() / ref.norm())


def main() -> None:
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next(
        (line.split(":", 1)[1].strip() for line in cpu.splitlines() if line.startswith("Model name")), platform.processor()
    )
    flags = next((line for line in cpu.splitlines() if line.startswith("Flags")), "")
    isa = "AVX-512 VNNI" if "avx512_vnni" in flags else "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "?"
    print(f"CPU: {model} ({isa}); torch {torch.__version__}")
    engines = [e for e in ("fbgemm", "x86", "qnnpack") if e in supported_engines()]
    print("| kernel, stride, padding | " + " | ".join(f"{e}: self-test / torch.ao rel. error" for e in engines) + " |")
    print("|---" * (len(engines) + 1) + "|")
    for kernel, stride, padding in GEOMETRIES:
        layer = nn.ConvTranspose2d(16, 8, kernel, stride=stride, padding=padding)
        cells = []
        for engine in engines:
            grid = resolve_int8_numerics(engine, "auto").scheme
            exact = transposed_int8_is_exact(engine, layer, (grid.weight_qmin, grid.weight_qmax), symmetric=False)
            cells.append(f"{'pass' if exact else 'FAIL'} / {torch_ao_error(engine, kernel, stride, padding):.4f}")
        print(f"| {kernel}, {stride}, {padding} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
