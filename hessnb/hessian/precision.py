"""Arithmetic of the Hessian-vector products: fp32, tf32 or bf16, and the model set-up.

Lanczos runs in float64 whatever is chosen here; only the HVPs (the model's forward and
double backward) use the reduced precision. The accuracy of ``fp32`` and ``bf16`` HVPs
against float64 ones is measured in BENCHMARKS.md ("Reduced precision").
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["PRECISIONS", "AutocastForward", "configure_backends", "prepare_model"]

PRECISIONS = ("fp32", "tf32", "bf16")


def configure_backends(device: torch.device, precision: str) -> None:
    """Set cuDNN autotuning and the TF32 flags for ``precision`` on CUDA.

    ``fp32`` switches TF32 off explicitly (PyTorch allows it in cuDNN convolutions by
    default); ``tf32`` switches it on for matmuls and convolutions. Off CUDA nothing is set.

    Parameters
    ----------
    device : torch.device
        Where the model runs.
    precision : {"fp32", "tf32", "bf16"}
        Arithmetic of the HVPs.

    Raises
    ------
    ValueError
        For an unknown precision, or ``tf32`` on a device other than CUDA.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if device.type != "cuda":
        if precision == "tf32":
            raise ValueError(
                "--precision tf32 needs a CUDA GPU (Ampere or newer); use fp32 or bf16"
            )
        return
    torch.backends.cudnn.benchmark = True
    mode = "tf32" if precision == "tf32" else "ieee"
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):  # PyTorch >= 2.9
        torch.backends.cuda.matmul.fp32_precision = mode
        torch.backends.cudnn.conv.fp32_precision = mode
    else:  # pragma: no cover - older PyTorch
        torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"
        torch.backends.cudnn.allow_tf32 = mode == "tf32"


class AutocastForward:
    """A module's own ``forward`` under bf16 autocast, floating outputs cast back to float32.

    Set as an instance's ``forward`` attribute (see :func:`prepare_model`): the module keeps
    its class and parameter names. ``copy.deepcopy`` of the module copies this wrapper with
    it, and the copy's wrapper calls the copy.

    Parameters
    ----------
    module : nn.Module
        The module whose class ``forward`` is called.
    device_type : str
        ``torch.autocast``'s device type (``"cuda"`` or ``"cpu"``).
    """

    def __init__(self, module: nn.Module, device_type: str) -> None:
        self.module = module
        self.device_type = device_type

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            out = type(self.module).forward(self.module, *args, **kwargs)
        if isinstance(out, torch.Tensor) and out.is_floating_point():
            return out.float()
        return out


def prepare_model(
    model: nn.Module,
    device: torch.device,
    precision: str = "fp32",
    channels_last: bool = True,
) -> nn.Module:
    """Move ``model`` to ``device``, channels-last on CUDA, bf16 autocast if asked.

    Parameters
    ----------
    model : nn.Module
        The model; moved in place and returned.
    device : torch.device
        Where it runs.
    precision : {"fp32", "tf32", "bf16"}
        ``bf16`` sets an :class:`AutocastForward` as the instance's ``forward``.
    channels_last : bool
        On CUDA, convert to the channels-last memory format.

    Returns
    -------
    nn.Module
        ``model``, with its class and parameter names unchanged, so state dicts load into
        it and run files name the model.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    model = model.to(device)
    if device.type == "cuda" and channels_last:
        model = model.to(memory_format=torch.channels_last)
    if precision == "bf16":
        model.forward = AutocastForward(model, device.type)
    return model
