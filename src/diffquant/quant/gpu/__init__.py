"""GPU low-bit backends: fp8 / int8 / int4 weight-only kernels in a bf16 model (backend=cuda_fp8, cuda_int8, cuda_int4wo)."""
