"""The model bundle: one folder holding everything the multi-view diffusion model needs.

Layout::

    bundle/
      config.json                 BundleConfig (UNet, image encoder, VAE or pixel space, schedule, cameras)
      unet.safetensors            diffusers UNet2DConditionModel names
      image_encoder.safetensors   open_clip VisionTransformer names
      vae.safetensors             diffusers AutoencoderKL names (latent-space bundles only)

``MultiViewDiffusion.from_pretrained(path_or_hub_id)`` loads a folder, or a Hugging Face hub id
through ``huggingface_hub`` (failing fast with a clear message when offline);
``save_pretrained(folder)`` writes one; ``from_release_checkpoint(path)`` converts the released
``isotropic3d.ckpt``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from iso3d.cameras import CameraConvention
from iso3d.utils.imports import require

from .convert import SD_VAE_CONFIG, check_state_dict, convert_isotropic3d_checkpoint
from .image_encoder import CLIPImageEncoder, ImageEncoderConfig
from .unet import MultiViewUNet, MultiViewUNetConfig

__all__ = ["BundleConfig", "MultiViewDiffusion", "SchedulerConfig", "default_bundle_path"]

FORMAT_VERSION = 1


@dataclass(frozen=True)
class SchedulerConfig:
    """The training noise schedule (DESIGN.md §2): scaled-linear betas 0.00085→0.012 over 1000 steps,
    ε-prediction.

    ``beta_schedule="linear"`` (betas evenly spaced, as diffusers names it) with 1e-4→0.02 is DDPM's
    pixel-space schedule (Ho et al. 2020, e.g. CIFAR-10 at 32²): ᾱ_T ≈ 4e-5 instead of 0.0047, so more
    of training sees high noise levels (:meth:`ddpm`). On iso3d-tiny's CPU recipe it sampled far worse
    than the release's schedule (its MODEL_CARD.md), so it is an experiment, not a default.

    ``prediction_type="v_prediction"`` trains the UNet to predict v = √ᾱ·ε − √(1−ᾱ)·x₀ (Salimans & Ho
    2022) instead of ε. In terms of the x₀ error, the ε-loss weighs a timestep by its SNR ᾱ/(1−ᾱ)
    (0.0047 at t = T for the release's betas) and the v-loss by SNR + 1, so the high-noise steps, where
    the coarse shape forms, teach far more. ``zero_terminal_snr`` rescales √ᾱ so that ᾱ_T = 0 (Lin et
    al. 2024, "Common diffusion noise schedules and sample steps are flawed", Algorithm 1): training
    then sees pure noise at t = T, as sampling starts; it needs v-prediction (ε says nothing about x₀
    at ᾱ = 0), and the sampler then spaces its steps "trailing" so that its first step is t = T.

    Example::

        >>> s = SchedulerConfig(prediction_type="v_prediction", zero_terminal_snr=True)
        >>> acp = s.alphas_cumprod()
        >>> float(acp[-1]), round(float(acp[0]), 5) == round(float(SchedulerConfig().alphas_cumprod()[0]), 5)
        (0.0, True)
        >>> x0, eps, a = torch.randn(2, 3), torch.randn(2, 3), acp[500]
        >>> x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
        >>> torch.allclose(s.epsilon(s.target(x0, eps, a), x_t, a), eps, atol=1e-5)
        True
    """

    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: Literal["scaled_linear", "linear"] = "scaled_linear"
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"
    zero_terminal_snr: bool = False

    def __post_init__(self):
        if self.beta_schedule not in ("scaled_linear", "linear"):
            raise ValueError(f"SchedulerConfig: beta_schedule must be 'scaled_linear' or 'linear', got {self.beta_schedule!r}")
        if not 0 < self.beta_start < self.beta_end < 1 or self.num_train_timesteps < 2:
            raise ValueError(f"SchedulerConfig: need 0 < beta_start < beta_end < 1 and >= 2 timesteps, got "
                             f"{self.beta_start}, {self.beta_end}, {self.num_train_timesteps}")
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"SchedulerConfig: prediction_type must be 'epsilon' or 'v_prediction', got "
                             f"{self.prediction_type!r}")
        if not isinstance(self.zero_terminal_snr, bool):
            raise TypeError(f"SchedulerConfig: zero_terminal_snr must be a bool, got {self.zero_terminal_snr!r}")
        if self.zero_terminal_snr and self.prediction_type != "v_prediction":
            raise ValueError("SchedulerConfig: zero_terminal_snr=True needs prediction_type='v_prediction' "
                             "(an ε-prediction says nothing about x₀ where ᾱ = 0)")

    @classmethod
    def ddpm(cls) -> "SchedulerConfig":
        """DDPM's linear 1e-4 → 0.02 schedule over 1000 steps (pixel-space models)."""
        return cls(beta_start=1e-4, beta_end=0.02, beta_schedule="linear")

    def alphas_cumprod(self, device=None) -> torch.Tensor:  # [num_train_timesteps] float32
        """ᾱ_t: scaled-linear (ldm's "linear": linspace of √β, squared) or linear betas, in fp64; with
        ``zero_terminal_snr``, √ᾱ shifted and scaled so that it keeps ᾱ_0 and ends at exactly 0."""
        n = self.num_train_timesteps
        if self.beta_schedule == "scaled_linear":
            betas = torch.linspace(self.beta_start**0.5, self.beta_end**0.5, n, dtype=torch.float64) ** 2
        else:
            betas = torch.linspace(self.beta_start, self.beta_end, n, dtype=torch.float64)
        acp = torch.cumprod(1 - betas, 0)
        if self.zero_terminal_snr:
            s = acp.sqrt()
            acp = ((s - s[-1]) * s[0] / (s[0] - s[-1])) ** 2
        return acp.float().to(device)

    def target(self, x0: torch.Tensor, eps: torch.Tensor, alpha_cumprod: torch.Tensor) -> torch.Tensor:
        """What the UNet learns to predict for ``x_t = √ᾱ·x0 + √(1−ᾱ)·eps``: ``eps``, or v = √ᾱ·eps − √(1−ᾱ)·x0.
        ``alpha_cumprod`` broadcasts against ``x0`` (a scalar, or ``[N, 1, 1, 1]``)."""
        if self.prediction_type == "epsilon":
            return eps
        return alpha_cumprod.sqrt() * eps - (1 - alpha_cumprod).sqrt() * x0

    def epsilon(self, prediction: torch.Tensor, x_t: torch.Tensor, alpha_cumprod: torch.Tensor) -> torch.Tensor:
        """The UNet's ``prediction`` at ``x_t`` as an ε-prediction (what SDS and its x₀ reconstruction use):
        itself, or √ᾱ·v + √(1−ᾱ)·x_t."""
        if self.prediction_type == "epsilon":
            return prediction
        return alpha_cumprod.sqrt() * prediction + (1 - alpha_cumprod).sqrt() * x_t


@dataclass(frozen=True)
class BundleConfig:
    unet: MultiViewUNetConfig = field(default_factory=MultiViewUNetConfig.official)
    image_encoder: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    vae: dict | None = field(default_factory=lambda: dict(SD_VAE_CONFIG))  # None: the UNet works on pixels
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    camera_convention: CameraConvention = "standard"
    image_size: int = 256  # pixels of each generated view
    n_views: int = 4
    guidance_scale: float = 10.0
    # Sampling from noise (MultiViewPipeline; SDS never starts from pure noise). `sampling_eta`: DDIM's
    # η (0 deterministic, 1 ancestral/DDPM-like). `sampling_init_mean`: the first latent is drawn from
    # N(√ᾱ_t·m, 1 − ᾱ_t) at the first timestep t, not N(0, 1): with ᾱ_T = 0.0047 (this schedule) the
    # training inputs keep √ᾱ_T·x₀ of the data, which for pixel-space bundles on white (x₀ ≈ +1 almost
    # everywhere) is a signal the model learns to rely on; m = 1 restores it (see iso3d-tiny's card).
    sampling_eta: float = 0.0
    sampling_init_mean: float = 0.0
    # The procedural objects (`iso3d.data.ObjectSampling` fields) the last training stage drew;
    # `iso3d eval-model` and `iso3d eval` draw held-out objects alike. None: not trained here.
    training_objects: dict | None = None
    # The SDS classifier-free guidance `iso3d generate` uses with this bundle unless told otherwise
    # (generate(guidance_scale=…) wins over it, it wins over GenerateConfig.sds). None: the config's.
    sds_guidance_scale: float | None = None

    def __post_init__(self):
        if self.sds_guidance_scale is not None and not self.sds_guidance_scale >= 0:
            raise ValueError(f"BundleConfig.sds_guidance_scale must be None or >= 0, got {self.sds_guidance_scale}")
        if not 0 <= self.sampling_eta <= 1:
            raise ValueError(f"BundleConfig.sampling_eta must be in [0, 1], got {self.sampling_eta}")
        pixel = self.vae is None
        channels = 3 if pixel else self.vae.get("latent_channels", 4)
        if self.unet.in_channels != channels or self.unet.out_channels != channels:
            raise ValueError(f"BundleConfig: the UNet must take and return {channels} channels for a "
                             f"{'pixel' if pixel else 'latent'}-space bundle, got {self.unet.in_channels}/{self.unet.out_channels}")
        factor = 1 if pixel else 2 ** (len(self.vae["block_out_channels"]) - 1)
        if self.unet.sample_size * factor != self.image_size:
            raise ValueError(f"BundleConfig: unet.sample_size={self.unet.sample_size} × {factor} must equal image_size={self.image_size}")
        if self.image_encoder.embed_dim != self.unet.cross_attention_dim:
            raise ValueError(f"BundleConfig: image_encoder.embed_dim={self.image_encoder.embed_dim} must equal unet.cross_attention_dim={self.unet.cross_attention_dim}")

    @classmethod
    def official(cls, camera_convention: CameraConvention = "isotropic3d-release") -> "BundleConfig":
        """The released model (its checkpoint was fine-tuned with the release's camera quirk)."""
        return cls(camera_convention=camera_convention)

    def to_dict(self) -> dict:
        return {"format_version": FORMAT_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "BundleConfig":
        d = dict(d)
        version = d.pop("format_version", None)
        if version != FORMAT_VERSION:
            raise ValueError(f"BundleConfig: unsupported bundle format_version {version!r} (this iso3d reads {FORMAT_VERSION})")
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"BundleConfig: unknown keys {sorted(unknown)}")
        enc = dict(d.get("image_encoder", {}))
        return cls(
            unet=MultiViewUNetConfig.from_dict(d["unet"]),
            image_encoder=ImageEncoderConfig(**enc),
            vae=d.get("vae"),
            scheduler=SchedulerConfig(**d.get("scheduler", {})),
            camera_convention=d.get("camera_convention", "standard"),
            image_size=d.get("image_size", 256),
            n_views=d.get("n_views", 4),
            guidance_scale=d.get("guidance_scale", 10.0),
            sampling_eta=d.get("sampling_eta", 0.0),
            sampling_init_mean=d.get("sampling_init_mean", 0.0),
            training_objects=d.get("training_objects"),
            sds_guidance_scale=d.get("sds_guidance_scale"),
        )


class MultiViewDiffusion(nn.Module):
    """UNet + frozen image encoder (+ VAE): the multi-view diffusion model as one loadable unit.

    Example:
        >>> import tempfile
        >>> from iso3d.models.presets import tiny_bundle_config
        >>> model = MultiViewDiffusion(tiny_bundle_config(), seed=0)
        >>> folder = tempfile.mkdtemp()
        >>> _ = model.save_pretrained(folder)
        >>> again = MultiViewDiffusion.from_pretrained(folder)
        >>> all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
        True
    """

    def __init__(self, config: BundleConfig, *, seed: int | None = None, backend: str = "auto"):
        super().__init__()
        self.config = config
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            self.unet = MultiViewUNet(config.unet, backend=backend)
            self.image_encoder = CLIPImageEncoder(config.image_encoder)
            self.vae = None
            if config.vae is not None:
                diffusers = require("diffusers", "latent-space bundles (the VAE)")
                self.vae = diffusers.AutoencoderKL(**config.vae)
                self.vae.requires_grad_(False)

    # -- latent space ----------------------------------------------------------------------------
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:  # [B, 3, H, W] in [0, 1] -> UNet space
        x = images * 2 - 1
        if self.vae is None:
            return x
        return self.vae.encode(x.to(self.vae.dtype)).latent_dist.sample() * self.vae.config.scaling_factor

    def decode(self, z: torch.Tensor) -> torch.Tensor:  # UNet space -> [B, 3, H, W] in [0, 1]
        if self.vae is not None:
            z = self.vae.decode(z.to(self.vae.dtype) / self.vae.config.scaling_factor).sample
        return ((z.float() + 1) / 2).clamp(0, 1)

    # -- persistence -----------------------------------------------------------------------------
    def _parts(self) -> dict[str, nn.Module]:
        parts = {"unet": self.unet.unet, "image_encoder": self.image_encoder.visual}
        if self.vae is not None:
            parts["vae"] = self.vae
        return parts

    def save_pretrained(self, folder: str | os.PathLike, *, dtype: torch.dtype | None = None) -> Path:
        """Write ``config.json`` and one safetensors file per part; ``dtype`` (e.g. float16) halves the files."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(self.config.to_dict(), indent=2))
        for name, module in self._parts().items():
            tensors = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().contiguous().cpu()
                       for k, v in module.state_dict().items()}
            save_file(tensors, str(folder / f"{name}.safetensors"), metadata={"format": "pt", "iso3d_part": name})
        return folder

    @classmethod
    def from_pretrained(cls, path_or_id: str | os.PathLike | None = None, *, device=None,
                        dtype: torch.dtype | None = None, backend: str = "auto") -> "MultiViewDiffusion":
        """Load a bundle folder, a shipped bundle by name (``"iso3d-tiny"``, ``"iso3d-tiny-stage1"``), a hub
        id, or (``None``) the shipped iso3d-tiny.

        Weights come back in ``dtype`` (default float32, whatever the files store).
        """
        folder = default_bundle_path() if path_or_id is None else _resolve_bundle(path_or_id)
        config = load_bundle_config(folder)
        with torch.device("meta"):
            model = cls(config, backend=backend)
        model.load_parts({name: _load_safetensors(folder / f"{name}.safetensors") for name in model._parts()})
        return model.to(device=device, dtype=dtype or torch.float32)

    def load_parts(self, state: dict[str, dict[str, torch.Tensor]]) -> None:
        """Load each part's state dict after checking keys and shapes (assigning, so meta modules work)."""
        for name, module in self._parts().items():
            if name not in state:
                raise ValueError(f"MultiViewDiffusion: bundle lacks the '{name}' weights")
            check_state_dict(name, state[name], module.state_dict())
            module.load_state_dict(state[name], strict=True, assign=True)
        self.image_encoder.requires_grad_(False)
        if self.vae is not None:
            self.vae.requires_grad_(False)

    @classmethod
    def from_release_checkpoint(cls, ckpt_path: str | os.PathLike, *, backend: str = "auto") -> "MultiViewDiffusion":
        """Build the full model from the released ``isotropic3d.ckpt`` (ldm layout, 6.5 GB)."""
        path = Path(ckpt_path)
        if not path.is_file():
            raise FileNotFoundError(f"ckpt_path: no checkpoint file at {path}")
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state)
        converted = convert_isotropic3d_checkpoint(state)
        with torch.device("meta"):
            model = cls(BundleConfig.official(), backend=backend)
        model.load_parts({"unet": converted.unet, "vae": converted.vae, "image_encoder": converted.image_encoder})
        return model


def load_bundle_config(path_or_id: str | os.PathLike | None = None) -> BundleConfig:
    """A bundle's ``config.json`` (resolved as :meth:`MultiViewDiffusion.from_pretrained` does), no weights."""
    folder = default_bundle_path() if path_or_id is None else _resolve_bundle(path_or_id)
    return BundleConfig.from_dict(json.loads((folder / "config.json").read_text()))


def default_bundle_path(name: str = "iso3d-tiny") -> Path:
    """The folder of a bundle shipped inside the package: ``iso3d-tiny`` (the default model, EMA
    stage 2) or ``iso3d-tiny-stage1`` (its stage-1 checkpoint, for comparisons). See its MODEL_CARD.md."""
    folder = Path(__file__).resolve().parent.parent / "assets" / name
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"the shipped bundle {name!r} is missing from {folder}; reinstall iso3d")
    return folder


def _shipped_names() -> list[str]:
    assets = Path(__file__).resolve().parent.parent / "assets"
    return sorted(p.name for p in assets.iterdir() if (p / "config.json").is_file()) if assets.is_dir() else []


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not path.is_file():
        raise FileNotFoundError(f"bundle file missing: {path}")
    return load_file(str(path))


def _resolve_bundle(path_or_id: str | os.PathLike) -> Path:
    path = Path(path_or_id)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} is not an iso3d bundle: it has no config.json")
        return path
    text = str(path_or_id)
    shipped = Path(__file__).resolve().parent.parent / "assets" / text
    if "/" not in text and (shipped / "config.json").is_file():  # "iso3d-tiny", "iso3d-tiny-stage1"
        return shipped
    if path.exists() or text.startswith((".", "/", "~")) or text.count("/") != 1:
        raise FileNotFoundError(f"model: {text!r} is neither a bundle folder, a shipped bundle name "
                                f"({', '.join(_shipped_names())}) nor a hub id of the form 'owner/name'")
    hub = require("huggingface_hub", f"loading the hub model {text!r}")
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        try:
            return Path(hub.snapshot_download(text, local_files_only=True))
        except Exception as exc:
            raise FileNotFoundError(f"model: {text!r} is not in the local hub cache and HF_HUB_OFFLINE is set; "
                                    f"download it on a connected machine or pass a bundle folder ({type(exc).__name__})") from None
    try:
        return Path(hub.snapshot_download(text))
    except Exception as exc:
        raise FileNotFoundError(f"model: could not fetch {text!r} from the Hugging Face hub: {type(exc).__name__}: {exc}") from None
