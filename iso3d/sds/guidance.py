"""Multi-view score distillation by x0 reconstruction (MVDream's ``recon_loss``, used by Isotropic3D).

For rendered views ``z`` (latents or pixels in the UNet's space) at a timestep ``t``:

.. math::
    x_t = \\sqrt{\\bar α_t} z + \\sqrt{1-\\bar α_t} ε,\\qquad
    \\hat ε = ε_u + s(ε_c − ε_u),\\qquad
    \\hat x_0 = (x_t − \\sqrt{1-\\bar α_t}\\,\\hat ε)/\\sqrt{\\bar α_t}

then ``x̂0`` is std-rescaled toward the un-guided ``x̂0_c`` (per object over all its views, weight
``r``) and the loss is ``0.5·Σ (z − sg(x̂0))² / #frames``. Its gradient with respect to ``z`` is
``z − x̂0``, which the renderer back-propagates into the NeRF.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from iso3d.models.guidance import classifier_free_guidance

__all__ = ["SDSConfig", "TimestepSchedule", "x0_reconstruction_loss"]


@dataclass(frozen=True)
class TimestepSchedule:
    """One timestep per batch, drawn from a range annealed linearly (DESIGN.md §2)."""

    min_start: float = 0.98
    min_end: float = 0.02
    max_start: float = 0.98
    max_end: float = 0.50
    anneal_steps: int = 8000
    num_train_timesteps: int = 1000

    def range_at(self, step: int) -> tuple[float, float]:
        f = min(max(step / self.anneal_steps, 0.0), 1.0) if self.anneal_steps > 0 else 1.0
        return (self.min_start + f * (self.min_end - self.min_start), self.max_start + f * (self.max_end - self.max_start))

    def sample(self, step: int, generator: torch.Generator | None = None) -> int:
        lo, hi = self.range_at(step)
        u = torch.rand((), generator=generator).item()
        t = int((lo + u * (hi - lo)) * self.num_train_timesteps)
        return min(max(t, 1), self.num_train_timesteps - 1)


@dataclass(frozen=True)
class SDSConfig:
    guidance_scale: float = 10.0
    recon_std_rescale: float = 0.5
    timesteps: TimestepSchedule = TimestepSchedule()


def x0_reconstruction_loss(
    z: torch.Tensor,  # [B·V, C, h, w] rendered views in the UNet's space (differentiable)
    x_t: torch.Tensor,  # [B·V, C, h, w] the noised views
    alpha_bar: torch.Tensor | float,  # ᾱ_t
    eps_cond: torch.Tensor,  # [B·V, C, h, w]
    eps_uncond: torch.Tensor,  # [B·V, C, h, w]
    *,
    n_views: int,
    guidance_scale: float,
    recon_std_rescale: float,
) -> torch.Tensor:
    """The loss of the module docstring, given the UNet's two predictions."""
    if not z.shape == x_t.shape == eps_cond.shape == eps_uncond.shape:
        raise ValueError(f"z, x_t, eps_cond and eps_uncond must share a shape, got {[tuple(a.shape) for a in (z, x_t, eps_cond, eps_uncond)]}")
    if z.shape[0] % n_views:
        raise ValueError(f"z has {z.shape[0]} frames, not a multiple of n_views={n_views}")
    a = torch.as_tensor(alpha_bar, dtype=torch.float32, device=z.device)
    with torch.no_grad():
        x_t, eps_c, eps_u = x_t.float(), eps_cond.float(), eps_uncond.float()
        eps = classifier_free_guidance(eps_c, eps_u, guidance_scale)
        x0 = (x_t - (1 - a).sqrt() * eps) / a.sqrt()
        if recon_std_rescale > 0:
            x0_c = (x_t - (1 - a).sqrt() * eps_c) / a.sqrt()
            per_object = lambda x: x.reshape(-1, n_views * x[0].numel())  # noqa: E731
            factor = (per_object(x0_c).std(dim=1) + 1e-8) / (per_object(x0).std(dim=1) + 1e-8)
            adjusted = x0 * factor.repeat_interleave(n_views).view(-1, 1, 1, 1)
            x0 = recon_std_rescale * adjusted + (1 - recon_std_rescale) * x0
    return 0.5 * ((z.float() - x0) ** 2).sum() / z.shape[0]
