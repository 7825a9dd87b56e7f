"""What the pipelines share: the model they hold, its device and dtype, and the progress bar's options."""

from __future__ import annotations

import torch

from iso3d.models.bundle import MultiViewDiffusion

__all__ = ["ModelPipeline"]


class ModelPipeline:
    """Holds a :class:`MultiViewDiffusion` (in eval mode) for a diffusers-style pipeline."""

    def __init__(self, model: MultiViewDiffusion):
        if not isinstance(model, MultiViewDiffusion):
            raise TypeError(f"model must be a MultiViewDiffusion, got {type(model).__name__}")
        self.model = model.eval()
        self._progress: dict = {}

    def set_progress_bar_config(self, **kwargs) -> None:
        """tqdm options for every call's progress bar (``disable=True`` hides it)."""
        self._progress = dict(kwargs)

    @property
    def device(self) -> torch.device:
        return next(self.model.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The UNet's dtype."""
        return next(self.model.unet.parameters()).dtype

    def to(self, device=None, dtype: torch.dtype | None = None):
        """Move and/or cast the model (in place); returns the pipeline."""
        self.model.to(device=device, dtype=dtype)
        return self
