"""Score distillation with the multi-view model (Isotropic3D's SDS stage)."""

from .guidance import SDSConfig, TimestepSchedule, x0_reconstruction_loss

__all__ = ["SDSConfig", "TimestepSchedule", "x0_reconstruction_loss"]
