"""diffquant: quantize diffusion models (PTQ / QAT on torch.ao int8 engines) with Hydra-configured runs."""

__version__ = "0.1.0"
