"""SLQSettings: validated once, on construction and against an operator's dimension."""

from __future__ import annotations

import pytest

from hessnb import SLQSettings


def test_defaults_are_the_papers():
    s = SLQSettings()
    assert (s.lanczos_steps, s.probes, s.top_k, s.seed) == (90, 1, 10, 0)
    assert s.as_attrs() == {
        "lanczos_steps": 90,
        "probes": 1,
        "top_k": 10,
        "seed": 0,
        "deflate": 1,
    }


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"lanczos_steps": 0}, ValueError, "lanczos_steps must be >= 1"),
        ({"probes": 2.0}, TypeError, "probes must be an int"),
        ({"top_k": True}, TypeError, "top_k must be an int"),
        ({"seed": "1"}, TypeError, "seed must be an int"),
        ({"lanczos_steps": 4, "top_k": 5}, ValueError, "top_k=5 exceeds lanczos_steps=4"),
    ],
)
def test_bad_settings_are_refused(kwargs, error, message):
    with pytest.raises(error, match=message):
        SLQSettings(**kwargs)


def test_dimension_check_and_replace():
    s = SLQSettings(lanczos_steps=30, top_k=5)
    assert s.for_dimension(30) is s
    with pytest.raises(ValueError, match=r"cannot exceed the operator dimension \(29"):
        s.for_dimension(29)
    assert s.replace(probes=3).probes == 3
    with pytest.raises(ValueError, match="top_k=5 exceeds"):
        s.replace(lanczos_steps=4)
