"""GGN and empirical Fisher operators against dense float64 matrices built independently.

The references use neither the data pass nor ``torch.func.jvp``/``vjp``: the GGN is
``(1/N) sum_b B_b J_b^T H_b J_b`` with ``J_b`` from ``torch.autograd.functional.jacobian``
of a batch's flattened outputs and ``H_b`` from ``torch.autograd.functional.hessian`` of the
batch-mean loss in those outputs; the empirical Fisher is ``(1/N) sum_i g_i g_i^T`` with
each ``g_i`` from ``torch.autograd.grad`` of example ``i``'s loss in a loop. Both take a
copy of the model with the batch-norm semantics set by hand. The data are 26 real
scikit-learn digits in batches of 10, 10 and 6.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

import hessnb
from hessnb import EmpiricalFisherOperator, GGNOperator, HessianOperator, NonDeterministicError
from hessnb.hessian.curvature import CURVATURES
from hessnb.hessian.datapass import BN_TYPES, DataPass
from hessnb.hessian.params import ParameterSpace
from hessnb.reference import data, models
from hessnb.schema import PROVENANCE

OPERATORS = {"ggn": GGNOperator, "fisher": EmpiricalFisherOperator}
#: (network, batch-norm semantics): "none" is a network without batch norm.
CASES = [("mlp", "none"), ("mlp", "train"), ("cnn", "eval"), ("cnn", "train")]
N_EXAMPLES, BATCH_SIZE = 26, 10  # batches of 10, 10 and 6


def _digits(kind: str, regression: bool = False) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Float64 digits in fixed batches; regression targets are one-hot codes of ``y % 3``."""
    x, y = data.digits(images=kind == "cnn", size=N_EXAMPLES, dtype=torch.float64).tensors
    if regression:
        y = F.one_hot(y % 3, 3).double()
    return data.fixed_batches((x, y), batch_size=BATCH_SIZE)


def _network(kind: str, batchnorm: bool, outputs: int = 10) -> nn.Sequential:
    """A tanh MLP 64-4-outputs (about 300 parameters) or a CNN with 52 parameters."""
    torch.manual_seed(0)
    if kind == "mlp":
        model = models.mlp(64, (4,), outputs, bn=batchnorm)
    else:
        model = models.small_cnn(channels=(2,), classes=outputs, bn=batchnorm, pool=True)
    model = model.double()
    for module in model.modules():
        if isinstance(module, BN_TYPES):  # eval and train semantics differ
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.uniform_(module.bias, -0.3, 0.3)
    return model


def _with_semantics(model: nn.Module, bn: str) -> nn.Module:
    """A float64 copy in eval mode, batch norm in train mode with batch statistics if asked."""
    model = copy.deepcopy(model).double().eval()
    for module in model.modules():
        if bn == "train" and isinstance(module, BN_TYPES):
            module.train()
            module.track_running_stats = False
    return model


def reference_ggn(model, loss_fn, batches, bn: str, names: list[str] | None = None):
    """``(1/N) sum_b B_b J_b^T H_b J_b`` in the parameters ``names`` (default: all)."""
    model = _with_semantics(model, bn)
    named = dict(model.named_parameters())
    names = names or list(named)
    shapes = [named[n].shape for n in names]
    start = torch.cat([named[n].detach().reshape(-1) for n in names])

    def params_of(flat: torch.Tensor) -> dict[str, torch.Tensor]:
        pieces = flat.split([s.numel() for s in shapes])
        return {n: p.reshape(s) for n, p, s in zip(names, pieces, shapes, strict=True)}

    total = sum(len(y) for _, y in batches)
    ggn = torch.zeros(len(start), len(start), dtype=torch.float64)
    for x, y in batches:
        shape = model(x).shape

        def outputs(flat: torch.Tensor, x=x) -> torch.Tensor:
            return functional_call(model, params_of(flat), (x,)).reshape(-1)

        jacobian = torch.autograd.functional.jacobian(outputs, start)
        out = outputs(start).detach()
        hessian = torch.autograd.functional.hessian(
            lambda o, y=y, shape=shape: loss_fn(o.reshape(shape), y), out
        )
        ggn += len(y) * jacobian.T @ hessian @ jacobian
    return ggn / total


def reference_fisher(model, loss_fn, batches, bn: str, names: list[str] | None = None):
    """``(1/N) sum_i g_i g_i^T``, each ``g_i`` by autograd of example i's loss term."""
    model = _with_semantics(model, bn)
    named = dict(model.named_parameters())
    params = [named[n] for n in names or list(named)]
    n = sum(p.numel() for p in params)
    fisher = torch.zeros(n, n, dtype=torch.float64)
    for x, y in batches:
        out = model(x)  # the whole batch's forward: batch statistics in BN train mode
        for i in range(len(y)):
            term = loss_fn(out[i : i + 1], y[i : i + 1])
            g = torch.autograd.grad(term, params, retain_graph=True)
            flat = torch.cat([t.reshape(-1) for t in g])
            fisher += torch.outer(flat, flat)
    return fisher / sum(len(y) for _, y in batches)


REFERENCES = {"ggn": reference_ggn, "fisher": reference_fisher}


def _assert_close(got: torch.Tensor, want: torch.Tensor, rtol: float = 1e-8) -> None:
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * float(want.abs().max()))


def _assert_psd(matrix: torch.Tensor) -> None:
    eigenvalues = torch.linalg.eigvalsh(matrix)
    assert eigenvalues[0] >= -1e-10 * eigenvalues[-1] and eigenvalues[-1] > 0


@pytest.fixture(scope="module", params=CASES, ids=lambda c: "-".join(c))
def case(request):
    """(kind, bn, model, batches) for one network and batch-norm semantics."""
    kind, bn = request.param
    return kind, bn, _network(kind, batchnorm=bn != "none"), _digits(kind)


def _operator(curvature: str, model, batches, bn: str, **kwargs):
    mode = "eval" if bn == "none" else bn
    return OPERATORS[curvature](model, F.cross_entropy, batches, bn_mode=mode, **kwargs)


# ---------------------------------------------------------------- against the references


@pytest.mark.parametrize("curvature", list(OPERATORS))
def test_dense_matches_the_reference_and_is_positive_semi_definite(curvature, case):
    _, bn, model, batches = case
    op = _operator(curvature, model, batches, bn)
    assert op.n_examples == N_EXAMPLES and op.curvature == curvature
    reference = REFERENCES[curvature](model, F.cross_entropy, batches, bn)
    dense = op.dense(chunk=128)
    _assert_close(dense, reference)
    v = torch.randn(op.n_params, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    _assert_close(op.matvec(v), reference @ v)
    _assert_psd(dense)


@pytest.mark.parametrize("curvature", list(OPERATORS))
def test_mse_regression_matches_the_reference(curvature):
    model = _network("mlp", batchnorm=False, outputs=3)
    batches = _digits("mlp", regression=True)
    op = OPERATORS[curvature](model, F.mse_loss, batches)
    reference = REFERENCES[curvature](model, F.mse_loss, batches, "none")
    _assert_close(op.dense(chunk=128), reference)
    _assert_psd(reference)


def test_ggn_of_a_linear_model_with_mse_is_its_hessian():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3)).double()
    batches = _digits("mlp", regression=True)
    ggn = GGNOperator(model, F.mse_loss, batches).dense(chunk=128)
    np.testing.assert_allclose(ggn, HessianOperator(model, F.mse_loss, batches).dense(), 1e-10)
    # a network with a hidden tanh layer has second-order terms: the two differ there
    tanh = _network("mlp", batchnorm=False, outputs=3)
    ggn = GGNOperator(tanh, F.mse_loss, batches).dense(chunk=128)
    hessian = HessianOperator(tanh, F.mse_loss, batches).dense()
    assert float((ggn - hessian).norm()) > 1e-3 * float(hessian.norm())


@pytest.mark.parametrize("curvature", list(OPERATORS))
def test_a_parameter_subset_gives_the_sub_block(curvature):
    model = _network("cnn", batchnorm=True)
    batches = _digits("cnn")
    chosen = ["0.weight", "5.bias"]
    op = OPERATORS[curvature](model, F.cross_entropy, batches, params=chosen)
    full = REFERENCES[curvature](model, F.cross_entropy, batches, "train")
    index = torch.cat([torch.full((p.numel(),), n in chosen) for n, p in model.named_parameters()])
    assert op.n_params == int(index.sum()) == 28
    _assert_close(op.dense(), full[index][:, index])
    hessian = HessianOperator(model, F.cross_entropy, batches, params=chosen)
    np.testing.assert_allclose(op.gradient(), hessian.gradient(), rtol=1e-12)


@pytest.mark.parametrize("curvature", list(OPERATORS))
def test_float64_operator_on_a_float32_model(curvature):
    model = _network("cnn", batchnorm=True)
    batches = _digits("cnn")
    reference = REFERENCES[curvature](model, F.cross_entropy, batches, "train")
    model32 = copy.deepcopy(model).float()
    batches32 = [(x.float(), y) for x, y in batches]
    op = OPERATORS[curvature](model32, F.cross_entropy, batches32, dtype=torch.float64)
    assert op.dtype == torch.float64 and next(model32.parameters()).dtype == torch.float32
    _assert_close(op.dense(), reference, rtol=1e-5)  # the weights were rounded to float32
    in_float32 = OPERATORS[curvature](model32, F.cross_entropy, batches32)
    _assert_close(in_float32.dense(), reference, rtol=1e-4)


# ---------------------------------------------------------------- the shared data pass


@pytest.mark.parametrize("curvature", list(OPERATORS))
def test_a_products_pass_gives_the_hessian_pass_loss_gradient_and_accuracy(curvature):
    model = _network("cnn", batchnorm=True)
    batches = _digits("cnn")
    space = ParameterSpace(model)
    vectors = torch.randn(space.n_params, 3, dtype=torch.float64)
    ours = DataPass(space, F.cross_entropy, batches, bn_mode="train", curvature=curvature)
    assert ours.hvp == "jvp-vjp"
    got = ours.run(vectors, need_gradient=True)
    want = DataPass(space, F.cross_entropy, batches, bn_mode="train").run(need_gradient=True)
    np.testing.assert_allclose(got.gradient, want.gradient, rtol=1e-10, atol=1e-14)
    assert got.loss == pytest.approx(want.loss, rel=1e-12)
    assert got.correct == want.correct and got.examples == want.examples == N_EXAMPLES


def test_the_reduce_hook_sums_products_over_ranks():
    model = _network("mlp", batchnorm=True)
    batches = _digits("mlp")
    space = ParameterSpace(model)
    plain, doubled = (
        DataPass(space, F.cross_entropy, batches, curvature="ggn", reduce=reduce)
        for reduce in (None, lambda flat: 2 * flat)
    )
    vectors = torch.randn(space.n_params, 2, dtype=torch.float64)
    a, b = plain.run(vectors), doubled.run(vectors)
    torch.testing.assert_close(b.products, a.products, rtol=1e-13, atol=0)
    assert b.examples == 2 * a.examples


@pytest.mark.parametrize("curvature", list(OPERATORS))
def test_matmat_reuse_graphs_and_the_model_left_alone(curvature, model_state):
    model = _network("cnn", batchnorm=True).train()
    model[0].weight.grad = torch.ones_like(model[0].weight)  # an existing .grad stays as is
    before = model_state(model)
    op = OPERATORS[curvature](model, F.cross_entropy, _digits("cnn"), transfer=True)
    assert op.graph_cache_info()["enabled"] is False
    vectors = torch.randn(op.n_params, 3, dtype=torch.float64)
    stacked = torch.stack([op.matvec(vectors[:, i]) for i in range(3)], dim=1)
    passes = op.data_passes()
    with op.reuse_graphs():
        block = op.matmat(vectors)
        np.testing.assert_allclose(op.matmat(vectors), block, rtol=1e-14)
    assert op.data_passes() - passes == 2  # no cache: every product is a fresh pass
    np.testing.assert_allclose(block, stacked, rtol=1e-12, atol=1e-14)
    op.evaluate(gradient=True)
    before.assert_same(model, f"by a {type(op).__name__}")


def test_spectrum_of_the_ggn_finds_its_top_eigenvalue():
    op = GGNOperator(_network("cnn", batchnorm=True), F.cross_entropy, _digits("cnn"))
    ds = hessnb.spectrum(op, lanczos_steps=30, top_k=2, progress=False)
    top = torch.linalg.eigvalsh(op.dense())[-2:].flip(0)
    np.testing.assert_allclose(ds.top_eigenvalues.values, top, rtol=1e-8)
    assert ds.attrs["curvature"] == "ggn" and ds.attrs["hvp"] == "jvp-vjp"


def test_provenance_and_repr_name_the_curvature():
    model, batches = _network("mlp", batchnorm=False), _digits("mlp")
    hessian = HessianOperator(model, F.cross_entropy, batches)
    assert hessian.provenance()["curvature"] == "hessian" == HessianOperator.curvature
    assert "curvature" in PROVENANCE and set(CURVATURES) == {"hessian", *OPERATORS}
    for curvature, cls in OPERATORS.items():
        op = cls(model, F.cross_entropy, batches)
        provenance = op.provenance()
        assert provenance.keys() == hessian.provenance().keys()
        assert provenance["curvature"] == curvature and provenance["hvp"] == op.hvp == "jvp-vjp"
        assert repr(op).startswith(f"{cls.__name__}(Sequential, n_params=310,")


# ---------------------------------------------------------------- refusals


def _shuffled_loader(batches):
    x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    generator = torch.Generator().manual_seed(0)
    dataset = torch.utils.data.TensorDataset(x, y)
    return torch.utils.data.DataLoader(dataset, batch_size=10, shuffle=True, generator=generator)


@pytest.mark.parametrize("curvature", list(OPERATORS))
def test_the_determinism_guard_fires_on_a_shuffling_loader(curvature):
    model = _network("mlp", batchnorm=True)
    with pytest.raises(NonDeterministicError, match="shuffle=False"):
        OPERATORS[curvature](model, F.cross_entropy, _shuffled_loader(_digits("mlp")))


@pytest.mark.parametrize("hvp", ["double-backward", "forward-over-reverse", "compile", "jvp"])
@pytest.mark.parametrize("curvature", list(OPERATORS))
def test_hessian_backends_are_refused(curvature, hvp):
    with pytest.raises(ValueError, match=rf"hvp='{hvp}' chooses how Hessian.*leave hvp='auto'"):
        OPERATORS[curvature](_network("mlp", False), F.cross_entropy, _digits("mlp"), hvp=hvp)


def test_the_data_pass_refuses_an_unknown_curvature_or_a_mismatched_backend():
    space = ParameterSpace(_network("mlp", False))
    with pytest.raises(ValueError, match=r"curvature must be one of \('hessian', 'ggn'"):
        DataPass(space, F.cross_entropy, [], curvature="kfac")
    with pytest.raises(ValueError, match=r"hvp must be one of \('jvp-vjp',\) for 'ggn'"):
        DataPass(space, F.cross_entropy, [], curvature="ggn", hvp="double-backward")


@pytest.mark.parametrize(
    "loss_fn", [F.l1_loss, lambda o, y: (o - y).mean()], ids=["l1_loss", "linear"]
)
def test_the_ggn_of_a_loss_without_output_curvature_is_refused(loss_fn, model_state):
    model = _network("mlp", batchnorm=True, outputs=3)
    before = model_state(model)
    with pytest.raises(ValueError, match=r"Gauss-Newton matrix of this loss is zero.*MSE"):
        GGNOperator(model, loss_fn, _digits("mlp", regression=True))
    before.assert_same(model, "by a refused GGN")
    HessianOperator(model, loss_fn, _digits("mlp", regression=True))  # the Hessian is fine


NOT_PER_EXAMPLE_MEANS = {
    "sum": lambda o, y: F.cross_entropy(o, y, reduction="sum"),
    "coupling": lambda o, y: F.cross_entropy(o - o.mean(0), y),
    "class weights": lambda o, y: F.cross_entropy(o, y, weight=torch.linspace(0.5, 2, 10).double()),
}


@pytest.mark.parametrize("loss", list(NOT_PER_EXAMPLE_MEANS))
def test_the_empirical_fisher_refuses_a_loss_that_is_not_a_per_example_mean(loss):
    model = _network("mlp", batchnorm=False)
    with pytest.raises(ValueError, match=r"mean of per-example losses.*reduction='sum'"):
        EmpiricalFisherOperator(model, NOT_PER_EXAMPLE_MEANS[loss], _digits("mlp"))
    GGNOperator(model, NOT_PER_EXAMPLE_MEANS[loss], _digits("mlp"))  # the GGN is defined


class _TwoOutputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(64, 10).double()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.linear(x)
        return out, out


@pytest.mark.parametrize("curvature", list(OPERATORS))
def test_outputs_that_are_not_one_tensor_are_refused(curvature):
    def loss_fn(outputs, y):
        return F.cross_entropy(outputs[0], y)

    with pytest.raises(ValueError, match=r"must return one floating-point tensor.*tuple"):
        OPERATORS[curvature](_TwoOutputs(), loss_fn, _digits("mlp"))
