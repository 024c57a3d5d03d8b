"""The parameter space: splitting it into diagonal blocks by layer, parameter or group."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hessnb.hessian.params import ParameterSpace


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2, bias=False))


def test_layers_group_each_module_s_parameters():
    space = ParameterSpace(_net())
    blocks = space.blocks("layers")
    assert blocks.labels == ("0", "2")
    assert blocks.sizes == [16, 8]
    assert blocks.indices[0].tolist() == list(range(16))  # weight then bias
    assert blocks.indices[1].tolist() == list(range(16, 24))


def test_parameters_and_named_groups():
    space = ParameterSpace(_net())
    assert space.blocks("parameters").labels == ("0.weight", "0.bias", "2.weight")
    groups = space.blocks({"biases": ["0.bias"], "weights": ["0.weight", "2"]})
    assert groups.sizes == [4, 20]
    assert groups.indices[0].tolist() == list(range(12, 16))


def test_a_subset_space_splits_only_its_parameters():
    model = _net()
    space = ParameterSpace(model, params=["2.weight", "0.bias"])
    blocks = space.blocks("layers")
    assert blocks.labels == ("0", "2") or blocks.labels == ("2", "0")
    assert sorted(blocks.sizes) == [4, 8] and blocks.dim == 12


def test_parameters_of_the_root_module_get_a_label():
    class Scale(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.alpha = nn.Parameter(torch.ones(2))
            self.head = nn.Linear(2, 1)

        def forward(self, x):
            return self.head(self.alpha * x)

    assert ParameterSpace(Scale()).blocks("layers").labels == ("(root)", "head")


@pytest.mark.parametrize(
    ("spec", "error", "match"),
    [
        ("modules", ValueError, "blocks must be one of"),
        ({"x": ["5"]}, ValueError, r"block 'x': '5' names no selected parameter or module"),
        ({"a": "0", "b": "0.bias"}, ValueError, "'a' and 'b' share coordinates"),
        (3, TypeError, "blocks must be"),
    ],
)
def test_bad_block_specs(spec, error, match):
    with pytest.raises(error, match=match):
        ParameterSpace(_net()).blocks(spec)
