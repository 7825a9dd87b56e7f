"""Four consistent views of the object in one image (the 2D preview of the method).

DDIM sampling with classifier-free guidance against the zero image embedding, cameras at a fixed
elevation and azimuths 0/90/180/270 in the bundle's camera convention.

The method's inference sees the input only through its CLIP embedding. As a diagnostic for stage-2
(EMA) bundles, ``reference_pose=(elevation, azimuth)`` also puts the input image, clean (t = 0), as a
fifth frame into the joint attention at that camera, as EMA fine-tuning does: how much this improves
the views measures how much the UNet learned to carry the reference's appearance across views.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from tqdm.auto import tqdm

from iso3d.cameras import camera_embedding
from iso3d.io import composite_on_white, load_image
from iso3d.models.bundle import MultiViewDiffusion
from iso3d.models.cuda_graph import CUDAGraphedForward
from iso3d.models.guidance import classifier_free_guidance
from iso3d.models.precision import default_model_dtype
from iso3d.models.unet import ReferenceFrame
from iso3d.utils.imports import require

from .base import ModelPipeline

__all__ = ["MultiViewOutput", "MultiViewPipeline"]


@dataclass
class MultiViewOutput:
    images: torch.Tensor  # [V, 3, H, W] in [0, 1]
    elevation: torch.Tensor  # [V] degrees
    azimuth: torch.Tensor  # [V] degrees


class MultiViewPipeline(ModelPipeline):
    """``views = MultiViewPipeline.from_pretrained(bundle)(image)``.

    Example:
        >>> from iso3d.models.presets import tiny_bundle_config
        >>> pipe = MultiViewPipeline(MultiViewDiffusion(tiny_bundle_config(), seed=0))
        >>> pipe.set_progress_bar_config(disable=True)
        >>> out = pipe(torch.rand(3, 64, 64), num_inference_steps=2, seed=0)
        >>> out.images.shape
        torch.Size([4, 3, 32, 32])

    ``cuda_graph=True``: on a GPU, every denoising step's UNet call (without ``reference_pose``) is
    replayed from one CUDA graph (:class:`~iso3d.models.cuda_graph.CUDAGraphedForward`); ignored on
    the CPU.
    """

    def __init__(self, model: MultiViewDiffusion, *, cuda_graph: bool = False):
        super().__init__(model)
        self.unet = CUDAGraphedForward(self.model.unet) if cuda_graph else self.model.unet

    @classmethod
    def from_pretrained(cls, path_or_id=None, *, device=None, dtype=None, backend: str = "auto",
                        cuda_graph: bool = False) -> "MultiViewPipeline":
        """A bundle (as :meth:`MultiViewDiffusion.from_pretrained`) on ``device`` (default: the CPU) in
        ``dtype`` (default: :func:`~iso3d.models.precision.default_model_dtype`, bfloat16 on a GPU)."""
        dtype = dtype or default_model_dtype(device)
        return cls(MultiViewDiffusion.from_pretrained(path_or_id, device=device, dtype=dtype, backend=backend),
                   cuda_graph=cuda_graph)

    def scheduler(self):
        diffusers = require("diffusers", "MultiViewPipeline (DDIM)")
        s = self.model.config.scheduler
        # As the release's SDS guidance builds it (shared/data/isotropic3d_unet_config.json).
        # Pixel-space bundles clip the x₀ estimate to the image range [−1, 1]; latents are unbounded.
        # A zero-terminal-SNR schedule starts sampling at t = T, from pure noise ("trailing" spacing).
        return diffusers.DDIMScheduler(num_train_timesteps=s.num_train_timesteps, beta_start=s.beta_start,
                                       beta_end=s.beta_end, beta_schedule=s.beta_schedule,
                                       clip_sample=self.model.vae is None, set_alpha_to_one=False, steps_offset=1,
                                       prediction_type=s.prediction_type, rescale_betas_zero_snr=s.zero_terminal_snr,
                                       timestep_spacing="trailing" if s.zero_terminal_snr else "leading")

    def check_inputs(self, num_inference_steps, guidance_scale, azimuths):
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or not 1 <= num_inference_steps <= 1000:
            raise ValueError(f"num_inference_steps must be an int in [1, 1000], got {num_inference_steps!r}")
        if not isinstance(guidance_scale, (int, float)) or guidance_scale < 0:
            raise ValueError(f"guidance_scale must be a number >= 0, got {guidance_scale!r}")
        if len(azimuths) < 1:
            raise ValueError("azimuths must name at least one view")

    @torch.no_grad()
    def __call__(
        self,
        image,
        *,
        num_inference_steps: int = 50,
        guidance_scale: float | None = None,
        elevation: float = 15.0,
        azimuths: Sequence[float] = (0.0, 90.0, 180.0, 270.0),
        seed: int | None = None,
        generator: torch.Generator | None = None,
        eta: float | None = None,
        reference_pose: tuple[float, float] | None = None,
    ) -> MultiViewOutput:
        """Sample ``len(azimuths)`` views of the object in ``image`` (path, PIL, array or tensor).

        ``guidance_scale`` and DDIM's ``eta`` default to the bundle's (``BundleConfig.guidance_scale``,
        ``sampling_eta``); the first latent follows ``BundleConfig.sampling_init_mean``.
        ``reference_pose``: ``(elevation, azimuth)`` in degrees of the input view, to also attend to it
        as the clean EMA reference frame (a diagnostic; see the module docstring). None: CLIP only.
        """
        guidance_scale = self.model.config.guidance_scale if guidance_scale is None else guidance_scale
        eta = self.model.config.sampling_eta if eta is None else eta
        if not 0 <= eta <= 1:
            raise ValueError(f"eta must be in [0, 1], got {eta!r}")
        self.check_inputs(num_inference_steps, guidance_scale, azimuths)
        if reference_pose is not None and not (
                isinstance(reference_pose, (tuple, list)) and len(reference_pose) == 2
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in reference_pose)):
            raise ValueError(f"reference_pose must be (elevation, azimuth), two finite numbers of degrees, got {reference_pose!r}")
        if generator is None:
            generator = torch.Generator().manual_seed(seed if seed is not None else 0)
        device, dtype, cfg = self.device, self.dtype, self.model.config
        rgba = load_image(image)[None].to(device)
        token = self.model.image_encoder(rgba).to(dtype)  # [1, 1, D]
        n_views = len(azimuths)
        elev = torch.full((n_views,), float(elevation))
        azim = torch.tensor([float(a) for a in azimuths])
        camera = camera_embedding(elev, azim, convention=cfg.camera_convention).to(device, dtype)
        size = cfg.unet.sample_size
        noise = torch.randn(n_views, cfg.unet.in_channels, size, size, generator=generator)
        context = torch.cat([token.expand(n_views, -1, -1), torch.zeros_like(token).expand(n_views, -1, -1)])
        reference = None
        if reference_pose is not None:  # the same clean frame for the conditional and unconditional rows
            img = composite_on_white(rgba.float())
            if img.shape[-2:] != (cfg.image_size, cfg.image_size):
                img = torch.nn.functional.interpolate(img, (cfg.image_size, cfg.image_size), mode="bilinear",
                                                      antialias=True, align_corners=False)
            ref = self.model.encode_images(img.to(dtype))
            ref_cam = camera_embedding(torch.tensor([float(reference_pose[0])]), torch.tensor([float(reference_pose[1])]),
                                       convention=cfg.camera_convention).to(device, dtype)
            reference = ReferenceFrame(torch.cat([ref, ref]), torch.cat([ref_cam, ref_cam]),
                                       torch.zeros(2, dtype=torch.long, device=device))
        scheduler = self.scheduler()
        scheduler.set_timesteps(num_inference_steps, device=device)
        a = scheduler.alphas_cumprod[int(scheduler.timesteps[0])]  # the marginal at the first timestep
        latents = (a.sqrt() * cfg.sampling_init_mean + (1 - a).sqrt() * noise).to(device, dtype)
        for t in tqdm(scheduler.timesteps, desc="views", **self._progress):
            x = torch.cat([latents, latents])
            ts = torch.full((2 * n_views,), int(t), device=device)
            if reference is None:  # a graph replays tensors only; the reference frame runs eagerly
                eps = self.unet(x, ts, context, torch.cat([camera, camera]), n_views=n_views)
            else:
                eps = self.model.unet(x, ts, context, torch.cat([camera, camera]), n_views=n_views, reference=reference)
            eps = classifier_free_guidance(*eps.chunk(2), guidance_scale)  # rows: [cond; uncond]
            # Where ᾱ_t = 0 (a zero-terminal-SNR schedule's first step) DDIM's σ² equals 1 − ᾱ_prev, so its
            # √(1 − ᾱ_prev − σ²) can round below 0 and give NaN; there x_t is itself pure noise, so η = 0
            # draws x_prev from the same distribution.
            step_eta = 0.0 if scheduler.alphas_cumprod[int(t)] == 0 else eta
            latents = scheduler.step(eps, t, latents, eta=step_eta, use_clipped_model_output=scheduler.config.clip_sample,
                                     generator=generator).prev_sample
        if not torch.isfinite(latents).all():  # one check per call: a NaN image would save as black, silently
            raise FloatingPointError(
                f"MultiViewPipeline: sampling produced NaN/Inf ({num_inference_steps} steps, eta={eta}, "
                f"guidance_scale={guidance_scale}); check the bundle's weights and scheduler config")
        return MultiViewOutput(self.model.decode(latents), elev, azim)
