"""iso3d — one image to a 3D asset by the Isotropic3D method, on fast Triton kernels.

``import iso3d`` is light: it imports neither Triton, diffusers, open_clip nor torchvision, and
touches no GPU. Subpackages load what they need when used.
"""

__version__ = "0.1.0"

__all__ = ["Isotropic3DPipeline", "MultiViewPipeline", "__version__", "generate"]


def __getattr__(name: str):
    """``iso3d.Isotropic3DPipeline`` and ``iso3d.MultiViewPipeline``, imported on first use (diffusers style)."""
    if name in ("Isotropic3DPipeline", "MultiViewPipeline"):
        from . import pipelines

        return getattr(pipelines, name)
    raise AttributeError(f"module 'iso3d' has no attribute {name!r}")


def generate(image, model=None, **kwargs):
    """One image → a 3D asset: :func:`iso3d.generation.generate` (imported on first call).

    Example:
        >>> import iso3d
        >>> asset = iso3d.generate("examples/red_ball.png", steps=2, progress=False)  # doctest: +SKIP
        >>> asset.save("out/ball")  # doctest: +SKIP
    """
    from .generation import generate as _generate

    return _generate(image, model, **kwargs)
