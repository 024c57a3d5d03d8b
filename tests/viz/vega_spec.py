"""Reading Vega-Lite specs back: their inline tables, panels and leaf views by mark."""

from __future__ import annotations

import pandas as pd

from hessnb.viz import frames


def tables(spec: dict) -> list[pd.DataFrame]:
    """Every dataset of a spec (inline CSV strings) as a data frame."""
    return [frames.from_csv(v) for v in spec.get("datasets", {}).values()]


def table(spec: dict, *columns: str, without: str = "") -> pd.DataFrame:
    """The one dataset holding ``columns`` (and not the column ``without``)."""
    found = [t for t in tables(spec) if set(columns) <= set(t.columns) and without not in t.columns]
    assert len(found) == 1, f"{len(found)} datasets hold {columns}"
    return found[0]


#: Keys of a spec whose values are lists of sub-views.
COMPOSITIONS = ("layer", "hconcat", "vconcat", "concat")


def panels(spec: dict) -> list[dict]:
    """The panels of a concatenated spec (itself when it is not concatenated)."""
    for key in ("hconcat", "concat"):
        if key in spec:
            return spec[key]
    return [spec]


def data_names(view: dict) -> set[str]:
    """Names of the datasets ``view`` and its sub-views read."""
    names = {view["data"]["name"]} if "name" in view.get("data", {}) else set()
    for key in COMPOSITIONS:
        for sub in view.get(key, []):
            names |= data_names(sub)
    return names


def panel_table(spec: dict, panel: dict, *columns: str, without: str = "") -> pd.DataFrame:
    """The one dataset holding ``columns`` (not ``without``) that ``panel`` of ``spec`` reads."""
    names = data_names(panel)
    found = [
        t
        for name, t in zip(spec["datasets"], tables(spec), strict=True)
        if name in names and set(columns) <= set(t.columns) and without not in t.columns
    ]
    assert len(found) == 1, f"{len(found)} datasets of the panel hold {columns}"
    return found[0]


def layers(spec: dict) -> list[dict]:
    """Leaf views of a (possibly layered / concatenated) spec."""
    out = []
    for key in COMPOSITIONS:
        for sub in spec.get(key, []):
            out += layers(sub)
    return out or [spec]


def mark(view: dict) -> str:
    """The mark type of a leaf view (``"line"``, ``"rule"``, ...)."""
    m = view["mark"]
    return m if isinstance(m, str) else m["type"]


def titles(spec: dict) -> list[dict]:
    """Every title of a spec (its own and its sub-views'), as ``{"text", "subtitle"}``."""
    found = []
    if "title" in spec:
        title = spec["title"]
        found.append(title if isinstance(title, dict) else {"text": title})
    for key in COMPOSITIONS:
        for sub in spec.get(key, []):
            found += titles(sub)
    return found


def views_with(spec: dict, kind: str) -> list[dict]:
    """Leaf views drawn with mark ``kind``."""
    return [v for v in layers(spec) if "mark" in v and mark(v) == kind]
