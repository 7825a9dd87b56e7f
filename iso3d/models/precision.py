"""The diffusion model's dtype: what a GPU runs well, and the pipelines' default.

The release runs its guidance in half precision (threestudio's ``half_precision_weights``); the GPU
benchmarks time bfloat16 (benchmarks/RESULTS.md). GPUs before Ampere (compute capability < 8) have no
bf16 tensor cores, and iso3d's Triton kernels refuse bf16 there: they get float16. CPUs get float32
(no fast half-precision convolutions). :class:`~iso3d.generation.GenerateConfig`'s ``official`` and
``cpu_tiny`` say the same (``model_dtype``).

    >>> import torch
    >>> default_model_dtype(torch.device("cpu"))
    torch.float32
    >>> supported_model_dtype("bfloat16", torch.device("cpu"))
    'bfloat16'
"""

from __future__ import annotations

import torch

__all__ = ["default_model_dtype", "supported_model_dtype"]


def supported_model_dtype(name: str, device: torch.device) -> str:
    """``name`` (a torch dtype's name), or ``"float16"`` for ``"bfloat16"`` on a GPU before Ampere."""
    if name == "bfloat16" and device.type == "cuda" and torch.cuda.get_device_capability(device)[0] < 8:
        return "float16"
    return name


def default_model_dtype(device: torch.device | str | None) -> torch.dtype:
    """bfloat16 on a GPU (float16 before Ampere), float32 elsewhere (``None``: the CPU)."""
    device = torch.device(device or "cpu")
    return getattr(torch, supported_model_dtype("bfloat16" if device.type == "cuda" else "float32", device))
