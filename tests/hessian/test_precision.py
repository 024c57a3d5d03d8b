"""Arithmetic of the HVPs: the backend flags and the bf16 autocast forward."""

from __future__ import annotations

import copy

import pytest
import torch

from hessnb.hessian import precision
from hessnb.reference import models


def test_precision_options() -> None:
    cpu = torch.device("cpu")
    with pytest.raises(ValueError, match="tf32 needs a CUDA GPU"):
        precision.configure_backends(cpu, "tf32")
    with pytest.raises(ValueError, match="precision must be one of"):
        precision.configure_backends(cpu, "fp16")
    torch.manual_seed(0)
    model = models.build("cnn")
    keys = list(model.state_dict())
    x = torch.randn(5, 1, 8, 8)
    reference = model(x)
    prepared = precision.prepare_model(model, cpu, "bf16")
    out = prepared(x)
    assert type(prepared).__name__ == "Sequential" and list(prepared.state_dict()) == keys
    assert out.dtype == torch.float32  # cast back after autocast
    torch.testing.assert_close(out, reference, rtol=0.05, atol=0.05)  # bf16 is close
    assert not torch.equal(out, reference)
    copied = copy.deepcopy(prepared)  # the operator copies models for dtype=...
    with torch.no_grad():
        copied[0].weight.zero_()
    assert not torch.equal(copied(x), out)  # the copy's forward uses the copy's weights


def test_prepare_model_fp32_on_cpu_leaves_the_model_as_it_is() -> None:
    torch.manual_seed(0)
    model = models.build("cnn")
    x = torch.randn(3, 1, 8, 8)
    reference = model(x)
    prepared = precision.prepare_model(model, torch.device("cpu"), "fp32")
    assert prepared is model and "forward" not in vars(prepared)
    torch.testing.assert_close(prepared(x), reference, rtol=0, atol=0)
    with pytest.raises(ValueError, match="precision must be one of"):
        precision.prepare_model(model, torch.device("cpu"), "fp16")
    precision.configure_backends(torch.device("cpu"), "fp32")  # no flags off CUDA
