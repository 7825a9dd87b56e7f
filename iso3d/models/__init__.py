"""Multi-view diffusion model: UNet with camera embedding and joint (EMA) attention."""

from .attention_processor import MultiViewAttnProcessor, ReferenceMode
from .image_encoder import CLIPImageEncoder, ImageEncoderConfig, preprocess_images
from .unet import MultiViewUNet, MultiViewUNetConfig, ReferenceFrame

__all__ = [
    "CLIPImageEncoder",
    "ImageEncoderConfig",
    "MultiViewAttnProcessor",
    "MultiViewUNet",
    "MultiViewUNetConfig",
    "ReferenceFrame",
    "ReferenceMode",
    "preprocess_images",
]
