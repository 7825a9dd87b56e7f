"""A cached, seedable multi-view data set of procedural objects.

Each sample: 4 target views 90° apart at a random elevation in [0°, 30°] and a random azimuth
offset, plus a reference view at a random pose, all RGBA on white. Objects are drawn as
:class:`ObjectSampling` says (upright, or in any orientation). Splits draw object seeds from
disjoint ranges (train 0…, val 10⁶…, test 2·10⁶…), so a split's content depends only on its seed
and size. Rendering happens once; the set is cached as one compressed ``.npz`` of uint8 images.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from .procedural import ObjectSampling, RenderSettings, random_object, render_object

__all__ = ["MultiViewDataset", "MultiViewSample", "ViewSampling"]

SPLIT_OFFSETS = {"train": 0, "val": 1_000_000, "test": 2_000_000}
SEED_STRIDE = 100_000  # object seeds of (split, seed): SPLIT_OFFSETS[split] + seed·SEED_STRIDE + index


@dataclass(frozen=True)
class ViewSampling:
    n_views: int = 4
    elevation_range: tuple[float, float] = (0.0, 30.0)
    reference_elevation_range: tuple[float, float] = (-10.0, 40.0)


@dataclass
class MultiViewSample:
    views: torch.Tensor  # [V, 4, H, W] RGBA in [0, 1]
    elevation: torch.Tensor  # [V]
    azimuth: torch.Tensor  # [V]
    reference: torch.Tensor  # [4, H, W]
    reference_elevation: torch.Tensor  # []
    reference_azimuth: torch.Tensor  # []
    object_seed: int


def _poses(seed: int, sampling: ViewSampling):
    gen = torch.Generator().manual_seed(seed + 7919)
    lo, hi = sampling.elevation_range
    elev = lo + (hi - lo) * torch.rand(1, generator=gen)
    offset = 360.0 * torch.rand(1, generator=gen)
    azim = (offset + torch.arange(sampling.n_views) * 360.0 / sampling.n_views) % 360.0
    rlo, rhi = sampling.reference_elevation_range
    ref_elev = rlo + (rhi - rlo) * torch.rand(1, generator=gen)
    ref_azim = 360.0 * torch.rand(1, generator=gen)
    return elev.expand(sampling.n_views).clone(), azim, ref_elev, ref_azim


def _render_one(job: tuple[int, ViewSampling, RenderSettings, ObjectSampling]):
    seed, sampling, settings, object_sampling = job
    obj = random_object(seed, object_sampling)
    elev, azim, ref_elev, ref_azim = _poses(seed, sampling)
    imgs = render_object(obj, torch.cat([elev, ref_elev]), torch.cat([azim, ref_azim]), settings)
    as_u8 = (imgs * 255 + 0.5).clamp(0, 255).to(torch.uint8)
    pose = torch.cat([elev, azim, ref_elev, ref_azim]).numpy().astype(np.float32)
    return as_u8[:-1].numpy(), as_u8[-1].numpy(), pose


def stack_batch(views: torch.Tensor, refs: torch.Tensor, poses: torch.Tensor, indices: torch.Tensor) -> dict[str, torch.Tensor]:
    """Rows ``indices`` (``[B]``) of a data set's arrays as a training batch (:meth:`MultiViewDataset.batch`).

    ``views`` uint8 ``[S, V, 4, H, W]``, ``refs`` uint8 ``[S, 4, H, W]``, ``poses`` ``[S, 2V + 2]`` (the V
    elevations, the V azimuths, then the reference's elevation and azimuth, in degrees)."""
    v = views.shape[1]
    idx = torch.as_tensor(indices, dtype=torch.long)
    pose = poses[idx]
    return {"views": views[idx].float() / 255, "elevation": pose[:, :v], "azimuth": pose[:, v:2 * v],
            "reference": refs[idx].float() / 255, "reference_elevation": pose[:, 2 * v],
            "reference_azimuth": pose[:, 2 * v + 1]}


class MultiViewDataset(torch.utils.data.Dataset):
    """``MultiViewDataset("train", 512, cache_dir="data/")[i] -> MultiViewSample``.

    Example:
        >>> ds = MultiViewDataset("val", 2, settings=RenderSettings(image_size=16), progress=False)
        >>> s = ds[0]
        >>> s.views.shape, s.reference.shape
        (torch.Size([4, 4, 16, 16]), torch.Size([4, 16, 16]))
    """

    def __init__(self, split: Literal["train", "val", "test"], size: int, *, seed: int = 0,
                 settings: RenderSettings = RenderSettings(), sampling: ViewSampling = ViewSampling(),
                 object_sampling: ObjectSampling = ObjectSampling(), cache_dir: str | Path | None = None,
                 progress: bool = True, workers: int = 1):
        if split not in SPLIT_OFFSETS:
            raise ValueError(f"split must be one of {sorted(SPLIT_OFFSETS)}, got {split!r}")
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        if seed < 0 or seed * SEED_STRIDE + size > SPLIT_OFFSETS["val"]:
            # Beyond this a split's object seeds would run into the next split's: training on test objects.
            raise ValueError(f"seed must satisfy 0 <= seed * {SEED_STRIDE} + size <= {SPLIT_OFFSETS['val']} "
                             f"(so the splits stay disjoint), got seed={seed!r} and size={size}")
        if not isinstance(object_sampling, ObjectSampling):
            raise TypeError(f"object_sampling must be an ObjectSampling, got {type(object_sampling).__name__}")
        self.split, self.size, self.seed, self.settings, self.sampling = split, size, seed, settings, sampling
        self.object_sampling = object_sampling
        self.workers = workers
        self.seeds = [SPLIT_OFFSETS[split] + seed * SEED_STRIDE + i for i in range(size)]
        cache = self._cache_path(cache_dir)
        if cache is not None and cache.exists():
            data = np.load(cache)
        else:
            data = self._render_all(progress)
            if cache is not None:
                cache.parent.mkdir(parents=True, exist_ok=True)
                # Written beside and renamed: processes rendering the same set at once (training runs
                # launched side by side) never leave or read a half-written file.
                tmp = cache.with_name(f"{cache.stem}.{os.getpid()}.tmp")
                with open(tmp, "wb") as f:
                    np.savez_compressed(f, **data)
                tmp.replace(cache)
        self.views = torch.from_numpy(data["views"])  # uint8 [S, V, 4, H, W]
        self.refs = torch.from_numpy(data["refs"])  # uint8 [S, 4, H, W]
        self.poses = torch.from_numpy(data["poses"])  # float32 [S, 2V + 2]

    def _cache_path(self, cache_dir):
        if cache_dir is None:
            return None
        parts = [self.split, self.size, self.seed, asdict(self.settings), asdict(self.sampling)]
        if self.object_sampling != ObjectSampling(orientation="any"):  # the data before ObjectSampling existed keep their names
            parts.append(asdict(self.object_sampling))
        key = json.dumps(parts, sort_keys=True)
        return Path(cache_dir) / f"procedural-{self.split}-{self.size}-{hashlib.sha1(key.encode()).hexdigest()[:10]}.npz"

    def _render_all(self, progress: bool) -> dict:
        jobs = [(seed, self.sampling, self.settings, self.object_sampling) for seed in self.seeds]
        workers = min(self.workers, len(jobs))
        if workers > 1:
            # Objects are independent and seeded, so the result does not depend on the worker count.
            ctx = multiprocessing.get_context("spawn")
            with ctx.Pool(workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
                it = pool.imap(_render_one, jobs, chunksize=8)
                rendered = list(tqdm(it, total=len(jobs), desc=f"rendering {self.split}", disable=not progress))
        else:
            rendered = [_render_one(j) for j in tqdm(jobs, desc=f"rendering {self.split}", disable=not progress)]
        views, refs, poses = zip(*rendered)
        return {"views": np.stack(views), "refs": np.stack(refs), "poses": np.stack(poses)}

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> MultiViewSample:
        one = {name: t[0] for name, t in self.batch(torch.tensor([index])).items()}
        return MultiViewSample(**one, object_seed=self.seeds[index])

    def batch(self, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        """The samples ``indices`` (``[B]``) stacked, in one indexing operation per field (fast for big batches).

        Keys: ``views`` ``[B, V, 4, H, W]``, ``elevation``/``azimuth`` ``[B, V]``, ``reference``
        ``[B, 4, H, W]``, ``reference_elevation``/``reference_azimuth`` ``[B]``.
        """
        return stack_batch(self.views, self.refs, self.poses, indices)

    def object(self, index: int):
        """The ground-truth object of sample ``index`` (SDF, albedo, SDF grid)."""
        return random_object(self.seeds[index], self.object_sampling)
