"""The data pass: distributed reduction of its totals, determinism keyed to the parameters."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

import hessnb
from hessnb.hessian.datapass import DataPass
from hessnb.hessian.params import ParameterSpace


def _setup(tiny_network, tiny_batches, **kwargs):
    model = tiny_network("cnn", True)
    batches = tiny_batches("cnn")
    return model, batches, DataPass(ParameterSpace(model), F.cross_entropy, batches, **kwargs)


def test_reduce_hook_sums_totals(tiny_network, tiny_batches):
    """The hook sees one flat tensor per pass; doubling it keeps every mean unchanged."""
    model, batches, plain = _setup(tiny_network, tiny_batches, bn_mode="train")
    doubled = DataPass(
        ParameterSpace(model), F.cross_entropy, batches, bn_mode="train", reduce=lambda f: 2 * f
    )
    v = torch.randn(plain.space.n_params, 2, dtype=torch.float64)
    a, b = plain.run(v, need_gradient=True), doubled.run(v, need_gradient=True)
    torch.testing.assert_close(b.products, a.products, rtol=1e-13, atol=0)
    torch.testing.assert_close(b.gradient, a.gradient, rtol=1e-13, atol=0)
    assert b.loss == pytest.approx(a.loss, rel=1e-14) and b.examples == 2 * a.examples
    assert b.correct == pytest.approx(a.correct, rel=1e-14)


def test_a_failing_rank_stops_every_rank_instead_of_hanging(tiny_network, tiny_batches):
    """Ranks join the all-reduce even after a local error, with a failure flag."""
    calls = []

    def other_rank_failed(flat: torch.Tensor) -> torch.Tensor:
        calls.append(flat.clone())
        flat = flat.clone()
        flat[4] += 1.0  # the failure flag of one other rank
        return flat

    _, _, data = _setup(tiny_network, tiny_batches, reduce=other_rank_failed)
    with pytest.raises(RuntimeError, match="other process"):
        data.run(torch.randn(data.space.n_params, 1, dtype=torch.float64))
    calls.clear()
    data.reduce = lambda flat: calls.append(flat.clone()) or flat
    data.loss_fn = lambda out, y: F.cross_entropy(out, y) * float("nan")  # fails locally
    with pytest.raises(FloatingPointError, match="loss is nan"):
        data.run()
    assert len(calls) == 1 and calls[0][4] == 1.0  # it still joined, flagging its failure


def test_the_operator_survives_optimizer_steps(tiny_network, tiny_batches):
    """Determinism is checked between passes at the same parameters, not across steps."""
    model = tiny_network("cnn", True)
    batches = tiny_batches("cnn")
    op = hessnb.HessianOperator(model, F.cross_entropy, batches, bn_mode="train")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    v = torch.randn(op.n_params, dtype=torch.float64)
    for _ in range(3):
        op.matvec(v)
        model.train()
        optimizer.zero_grad()
        x, y = batches[0]
        F.cross_entropy(model(x), y).backward()
        optimizer.step()  # also updates the BN running statistics
        moved = op.matvec(v)
        fresh = hessnb.HessianOperator(model, F.cross_entropy, batches, bn_mode="train")
        torch.testing.assert_close(moved, fresh.matvec(v), rtol=1e-12, atol=1e-14)


def test_shuffled_batches_at_the_same_parameters_are_still_caught(tiny_network, tiny_batches):
    model = tiny_network("mlp", False)
    batches = list(tiny_batches("mlp"))
    op = hessnb.HessianOperator(model, F.cross_entropy, batches, graph_cache=False)
    batches.reverse()  # the same parameters, another order
    with pytest.raises(hessnb.NonDeterministicError, match="same parameters"):
        op.gradient()


def test_a_dtype_copy_follows_the_model(tiny_network, tiny_batches):
    model = tiny_network("mlp", False).float()
    batches = [(x.float(), y) for x, y in tiny_batches("mlp")]
    op = hessnb.HessianOperator(model, F.cross_entropy, batches, dtype=torch.float64)
    assert op.model is not model and op.dtype == torch.float64
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5)
    expected = hessnb.HessianOperator(
        model, F.cross_entropy, batches, dtype=torch.float64
    ).gradient()
    torch.testing.assert_close(op.gradient(), expected, rtol=1e-12, atol=1e-14)


def test_a_batch_of_one_in_bn_train_mode_gets_a_specific_error(tiny_network, tiny_batches):
    model = tiny_network("mlp", True)
    x, y = tiny_batches("mlp")[0]
    with pytest.raises(ValueError, match="batch 1 holds one example"):
        hessnb.HessianOperator(model, F.cross_entropy, [(x, y), (x[:1], y[:1])])
    op = hessnb.HessianOperator(model, F.cross_entropy, [(x, y), (x[:1], y[:1])], bn_mode="eval")
    assert op.n_examples == len(y) + 1
