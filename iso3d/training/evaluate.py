"""Measure a multi-view model on held-out procedural objects (the numbers of the model card).

* View fidelity and consistency: for each object, 4 views are sampled at the poses of its ground-truth
  renders, conditioned on its reference view, and compared with those renders (on white): PSNR,
  SSIM (11×11 Gaussian window, σ 1.5) and silhouette IoU (sampled pixels away from white vs the true
  alpha).
* Image-encoder retrieval: each object's reference is embedded; every target view is assigned to the
  nearest reference (cosine); accuracy = fraction assigned to their own object.
* What the embedding holds: linear probes fitted on the reference embeddings of some objects and
  tested on others, for the kind of the object's (first) primitive (accuracy) and its colour (R²).
  Retrieval alone can be won on colour: these tell whether shape is in the embedding too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from iso3d.data import MultiViewDataset
from iso3d.io import composite_on_white
from iso3d.models.bundle import MultiViewDiffusion

__all__ = ["evaluate_embedding_probes", "evaluate_retrieval", "evaluate_views", "linear_probe_accuracy",
           "linear_probe_r2", "psnr", "sample_grid", "silhouette_iou", "ssim"]


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # [N, 3, H, W] in [0, 1] -> [N]
    mse = (a - b).square().flatten(1).mean(1).clamp(min=1e-10)
    return -10 * torch.log10(mse)


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # [N, C, H, W] in [0, 1] -> [N]
    """Wang et al. 2004 SSIM with an 11×11 Gaussian window (σ 1.5), averaged over pixels and channels."""
    size = min(11, a.shape[-1], a.shape[-2])
    coords = torch.arange(size, dtype=a.dtype) - (size - 1) / 2
    g = torch.exp(-coords**2 / (2 * 1.5**2))
    g = g / g.sum()
    window = (g[:, None] * g[None, :]).expand(a.shape[1], 1, size, size).to(a)
    blur = lambda x: F.conv2d(x, window, groups=a.shape[1])  # noqa: E731
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(1)


def silhouette_iou(pred_rgb: torch.Tensor, true_alpha: torch.Tensor, threshold: float = 0.1) -> torch.Tensor:
    """IoU of {pixels whose colour is ≥ threshold away from white} and {true alpha > 0.5}; [N]."""
    pred = (1 - pred_rgb).abs().amax(1) >= threshold
    true = true_alpha[:, 0] > 0.5 if true_alpha.dim() == 4 else true_alpha > 0.5
    inter = (pred & true).flatten(1).sum(1).float()
    union = (pred | true).flatten(1).sum(1).float().clamp(min=1)
    return inter / union


def _sample_views(pipe, sample, num_inference_steps: int, seed: int, guidance_scale: float | None = None,
                  with_reference: bool = False) -> torch.Tensor:  # -> [V, 3, H, W]
    """4 views sampled at the sample's true cameras from the CLIP embedding of its reference view
    (and, ``with_reference``, the reference view itself as the clean EMA frame at its true pose)."""
    pose = (float(sample.reference_elevation), float(sample.reference_azimuth)) if with_reference else None
    out = pipe(sample.reference, num_inference_steps=num_inference_steps, elevation=float(sample.elevation[0]),
               azimuths=[float(a) for a in sample.azimuth], seed=seed, guidance_scale=guidance_scale,
               reference_pose=pose)
    return out.images.cpu().float()


@torch.no_grad()
def evaluate_views(model: MultiViewDiffusion, dataset: MultiViewDataset, *, n_objects: int | None = None,
                   num_inference_steps: int = 20, seed: int = 0, guidance_scale: float | None = None,
                   with_reference: bool = False) -> dict:
    """Mean PSNR / SSIM / silhouette IoU of sampled views against the ground truth (CFG scale: the
    bundle's unless ``guidance_scale`` is given; ``with_reference``: the diagnostic of
    :class:`~iso3d.pipelines.MultiViewPipeline`'s ``reference_pose``)."""
    from iso3d.pipelines import MultiViewPipeline

    pipe = MultiViewPipeline(model)
    pipe.set_progress_bar_config(disable=True)
    rows = []
    for i in range(n_objects or len(dataset)):
        s = dataset[i]
        pred = _sample_views(pipe, s, num_inference_steps, seed + i, guidance_scale, with_reference)
        truth = composite_on_white(s.views)
        rows.append(torch.stack([psnr(pred, truth), ssim(pred, truth), silhouette_iou(pred, s.views[:, 3:])], 1))
    m = torch.cat(rows)
    return {"objects": len(rows), "psnr": m[:, 0].mean().item(), "ssim": m[:, 1].mean().item(),
            "silhouette_iou": m[:, 2].mean().item()}


@torch.no_grad()
def evaluate_retrieval(model: MultiViewDiffusion, dataset: MultiViewDataset, *, n_objects: int | None = None) -> dict:
    n = n_objects or len(dataset)
    samples = [dataset[i] for i in range(n)]
    refs = F.normalize(model.image_encoder(torch.stack([s.reference for s in samples]))[:, 0], dim=-1)
    views = torch.cat([s.views for s in samples])  # [n·V, 4, H, W]
    owner = torch.arange(n).repeat_interleave(samples[0].views.shape[0])
    emb = F.normalize(model.image_encoder(views)[:, 0], dim=-1)
    guess = (emb @ refs.T).argmax(1)
    return {"objects": n, "retrieval_accuracy": (guess == owner).float().mean().item(), "chance": 1.0 / n}


def _standardize(features: torch.Tensor, n_fit: int) -> torch.Tensor:
    fit = features[:n_fit]
    return (features - fit.mean(0)) / (fit.std(0) + 1e-6)


def _check_probe_inputs(features: torch.Tensor, targets: torch.Tensor, n_fit: int) -> None:
    if features.ndim != 2 or targets.shape[0] != features.shape[0]:
        raise ValueError(f"features must be [N, D] and targets [N, ...], got {tuple(features.shape)} and {tuple(targets.shape)}")
    if not 2 <= n_fit < features.shape[0]:
        raise ValueError(f"n_fit must leave objects to test on: 2 <= n_fit < {features.shape[0]}, got {n_fit}")


def linear_probe_accuracy(features: torch.Tensor, labels: torch.Tensor, n_fit: int, *, l2: float = 1e-3) -> float:
    """Accuracy on rows ``n_fit:`` of a softmax regression fitted on rows ``:n_fit``.

    ``features`` ``[N, D]`` are standardized with the fit rows' statistics; ``labels`` ``[N]`` are class
    indices; the fit minimizes cross-entropy + ``l2``·‖W‖² with L-BFGS (deterministic)."""
    _check_probe_inputs(features, labels, n_fit)
    x = _standardize(features.float(), n_fit)
    classes = int(labels.max()) + 1
    weight = torch.zeros(x.shape[1], classes, requires_grad=True)
    bias = torch.zeros(classes, requires_grad=True)
    optim = torch.optim.LBFGS([weight, bias], max_iter=500)

    def closure():
        optim.zero_grad()
        loss = F.cross_entropy(x[:n_fit] @ weight + bias, labels[:n_fit]) + l2 * weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optim.step(closure)
    with torch.no_grad():
        return ((x[n_fit:] @ weight + bias).argmax(1) == labels[n_fit:]).float().mean().item()


def linear_probe_r2(features: torch.Tensor, targets: torch.Tensor, n_fit: int) -> float:
    """R² on rows ``n_fit:`` of a least-squares affine fit ``[N, D] -> [N, K]`` on rows ``:n_fit``
    (1 − residual / total sum of squares, summed over the K outputs)."""
    _check_probe_inputs(features, targets, n_fit)
    x = torch.cat([_standardize(features.double(), n_fit), torch.ones(features.shape[0], 1, dtype=torch.double)], 1)
    y = targets.double().reshape(targets.shape[0], -1)
    solution = torch.linalg.lstsq(x[:n_fit], y[:n_fit]).solution
    residual = (x[n_fit:] @ solution - y[n_fit:]).square().sum()
    total = (y[n_fit:] - y[n_fit:].mean(0)).square().sum()
    if total == 0:
        raise ValueError("targets are constant on the test rows: R² is undefined")
    return (1 - residual / total).item()


@torch.no_grad()
def evaluate_embedding_probes(model: MultiViewDiffusion, dataset: MultiViewDataset, *, fit_fraction: float = 0.75,
                              batch_size: int = 256) -> dict:
    """Linear probes of the reference embeddings of ``dataset``'s objects: the first ``fit_fraction``
    of them fit, the rest test. Keys: ``probe_objects``, ``kind_probe_accuracy`` (which primitive kind;
    for a union of primitives, the first one's), ``kind_majority`` (what always guessing the fit objects'
    most common kind scores on the test objects) and ``colour_probe_r2`` (that primitive's RGB albedo)."""
    n = len(dataset)
    n_fit = int(round(fit_fraction * n))
    if not 2 <= n_fit < n:
        raise ValueError(f"fit_fraction {fit_fraction} of {n} objects leaves none to fit or none to test")
    primitives = [dataset.object(i).primitives[0] for i in range(n)]
    names = sorted({p.kind for p in primitives})
    kinds = torch.tensor([names.index(p.kind) for p in primitives])
    colours = torch.stack([p.color for p in primitives])
    device = next(model.image_encoder.parameters()).device
    emb = torch.cat([model.image_encoder(dataset.batch(torch.arange(i, min(i + batch_size, n)))["reference"].to(device))[:, 0].cpu()
                     for i in range(0, n, batch_size)])
    return {"probe_objects": n,
            "kind_probe_accuracy": linear_probe_accuracy(emb, kinds, n_fit),
            "kind_majority": (kinds[n_fit:] == kinds[:n_fit].bincount().argmax()).float().mean().item(),
            "colour_probe_r2": linear_probe_r2(emb, colours, n_fit)}


@torch.no_grad()
def sample_grid(model: MultiViewDiffusion, dataset: MultiViewDataset, path, *, n_objects: int = 6,
                num_inference_steps: int = 50, seed: int = 0, guidance_scale: float | None = None,
                with_reference: bool = False):
    """Save a PNG with one row per object: its reference view (the input), 4 sampled views, the 4 true views.

    Example:
        >>> from iso3d.data import MultiViewDataset, RenderSettings
        >>> from iso3d.models.bundle import MultiViewDiffusion
        >>> model = MultiViewDiffusion.from_pretrained("iso3d-tiny")
        >>> data = MultiViewDataset("test", 2, settings=RenderSettings(image_size=32), progress=False)
        >>> sample_grid(model, data, "/tmp/iso3d_grid.png", n_objects=2, num_inference_steps=2).name
        'iso3d_grid.png'
    """
    from iso3d.io import save_image_grid
    from iso3d.pipelines import MultiViewPipeline

    pipe = MultiViewPipeline(model)
    pipe.set_progress_bar_config(disable=True)
    rows = []
    for i in range(min(n_objects, len(dataset))):
        s = dataset[i]
        rows += [composite_on_white(s.reference[None]),
                 _sample_views(pipe, s, num_inference_steps, seed + i, guidance_scale, with_reference),
                 composite_on_white(s.views)]
    return save_image_grid(torch.cat(rows), path, columns=1 + 2 * dataset.sampling.n_views)
