"""Reference models: small MLP and CNN for digits, and the paper's CIFAR ResNet-32.

``resnet32(bn=...)`` follows He et al. (2016), the network of the paper's batch-norm
experiment: three stages of basic blocks at widths ``w, 2w, 4w`` (``w = 16`` in the
paper), global average pooling and a linear classifier. ``width`` and ``blocks`` shrink
it for CPU work.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from hessnb.reference.norms import batch_norm

__all__ = ["MODELS", "build", "mlp", "resnet32", "small_cnn"]


def mlp(
    in_features: int = 64,
    hidden: Sequence[int] = (32,),
    classes: int = 10,
    bn: bool | str = False,
    activation: type[nn.Module] = nn.Tanh,
) -> nn.Sequential:
    """A fully connected network ``in -> hidden... -> classes`` (flattens its input).

    ``bn``: False, True (batch norm after each hidden layer) or ``"population"`` (see
    :mod:`hessnb.reference.norms`).
    """
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for h in hidden:
        layers.append(nn.Linear(width, h))
        norm = batch_norm(bn, h, dims=1)
        if norm is not None:
            layers.append(norm)
        layers.append(activation())
        width = h
    layers.append(nn.Linear(width, classes))
    return nn.Sequential(*layers)


def small_cnn(
    channels: Sequence[int] = (8, 16),
    classes: int = 10,
    bn: bool | str = False,
    in_channels: int = 1,
    image_size: int = 8,
    hidden: int = 32,
    pool: bool = False,
) -> nn.Sequential:
    """A small CNN: 3x3 convolutions (+BN) with ReLU, then the head.

    Parameters
    ----------
    channels : sequence of int
        Output channels of each convolution.
    bn : {False, True, "population"}
        Batch norm after every convolution (and the hidden linear layer); ``"population"``
        normalises with running statistics in training too (:mod:`hessnb.reference.norms`).
    pool : bool
        Head: global average pooling and one linear layer (a small all-convolutional
        network, as the ResNets have), instead of ``flatten -> hidden -> classes``.

    With the defaults on 8x8 digits it has about 34k parameters; ``channels=(16, 32),
    pool=True`` has about 5k.
    """
    layers: list[nn.Module] = []
    width = in_channels
    for c in channels:
        norm = batch_norm(bn, c, dims=2)
        layers.append(nn.Conv2d(width, c, 3, padding=1, bias=norm is None))
        if norm is not None:
            layers.append(norm)
        layers.append(nn.ReLU())
        width = c
    if pool:
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, classes)]
        return nn.Sequential(*layers)
    layers += [nn.Flatten(), nn.Linear(width * image_size * image_size, hidden)]
    norm = batch_norm(bn, hidden, dims=1)
    if norm is not None:
        layers.append(norm)
    layers += [nn.ReLU(), nn.Linear(hidden, classes)]
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a shortcut (1x1 projection when the shape changes)."""

    def __init__(self, in_planes: int, planes: int, stride: int, bn: bool) -> None:
        super().__init__()
        norm = nn.BatchNorm2d if bn else (lambda _c: nn.Identity())
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=not bn)
        self.bn1 = norm(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=not bn)
        self.bn2 = norm(planes)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=not bn), norm(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet for 32x32 images (He et al. 2016, section 4.2), optionally without BN."""

    def __init__(
        self,
        blocks: int = 5,
        width: int = 16,
        classes: int = 10,
        bn: bool = True,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.bn = bn
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, 1, 1, bias=not bn),
            nn.BatchNorm2d(width) if bn else nn.Identity(),
            nn.ReLU(),
        )
        stages, planes = [], width
        for i, w in enumerate((width, 2 * width, 4 * width)):
            for j in range(blocks):
                stride = 2 if (i > 0 and j == 0) else 1
                stages.append(BasicBlock(planes, w, stride, bn))
                planes = w
        self.layers = nn.Sequential(*stages)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(planes, classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(self.stem(x)))


def resnet32(
    bn: bool = True, width: int = 16, classes: int = 10, blocks: int = 5, in_channels: int = 3
) -> CifarResNet:
    """The paper's CIFAR-10 ResNet-32 (``blocks=5`` per stage, 6 * 5 + 2 = 32 layers).

    Parameters
    ----------
    bn : bool
        With batch normalisation after every convolution (True) or none at all (False,
        convolutions get biases instead).
    width : int
        Channels of the first stage (16 in the paper; 4 or 8 for quick CPU runs).
    blocks : int
        Basic blocks per stage (5 gives ResNet-32; 1 gives a quick ResNet-8).
    """
    return CifarResNet(blocks=blocks, width=width, classes=classes, bn=bn, in_channels=in_channels)


MODELS = {"mlp": mlp, "cnn": small_cnn, "resnet32": resnet32}


def build(name: str, **kwargs: object) -> nn.Module:
    """Build a model by name.

    ``name`` is a reference model (``mlp``, ``cnn``, ``resnet32``), a torchvision
    architecture (``resnet18``, ``resnet50``, ...), or ``"package.module:factory"`` for a
    user's own model (``factory(**kwargs)`` must return an ``nn.Module``).
    """
    if name in MODELS:
        return MODELS[name](**kwargs)
    if ":" in name:
        import importlib

        module_name, _, attribute = name.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"cannot load model factory {name!r}: {exc}") from exc
        model = factory(**kwargs)
        if not isinstance(model, nn.Module):
            raise TypeError(f"{name} returned a {type(model).__name__}, not an nn.Module")
        return model
    import torchvision

    if name in torchvision.models.list_models(module=torchvision.models):
        return torchvision.models.get_model(name, weights=None, **kwargs)
    raise ValueError(
        f"unknown model {name!r}; choose one of {sorted(MODELS)}, a torchvision model name "
        "such as resnet18, or 'package.module:factory' for your own model"
    )
