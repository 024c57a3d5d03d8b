"""Charts in notebooks without network access.

Altair's default notebook renderer loads Vega's JavaScript from a CDN
(``https://cdn.jsdelivr.net/npm/vega@6``); without internet a notebook shows "Error
loading script" instead of a chart. :func:`use_offline_renderer` switches altair to its
``"jupyter"`` renderer (an ``altair.JupyterChart`` widget, an anywidget) with the
JavaScript bundled by vl-convert, so charts draw with no network. The explorer draws with
the same widget and bundle.
"""

from __future__ import annotations

import warnings

__all__ = ["INSTALL", "offline_available", "reset_warnings", "use_offline_renderer", "warn_online"]

#: How to get what offline rendering needs.
INSTALL = 'pip install "hessnb[lab]"'
_warned: set[str] = set()


def offline_available() -> bool:
    """Whether vl-convert (which bundles Vega's JavaScript for offline use) is installed."""
    try:
        import vl_convert  # noqa: F401
    except ImportError:
        return False
    return True


def warn_online(what: str) -> None:
    """Warn, once per ``what`` in a process, that ``what`` loads Vega from a CDN."""
    if what in _warned:
        return
    _warned.add(what)
    warnings.warn(
        f"vl-convert-python is not installed, so {what} loads Vega's JavaScript from a CDN "
        f"and shows no chart without internet access; install it with: {INSTALL}",
        RuntimeWarning,
        stacklevel=3,
    )


def reset_warnings() -> None:
    """Forget which :func:`warn_online` warnings were given (each is given once)."""
    _warned.clear()


def use_offline_renderer() -> bool:
    """Make altair draw charts in notebooks without loading anything from the internet.

    Enables altair's ``"jupyter"`` renderer with ``offline=True``: every chart displayed
    in a notebook becomes an ``altair.JupyterChart`` widget whose Vega, Vega-Lite and
    vega-embed JavaScript comes from vl-convert (bundled once per kernel, a few seconds)
    instead of a CDN. Call it once, at the top of a notebook, after importing altair or
    hessnb. Needs ``vl-convert-python`` and ``anywidget`` (``pip install "hessnb[lab]"``);
    without vl-convert it warns once and leaves the renderer unchanged.

    Returns
    -------
    bool
        True when the offline renderer is on, False when vl-convert is missing.

    Examples
    --------
    >>> from hessnb import viz
    >>> viz.use_offline_renderer()  # doctest: +SKIP
    True
    """
    if not offline_available():
        warn_online("every altair chart")
        return False
    import altair as alt

    alt.renderers.enable("jupyter", offline=True)
    return True
