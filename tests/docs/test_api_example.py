"""docs/api.md's first example, run verbatim: int8 modules on every eager engine, SQNR against float, a fresh-process load."""

from __future__ import annotations

import os
import re
import runpy
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.ao.nn import quantized as nnq

import diffquant
from diffquant.metrics.quality import sqnr_db
from diffquant.quant.api import quant_settings
from diffquant.quant.engine import resolve_int8_numerics, supported_engines
from diffquant.quant.machine import cpu_info
from diffquant.quant.transpose import transposed_int8_is_exact

DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"
INT8 = {nn.Conv2d: (nnq.Conv2d,), nn.Linear: (nnq.Linear,), nn.ConvTranspose2d: (nnq.ConvTranspose2d,)}


def first_block() -> str:
    return re.search(r"```python\n(.*?)```", DOC.read_text(), re.S).group(1)


@pytest.fixture(scope="module")
def example(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("example")
    script = folder / "example.py"
    script.write_text(first_block())
    cwd = Path.cwd()
    try:
        os.chdir(folder)
        namespace = runpy.run_path(str(script), run_name="__main__")  # the block as a user runs it
    finally:
        os.chdir(cwd)
    namespace["folder"] = folder
    return namespace


def int8_module(qmodel: nn.Module, name: str) -> nn.Module:
    """The converted module at `name` (inside the quant -> layer -> dequant wrapper of quant/wrap.py)."""
    eager = getattr(qmodel, "eager", qmodel)
    module = eager.get_submodule(name)
    return getattr(module, "module", module)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["fbgemm", "x86", "qnnpack"])
def test_every_layer_of_the_example_runs_int8_with_the_sqnr_of_its_machine(example, engine) -> None:
    if engine not in supported_engines():
        pytest.skip(f"engine {engine} is not built into this torch")
    model, pairs = example["model"], example["pairs"]
    qmodel = diffquant.quantize(model, pairs, method="ptq", backend=engine, keep_float=[])
    recipe = qmodel.diffquant_recipe
    assert recipe["execution"] == "int8"
    spec = quant_settings("ptq", engine, {}).spec(resolve_int8_numerics(engine, "auto").scheme)
    weight_range, symmetric = spec.weight_range(), spec.symmetric  # the grid the strategy's self-test ran on
    for name, layer in model.named_modules():
        if type(layer) not in INT8:
            continue
        if isinstance(layer, nn.ConvTranspose2d) and not transposed_int8_is_exact(engine, layer, weight_range, symmetric):
            assert name in recipe["float_layers"] and "self-test" in recipe["float_layers"][name]  # this CPU's kernel is wrong
            continue
        assert isinstance(int8_module(qmodel, name), INT8[type(layer)]), f"{name} on {engine}"
    inputs = pairs.cycled(64)
    with torch.no_grad():
        quality = sqnr_db(model(*inputs), qmodel(*inputs))
    floor = 25.0 if engine == "qnnpack" or cpu_info().has_vnni else 20.0
    assert quality >= floor, f"SQNR {quality:.1f} dB on {engine}"


@pytest.mark.slow
def test_a_fresh_process_without_the_class_loads_the_examples_file_bit_for_bit(example) -> None:
    folder, qmodel, pairs = example["folder"], example["qmodel"], example["pairs"]
    x, t = pairs.cycled(64)  # quantize traced a graph at its warm-up batch of 64; the example's save kept it
    with torch.no_grad():
        expected = qmodel(x, t)
        assert torch.equal(example["again"](x, t), expected)  # its in-process load
    torch.save({"x": x, "t": t, "expected": expected}, folder / "probe.pt")
    code = textwrap.dedent(
        f"""
        import torch, diffquant
        probe = torch.load({str(folder / "probe.pt")!r})
        model = diffquant.load({str(folder / "quantized.pt")!r})
        assert type(model).__name__ == "FrozenGraphs", type(model)  # TinyUNet lived in the example's __main__
        with torch.no_grad():
            assert torch.equal(model(probe["x"], probe["t"]), probe["expected"])
        print("identical")
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=folder, timeout=300)
    assert proc.returncode == 0 and "identical" in proc.stdout, proc.stderr[-2000:]
