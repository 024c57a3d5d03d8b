"""Datasets with evaluation transforms, and fixed batches for the Hessian.

- :func:`digits`: scikit-learn's bundled 8x8 digits (offline; default for demos and tests).
- :func:`cifar10`: CIFAR-10 through torchvision (downloaded on first use).
- :func:`imagenet`: an ImageFolder (ImageNet layout) with a per-class subset.

No augmentation anywhere: the Hessian is taken over a fixed dataset.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "cifar10",
    "digits",
    "fixed_batches",
    "imagenet",
    "load",
    "per_class_subset",
]

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def digits(
    images: bool = True,
    size: int | None = None,
    pad_to: int | None = None,
    channels: int = 1,
    dtype: torch.dtype = torch.float32,
) -> TensorDataset:
    """scikit-learn's 1,797 handwritten digits (8x8, 10 classes), standardised.

    Parameters
    ----------
    images : bool
        ``(N, channels, 8, 8)`` images (True) or flat ``(N, 64)`` vectors.
    size : int, optional
        Keep the first ``size`` examples (a fixed, class-balanced-enough prefix).
    pad_to : int, optional
        Zero-pad images to ``pad_to x pad_to`` (e.g. 32 to feed a CIFAR ResNet).
    channels : int
        Repeat the grey channel (3 for networks built for colour images).
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise ImportError(
            "the digits data set comes with scikit-learn; install it with "
            "pip install 'hessnb[demo]' (or pip install scikit-learn)"
        ) from exc

    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float64)
    x = (x - x.mean()) / x.std()
    y = torch.tensor(bunch.target, dtype=torch.int64)
    if size is not None:
        if not 1 <= size <= len(y):
            raise ValueError(f"size must lie in 1..{len(y)}, got {size}")
        x, y = x[:size], y[:size]
    if images:
        x = x.unsqueeze(1)
        if pad_to is not None:
            if pad_to < 8:
                raise ValueError(f"pad_to must be >= 8, got {pad_to}")
            lo = (pad_to - 8) // 2
            x = torch.nn.functional.pad(x, (lo, pad_to - 8 - lo, lo, pad_to - 8 - lo))
        x = x.repeat(1, channels, 1, 1)
    else:
        x = x.reshape(len(x), -1)
    return TensorDataset(x.to(dtype), y)


def _eval_transform(
    size: int | None, crop: int | None, mean: Sequence[float], std: Sequence[float]
) -> Any:
    from torchvision import transforms

    steps: list[Any] = []
    if size is not None:
        steps.append(transforms.Resize(size))
    if crop is not None:
        steps.append(transforms.CenterCrop(crop))
    steps += [transforms.ToTensor(), transforms.Normalize(mean, std)]
    return transforms.Compose(steps)


def cifar10(
    root: str | os.PathLike,
    train: bool = True,
    download: bool = True,
    subset: int | None = None,
    verify: bool = True,
) -> Dataset:
    """CIFAR-10 with evaluation transforms (ToTensor + per-channel normalisation).

    Parameters
    ----------
    root : path
        Folder holding (or receiving) ``cifar-10-batches-py``.
    download : bool
        Download when missing (needs a network).
    subset : int, optional
        Keep the first ``subset // 10`` images of every class.
    verify : bool
        Check torchvision's MD5 sums. ``False`` accepts any files in CIFAR's on-disk format
        (tests use small hand-made files).
    """
    from torchvision.datasets import CIFAR10

    cls = CIFAR10
    if not verify:

        class _Unverified(CIFAR10):
            def _check_integrity(self) -> bool:
                base = os.path.join(self.root, self.base_folder)
                names = [n for n, _ in self.train_list + self.test_list]
                return all(os.path.exists(os.path.join(base, n)) for n in names)

            def _load_meta(self) -> None:
                import pickle

                path = os.path.join(self.root, self.base_folder, self.meta["filename"])
                with open(path, "rb") as handle:
                    self.classes = pickle.load(handle, encoding="latin1")[self.meta["key"]]
                self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

        cls = _Unverified
    try:
        data = cls(
            str(root),
            train=train,
            download=download and verify,
            transform=_eval_transform(None, None, CIFAR10_MEAN, CIFAR10_STD),
        )
    except (RuntimeError, OSError) as exc:  # missing files, or a failed download
        raise FileNotFoundError(
            f"CIFAR-10 is not in {root} and could not be downloaded ({exc}); download it "
            "where a network is available, or use hessnb.data.digits()"
        ) from exc
    if subset is not None:
        data = per_class_subset(data, max(1, subset // 10))
    return data


def imagenet(
    root: str | os.PathLike,
    image_size: int = 224,
    subset_per_class: int | None = None,
) -> Dataset:
    """An ImageFolder in ImageNet layout (``root/class/image``) with evaluation transforms.

    Resize to ``image_size * 8 / 7`` (256 for 224), centre-crop ``image_size``, normalise.
    ``subset_per_class`` keeps the first N images of every class (sorted file order).
    """
    from torchvision.datasets import ImageFolder

    if not os.path.isdir(root):
        raise FileNotFoundError(f"no ImageNet folder at {root} (expected root/class/image.JPEG)")
    data = ImageFolder(
        str(root),
        transform=_eval_transform(
            round(image_size * 8 / 7), image_size, IMAGENET_MEAN, IMAGENET_STD
        ),
    )
    if subset_per_class is not None:
        data = per_class_subset(data, subset_per_class)
    return data


def per_class_subset(data: Dataset, per_class: int) -> Subset:
    """The first ``per_class`` examples of every class, in dataset order."""
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    targets = getattr(data, "targets", None)
    if targets is None:
        targets = [int(data[i][1]) for i in range(len(data))]
    targets = np.asarray(targets)
    keep = np.concatenate([np.flatnonzero(targets == c)[:per_class] for c in np.unique(targets)])
    return Subset(data, np.sort(keep).tolist())


def fixed_batches(
    data: Dataset | tuple[torch.Tensor, torch.Tensor],
    batch_size: int = 512,
    device: torch.device | str | None = None,
    num_workers: int = 0,
    materialise: bool = True,
) -> list[tuple[torch.Tensor, torch.Tensor]] | DataLoader:
    """Batches in a fixed order (no shuffling) for the full-dataset Hessian.

    Parameters
    ----------
    data : Dataset or (inputs, targets)
    batch_size : int
    device : device, optional
        Move materialised batches there once.
    materialise : bool
        Return a list of tensors held in memory (small datasets) instead of a
        non-shuffling DataLoader (large datasets, e.g. ImageNet).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if isinstance(data, tuple):
        data = TensorDataset(*data)
    loader = DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    if not materialise:
        return loader
    return [(x.to(device) if device else x, y.to(device) if device else y) for x, y in loader]


def load(spec: str, **kwargs: Any) -> Dataset:
    """Dataset from a CLI spec: ``digits``, ``cifar10:DIR`` or ``imagenet:DIR``."""
    name, _, where = spec.partition(":")
    if name == "digits":
        return digits(**kwargs)
    if name == "cifar10" and where:
        return cifar10(where, **kwargs)
    if name == "imagenet" and where:
        return imagenet(where, **kwargs)
    raise ValueError(f"unknown data {spec!r}; use digits, cifar10:DIR or imagenet:DIR")
