"""Image → 3D asset in the diffusers style: load the model once, then call the pipeline per image.

:class:`Isotropic3DPipeline` holds a :class:`~iso3d.models.bundle.MultiViewDiffusion` on its device
and in its dtype, and each call runs :func:`iso3d.generation.generate` with it (SDS optimization of a
NeRF, then :class:`~iso3d.generation.Asset`). What it adds to ``generate``: the model is loaded and
cast once for many images, the progress bar is configured once (``set_progress_bar_config``), the
result is a dataclass with a 4-view preview of the NeRF, and :meth:`Isotropic3DPipeline.sample_views`
shows what the diffusion model makes of an image before minutes of SDS are spent on it.

Example (CPU, the shipped iso3d-tiny; a real run uses the config's 200 steps)::

    >>> from iso3d.pipelines import Isotropic3DPipeline
    >>> pipe = Isotropic3DPipeline.from_pretrained(device="cpu")
    >>> pipe.set_progress_bar_config(disable=True)
    >>> result = pipe("examples/red_ball.png", steps=2, seed=0)
    >>> result.preview.shape, result.asset.run["steps"]
    (torch.Size([4, 3, 64, 64]), 2)
    >>> folder = result.asset.save("out/ball")  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from iso3d.generation import Asset, GenerateConfig, generate
from iso3d.models.bundle import MultiViewDiffusion
from iso3d.models.precision import default_model_dtype

from .base import ModelPipeline
from .multiview import MultiViewOutput, MultiViewPipeline

__all__ = ["Isotropic3DOutput", "Isotropic3DPipeline"]


@dataclass
class Isotropic3DOutput:
    asset: Asset  # the NeRF, its renderer, config and run record; ``asset.save(folder)`` writes the mesh etc.
    preview: torch.Tensor  # [4, 3, S, S] in [0, 1]: the NeRF rendered from azimuths 0/90/180/270 at 15° elevation


def _device_and_dtype(device, dtype: torch.dtype | None) -> tuple[torch.device, torch.dtype]:
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return device, dtype or default_model_dtype(device)


class Isotropic3DPipeline(ModelPipeline):
    """``Isotropic3DPipeline.from_pretrained(bundle)(image).asset``: one image → a NeRF (see the module docstring).

    The model runs on the device and in the dtypes it holds (a VAE kept in float32 stays so):
    :meth:`from_pretrained` defaults to bfloat16 on a GPU (what the benchmarks time; the release runs
    its guidance in half precision; float16 before Ampere) and float32 on the CPU, as
    :class:`~iso3d.generation.GenerateConfig`'s ``official`` and ``cpu_tiny``
    (:func:`~iso3d.models.precision.default_model_dtype`).
    """

    @classmethod
    def from_pretrained(cls, path_or_id=None, *, device=None, dtype: torch.dtype | None = None,
                        backend: str = "auto") -> "Isotropic3DPipeline":
        """A bundle folder, a shipped bundle's name, a hub id, or None (the shipped iso3d-tiny), as
        :meth:`MultiViewDiffusion.from_pretrained`. ``device``: default CUDA when available; ``dtype``:
        default bfloat16 on CUDA, else float32."""
        device, dtype = _device_and_dtype(device, dtype)
        return cls(MultiViewDiffusion.from_pretrained(path_or_id, device=device, dtype=dtype, backend=backend))

    @classmethod
    def from_release_checkpoint(cls, ckpt_path, *, device=None, dtype: torch.dtype | None = None,
                                backend: str = "auto") -> "Isotropic3DPipeline":
        """The full model from the released ``isotropic3d.ckpt`` (:meth:`MultiViewDiffusion.from_release_checkpoint`),
        on ``device`` in ``dtype`` (defaults as :meth:`from_pretrained`)."""
        device, dtype = _device_and_dtype(device, dtype)
        model = MultiViewDiffusion.from_release_checkpoint(ckpt_path, backend=backend)
        return cls(model.to(device=device, dtype=dtype))

    def sample_views(self, image, **kwargs) -> MultiViewOutput:
        """The diffusion model's 4 views of ``image`` (:class:`MultiViewPipeline`'s call and options): a
        preview of what SDS will distil, in seconds rather than minutes."""
        pipe = MultiViewPipeline(self.model)
        pipe.set_progress_bar_config(**self._progress)
        return pipe(image, **kwargs)

    def __call__(
        self,
        image,
        *,
        steps: int | None = None,
        seed: int = 0,
        config: GenerateConfig | None = None,
        out: str | Path | None = None,
        resume: bool = False,
        guidance_scale: float | None = None,
        normals: str | None = None,
        mesh_surface: str | None = None,
        mesh_threshold: float | str | None = None,
        cuda_graph: bool | None = None,
        compile_vae: bool | None = None,
        fused_vae_norms: bool | None = None,
    ) -> Isotropic3DOutput:
        """Optimize a NeRF of the object in ``image`` (path, PIL, array or tensor; RGBA keeps its alpha).

        The arguments are :func:`~iso3d.generation.generate`'s; the model runs on the pipeline's device,
        as it is (``config.model_dtype`` records the UNet's dtype). ``out``: also save the asset there
        (with checkpoints, so ``resume=True`` continues an interrupted run).
        """
        asset = generate(image, self.model, config=config, steps=steps, seed=seed, device=self.device, out=out,
                         resume=resume, progress=self._progress or True, normals=normals, cuda_graph=cuda_graph,
                         guidance_scale=guidance_scale, compile_vae=compile_vae, fused_vae_norms=fused_vae_norms,
                         mesh_surface=mesh_surface, mesh_threshold=mesh_threshold)
        return Isotropic3DOutput(asset=asset, preview=asset.render_turntable(n_frames=4, size=64))
