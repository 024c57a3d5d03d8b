"""Export charts: PNG/SVG/PDF through vl-convert, self-contained HTML, Vega-Lite JSON.

Everything works offline: the HTML inlines the Vega, Vega-Lite and vega-embed JavaScript
(about 1 MB), so Vega-Lite parameters bound to inputs (e.g. the step slider of
:func:`hessnb.viz.charts.step_slider`) keep working with no kernel and no network.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import altair as alt

__all__ = ["save", "to_html", "vl_version"]

FORMATS = (".png", ".svg", ".pdf", ".html", ".json")


def vl_version() -> str:
    """The Vega-Lite version altair writes, in vl-convert's spelling (e.g. ``"v6_4"``)."""
    major, minor = alt.SCHEMA_VERSION.lstrip("v").split(".")[:2]
    return f"v{major}_{minor}"


def _spec(chart: alt.TopLevelMixin | dict[str, Any]) -> dict[str, Any]:
    if isinstance(chart, dict):
        return chart
    if not hasattr(chart, "to_dict"):
        raise TypeError(f"expected an altair chart or a Vega-Lite dict, got {type(chart).__name__}")
    return chart.to_dict()


def to_html(
    chart: alt.TopLevelMixin | dict[str, Any],
    header: str = "",
    renderer: str = "svg",
) -> str:
    """A self-contained HTML page showing ``chart`` (JavaScript inlined, no network).

    Parameters
    ----------
    chart : altair chart or Vega-Lite dict
    header : str
        HTML inserted at the top of the page body (e.g. a title and provenance).
    renderer : {"svg", "canvas"}
        Vega renderer.

    Returns
    -------
    str
        The whole HTML document.
    """
    import vl_convert as vlc

    page = vlc.vegalite_to_html(
        _spec(chart), vl_version=vl_version(), bundle=True, renderer=renderer
    )
    if header:
        # the bundled JavaScript in <head> contains "<body>" strings: look after </head>
        at = page.find("<body>", page.rfind("</head>"))
        if at < 0:
            raise RuntimeError("vl-convert wrote HTML without a <body>; cannot add the header")
        at += len("<body>")
        page = page[:at] + "\n" + header + page[at:]
    return page


def save(chart: alt.TopLevelMixin | dict[str, Any], path: str | Path, scale: float = 2.0) -> Path:
    """Write ``chart`` to ``path``; the suffix picks the format.

    Parameters
    ----------
    chart : altair chart or Vega-Lite dict
    path : str or Path
        ``.png``, ``.svg``, ``.pdf`` (static, via vl-convert), ``.html`` (self-contained,
        interactive) or ``.json`` (the Vega-Lite spec).
    scale : float
        Pixel density of PNG output (2 = sharp on high-DPI screens).

    Returns
    -------
    Path
        The file written.
    """
    import vl_convert as vlc

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(
            f"cannot export to {path.name!r}: use a file name ending in one of {', '.join(FORMATS)}"
        )
    spec = _spec(chart)
    if suffix == ".png":
        path.write_bytes(vlc.vegalite_to_png(spec, vl_version=vl_version(), scale=scale))
    elif suffix == ".pdf":
        path.write_bytes(vlc.vegalite_to_pdf(spec, vl_version=vl_version()))
    elif suffix == ".svg":
        path.write_text(vlc.vegalite_to_svg(spec, vl_version=vl_version()), encoding="utf-8")
    elif suffix == ".html":
        path.write_text(to_html(spec), encoding="utf-8")
    else:
        path.write_text(json.dumps(spec, indent=1), encoding="utf-8")
    return path
