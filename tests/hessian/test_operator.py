"""HessianOperator against dense float64 Hessians built independently.

The reference re-implements the tiny networks functionally (F.linear, F.conv2d and a
hand-written batch norm) on a flat parameter vector, so it shares no code path with the
operator's module-based double backward.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from hessnb import HessianOperator, NonDeterministicError
from hessnb.errors import HessnbError, NonFiniteError

BN_MODES = ["none", "eval", "train"]
KINDS = ["mlp", "cnn"]


def _functional_forward(model: nn.Sequential, flat: torch.Tensor, x: torch.Tensor, bn: str):
    """``model(x)`` with parameters taken from ``flat`` (in ``model.parameters()`` order)."""
    offset = 0

    def take(like: torch.Tensor) -> torch.Tensor:
        nonlocal offset
        piece = flat[offset : offset + like.numel()].reshape(like.shape)
        offset += like.numel()
        return piece

    for layer in model:
        if isinstance(layer, nn.Linear):
            x = F.linear(x, take(layer.weight), take(layer.bias))
        elif isinstance(layer, nn.Conv2d):
            x = F.conv2d(x, take(layer.weight), take(layer.bias))
        elif isinstance(layer, nn.modules.batchnorm._BatchNorm):
            axes = [0, *range(2, x.ndim)]
            shape = [1, -1] + [1] * (x.ndim - 2)
            if bn == "train":
                mean = x.mean(dim=axes, keepdim=True)
                var = x.var(dim=axes, unbiased=False, keepdim=True)
            else:
                mean = layer.running_mean.reshape(shape)
                var = layer.running_var.reshape(shape)
            normalised = (x - mean) / torch.sqrt(var + layer.eps)
            x = normalised * take(layer.weight).reshape(shape) + take(layer.bias).reshape(shape)
        elif isinstance(layer, nn.Tanh):
            x = torch.tanh(x)
        elif isinstance(layer, nn.Flatten):
            x = x.flatten(1)
        else:  # pragma: no cover - the fixtures use only the layers above
            raise TypeError(type(layer))
    assert offset == flat.numel()
    return x


def _dataset_loss(model, batches, bn):
    """Flat parameters -> batch-size weighted mean of per-batch mean cross-entropies."""
    total = sum(len(y) for _, y in batches)

    def loss(flat: torch.Tensor) -> torch.Tensor:
        return sum(
            len(y) / total * F.cross_entropy(_functional_forward(model, flat, x, bn), y)
            for x, y in batches
        )

    return loss


def _flat_parameters(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).double()


def _reference_hessian(model, batches, bn) -> torch.Tensor:
    # torch.autograd.functional rather than torch.func: the latter's first call imports
    # torch._dynamo, seconds of start-up for a 100-parameter Hessian.
    return torch.autograd.functional.hessian(
        _dataset_loss(model, batches, bn), _flat_parameters(model)
    )


def _reference_gradient(model, batches, bn) -> torch.Tensor:
    flat = _flat_parameters(model).requires_grad_(True)
    (gradient,) = torch.autograd.grad(_dataset_loss(model, batches, bn)(flat), flat)
    return gradient


@pytest.fixture(
    scope="module", params=list(itertools.product(KINDS, BN_MODES)), ids=lambda p: "-".join(p)
)
def network_case(request, tiny_network, tiny_batches):
    """(model, 23 examples in batches of 10/10/3, bn_mode, reference Hessian)."""
    kind, bn = request.param
    model = tiny_network(kind, batchnorm=bn != "none")
    batches = tiny_batches(kind)
    op = HessianOperator(model, F.cross_entropy, batches, bn_mode="eval" if bn == "none" else bn)
    return op, model, batches, bn, _reference_hessian(model, batches, bn)


def _random_vectors(n: int, k: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_matvec_matches_the_dense_reference(network_case):
    op, _, _, _, reference = network_case
    assert op.n_params == reference.shape[0] and op.n_examples == 23
    v = _random_vectors(op.n_params, 1)[:, 0]
    hv = op.matvec(v)
    assert hv.dtype == torch.float64
    np.testing.assert_allclose(hv, reference @ v, rtol=1e-10, atol=1e-12)


def test_matmat_equals_stacked_matvecs_and_dense_equals_reference(network_case):
    op, _, _, _, reference = network_case
    vectors = _random_vectors(op.n_params, 3, seed=1)
    block = op.matmat(vectors)
    stacked = torch.stack([op.matvec(vectors[:, i]) for i in range(3)], dim=1)
    np.testing.assert_allclose(block, stacked, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(op.dense(chunk=16), reference, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("hvp", ["double-backward", "forward-over-reverse"])
def test_block_matmat_multiplies_each_column_by_its_parameters_diagonal_block(network_case, hvp):
    op, model, batches, bn, reference = network_case
    if hvp != "double-backward":
        op = HessianOperator(
            model, F.cross_entropy, batches, bn_mode="eval" if bn == "none" else bn, hvp=hvp
        )
    blocks = op.space.blocks("parameters")
    vectors = _random_vectors(op.n_params, 3, seed=2)
    supports = [[0], [1, 2], list(range(len(blocks.labels)))]  # parameter numbers per column
    for column, support in enumerate(supports):
        outside = torch.ones(op.n_params, dtype=torch.bool)
        for j in support:
            outside[blocks.indices[j]] = False
        vectors[outside, column] = 0.0
    products = op.block_matmat(vectors)
    for column in range(3):
        inside = vectors[:, column] != 0
        expected = torch.zeros(op.n_params, dtype=torch.float64)
        expected[inside] = reference[inside][:, inside] @ vectors[inside, column]
        np.testing.assert_allclose(products[:, column], expected, rtol=1e-10, atol=1e-12)
    # a column touching every parameter gets the whole H v
    np.testing.assert_allclose(products[:, 2], op.matmat(vectors[:, 2:])[:, 0], rtol=1e-12)


def test_gradient_matches_autograd_of_the_full_data_loss(network_case):
    op, model, batches, bn, _ = network_case
    reference = _reference_gradient(model, batches, bn)
    np.testing.assert_allclose(op.gradient(), reference, rtol=1e-10, atol=1e-13)
    evaluation = op.evaluate(gradient=True)
    loss, gradient = evaluation["loss"], evaluation["gradient"]
    assert loss == pytest.approx(float(_dataset_loss(model, batches, bn)(_flat_parameters(model))))
    np.testing.assert_allclose(gradient, reference, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("kind", KINDS)
def test_without_batchnorm_the_batched_hessian_is_the_whole_data_hessian(
    kind, tiny_network, tiny_batches
):
    model = tiny_network(kind, batchnorm=False)
    batched = HessianOperator(model, F.cross_entropy, tiny_batches(kind, batch_size=10))
    whole = _reference_hessian(model, tiny_batches(kind, batch_size=23), "none")
    np.testing.assert_allclose(batched.dense(), whole, rtol=1e-10, atol=1e-12)
    # An unweighted mean of per-batch Hessians would differ (uneven last batch of 3).
    per_batch = [_reference_hessian(model, [b], "none") for b in batched.batches]
    assert not torch.allclose(sum(per_batch) / len(per_batch), whole, rtol=1e-6, atol=1e-8)


def test_batchnorm_modes_give_different_hessians(tiny_network, tiny_batches):
    model = tiny_network("mlp", batchnorm=True)
    batches = tiny_batches("mlp")
    dense = [
        HessianOperator(model, F.cross_entropy, batches, bn_mode=m).dense() for m in BN_MODES[1:]
    ]
    assert not torch.allclose(dense[0], dense[1], rtol=1e-3)


def _selection_cases(model: nn.Sequential):
    first, last = model[0], model[-1]
    return {
        "names": ["0.weight", f"{len(model) - 1}.bias"],
        "parameters": [first.weight, last.bias],
        "submodule": last,
        "one name": "0.weight",
    }


@pytest.mark.parametrize("selection", ["names", "parameters", "submodule", "one name"])
def test_params_selection_gives_the_sub_block(selection, tiny_network, tiny_batches):
    model = tiny_network("cnn", batchnorm=True)
    batches = tiny_batches("cnn")
    chosen = _selection_cases(model)[selection]
    op = HessianOperator(model, F.cross_entropy, batches, params=chosen, bn_mode="train")
    chosen_ids = {id(p) for p in op.space.params}
    index = torch.cat(
        [
            torch.full((p.numel(),), id(p) in chosen_ids, dtype=torch.bool)
            for p in model.parameters()
        ]
    )
    full = _reference_hessian(model, batches, "train")
    assert op.n_params == int(index.sum()) < full.shape[0]
    np.testing.assert_allclose(op.dense(), full[index][:, index], rtol=1e-10, atol=1e-12)
    reference_gradient = _reference_gradient(model, batches, "train")[index]
    np.testing.assert_allclose(op.gradient(), reference_gradient, rtol=1e-10, atol=1e-13)


def test_float64_operator_on_a_float32_model_leaves_the_model_float32(
    tiny_network, tiny_batches, model_state
):
    model32 = tiny_network("mlp", batchnorm=True).float()
    batches32 = [(x.float(), y) for x, y in tiny_batches("mlp")]
    before = model_state(model32)
    op = HessianOperator(model32, F.cross_entropy, batches32, dtype=torch.float64, bn_mode="eval")
    assert op.dtype == torch.float64 and op.n_params == 69
    model64 = copy.deepcopy(model32).double()
    reference = _reference_hessian(model64, [(x.double(), y) for x, y in batches32], "eval")
    np.testing.assert_allclose(op.dense(), reference, rtol=1e-10, atol=1e-12)
    before.assert_same(model32, "after a float64 operator on a float32 model")


def test_float32_model_without_dtype_computes_in_float32(tiny_network, tiny_batches):
    model = tiny_network("mlp", batchnorm=False)
    reference = _reference_hessian(model, tiny_batches("mlp"), "none")
    model.float()
    op = HessianOperator(model, F.cross_entropy, [(x.float(), y) for x, y in tiny_batches("mlp")])
    assert op.dtype == torch.float32
    v = _random_vectors(op.n_params, 1)[:, 0]
    np.testing.assert_allclose(op.matvec(v), reference @ v, rtol=1e-4, atol=1e-5)


def test_unused_parameters_get_zero_rows(tiny_batches):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 3), nn.Tanh(), nn.Linear(3, 3)).double()
    model.add_module("unused_head", nn.Linear(3, 2).double())  # never called in forward

    class UsesFirstThree(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = model

        def forward(self, x):
            return self.net[2](self.net[1](self.net[0](x)))

    op = HessianOperator(UsesFirstThree(), F.cross_entropy, tiny_batches("mlp"))
    used = sum(p.numel() for p in model[:3].parameters())
    dense = op.dense()
    assert torch.all(dense[used:] == 0) and torch.all(dense[:, used:] == 0)
    assert dense[:used, :used].abs().max() > 0
    assert torch.all(op.gradient()[used:] == 0)
    only_unused = HessianOperator(
        UsesFirstThree(), F.cross_entropy, tiny_batches("mlp"), params=model.unused_head
    )
    with pytest.raises(ValueError, match="does not depend on the selected parameters"):
        only_unused.matvec(torch.ones(only_unused.n_params))


def test_matvec_accepts_numpy_and_checks_shape(network_case):
    op, _, _, _, reference = network_case
    v = _random_vectors(op.n_params, 1)[:, 0]
    np.testing.assert_allclose(op.matvec(v.numpy()), reference @ v, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match=rf"shape \({op.n_params},\)"):
        op.matvec(torch.ones(op.n_params + 1))
    with pytest.raises(ValueError, match=rf"\({op.n_params}, k\)"):
        op.matmat(torch.ones(op.n_params))


def test_evaluate_reports_loss_and_accuracy(network_case):
    op, model, batches, bn, _ = network_case
    result = op.evaluate()
    flat = _flat_parameters(model)
    assert result["loss"] == pytest.approx(float(_dataset_loss(model, batches, bn)(flat)))
    correct = sum(
        int((_functional_forward(model, flat, x, bn).argmax(1) == y).sum()) for x, y in batches
    )
    assert result["accuracy"] == pytest.approx(correct / 23)


# ---------------------------------------------------------------- state is never changed


def _every_public_call(op: HessianOperator) -> dict:
    import hessnb

    v = torch.ones(op.n_params, dtype=torch.float64)
    return {
        "matvec": lambda: op.matvec(v),
        "matmat": lambda: op.matmat(torch.stack([v, -v], 1)),
        "gradient": op.gradient,
        "evaluate": op.evaluate,
        "dense": op.dense,
        "spectrum": lambda: hessnb.spectrum(op, lanczos_steps=4, top_k=2, progress=False),
    }


@pytest.mark.parametrize("bn_mode", ["eval", "train"])
@pytest.mark.parametrize("model_mode", ["train", "eval"])
def test_no_call_changes_the_model(bn_mode, model_mode, tiny_network, tiny_batches, model_state):
    model = tiny_network("cnn", batchnorm=True)
    model.train(model_mode == "train")
    model[0].bias.requires_grad_(False)  # a frozen parameter must stay frozen
    model[0].weight.grad = torch.ones_like(model[0].weight)  # an existing .grad stays as is
    before = model_state(model)
    op = HessianOperator(model, F.cross_entropy, tiny_batches("cnn"), bn_mode=bn_mode)
    before.assert_same(model, "by construction")
    for name, call in _every_public_call(op).items():
        call()
        before.assert_same(model, f"by {name}")


# ---------------------------------------------------------------- bad input


class _NoParameters(nn.Module):
    def forward(self, x):
        return x


class _RandomForward(nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        self.linear = nn.Linear(5, 3).double()
        self.how = how

    def forward(self, x):
        if self.how == "dropout":
            return self.linear(F.dropout(x, p=0.5, training=True))
        return self.linear(x + torch.randn_like(x))


def _frozen(model: nn.Module) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _on_meta(batches):
    return [(x.to("meta"), y) for x, y in batches]


def _shuffled_loader(batches):
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    dataset = torch.utils.data.TensorDataset(x, y)
    generator = torch.Generator().manual_seed(0)
    return torch.utils.data.DataLoader(dataset, batch_size=10, shuffle=True, generator=generator)


def _foreign_parameter():
    return [nn.Parameter(torch.zeros(3, dtype=torch.float64))]


@dataclass
class BadInput:
    """How to spoil a valid (model, loss, batches) setup, and the error that must follow."""

    error: type[Exception]
    message: str
    model: Callable | None = None  # model -> spoiled model
    batches: Callable | None = None  # batches -> spoiled batches
    loss: Callable | None = None
    kwargs: dict = field(default_factory=dict)


BAD_INPUTS = {
    "non-scalar loss": BadInput(
        ValueError,
        r"loss_fn returned \(10,\) on batch 0.*reduction='mean'",
        loss=lambda o, y: F.cross_entropy(o, y, reduction="none"),
    ),
    "NaN loss": BadInput(
        NonFiniteError, r"loss is nan on batch 0", loss=lambda o, y: o.sum() * float("nan")
    ),
    "infinite loss": BadInput(
        NonFiniteError, r"loss is inf on batch 0", loss=lambda o, y: o.sum() + float("inf")
    ),
    "no parameters": BadInput(ValueError, r"has no parameters", model=lambda m: _NoParameters()),
    "all parameters frozen": BadInput(
        ValueError, r"requires_grad=False; unfreeze some or pass params", model=_frozen
    ),
    "empty batches": BadInput(ValueError, r"batches is empty", batches=lambda b: []),
    "one-shot generator": BadInput(
        TypeError, r"one-shot iterator", batches=lambda b: (pair for pair in b)
    ),
    "one-shot iterator": BadInput(TypeError, r"one-shot iterator", batches=iter),
    "batch not a pair": BadInput(TypeError, r"must be a pair", batches=lambda b: [x for x, _ in b]),
    "shuffled DataLoader": BadInput(
        NonDeterministicError, r"shuffle=False", batches=_shuffled_loader
    ),
    "dropout in forward": BadInput(
        NonDeterministicError,
        r"randomness in the model's forward",
        model=lambda m: _RandomForward("dropout"),
    ),
    "noise in forward": BadInput(
        NonDeterministicError,
        r"different per-batch losses",
        model=lambda m: _RandomForward("noise"),
    ),
    "inputs on another device": BadInput(
        ValueError, r"inputs on meta but the model is on cpu.*transfer=True", batches=_on_meta
    ),
    "model on another device": BadInput(
        ValueError, r"inputs on cpu but the model is on meta", model=lambda m: m.to("meta")
    ),
    "foreign parameter": BadInput(
        ValueError, r"not part of the model", kwargs={"params": _foreign_parameter()}
    ),
    "unknown parameter name": BadInput(
        ValueError, r"no parameter named '0.weigth'", kwargs={"params": ["0.weigth"]}
    ),
    "empty selection": BadInput(ValueError, r"selects no parameters", kwargs={"params": []}),
    "selection of non-parameters": BadInput(
        TypeError, r"must hold nn.Parameter objects or names", kwargs={"params": [3]}
    ),
    "unknown bn_mode": BadInput(ValueError, r"bn_mode must be", kwargs={"bn_mode": "batch"}),
    "not a module": BadInput(TypeError, r"must be a torch.nn.Module", model=lambda m: m.forward),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=str)
def test_bad_input_is_refused_without_changing_anything(
    case, tiny_network, tiny_batches, model_state
):
    bad = BAD_INPUTS[case]
    model = tiny_network("mlp", batchnorm=True).train()
    model = bad.model(model) if bad.model else model
    batches = tiny_batches("mlp")
    batches = bad.batches(batches) if bad.batches else batches
    before = model_state(model) if isinstance(model, nn.Module) else None
    with pytest.raises(bad.error, match=bad.message):
        HessianOperator(model, bad.loss or F.cross_entropy, batches, **bad.kwargs)
    if before is not None:
        before.assert_same(model, f"by a refused {case}")


def test_non_finite_loss_errors_are_value_errors_and_hessnb_errors():
    assert issubclass(NonFiniteError, ValueError)
    assert issubclass(NonFiniteError, HessnbError)
    assert issubclass(NonFiniteError, FloatingPointError)  # what earlier versions raised


def test_non_determinism_check_can_be_turned_off(tiny_batches):
    op = HessianOperator(
        _RandomForward("noise"), F.cross_entropy, tiny_batches("mlp"), check_determinism=False
    )
    assert torch.isfinite(op.matvec(torch.ones(op.n_params))).all()


def test_transfer_moves_batches_to_the_model_device(tiny_network, tiny_batches):
    model = tiny_network("mlp", batchnorm=False)
    moved = HessianOperator(model, F.cross_entropy, tiny_batches("mlp"), transfer=True)
    assert moved.n_examples == 23
