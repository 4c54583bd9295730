"""The GPU backends' CPU-runnable paths: config, layer selection, the strategy, save / load, the pipeline, bad input.

A GPU backend refuses to run without CUDA; these tests stand the device check in with the CPU
(`cpu_stands_in`), where PyTorch has the same fp8 / int8 / int4 GEMMs, and compile nothing.
The GPU's own numerics and speed: tests/quant/gpu/test_gpu_cuda.py (skipped without CUDA).
"""

from __future__ import annotations

import json

import pytest
import torch

import diffquant
from diffquant.config import to_config
from diffquant.errors import DiffquantError
from diffquant.metrics.quality import relative_error
from diffquant.models.dit import DiT
from diffquant.pipeline import run_experiment
from diffquant.quant import methods
from diffquant.quant.calibration import CalibrationData
from diffquant.quant.config import BackendConfig
from diffquant.quant.gpu import runtime, strategy
from diffquant.quant.gpu.convert import CONV_REASON, LowBitSpec, plan_layers
from diffquant.quant.gpu.formats import Fp8Linear, Int4WeightOnlyLinear, Int8Linear
from diffquant.quant.gpu.runtime import LowBitModel, repeated_blocks, require_gpu
from helpers import random_pairs

FORMATS = {"cuda_fp8": Fp8Linear, "cuda_int8": Int8Linear, "cuda_int4wo": Int4WeightOnlyLinear}


@pytest.fixture
def cpu_stands_in(monkeypatch: pytest.MonkeyPatch) -> None:
    """The device check answers `cpu`: everything else of a GPU backend runs as on the GPU."""
    for module in (methods, strategy):
        monkeypatch.setattr(module, "require_gpu", lambda engine, device: torch.device("cpu"))


def tiny_dit() -> DiT:
    torch.manual_seed(0)
    model = DiT(in_channels=1, image_size=8, patch_size=2, hidden_size=32, depth=2, num_heads=2).eval()
    with torch.no_grad():  # DiT's adaLN-Zero init outputs zeros: give every weight a value
        for p in model.parameters():
            p.normal_(0, 0.1)
    return model


def pairs(n: int = 32) -> CalibrationData:
    return random_pairs(n, (1, 8, 8), seed=2)


def test_plan_converts_the_linears_the_kernel_takes_and_says_why_for_the_rest() -> None:
    plan = plan_layers(tiny_dit(), LowBitSpec("fp8"), skip=["blocks.1.mlp.*"], kept_roles=["time_embed.0"])
    assert "blocks.0.attn.qkv" in plan.converted and "blocks.0.adaLN_modulation.1" in plan.converted
    assert plan.kept["patch_embed"] == CONV_REASON
    assert "divisible by 16" in plan.kept["final.linear"] and "32 -> 4" in plan.kept["final.linear"]
    assert plan.kept["blocks.1.mlp.0"] == "quant.skip" and plan.kept["time_embed.0"].startswith("quant.keep_float")
    assert not set(plan.converted) & set(plan.kept)


def test_int4_group_size_that_does_not_divide_a_layer_is_refused_by_name() -> None:
    with pytest.raises(DiffquantError, match=r"backend\.group_size=64 does not divide the 32 input features of layer "):
        plan_layers(tiny_dit(), LowBitSpec("int4wo", group_size=64))
    assert plan_layers(tiny_dit(), LowBitSpec("int4wo", group_size=32)).converted  # 32 divides every width


@pytest.mark.parametrize("engine", list(FORMATS))
def test_quantize_converts_runs_saves_and_loads_bit_for_bit(engine: str, cpu_stands_in: None, tmp_path) -> None:
    model, calib = tiny_dit(), pairs()
    settings = {"group_size": 32} if engine == "cuda_int4wo" else {}
    q = diffquant.quantize(model, calib, backend=engine, device="cpu", backend_settings={"compile": False, **settings})
    assert isinstance(q, LowBitModel) and q.execution == runtime.GPU_ENGINES[engine] + "_gpu"
    kinds = {type(m) for m in q.modules()}
    assert FORMATS[engine] in kinds and torch.nn.Linear in kinds  # the final 4-wide Linear stays bf16
    x, t = calib.x[:8], calib.t[:8]
    with torch.no_grad():
        ref, out = model(x, t), q(x, t)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert relative_error(out, ref) < 0.1
    recipe = q.diffquant_recipe
    assert recipe["float_layers"]["patch_embed"] == CONV_REASON and "blocks.0.attn.qkv" in recipe["wrapped_layers"]

    path = diffquant.save(q, tmp_path / "q.pt")
    loaded = diffquant.load(path)
    with torch.no_grad():
        assert torch.equal(loaded(x, t), out)
    assert loaded.diffquant_recipe["execution"] == q.execution


def test_fp8_weights_rowwise_track_each_output_row(cpu_stands_in: None) -> None:
    model, calib = tiny_dit(), pairs()
    with torch.no_grad():
        # fp8 is a float format: a shared scale costs the other rows precision only once it pushes them into
        # e4m3's subnormals (below 2^-6), i.e. for rows some 10^4-10^5 times smaller than the largest
        model.blocks[0].attn.qkv.weight[0].mul_(1e5)
    errors = {}
    for scaling in ("tensorwise", "rowwise"):
        q = diffquant.quantize(
            model, calib, backend="cuda_fp8", device="cpu", backend_settings={"compile": False, "weight_scaling": scaling}
        )
        layer = q.model.blocks[0].attn.qkv
        w = layer.weight.float() * (layer.weight_scale.reshape(-1, 1) if scaling == "rowwise" else layer.weight_scale)
        errors[scaling] = relative_error(w[1:], model.blocks[0].attn.qkv.weight.detach()[1:])
    assert errors["rowwise"] < 0.5 * errors["tensorwise"]


def test_gpu_backend_settings_reject_what_the_kernels_cannot_do(cpu_stands_in: None) -> None:
    model, calib = tiny_dit(), pairs()
    with pytest.raises(DiffquantError, match=r"backend=cuda_fp8 runs fp8 with quant\.weight_bits=8 quant\.act_bits=8; got"):
        diffquant.quantize(model, calib, backend="cuda_fp8", device="cpu", weight_bits=4)
    with pytest.raises(DiffquantError, match=r"backend=cuda_int8 does not support quant\.dynamic_input"):
        diffquant.quantize(model, calib, backend="cuda_int8", device="cpu", dynamic_input=True)
    with pytest.raises(DiffquantError, match=r"backend=cuda_int8 does not support quant\.lowrank_rank; use backend=fbgemm"):
        diffquant.quantize(model, calib, backend="cuda_int8", device="cpu", lowrank_rank=4)
    with pytest.raises(DiffquantError, match=r"backend_settings has no key 'group'; did you mean 'group_size'\?"):
        diffquant.quantize(model, calib, backend="cuda_int4wo", device="cpu", backend_settings={"group": 64})
    with pytest.raises(DiffquantError, match=r"backend\.group_size=48 is not allowed; allowed: 32, 64, 128, 256"):
        BackendConfig(engine="cuda_int4wo", group_size=48)


def test_without_cuda_or_fp8_tensor_cores_the_backend_says_what_it_needs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DiffquantError, match=r"^backend=cuda_fp8 needs a CUDA GPU; this machine has none"):
        require_gpu("cuda_fp8", "cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(DiffquantError, match=r"backend=cuda_int8 runs on the GPU: set device=cuda \(got device=cpu\)"):
        require_gpu("cuda_int8", "cpu")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100")
    with pytest.raises(DiffquantError, match=r"compute capability 8\.9 or newer .* NVIDIA A100 is 8\.0: use backend=cuda_int8"):
        require_gpu("cuda_fp8", "cuda")
    assert require_gpu("cuda_int8", "cuda:1") == torch.device("cuda:1")  # int8 runs on an A100


def test_cpu_backends_keep_their_cache_keys() -> None:
    assert set(BackendConfig().key()) == {"engine", "int8_scheme", "torchscript"}
    assert set(BackendConfig(engine="cuda_fp8").key()) >= {"weight_scaling", "group_size", "compile", "compile_scope"}
    with pytest.raises(DiffquantError, match=r"backend\.compile_scope='layers' is not allowed; allowed: model, blocks"):
        BackendConfig(engine="cuda_fp8", compile_scope="layers")


def test_regional_compilation_finds_the_repeated_blocks() -> None:
    model = tiny_dit()
    assert repeated_blocks(model) == list(model.blocks)  # the two DiT blocks; embeddings and the final layer are glue


@pytest.mark.slow
@pytest.mark.heavy  # an in-process DiT run (about 15 s)
def test_a_dit_run_on_a_gpu_backend_reports_its_execution_and_the_bf16_baseline(
    compose_cfg, cpu_stands_in: None, tmp_path
) -> None:
    overrides = ("model=dit_s", "model.hidden_size=32", "model.depth=1", "model.num_heads=2", "backend.compile=false")
    results = run_experiment(to_config(compose_cfg("experiment=tiny", "backend=cuda_fp8", *overrides)))
    on_disk = json.loads((tmp_path / "run" / "results.json").read_text())
    assert on_disk["execution"] == results["execution"] == "fp8_gpu" and on_disk["backend"] == "cuda_fp8"
    assert on_disk["float_layers"]["patch_embed"] == CONV_REASON and "final.linear" in on_disk["float_layers"]
    metrics = results["metrics"]
    assert metrics["perf/sample_s_bf16"] > 0 and metrics["perf/speedup_vs_bf16"] > 0
    assert 0.5 < metrics["model/quantized_mac_fraction"] < 1.0  # the patch embedding and the output stay bf16
    assert metrics["eval/eps_rel_err"] < 0.2
