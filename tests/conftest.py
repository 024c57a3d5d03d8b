"""Shared fixtures: matrices with known spectra, tiny float64 networks, model-state snapshots.

Fixtures that build things return factories, so each test states its own sizes and seeds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_limits
from torch import nn
from torch.nn import functional as F

# The problems here are tiny: one BLAS / OpenMP thread avoids thread spin-waiting, which
# on a loaded 2-core machine made a 250 x 250 eigh over 100 times slower.
torch.set_num_threads(1)
threadpool_limits(1)

N_EXAMPLES, BATCH_SIZE = 23, 10  # an uneven last batch of 3
N_CLASSES = 3


def _matrix_with_spectrum(eigenvalues: np.ndarray, seed: int = 0) -> torch.Tensor:
    """``Q diag(eigenvalues) Q^T`` for a random orthogonal ``Q``, float64."""
    generator = torch.Generator().manual_seed(seed)
    n = len(eigenvalues)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    lam = torch.as_tensor(eigenvalues, dtype=torch.float64)
    matrix = (q * lam) @ q.T
    return 0.5 * (matrix + matrix.T)


@pytest.fixture(scope="session")
def matrix_with_spectrum() -> Callable[..., torch.Tensor]:
    """Factory ``(eigenvalues, seed=0) -> symmetric float64 matrix`` with that spectrum."""
    return _matrix_with_spectrum


@pytest.fixture
def bulk_and_outliers() -> np.ndarray:
    """A uniform bulk of 197 eigenvalues in [-0.5, 1] plus isolated outliers 6, 9 and 14."""
    bulk = np.linspace(-0.5, 1.0, 197)
    return np.concatenate([bulk, [6.0, 9.0, 14.0]])


def _tiny_network(kind: str, batchnorm: bool, seed: int = 0) -> nn.Sequential:
    """A float64 MLP (5 features) or CNN (1 x 5 x 5 images) with 3 outputs, tanh units."""
    torch.manual_seed(seed)
    norm: list[nn.Module]
    if kind == "mlp":
        norm = [nn.BatchNorm1d(6)] if batchnorm else []
        layers = [nn.Linear(5, 6), *norm, nn.Tanh(), nn.Linear(6, N_CLASSES)]
    elif kind == "cnn":
        norm = [nn.BatchNorm2d(2)] if batchnorm else []
        layers = [
            nn.Conv2d(1, 2, kernel_size=3),
            *norm,
            nn.Tanh(),
            nn.Flatten(),
            nn.Linear(2 * 3 * 3, N_CLASSES),
        ]
    else:
        raise ValueError(kind)
    model = nn.Sequential(*layers).double()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            # Non-trivial running statistics and affine parameters, so eval and train differ.
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.num_batches_tracked.fill_(7)
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.uniform_(module.bias, -0.3, 0.3)
    return model


def _tiny_batches(
    kind: str, n: int = N_EXAMPLES, batch_size: int = BATCH_SIZE, seed: int = 1
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Random float64 inputs for :func:`_tiny_network` and class labels, in fixed batches."""
    generator = torch.Generator().manual_seed(seed)
    shape = (n, 5) if kind == "mlp" else (n, 1, 5, 5)
    x = torch.randn(shape, generator=generator, dtype=torch.float64)
    y = torch.randint(0, N_CLASSES, (n,), generator=generator)
    return [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, n, batch_size)]


@pytest.fixture(scope="session")
def tiny_network() -> Callable[..., nn.Sequential]:
    """Factory ``(kind in {"mlp", "cnn"}, batchnorm: bool, seed=0) -> float64 nn.Sequential``."""
    return _tiny_network


@pytest.fixture(scope="session")
def tiny_batches() -> Callable[..., list[tuple[torch.Tensor, torch.Tensor]]]:
    """Factory ``(kind, n=23, batch_size=10, seed=1) -> [(inputs, labels), ...]``."""
    return _tiny_batches


@dataclass
class ModelState:
    """Everything about a model that hessnb promises never to change."""

    tensors: dict[str, torch.Tensor]
    dtypes: dict[str, torch.dtype]
    training: list[bool]
    requires_grad: dict[str, bool]
    track_running_stats: list[bool | None]
    grads: dict[str, torch.Tensor | None]

    @classmethod
    def of(cls, model: nn.Module) -> ModelState:
        named = [*model.named_parameters(), *model.named_buffers()]
        modules = list(model.modules())
        return cls(
            tensors={n: t.detach().clone() for n, t in named},
            dtypes={n: t.dtype for n, t in named},
            training=[m.training for m in modules],
            requires_grad={n: p.requires_grad for n, p in model.named_parameters()},
            track_running_stats=[getattr(m, "track_running_stats", None) for m in modules],
            grads={
                n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()
            },
        )

    def assert_same(self, model: nn.Module, when: str = "") -> None:
        after = ModelState.of(model)
        assert after.dtypes == self.dtypes, f"dtypes changed {when}"
        assert after.tensors.keys() == self.tensors.keys(), f"tensors changed {when}"
        for name, value in self.tensors.items():
            new = after.tensors[name]
            same = new.shape == value.shape and new.device == value.device
            if value.device.type != "meta":  # meta tensors hold no values
                same = same and torch.equal(new, value)
            assert same, f"{name} changed {when}"
        assert after.training == self.training, f"train/eval flags changed {when}"
        assert after.requires_grad == self.requires_grad, f"requires_grad changed {when}"
        assert after.track_running_stats == self.track_running_stats, (
            f"track_running_stats changed {when}"
        )
        for name, grad in self.grads.items():
            new = after.grads[name]
            same = new is None if grad is None else new is not None and torch.equal(new, grad)
            assert same, f"{name}.grad changed {when}"


@pytest.fixture(scope="session")
def model_state() -> Callable[[nn.Module], ModelState]:
    """``model_state(model)`` snapshots a model; ``.assert_same(model)`` checks it later."""
    return ModelState.of


@dataclass
class DigitsProblem:
    """A small MLP trained on a subset of sklearn's digits, float64, full batch."""

    model: nn.Module
    batches: list[tuple[torch.Tensor, torch.Tensor]]
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@pytest.fixture(scope="session")
def trained_digits_mlp() -> DigitsProblem:
    """A 64-8-10 tanh MLP (610 parameters) trained by 300 full-batch GD steps on 300 digits."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data[:300] / 16.0, dtype=torch.float64)
    y = torch.tensor(digits.target[:300], dtype=torch.int64)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 8), nn.Tanh(), nn.Linear(8, 10)).double()
    # Plain gradient descent: torch.optim's first step imports torch._dynamo (seconds).
    for _ in range(300):
        gradients = torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))
        with torch.no_grad():
            for parameter, gradient in zip(model.parameters(), gradients, strict=True):
                parameter -= 1.0 * gradient
    batches = [(x[:150], y[:150]), (x[150:], y[150:])]
    return DigitsProblem(model, batches, F.cross_entropy)
