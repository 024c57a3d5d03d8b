"""Offline notebook charts: altair's jupyter renderer with vl-convert's JavaScript."""

from __future__ import annotations

import warnings

import altair as alt
import pytest

import hessnb.viz
from hessnb.viz import offline


@pytest.fixture
def renderer():
    """Restore altair's renderer after the test; warnings start unsaid."""
    before = alt.renderers.active, dict(alt.renderers.options)
    offline.reset_warnings()
    yield
    alt.renderers.enable(before[0], **before[1])
    offline.reset_warnings()


def test_enables_the_jupyter_renderer_offline(renderer) -> None:
    assert hessnb.viz.use_offline_renderer is offline.use_offline_renderer
    alt.renderers.enable("default")
    assert offline.use_offline_renderer() is True
    assert alt.renderers.active == "jupyter"
    assert alt.renderers.options == {"offline": True}
    bundle = alt.Chart(alt.Data(values=[{"x": 1}])).mark_point().encode(x="x:Q")
    mimebundle = bundle._repr_mimebundle_()
    mimebundle = mimebundle[0] if isinstance(mimebundle, tuple) else mimebundle
    assert "application/vnd.jupyter.widget-view+json" in mimebundle  # a JupyterChart
    assert alt.JupyterChart._is_offline  # its JavaScript is vl-convert's bundle


def test_without_vl_convert_warns_once_and_changes_nothing(renderer, monkeypatch) -> None:
    monkeypatch.setattr(offline, "offline_available", lambda: False)
    alt.renderers.enable("default")
    with pytest.warns(RuntimeWarning, match=r'CDN .* pip install "hessnb\[lab\]"'):
        assert offline.use_offline_renderer() is False
    assert alt.renderers.active == "default"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert offline.use_offline_renderer() is False  # no second warning


def test_vl_convert_detection(monkeypatch) -> None:
    assert offline.offline_available()  # installed with the [lab] / [export] extras
    monkeypatch.setitem(__import__("sys").modules, "vl_convert", None)
    assert not offline.offline_available()
