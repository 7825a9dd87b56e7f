"""Classifier-free guidance, shared by the 2D sampler and score distillation."""

from __future__ import annotations

import torch

__all__ = ["classifier_free_guidance"]


def classifier_free_guidance(eps_cond: torch.Tensor, eps_uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """``ε̂ = ε_u + s·(ε_c − ε_u)``: s = 0 is unconditional, s = 1 conditional, s > 1 extrapolates.

    Example:
        >>> classifier_free_guidance(torch.tensor([1.0]), torch.tensor([0.0]), 10.0)
        tensor([10.])
    """
    if eps_cond.shape != eps_uncond.shape:
        raise ValueError(f"eps_cond {tuple(eps_cond.shape)} and eps_uncond {tuple(eps_uncond.shape)} must match")
    return eps_uncond + scale * (eps_cond - eps_uncond)
