"""Synthetic stand-ins for ImageNet: a tiny ImageFolder on disk and random batches.

For tests, examples and benchmarks that must run without the real dataset: the folder has
ImageNet's layout (``root/<wnid>/<name>.JPEG``) so the same code path (``imagenet:DIR``,
ImageFolder, evaluation transforms) is exercised end to end.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

__all__ = ["image_folder", "random_batches"]


def image_folder(
    root: str | os.PathLike,
    classes: int = 2,
    per_class: int = 3,
    size: int = 40,
    seed: int = 0,
) -> Path:
    """Write ``classes x per_class`` random RGB JPEGs in ImageNet layout under ``root``.

    Parameters
    ----------
    root : path
        Folder to create (its parents must exist).
    classes, per_class : int
        Number of class folders (``n00000000``, ``n00000001``, ...) and images in each.
    size : int
        Side of the square images in pixels.
    seed : int
        Seed of the pixel values (the same seed writes the same files).

    Returns
    -------
    pathlib.Path
        ``root``.
    """
    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = root / f"n{c:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            # a class-dependent mean colour, so that a model can tell the classes apart
            pixels = rng.normal(60 + 120 * (c % 2), 40, size=(size, size, 3))
            image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
            image.save(folder / f"n{c:08d}_{i:04d}.JPEG", quality=90)
    return root


def random_batches(
    batches: int,
    batch_size: int,
    image_size: int = 224,
    classes: int = 1000,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Fixed random ImageNet-shaped batches ``(B, 3, S, S)`` float32 with labels, on ``device``.

    Generated on the CPU from ``seed`` (identical on every device) and moved once.
    """
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(batches):
        x = torch.randn(batch_size, 3, image_size, image_size, generator=generator)
        y = torch.randint(0, classes, (batch_size,), generator=generator)
        out.append((x.to(device), y.to(device)))
    return out
