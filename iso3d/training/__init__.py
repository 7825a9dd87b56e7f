"""Training: contrastive image encoder, stage 1 (CLIP-image conditioning) and stage 2 (EMA)."""

from .trainer import DataConfig, TrainConfig, diffusion_loss, train

__all__ = ["DataConfig", "TrainConfig", "diffusion_loss", "train"]
