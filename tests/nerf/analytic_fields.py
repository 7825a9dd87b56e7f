"""Analytic fields with known renders, for renderer tests (same interface as ImplicitVolume)."""

import torch
import torch.nn.functional as F

from iso3d.nerf import FieldOutput


class UniformSphere(torch.nn.Module):
    """Constant density ``sigma`` inside radius ``r`` (centre ``c``), constant colour."""

    def __init__(self, radius=0.5, sigma=5.0, color=(0.9, 0.2, 0.1), center=(0.0, 0.0, 0.0)):
        super().__init__()
        self.radius, self.sigma = radius, sigma
        self.register_buffer("color", torch.tensor(color))
        self.register_buffer("center", torch.tensor(center))
        self.dummy = torch.nn.Parameter(torch.zeros(()))  # renderer looks up the device via parameters

    def density(self, x):
        return torch.where((x - self.center).norm(dim=-1) < self.radius, self.sigma, 0.0) + 0 * self.dummy

    def forward(self, x, with_normals=False):
        normal = F.normalize(x - self.center, dim=-1) if with_normals else None
        return FieldOutput(self.density(x), self.color.expand(x.shape[0], 3), normal)


class GaussianBlob(torch.nn.Module):
    """Smooth density ``a·exp(−‖x‖²/2s²)`` with albedo varying along x."""

    def __init__(self, amplitude=20.0, std=0.25):
        super().__init__()
        self.amplitude, self.std = amplitude, std
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def density(self, x):
        return self.amplitude * torch.exp(-(x**2).sum(-1) / (2 * self.std**2)) + 0 * self.dummy

    def albedo(self, x):
        return torch.stack([0.5 + 0.4 * torch.tanh(3 * x[:, 0]), torch.full_like(x[:, 0], 0.3), 0.5 - 0.4 * torch.tanh(3 * x[:, 0])], -1)

    def forward(self, x, with_normals=False):
        return FieldOutput(self.density(x), self.albedo(x), F.normalize(x, dim=-1) if with_normals else None)


class TwoSpheres(torch.nn.Module):
    """A red and a blue ball (the synthetic fitting target)."""

    def __init__(self):
        super().__init__()
        self.a = UniformSphere(0.35, 30.0, (0.9, 0.15, 0.1), (-0.3, 0.0, 0.0))
        self.b = UniformSphere(0.3, 30.0, (0.1, 0.3, 0.9), (0.35, 0.1, 0.1))
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def density(self, x):
        return self.a.density(x) + self.b.density(x)

    def forward(self, x, with_normals=False):
        da, db = self.a.density(x), self.b.density(x)
        total = (da + db).clamp(min=1e-8)[:, None]
        albedo = (da[:, None] * self.a.color + db[:, None] * self.b.color) / total
        albedo = torch.where((da + db)[:, None] > 0, albedo, torch.ones_like(albedo))
        return FieldOutput(da + db, albedo, None)
