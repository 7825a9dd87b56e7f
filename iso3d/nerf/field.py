"""The implicit volume of the official Isotropic3D config: hash grid → density MLP and albedo MLP.

threestudio's ``implicit-volume`` with ``density_bias="blob_magic3d"``: density
``softplus(raw + λ·(1 − ‖x‖/r))`` with ``λ = 10, r = 0.5`` so that optimization starts from a soft
ball in the middle of the ``[−R, R]³`` box; albedo ``sigmoid``; both MLPs 32→64→out without biases.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import nn

from iso3d.kernels.density_gradient import hash_grid_density_with_gradient
from iso3d.kernels.hash_grid import HashGridConfig, hash_grid_encode_with_jacobian
from iso3d.kernels.mlp_head import mlp_head, mlp_head_with_input_grad
from iso3d.kernels.reference import jacobian_transpose_times

from .encoding import HashGridEncoding

__all__ = ["FieldConfig", "FieldOutput", "ImplicitVolume", "finite_difference_normals"]


@dataclass(frozen=True)
class FieldConfig:
    encoding: HashGridConfig = field(default_factory=HashGridConfig)
    hidden_dims: int = 64
    radius: float = 1.0  # AABB [−radius, radius]³, mapped to [0, 1]³ for the encoding
    blob_density: float = 10.0  # λ of the blob density bias
    blob_radius: float = 0.5  # r of the blob density bias
    # Normals −∇σ/‖∇σ‖: central differences (6 extra density evaluations per point), forward
    # differences (3 extra, reusing σ(x); error O(ε) instead of O(ε²)), or analytic (the release's
    # choice: the encoding's Jacobian from the same pass, chained through the MLP in closed form;
    # with the tcnn backend, autograd's double backward instead).
    normal_type: Literal["finite_difference", "forward_difference", "analytic"] = "analytic"
    finite_difference_eps: float = 1e-2
    backend: str = "auto"  # hash-grid backend: auto | tcnn | triton | torch
    # How analytic normals are computed (any hash-grid backend but tcnn): "separate", the grid's Jacobian
    # op, the density head op (iso3d.kernels.mlp_head, on density_head_backend: auto | triton | torch)
    # and a PyTorch contraction; or "fused", the grid, the density MLP and ∂raw/∂x in one op
    # (iso3d.kernels.density_gradient, on the hash grid's backend). The default: its rewrite made the
    # thirteenth session's H100 SDS step 1.26× faster on the blob and 1.10× on the surface at 256²
    # than "separate" with the Triton head, and 1.01–1.04× at 64² (RESULTS.md).
    analytic_normals_impl: Literal["fused", "separate"] = "fused"
    density_head_backend: str = "auto"

    def __post_init__(self):
        if self.analytic_normals_impl not in ("fused", "separate"):
            raise ValueError(f"FieldConfig: analytic_normals_impl must be 'fused' or 'separate', got {self.analytic_normals_impl!r}")
        if self.density_head_backend not in ("auto", "triton", "torch"):
            raise ValueError(f"FieldConfig: density_head_backend must be 'auto', 'triton' or 'torch', got {self.density_head_backend!r}")


@dataclass
class FieldOutput:
    density: torch.Tensor  # [P] non-negative
    albedo: torch.Tensor  # [P, 3] in (0, 1)
    normal: torch.Tensor | None = None  # [P, 3] unit, outward (−∇σ/‖∇σ‖)


def _mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden, bias=False), nn.ReLU(inplace=True), nn.Linear(hidden, n_out, bias=False))


def finite_difference_normals(
    density_fn: Callable[[torch.Tensor], torch.Tensor],  # [P, 3] -> [P]
    x: torch.Tensor,  # [P, 3]
    eps: float,
    sigma_at_x: torch.Tensor | None = None,  # [P]: given, forward differences reuse it
) -> torch.Tensor:  # [P, 3]
    """Outward normals ``−∇σ/‖∇σ‖`` by finite differences; works with every encoding backend.

    Central differences ``(σ(x + εeᵢ) − σ(x − εeᵢ)) / 2ε`` (6 evaluations), or, when ``sigma_at_x``
    is given, forward differences ``(σ(x + εeᵢ) − σ(x)) / ε`` (3 evaluations).

    Example:
        >>> x = torch.tensor([[0.3, 0.0, 0.0]])
        >>> sphere = lambda p: 1.0 - p.norm(dim=-1)  # density falling outward: normals point along x
        >>> n = finite_difference_normals(sphere, x, 1e-3)
        >>> torch.allclose(n, torch.tensor([[1.0, 0.0, 0.0]]))
        True
    """
    offsets = torch.eye(3, device=x.device, dtype=x.dtype) * eps  # [3, 3]
    if sigma_at_x is not None:
        ahead = density_fn((x[:, None] + offsets).reshape(-1, 3)).reshape(-1, 3)
        grad = (ahead - sigma_at_x[:, None]) / eps
    else:
        points = torch.cat([x[:, None] + offsets, x[:, None] - offsets], dim=1).reshape(-1, 3)
        sigma = density_fn(points).reshape(-1, 2, 3)
        grad = (sigma[:, 0] - sigma[:, 1]) / (2 * eps)
    return -F.normalize(grad, dim=-1, eps=1e-12)


class ImplicitVolume(nn.Module):
    """Density + albedo field on ``[−R, R]³``.

    Example:
        >>> vol = ImplicitVolume(FieldConfig(encoding=HashGridConfig(n_levels=4, log2_hashmap_size=12)), seed=0)
        >>> out = vol(torch.zeros(2, 3), with_normals=True)
        >>> out.density.shape, out.albedo.shape, out.normal.shape
        (torch.Size([2]), torch.Size([2, 3]), torch.Size([2, 3]))
    """

    def __init__(self, config: FieldConfig = FieldConfig(), *, seed: int | None = None):
        super().__init__()
        self.config = config
        self.encoding = HashGridEncoding(config.encoding, backend=config.backend, seed=seed)
        n_feat = self.encoding.n_output_dims
        with torch.random.fork_rng(devices=[]):  # a seed makes the MLP init reproducible, globally side-effect free
            if seed is not None:
                torch.manual_seed(seed)
            self.density_mlp = _mlp(n_feat, config.hidden_dims, 1)
            self.albedo_mlp = _mlp(n_feat, config.hidden_dims, 3)

    def _unclamped_unit(self, x: torch.Tensor) -> torch.Tensor:  # [−R, R]³ → [0, 1]³ (before the clamp)
        return (x / self.config.radius) * 0.5 + 0.5

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoding(self._unclamped_unit(x).clamp(0.0, 1.0), check_range=False)

    def density_bias(self, x: torch.Tensor) -> torch.Tensor:  # [P, 3] -> [P]
        return self.config.blob_density * (1 - x.norm(dim=-1) / self.config.blob_radius)

    def density(self, x: torch.Tensor) -> torch.Tensor:  # [P, 3] -> [P]
        # The density head as one op (on density_head_backend; the twin is these modules' own ops): the
        # renderer's pruning evaluates it at every marched sample, ~10 M in a 256² SDS step.
        w1, w2 = self.density_mlp[0].weight, self.density_mlp[2].weight[0]
        raw = mlp_head(self._encode(x), w1, w2, backend=self.config.density_head_backend)
        return F.softplus(raw + self.density_bias(x))

    def _analytic_normals(self, x: torch.Tensor):
        """σ, features and −∇σ/‖∇σ‖ with ``∇σ = σ'(·)·(Jᵀ·∂raw/∂y·∂u/∂x + ∇bias)`` in closed form."""
        unscaled = self._unclamped_unit(x)
        unit, params, grid = unscaled.clamp(0.0, 1.0), self.encoding.params, self.encoding.config
        # The density MLP is Linear → ReLU → Linear without biases: its two weights are the head's.
        w1, w2 = self.density_mlp[0].weight, self.density_mlp[2].weight[0]
        if self.config.analytic_normals_impl == "fused":
            backend = self.encoding.backend if self.encoding.backend in ("triton", "torch") else "auto"
            feats, raw, grad_unit = hash_grid_density_with_gradient(unit, params, grid, w1, w2, backend=backend,
                                                                    check_range=False)
        else:
            feats, jac = hash_grid_encode_with_jacobian(unit, params, grid, backend=self.encoding.backend,
                                                        check_range=False)
            raw, draw_dfeats = mlp_head_with_input_grad(feats, w1, w2, backend=self.config.density_head_backend)
            grad_unit = jacobian_transpose_times(jac, draw_dfeats)
        inside = ((unscaled >= 0) & (unscaled <= 1)).to(x.dtype)  # clamp's derivative, as autograd takes it
        grad_raw = grad_unit * (inside * (0.5 / self.config.radius))
        norm = x.norm(dim=-1, keepdim=True)
        safe_norm = torch.where(norm > 0, norm, torch.ones_like(norm))  # ∇‖x‖ := 0 at 0, as autograd; no 0/0
        grad_bias = -(self.config.blob_density / self.config.blob_radius) * (x / safe_norm)
        pre = raw + self.density_bias(x)
        grad = torch.sigmoid(pre)[:, None] * (grad_raw + grad_bias)  # softplus' = sigmoid
        return F.softplus(pre), feats, -F.normalize(grad, dim=-1, eps=1e-12)

    def _analytic_normals_autograd(self, x: torch.Tensor):
        """The same by autograd (``create_graph`` in training): needs the encoding's double backward."""
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            feats = self._encode(xg)
            density = F.softplus(self.density_mlp(feats).squeeze(-1) + self.density_bias(xg))
            (grad,) = torch.autograd.grad(density.sum(), xg, create_graph=self.training)
        return density, feats, -F.normalize(grad, dim=-1, eps=1e-12)

    def forward(self, x: torch.Tensor, *, with_normals: bool = False) -> FieldOutput:
        if x.dim() != 2 or x.shape[-1] != 3:
            raise ValueError(f"ImplicitVolume: x must have shape [P, 3], got {tuple(x.shape)}")
        normal = None
        if with_normals and self.config.normal_type == "analytic" and self.encoding.backend == "tcnn":
            density, feats, normal = self._analytic_normals_autograd(x)
        elif with_normals and self.config.normal_type == "analytic":
            density, feats, normal = self._analytic_normals(x)
        else:
            feats = self._encode(x)
            density = F.softplus(self.density_mlp(feats).squeeze(-1) + self.density_bias(x))
            if with_normals:
                forward = self.config.normal_type == "forward_difference"
                normal = finite_difference_normals(self.density, x, self.config.finite_difference_eps,
                                                   sigma_at_x=density if forward else None)
        albedo = torch.sigmoid(self.albedo_mlp(feats))
        return FieldOutput(density=density, albedo=albedo, normal=normal)
