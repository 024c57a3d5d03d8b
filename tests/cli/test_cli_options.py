"""The shared options (``hessnb.cli.options``) and their mapping onto SLQSettings and Tracker."""

from __future__ import annotations

import argparse

import pytest
import torch

from hessnb import SLQSettings
from hessnb.cli import options
from hessnb.linalg.memory import PLACEMENTS


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bn", action="store_true")
    options.add_slq_options(parser)
    return parser.parse_args(argv)


def test_defaults_are_the_settings_defaults() -> None:
    args = _parse()
    assert options.slq_settings(args) == SLQSettings()
    assert args.placement == "auto" and args.threads is None and not args.no_progress


def test_options_map_onto_slq_settings() -> None:
    args = _parse("--lanczos-steps", "30", "--probes", "2", "--top-k", "5", "--seed", "7")
    assert options.slq_settings(args) == SLQSettings(lanczos_steps=30, probes=2, top_k=5, seed=7)
    plain = options.slq_settings(_parse("--no-deflate"))
    assert plain == SLQSettings(deflate=False)


def test_invalid_settings_raise_value_error() -> None:
    with pytest.raises(ValueError, match="top_k=20 exceeds lanczos_steps=10"):
        options.slq_settings(_parse("--lanczos-steps", "10", "--top-k", "20"))


def test_steps_alias_is_gone() -> None:
    with pytest.raises(SystemExit):
        _parse("--steps", "30")


def test_placement_choices_are_the_memory_placements() -> None:
    for placement in PLACEMENTS:
        assert _parse("--placement", placement).placement == placement
    with pytest.raises(SystemExit):
        _parse("--placement", "gpu")
    with pytest.raises(SystemExit):
        _parse("--basis", "cpu")


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ((), "train"),
        (("--bn",), "train"),
        (("--bn", "--bn-mode", "eval"), "eval"),
        (("--bn-mode", "eval"), "eval"),
    ],
)
def test_bn_mode_is_train_unless_given(argv: tuple[str, ...], expected: str) -> None:
    assert options.bn_mode(_parse(*argv)) == expected


def test_tracker_options() -> None:
    args = _parse("--bn", "--lanczos-steps", "12", "--top-k", "3", "--placement", "cpu")
    expected = SLQSettings(lanczos_steps=12, top_k=3)
    assert options.tracker_options(args) == {
        "settings": expected,
        "bn_mode": "train",
        "curvature": "hessian",
        "blocks": None,
        "placement": "cpu",
        "train_batch_size": None,
    }
    assert options.tracker_options(args, placement="mmap")["placement"] == "mmap"
    several = options.tracker_options(_parse("--curvature", "hessian", "ggn", "--blocks", "layers"))
    assert several["curvature"] == ["hessian", "ggn"] and several["blocks"] == "layers"
    with pytest.raises(SystemExit):
        _parse("--curvature", "hesian")


def test_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    options.set_threads(_parse())
    assert calls == []
    options.set_threads(_parse("--threads", "3"))
    assert calls == [3]
    with pytest.raises(ValueError, match="--threads must be >= 1"):
        options.set_threads(_parse("--threads", "0"))


def test_runtime_options_default_threads() -> None:
    parser = argparse.ArgumentParser()
    options.add_runtime_options(parser, threads=1)
    assert parser.parse_args([]).threads == 1


@pytest.mark.parametrize(
    ("argv", "bn", "expected"),
    [
        ((), True, 128),  # BN train mode: the training batch size
        ((), False, 512),  # no batch norm: the size chosen for speed
        (("--bn-mode", "eval"), True, 512),
        (("--train-batch-size", "32"), True, 32),
        (("--batch-size", "64"), True, 64),
    ],
)
def test_hessian_batch_size_follows_training_in_bn_train_mode(argv, bn, expected) -> None:
    parser = argparse.ArgumentParser()
    options.add_slq_options(parser)
    options.add_batch_options(parser, train_default=128, fallback=512)
    args = parser.parse_args(list(argv))
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), *([torch.nn.BatchNorm1d(2)] if bn else []))
    assert options.hessian_batch_size(args, model) == expected
    assert options.tracker_options(args)["train_batch_size"] == args.train_batch_size
