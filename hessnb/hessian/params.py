"""The parameter space of a Hessian: which parameters, and flat float64 vectors over them."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn

from hessnb.linalg.blocks import Blocks

__all__ = [
    "BLOCK_CHOICES",
    "BlockSpec",
    "ParameterSpace",
    "ParamSpec",
    "select_parameters",
    "state_key",
]

ParamSpec = Iterable[nn.Parameter | str] | nn.Module | nn.Parameter | str | None
BlockSpec = str | Mapping[str, str | Sequence[str]]
#: Named ways to split the parameters into diagonal blocks.
BLOCK_CHOICES = ("layers", "parameters")


def state_key(tensors: Iterable[torch.Tensor]) -> tuple:
    """Identity and version of every tensor: changes when any is modified in place.

    Optimizer steps, ``load_state_dict`` and batch-norm running-statistic updates all
    modify tensors in place, so two equal keys mean the same parameter state.
    """
    return tuple((t.data_ptr(), t._version) for t in tensors)


def select_parameters(model: nn.Module, params: ParamSpec) -> list[tuple[str, nn.Parameter]]:
    """``(name, parameter)`` pairs chosen by ``params`` (default: all with requires_grad).

    Raises
    ------
    ValueError, TypeError
        For a model without parameters, unknown names, foreign tensors, or an empty choice.
    """
    named = list(model.named_parameters())
    if not named:
        raise ValueError(
            f"{type(model).__name__} has no parameters; hessnb needs a model with trainable "
            "parameters"
        )
    if params is None:
        chosen = [(n, p) for n, p in named if p.requires_grad]
        if not chosen:
            raise ValueError(
                "every parameter of the model has requires_grad=False; unfreeze some or pass "
                "params=[...] to choose which parameters the Hessian is taken over"
            )
        return chosen
    by_id = {id(p): n for n, p in named}
    by_name = dict(named)
    if isinstance(params, nn.Module):
        params = list(params.parameters())
    elif isinstance(params, (str, torch.Tensor)):
        params = [params]  # one name or one parameter, not an iterable of characters / rows
    chosen, seen = [], set()
    for item in params:
        if isinstance(item, str):
            if item not in by_name:
                close = [n for n in by_name if item in n][:5]
                raise ValueError(
                    f"no parameter named {item!r} in the model; names look like "
                    f"{close or list(by_name)[:5]}"
                )
            name, param = item, by_name[item]
        elif isinstance(item, torch.Tensor):
            if id(item) not in by_id:
                raise ValueError(
                    f"a selected parameter of shape {tuple(item.shape)} is not part of the "
                    "model; pass parameters from model.parameters() (or their names)"
                )
            name, param = by_id[id(item)], item
        else:
            raise TypeError(
                f"params must hold nn.Parameter objects or names, got {type(item).__name__}"
            )
        if id(param) not in seen:
            seen.add(id(param))
            chosen.append((name, param))
    if not chosen:
        raise ValueError("params selects no parameters; pass at least one")
    return chosen


class ParameterSpace:
    """The selected parameters of a model, flattened into one float64 vector space.

    Parameters
    ----------
    model : nn.Module
        The user's network.
    params : names, parameters or a submodule, optional
        Which parameters (default: all with ``requires_grad``).
    dtype : torch.dtype, optional
        Work in this dtype on a private copy of the model, re-synchronised from ``model``
        whenever its parameters or buffers change (:meth:`sync`).

    Attributes
    ----------
    model : nn.Module
        The module the Hessian is computed on (``model`` itself, or the private copy).
    names : list of str
        Names of the selected parameters, in order.
    n_params : int
        Dimension of the space.
    """

    def __init__(
        self, model: nn.Module, params: ParamSpec = None, dtype: torch.dtype | None = None
    ) -> None:
        selected = select_parameters(model, params)
        self.names = [n for n, _ in selected]
        self.source = model
        self._source_key: tuple | None = None
        if dtype is not None and dtype != selected[0][1].dtype:
            self.model = copy.deepcopy(model).to(dtype)
            self._source_key = state_key(self._source_state())
        else:
            self.model = model
        by_name = dict(self.model.named_parameters())
        self.params = [by_name[n] for n in self.names]
        self.n_params = sum(p.numel() for p in self.params)
        self.dtype = self.params[0].dtype
        self.device = self.params[0].device

    def _source_state(self) -> list[torch.Tensor]:
        return [*self.source.parameters(), *self.source.buffers()]

    @property
    def state(self) -> list[torch.Tensor]:
        """Every parameter and buffer of :attr:`model` (what a pass depends on)."""
        return [*self.model.parameters(), *self.model.buffers()]

    def sync(self) -> None:
        """Copy the user's model into the private copy if it changed (no-op without one)."""
        if self.model is self.source:
            return
        key = state_key(self._source_state())
        if key == self._source_key:
            return
        with torch.no_grad():
            for mine, theirs in zip(self.state, self._source_state(), strict=True):
                mine.copy_(theirs)
        self._source_key = key

    def flatten(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        """Concatenate per-parameter tensors into one flat float64 vector ``(n_params,)``."""
        return torch.cat([t.reshape(-1).to(torch.float64) for t in tensors])

    def unflatten(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Split a flat ``(n_params,)`` vector into tensors shaped like the parameters."""
        out, offset = [], 0
        for p in self.params:
            out.append(flat[offset : offset + p.numel()].view_as(p))
            offset += p.numel()
        return out

    def flatten_block(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        """Per-parameter blocks ``(k, *shape)`` as one float64 matrix ``(n_params, k)``."""
        return torch.cat([t.reshape(t.shape[0], -1).to(torch.float64) for t in tensors], 1).T

    def unflatten_block(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Split ``(n_params, k)`` into per-parameter blocks ``(k, *shape)``."""
        pieces = flat.T.contiguous().split([p.numel() for p in self.params], dim=1)
        return [piece.reshape(-1, *p.shape) for piece, p in zip(pieces, self.params, strict=True)]

    def vector(self) -> torch.Tensor:
        """Current values of the selected parameters, flat float64 ``(n_params,)``."""
        return self.flatten([p.detach() for p in self.params])

    def blocks(self, spec: BlockSpec) -> Blocks:
        """Diagonal blocks of the parameter space, labelled by module or group name.

        Parameters
        ----------
        spec : "layers", "parameters" or mapping
            ``"layers"``: one block per module that owns selected parameters (its weight
            and bias together), labelled by the module's name (``"(root)"`` for
            parameters of the model itself). ``"parameters"``: one block per parameter.
            A mapping ``{group: names}``: each group holds the parameters named (a
            parameter name, or a module name for all its parameters, e.g.
            ``{"convs": ["0", "2"], "head": "4.weight"}``); parameters in no group are
            left out.

        Returns
        -------
        Blocks
            Coordinates of each block in the flat vector, in parameter order.

        Raises
        ------
        ValueError
            For an unknown spec, a name that matches no selected parameter, or a
            parameter in two groups.
        """
        offsets, start = {}, 0
        for name, p in zip(self.names, self.params, strict=True):
            offsets[name] = torch.arange(start, start + p.numel())
            start += p.numel()
        if isinstance(spec, str):
            if spec not in BLOCK_CHOICES:
                raise ValueError(
                    f"blocks must be one of {BLOCK_CHOICES} or a mapping {{group: parameter or "
                    f"module names}}, got {spec!r}"
                )
            groups: dict[str, list[str]] = {}
            for name in self.names:
                label = name if spec == "parameters" else (name.rpartition(".")[0] or "(root)")
                groups.setdefault(label, []).append(name)
        elif isinstance(spec, Mapping):
            groups = {str(k): self._matching(k, v) for k, v in spec.items()}
        else:
            raise TypeError(
                f"blocks must be 'layers', 'parameters' or a mapping, got {type(spec).__name__}"
            )
        labels = tuple(groups)
        indices = tuple(torch.cat([offsets[n] for n in names]) for names in groups.values())
        return Blocks(labels, indices, self.n_params)

    def _matching(self, group: str, wanted: str | Sequence[str]) -> list[str]:
        """Selected parameter names matching ``wanted`` (names or module prefixes)."""
        wanted = [wanted] if isinstance(wanted, str) else list(wanted)
        found: list[str] = []
        for item in wanted:
            hits = [n for n in self.names if n == item or n.startswith(item + ".")]
            if not hits:
                close = [n for n in self.names if item in n][:5] or self.names[:5]
                raise ValueError(
                    f"block {group!r}: {item!r} names no selected parameter or module; "
                    f"parameter names look like {close}"
                )
            found += [n for n in hits if n not in found]
        return found
