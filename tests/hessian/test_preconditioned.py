"""PreconditionedOperator and adam_preconditioner against independent dense references.

The reference Hessian comes from ``torch.autograd.functional.hessian`` of the loss on all
examples at once (no HessianOperator code), and the reference ``P`` from a few-line formula
over the optimizer's state, checked in turn against the step the optimizer actually took.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import hessnb
from hessnb import HessianOperator, MatrixOperator
from hessnb.errors import HessnbError
from hessnb.hessian.preconditioned import (
    PreconditionedOperator,
    PreconditionerError,
    adam_preconditioner,
)
from hessnb.reference.data import digits, fixed_batches
from hessnb.reference.models import mlp
from hessnb.settings import SLQSettings
from hessnb.tracking.record import record_step, record_top

N_EXAMPLES, BATCH_SIZE = 40, 16  # an uneven last batch of 8
HIDDEN = (2,)  # 64 -> 2 -> 10: 160 parameters

Factory = Callable[[nn.Module], torch.optim.Optimizer]


def _adam(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=0.05)


def _train(
    factory: Factory = _adam, steps: int = 3, dtype: torch.dtype = torch.float64, seed: int = 0
) -> tuple[nn.Module, torch.optim.Optimizer, list, torch.Tensor, torch.Tensor]:
    """A tiny MLP on a few dozen digits after ``steps`` full-batch optimizer steps."""
    torch.manual_seed(seed)
    data = digits(images=False, size=N_EXAMPLES, dtype=dtype)
    model = mlp(hidden=HIDDEN).to(dtype)
    optimizer = factory(model)
    x, y = data.tensors
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model, optimizer, fixed_batches(data, batch_size=BATCH_SIZE), x, y


def _hessian(model: nn.Module, x: torch.Tensor, y: torch.Tensor, names: list[str]) -> torch.Tensor:
    """Dense Hessian of the mean loss over ``names`` (in that order), by autograd."""
    params = {n: p.detach().to(torch.float64) for n, p in model.named_parameters()}
    shapes = [params[n].shape for n in names]
    flat = torch.cat([params[n].reshape(-1) for n in names])
    x = x.to(torch.float64)

    def loss(vector: torch.Tensor) -> torch.Tensor:
        pieces = vector.split([math.prod(s) for s in shapes])
        chosen = {n: piece.reshape(s) for n, piece, s in zip(names, pieces, shapes, strict=True)}
        model64 = {**params, **chosen}
        out = torch.func.functional_call(model, model64, (x,))
        return F.cross_entropy(out, y)

    return torch.autograd.functional.hessian(loss, flat)


def _reference_p(
    optimizer: torch.optim.Optimizer, params: list[torch.Tensor], eps: float | None = None
) -> torch.Tensor:
    """``sqrt(v / (1 - beta2**t)) + eps`` per coordinate, straight from the state."""
    out = []
    for p in params:
        group = next(g for g in optimizer.param_groups if any(q is p for q in g["params"]))
        state = optimizer.state[p]
        v = state["max_exp_avg_sq"] if group.get("amsgrad") else state["exp_avg_sq"]
        t = float(state["step"])
        e = group["eps"] if eps is None else eps
        out.append((v.double() / (1 - group["betas"][1] ** t)).sqrt().reshape(-1) + e)
    return torch.cat(out)


def _operator(model: nn.Module, batches: list, **kwargs) -> HessianOperator:
    kwargs.setdefault("hvp", "double-backward")
    return HessianOperator(model, F.cross_entropy, batches, **kwargs)


def _close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-10) -> None:
    atol = rtol * float(expected.abs().max())
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)


# ---------------------------------------------------------------------- dense reference
@pytest.fixture(scope="module")
def adam_run():
    model, optimizer, batches, x, y = _train()
    op = _operator(model, batches)
    h = _hessian(model, x, y, op.names)
    d = _reference_p(optimizer, list(model.parameters())).rsqrt()
    return model, optimizer, op, d[:, None] * h * d[None, :]


def test_dense_and_products_match_the_reference(adam_run):
    _, optimizer, op, reference = adam_run
    wrapped = PreconditionedOperator.from_adam(op, optimizer)
    assert wrapped.shape == (op.n_params, op.n_params) == reference.shape
    _close(wrapped.dense(), reference)
    eye = torch.eye(op.n_params, dtype=torch.float64)
    _close(wrapped.matmat(eye), reference)
    _close(wrapped @ eye[:, :3], reference[:, :3])
    _close(wrapped.matvec(eye[:, 5]), reference[:, 5])
    _close(wrapped @ eye[:, 5].numpy(), reference[:, 5])
    with pytest.raises(ValueError, match=r"shape \(160, k\)"):
        wrapped.matmat(eye[:5])


def test_spectrum_of_the_wrapper_and_its_graph_cache(adam_run):
    _, optimizer, op, reference = adam_run
    wrapped = PreconditionedOperator.from_adam(op, optimizer)
    passes = op.data_passes()
    ds = hessnb.spectrum(wrapped, lanczos_steps=op.n_params, top_k=5, progress=False)
    assert op.data_passes() - passes == 1  # one fresh pass fills the inner graph cache
    exact = np.linalg.eigvalsh(reference.numpy())[::-1][:5]
    np.testing.assert_allclose(ds.top_eigenvalues.values, exact, rtol=1e-8)
    assert ds.attrs["preconditioner"] == "adam"
    assert ds.attrs["preconditioner_optimizer"] == "Adam"
    assert ds.attrs["preconditioner_eps"] == 1e-8
    assert ds.attrs["preconditioner_bias_correction"] == 1
    assert ds.attrs["model"] == "Sequential"  # the inner provenance is kept
    assert ds.attrs["n_params"] == op.n_params


def test_the_wrapper_serves_a_tracker_record(adam_run):
    _, optimizer, op, reference = adam_run
    wrapped = PreconditionedOperator.from_adam(op, optimizer)
    assert wrapped.names == op.names and wrapped.n_params == op.n_params
    assert wrapped.bn_mode == op.bn_mode and wrapped.space is op.space
    g = op.gradient()
    d = wrapped.scale
    _close(wrapped.gradient(), d * g)
    evaluation = wrapped.evaluate(gradient=True)
    _close(evaluation["gradient"], d * g)
    assert evaluation["loss"] == pytest.approx(op.evaluate()["loss"], rel=1e-12)
    settings = SLQSettings(lanczos_steps=20, probes=1, top_k=3, seed=0)
    recorded = record_step(wrapped, 7, settings)
    record = recorded.dataset
    assert record.attrs["preconditioner"] == "adam"
    assert float(record.grad_norm[0]) == pytest.approx(float((d * g).norm()), rel=1e-10)
    exact = np.linalg.eigvalsh(reference.numpy())[-1]
    assert float(record.top_eigenvalues[0, 0]) == pytest.approx(exact, rel=1e-6)
    top = record_top(wrapped, 8, settings, start=recorded.vectors).dataset
    assert float(top.top_eigenvalues[0, 0]) == pytest.approx(exact, rel=1e-6)
    assert top.attrs["preconditioner"] == "adam"
    # an update in the preconditioned coordinates: P^{1/2} delta
    delta = torch.linspace(-1, 1, op.n_params, dtype=torch.float64)
    _close(wrapped.scale_update(delta), delta / d)
    _close(wrapped.scale_update(op.unflatten(delta)), delta / d)


# ---------------------------------------------------------------------- Adam's diagonal
def _amsgrad(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=0.05, amsgrad=True)


def _adamw(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.1)


def _adamax(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.Adamax(model.parameters(), lr=0.05, eps=1e-3)


@pytest.mark.parametrize(
    ("factory", "decay"), [(_adam, 0.0), (_amsgrad, 0.0), (_adamw, 0.1), (_adamax, 0.0)]
)
def test_p_is_what_the_last_step_divided_by(factory, decay):
    model, optimizer, _, x, y = _train(factory, steps=2)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer.zero_grad()
    F.cross_entropy(model(x), y).backward()
    optimizer.step()
    params = list(model.parameters())
    p_flat = adam_preconditioner(optimizer, params)
    group = optimizer.param_groups[0]
    lr, (beta1, _) = group["lr"], group["betas"]
    first = torch.cat([optimizer.state[p]["exp_avg"].reshape(-1) for p in params])
    t = float(optimizer.state[params[0]]["step"])
    old = torch.cat([b.reshape(-1) for b in before])
    new = torch.cat([p.detach().reshape(-1) for p in params])
    expected = old * (1 - lr * decay) - lr * first / (1 - beta1**t) / p_flat
    _close(new, expected, rtol=1e-12)


def test_adamw_amsgrad_and_nadam_follow_the_formula():
    for factory in (_adamw, _amsgrad, lambda m: torch.optim.NAdam(m.parameters(), lr=0.02)):
        model, optimizer, *_ = _train(factory)
        params = list(model.parameters())
        _close(adam_preconditioner(optimizer, params), _reference_p(optimizer, params), 1e-14)
    model, optimizer, batches, *_ = _train(_amsgrad)
    state = optimizer.state[next(model.parameters())]
    assert not torch.equal(state["max_exp_avg_sq"], state["exp_avg_sq"])  # a real maximum
    wrapped = PreconditionedOperator.from_adam(_operator(model, batches), optimizer)
    assert wrapped.provenance()["preconditioner_amsgrad"] == 1


def test_adamax_uses_its_infinity_norm():
    model, optimizer, *_ = _train(_adamax)
    params = list(model.parameters())
    expected = torch.cat([optimizer.state[p]["exp_inf"].reshape(-1) for p in params])
    _close(adam_preconditioner(optimizer, params), expected.double(), 1e-15)
    with pytest.raises(PreconditionerError, match="Adamax adds its eps inside"):
        adam_preconditioner(optimizer, params, eps=1e-8)


def test_per_group_eps_and_betas():
    def grouped(model: nn.Module) -> torch.optim.Optimizer:
        first, second = model[1], model[3]
        return torch.optim.Adam(
            [
                {"params": first.parameters(), "betas": (0.8, 0.95), "eps": 1e-3},
                {"params": second.parameters()},
            ],
            lr=0.05,
            eps=1e-6,
        )

    model, optimizer, batches, x, y = _train(grouped)
    op = _operator(model, batches)
    params = list(model.parameters())
    _close(adam_preconditioner(optimizer, op), _reference_p(optimizer, params), 1e-14)
    wrapped = PreconditionedOperator.from_adam(op, optimizer)
    assert wrapped.provenance()["preconditioner_eps"] == [1e-3, 1e-6]
    d = _reference_p(optimizer, params).rsqrt()
    _close(wrapped.dense(), d[:, None] * _hessian(model, x, y, op.names) * d[None, :])
    # a global override and no bias correction
    state = optimizer.state[params[0]]
    raw = state["exp_avg_sq"].double().sqrt().reshape(-1) + 0.5
    got = adam_preconditioner(optimizer, op, eps=0.5, bias_correction=False)
    _close(got[: raw.numel()], raw, 1e-15)
    _close(
        adam_preconditioner(optimizer, op, eps=0.5)[:2], _reference_p(optimizer, params, 0.5)[:2]
    )


def test_a_parameter_subset_in_its_own_order():
    model, optimizer, batches, x, y = _train()
    names = ["3.bias", "1.weight"]
    op = _operator(model, batches, params=names)
    by_name = dict(model.named_parameters())
    d = _reference_p(optimizer, [by_name[n] for n in names]).rsqrt()
    assert d.numel() == op.n_params == 10 + 128
    wrapped = PreconditionedOperator.from_adam(op, optimizer)
    _close(wrapped.diagonal.rsqrt(), d, 1e-15)
    _close(wrapped.dense(), d[:, None] * _hessian(model, x, y, names) * d[None, :])


def test_a_float32_model_with_a_float64_hessian_is_matched_by_name():
    model, optimizer, batches, *_ = _train(dtype=torch.float32)
    op = _operator(model, batches, dtype=torch.float64)
    assert op.model is not model  # a private copy: the optimizer holds the originals
    got = adam_preconditioner(optimizer, op)
    assert got.dtype == torch.float64
    _close(got, _reference_p(optimizer, list(model.parameters())), 1e-14)


# ---------------------------------------------------------------------- planted spectra
def test_planted_diagonal_has_eigenvalues_a_over_p():
    a = torch.linspace(-2.0, 5.0, 30, dtype=torch.float64)
    p = torch.linspace(0.5, 3.0, 30, dtype=torch.float64)
    wrapped = PreconditionedOperator(MatrixOperator(torch.diag(a)), p)
    _close(wrapped.dense(), torch.diag(a / p), 1e-15)
    ds = hessnb.spectrum(wrapped, lanczos_steps=30, top_k=4, progress=False)
    np.testing.assert_allclose(ds.top_eigenvalues.values, np.sort((a / p).numpy())[::-1][:4])
    assert ds.attrs["preconditioner"] == "diagonal"
    assert "model" in ds.attrs


def test_planted_matrix_is_similar_to_p_inverse_a(matrix_with_spectrum):
    a = matrix_with_spectrum(np.linspace(-1.0, 4.0, 25), seed=3).numpy()
    p = np.geomspace(0.1, 10.0, 25)
    wrapped = PreconditionedOperator(a, p)  # a numpy array and a numpy diagonal
    expected = np.sort(np.linalg.eigvals(a / p[:, None]).real)
    np.testing.assert_allclose(np.linalg.eigvalsh(wrapped.dense().numpy()), expected, rtol=1e-10)
    nested = PreconditionedOperator(wrapped, np.full(25, 4.0))  # wrappers compose
    _close(nested.dense(), wrapped.dense() / 4.0, 1e-14)
    with pytest.raises(AttributeError, match="has no 'names'"):
        _ = wrapped.names
    with pytest.raises(AttributeError, match=r"gradient\(\) needs a wrapped HessianOperator"):
        wrapped.gradient()


# ---------------------------------------------------------------------- errors
def test_sgd_has_no_second_moments():
    for factory in (
        lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9),
        lambda m: torch.optim.RMSprop(m.parameters(), lr=0.01),
    ):
        model, optimizer, *_ = _train(factory, steps=1)
        with pytest.raises(PreconditionerError, match="keeps no second-moment estimates"):
            adam_preconditioner(optimizer, list(model.parameters()))
    assert issubclass(PreconditionerError, HessnbError)
    assert issubclass(PreconditionerError, ValueError)


def test_adam_before_its_first_step():
    model, optimizer, batches, *_ = _train(steps=0)
    op = _operator(model, batches)
    with pytest.raises(PreconditionerError, match=r"no second moments for 1\.weight yet"):
        PreconditionedOperator.from_adam(op, optimizer)


def test_parameters_the_optimizer_does_not_hold():
    model, _, batches, *_ = _train(steps=0)
    optimizer = torch.optim.Adam(model[3].parameters(), lr=0.05)
    op = _operator(model, batches)
    with pytest.raises(PreconditionerError, match=r"does not hold 2 .*1\.weight, 1\.bias.*params="):
        adam_preconditioner(optimizer, op)


def test_a_parameter_that_never_had_a_gradient():
    model, optimizer, batches, x, y = _train(steps=0)
    model[1].bias.requires_grad_(False)  # frozen during training, then unfrozen
    optimizer.zero_grad()
    F.cross_entropy(model(x), y).backward()
    optimizer.step()
    model[1].bias.requires_grad_(True)
    with pytest.raises(PreconditionerError, match=r"for 1\.bias yet.*params="):
        adam_preconditioner(optimizer, _operator(model, batches))


def test_unsupported_optimizers_and_operators():
    model, optimizer, *_ = _train(lambda m: torch.optim.RAdam(m.parameters(), lr=0.01), steps=1)
    with pytest.raises(PreconditionerError, match="RAdam is not supported: RAdam rectifies"):
        adam_preconditioner(optimizer, list(model.parameters()))
    model, optimizer, *_ = _train(steps=1)
    with pytest.raises(TypeError, match=r"does not say which parameters.*params="):
        adam_preconditioner(optimizer, MatrixOperator(torch.eye(3)))
    with pytest.raises(TypeError, match=r"must be a torch\.optim\.Optimizer"):
        adam_preconditioner("adam", list(model.parameters()))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="eps must be a finite number >= 0"):
        adam_preconditioner(optimizer, list(model.parameters()), eps=-1.0)


@pytest.mark.parametrize(
    ("diagonal", "match"),
    [
        (torch.ones(4), r"shape \(4,\) but the MatrixOperator has dimension 3"),
        (torch.ones(3, 1), r"shape \(3, 1\)"),
        (torch.tensor([1.0, 0.0, 2.0]), r"1 entries <= 0 \(the first, index 1, is 0\.0\)"),
        (torch.tensor([1.0, -3.0, -2.0]), "2 entries <= 0.*keep eps > 0"),
        (torch.tensor([1.0, 2.0, math.nan]), "1 non-finite entries.*index 2"),
        (torch.tensor([math.inf, 2.0, 3.0]), "non-finite"),
    ],
)
def test_bad_diagonals(diagonal, match):
    with pytest.raises(ValueError, match=match):
        PreconditionedOperator(MatrixOperator(torch.eye(3)), diagonal)


def test_eps_zero_gives_a_zero_diagonal_that_is_refused():
    model, optimizer, batches, *_ = _train(steps=1)
    with torch.no_grad():  # a dead input pixel: its weights never get a gradient
        optimizer.state[model[1].weight]["exp_avg_sq"][:, 0] = 0.0
    op = _operator(model, batches)
    with pytest.raises(ValueError, match="entries <= 0"):
        PreconditionedOperator.from_adam(op, optimizer, eps=0.0)
