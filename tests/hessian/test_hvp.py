"""HVP backends: every backend against a dense float64 Hessian built independently.

The reference is ``torch.autograd.functional.hessian`` of the batch-size weighted dataset
loss as a function of one flat parameter vector (``torch.func.functional_call`` on a copy
of the model with the Hessian's batch-norm semantics set by hand), so it shares neither
the operator's data pass, weighting and flattening nor its per-batch backends.
"""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from hessnb import HessianOperator
from hessnb.errors import NonFiniteError
from hessnb.hessian import hvp
from hessnb.hessian.datapass import BN_TYPES, DataPass
from hessnb.hessian.params import ParameterSpace

UNCOMPILED = ["double-backward", "forward-over-reverse"]
CASES = list(itertools.product(["mlp", "cnn"], ["none", "eval", "train"], ["all", "subset"]))


def reference_hessian(model: nn.Module, batches: list, bn: str, names: list[str]) -> torch.Tensor:
    """Dense float64 Hessian of the mean loss over ``batches`` in the parameters ``names``."""
    model = copy.deepcopy(model).double().eval()
    for module in model.modules():
        if bn == "train" and isinstance(module, BN_TYPES):
            module.train()
            module.track_running_stats = False
    shapes = [dict(model.named_parameters())[n].shape for n in names]
    total = sum(len(y) for _, y in batches)

    def loss(flat: torch.Tensor) -> torch.Tensor:
        pieces = flat.split([s.numel() for s in shapes])
        params = {n: p.reshape(s) for n, p, s in zip(names, pieces, shapes, strict=True)}
        return sum(
            len(y) / total * F.cross_entropy(functional_call(model, params, (x,)), y)
            for x, y in batches
        )

    start = torch.cat([dict(model.named_parameters())[n].detach().reshape(-1) for n in names])
    return torch.autograd.functional.hessian(loss, start)


def _selection(model: nn.Sequential, which: str) -> list[str] | None:
    """None (all parameters) or the first layer's weight and the last layer's bias."""
    return None if which == "all" else ["0.weight", f"{len(model) - 1}.bias"]


def _block(n: int, k: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).norm() / want.norm())


@pytest.mark.parametrize("backend", UNCOMPILED)
@pytest.mark.parametrize(("kind", "bn", "which"), CASES, ids=lambda v: str(v))
def test_backend_matches_the_dense_float64_hessian(
    backend, kind, bn, which, tiny_network, tiny_batches
):
    model = tiny_network(kind, batchnorm=bn != "none")
    batches = tiny_batches(kind)  # 23 examples: batches of 10, 10 and 3
    params = _selection(model, which)
    op = HessianOperator(
        model,
        F.cross_entropy,
        batches,
        params=params,
        bn_mode="eval" if bn == "none" else bn,
        hvp=backend,
    )
    assert op.hvp == backend and op.provenance()["hvp"] == backend
    reference = reference_hessian(model, batches, bn, op.names)
    vectors = _block(op.n_params, 8)
    for k in (1, 8):
        got = op.matmat(vectors[:, :k])
        assert got.shape == (op.n_params, k) and got.dtype == torch.float64
        assert _relative_error(got, reference @ vectors[:, :k]) < 1e-6
    with op.reuse_graphs():  # the graph cache (double backward) gives the same products
        for _ in range(2):
            assert _relative_error(op.matmat(vectors), reference @ vectors) < 1e-6


@pytest.mark.slow
def test_compiled_backend_matches_the_dense_float64_hessian(tiny_network, tiny_batches):
    """One case only: each compilation takes tens of seconds on a loaded 2-core CPU."""
    reason = hvp.compile_unavailable_reason(torch.device("cpu"))
    if reason is not None:
        pytest.skip(reason)
    model = tiny_network("mlp", batchnorm=True)
    batches = tiny_batches("mlp", n=20)  # one batch shape: one compilation per block width
    op = HessianOperator(
        model, F.cross_entropy, batches, params=_selection(model, "subset"), hvp="compile"
    )
    assert op.provenance()["hvp"] == "compile"
    reference = reference_hessian(model, batches, "train", op.names)
    vectors = _block(op.n_params, 8)
    for k in (1, 8):
        assert _relative_error(op.matmat(vectors[:, :k]), reference @ vectors[:, :k]) < 1e-6


@pytest.mark.parametrize("bn_mode", ["eval", "train"])
def test_functional_pass_gives_the_same_gradient_loss_and_accuracy(
    bn_mode, tiny_network, tiny_batches
):
    model = tiny_network("cnn", batchnorm=True)
    batches = tiny_batches("cnn")
    space = ParameterSpace(model)
    passes = {
        name: DataPass(space, F.cross_entropy, batches, bn_mode=bn_mode, hvp=name)
        for name in UNCOMPILED
    }
    vectors = _block(space.n_params, 3)
    double, forward = (p.run(vectors, need_gradient=True) for p in passes.values())
    np.testing.assert_allclose(forward.products, double.products, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(forward.gradient, double.gradient, rtol=1e-10, atol=1e-13)
    assert forward.loss == pytest.approx(double.loss, rel=1e-12)
    assert forward.correct == double.correct and forward.examples == double.examples == 23


def test_float32_backends_agree_to_one_in_a_million(tiny_network, tiny_batches):
    model = tiny_network("cnn", batchnorm=True).float()
    batches = [(x.float(), y) for x, y in tiny_batches("cnn")]
    ops = {name: HessianOperator(model, F.cross_entropy, batches, hvp=name) for name in UNCOMPILED}
    vectors = _block(ops["double-backward"].n_params, 8)
    double, forward = (op.matmat(vectors) for op in ops.values())
    assert _relative_error(forward, double) < 1e-6


def test_functional_backends_keep_no_graphs_and_leave_the_model_alone(
    tiny_network, tiny_batches, model_state
):
    model = tiny_network("cnn", batchnorm=True).train()
    model[0].bias.requires_grad_(False)  # a frozen parameter stays frozen
    before = model_state(model)
    op = HessianOperator(model, F.cross_entropy, tiny_batches("cnn"), hvp="forward-over-reverse")
    assert op.graph_cache_info()["enabled"] is False
    passes = op.data_passes()
    with op.reuse_graphs():
        op.matmat(_block(op.n_params, 2))
        op.matmat(_block(op.n_params, 2))
    assert op.data_passes() - passes == 2  # every product is a fresh pass
    op.gradient()
    before.assert_same(model, "by a forward-over-reverse operator")


def test_non_finite_loss_in_a_functional_pass(tiny_network, tiny_batches):
    model = tiny_network("mlp", batchnorm=False)
    data = DataPass(
        ParameterSpace(model), F.cross_entropy, tiny_batches("mlp"), hvp="forward-over-reverse"
    )
    data.loss_fn = data.functional.loss_fn = lambda out, y: F.cross_entropy(out, y) * np.nan
    with pytest.raises(NonFiniteError, match="loss is nan on batch 0"):
        data.run(_block(data.space.n_params, 2))


# ---------------------------------------------------------------- choosing a backend


def test_auto_is_the_measured_default_per_device(tiny_network, tiny_batches):
    op = HessianOperator(tiny_network("mlp", False), F.cross_entropy, tiny_batches("mlp"))
    assert op.hvp == hvp.AUTO_BACKEND["cpu"] == "double-backward"
    assert op.provenance()["hvp"] == "double-backward"
    assert "hvp='double-backward'" in repr(op)
    assert hvp.resolve_hvp("auto", torch.device("cuda")) == hvp.AUTO_BACKEND["cuda"]
    assert hvp.resolve_hvp("auto", torch.device("meta")) == "double-backward"
    assert set(hvp.AUTO_BACKEND.values()) <= set(hvp.HVP_BACKENDS)


@pytest.mark.parametrize("bad", ["double_backward", "jvp", "", None])
def test_unknown_backend_lists_the_choices(bad, tiny_network, tiny_batches):
    choices = r"\('auto', 'double-backward', 'forward-over-reverse', 'compile'\)"
    with pytest.raises(ValueError, match=rf"hvp must be one of {choices}, got {bad!r}"):
        HessianOperator(tiny_network("mlp", False), F.cross_entropy, tiny_batches("mlp"), hvp=bad)
    with pytest.raises(ValueError, match="hvp must be one of"):
        DataPass(ParameterSpace(tiny_network("mlp", False)), F.cross_entropy, [], hvp="auto")


def test_compile_without_a_compiler_names_the_reason(
    monkeypatch, tiny_network, tiny_batches, model_state
):
    monkeypatch.setenv("CXX", "no-such-cxx-compiler")
    reason = hvp.compile_unavailable_reason(torch.device("cpu"))
    assert reason is not None and "'no-such-cxx-compiler'" in reason and "CXX" in reason
    model = tiny_network("mlp", False)
    before = model_state(model)
    with pytest.raises(hvp.CompileUnavailableError, match=r"no-such-cxx-compiler.*is not on PATH"):
        HessianOperator(model, F.cross_entropy, tiny_batches("mlp"), hvp="compile")
    before.assert_same(model, "by a refused hvp='compile'")
    assert issubclass(hvp.CompileUnavailableError, RuntimeError)


def test_compile_on_cuda_needs_triton(monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    reason = hvp.compile_unavailable_reason(torch.device("cuda"))
    assert reason is not None and "Triton" in reason


def test_own_code_gives_each_compiled_function_its_own_code_object():
    copy_ = hvp.own_code(hvp.batch_products)
    assert copy_.__code__ is not hvp.batch_products.__code__
    assert copy_.__code__ == hvp.batch_products.__code__ and copy_.__name__ == "batch_products"
