"""``hessnb.explore(ds)``: an ipywidgets explorer of a run's spectra.

Controls (a step slider with a play button, a kernel-width slider, a log/linear toggle,
a run selector, a block selector and a refresh button) redraw one ``alt.JupyterChart``:
the density at the current step with the top eigenvalues as rules coloured and sized by
their share of the gradient and the bulk edge marked, beside the ``grad_fraction`` curve;
below them the sharpness λ₁ against 2/η (for runs of more than one record) beside the
gradient's cumulative spectral measure at the current step (when stored); then the
spectrum statistics over training (when the run stores them); trajectories carry a marker
at the current step; for runs holding the Hessian's diagonal blocks, at the bottom every
block's λ₁ over training (:func:`hessnb.viz.charts.layer_sharpness_chart`). The step
slider moves over the steps holding a density; the trajectories also draw the top-k
records of ``Tracker(top_every=...)`` between them. Runs holding several curvature
matrices (a ``curvature`` dimension) show a panel per curvature in every view, each view
then in a row of its own; runs holding blocks show the block chosen in the block
selector. Every step is smoothed with its own paper kernel (:mod:`hessnb.viz.smoothing`);
the σ slider multiplies all of them (1 = the paper's). Nothing is computed here beyond
``ds.hess`` (through :mod:`hessnb.viz.charts`); re-smoothing reuses the stored quadrature
nodes and weights. ``JupyterChart`` is an anywidget, so no front-end build step is needed
(JupyterLab, Notebook 7, VS Code, Binder).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import altair as alt
import ipywidgets as widgets
import xarray as xr

from hessnb.linalg.quadrature import check_sigma
from hessnb.schema import QUADRATURE, require
from hessnb.viz import charts, frames, runs
from hessnb.viz.offline import offline_available, warn_online
from hessnb.viz.smoothing import MAX_POINTS, Kernel, Smoothing, XScale

__all__ = ["Explorer", "explore"]

Source = xr.Dataset | str | Path | Callable[[], xr.Dataset] | Any
#: Kernel-width slider range around the paper's widths (multiplier 1), in powers of ten.
SIGMA_DECADES_BELOW, SIGMA_DECADES_ABOVE = 1.0, 2.0
#: Panel widths (px) that fit a notebook's output area side by side.
DENSITY_WIDTH, GRAD_WIDTH = 360, 220


def _jupyter_chart(chart: alt.TopLevelMixin, offline: bool) -> Any:
    try:
        import anywidget  # noqa: F401
    except ImportError as err:  # pragma: no cover - anywidget is a dependency
        raise ImportError(
            "the explorer draws with altair.JupyterChart, which needs the anywidget package: "
            "pip install anywidget"
        ) from err
    if offline and offline_available():
        alt.JupyterChart.enable_offline()  # Vega's JavaScript from vl-convert, not a CDN
    elif offline:
        warn_online("the explorer")
    return alt.JupyterChart(chart, embed_options={"renderer": "svg", "actions": False})


class Explorer(widgets.VBox):
    """Interactive view of a run (or several runs) of Hessian spectra.

    Parameters
    ----------
    source : xarray.Dataset, path, hessnb.Tracker or callable
        A run dataset (``hessnb.open_run``), the path of a run file, a tracker, or a
        function returning the current dataset. With a path, a tracker or a function,
        :meth:`refresh` (and the refresh button) re-reads it, so a run still being
        tracked can be followed.
    run : str, optional
        Run shown first when the dataset holds several (default: the first).
    block : str, optional
        Block shown first when the dataset holds per-block spectra (default: the first).
    step : int, optional
        Step shown first (default: the last recorded).
    sigma_scale : float
        Multiplier of every step's own paper kernel width, where the σ slider starts
        (1 = the paper's kernel).
    points : int
        Most grid points of one step's density.
    log_y : bool
        Start with a logarithmic density axis.
    x_scale : {"linear", "symlog"}
        Eigenvalue axis.
    band : bool
        Draw the probe-bootstrap band when the run has several probes.
    offline : bool
        Load Vega's JavaScript from vl-convert instead of a CDN (works without network);
        without vl-convert installed it warns once and uses the CDN.
    interval_ms : int
        Delay between frames of the play button.

    Attributes
    ----------
    step_slider, play, sigma_slider, scale_toggle, run_select, block_select, refresh_button
        The controls (ipywidgets); setting their values redraws the chart.
    chart_widget : altair.JupyterChart
        The chart; ``chart_widget.chart`` is the altair chart drawn.
    """

    def __init__(
        self,
        source: Source,
        *,
        run: str | None = None,
        block: str | None = None,
        step: int | None = None,
        sigma_scale: float = 1.0,
        points: int = MAX_POINTS,
        log_y: bool = True,
        x_scale: XScale = "linear",
        band: bool = True,
        offline: bool = True,
        interval_ms: int = 500,
    ) -> None:
        self._source = source
        self._points = points
        self._x_scale = x_scale
        self._band = band
        self._y_max: dict[tuple[Any, ...], float] = {}
        self._quiet = False
        self.dataset = self._load()
        names = runs.run_names(self.dataset)
        run = (run or names[0]) if names else None
        blocks = runs.labels(self.dataset, "block")
        block = (block or blocks[0]) if blocks else None
        self._select(run, block)
        self._smoothing = Smoothing.of(self._shown, None, points, x_scale, scale=sigma_scale)

        self.run_select = widgets.Dropdown(description="run")
        self.block_select = widgets.Dropdown(description="block")
        self._offer(self.run_select, names, run)
        self._offer(self.block_select, blocks, block)
        self.step_slider = widgets.SelectionSlider(
            options=self._step_options(), description="step", continuous_update=False
        )
        self.step_slider.value = runs.check_step(self._run_ds, step)
        self.play = widgets.Play(
            min=0,
            max=len(self.step_slider.options) - 1,
            value=self.step_slider.index,
            interval=interval_ms,
        )
        widgets.link((self.play, "value"), (self.step_slider, "index"))
        centre = math.log10(self._smoothing.scale)
        self.sigma_slider = widgets.FloatLogSlider(
            value=self._smoothing.scale,
            base=10,
            min=min(centre, 0.0) - SIGMA_DECADES_BELOW,
            max=max(centre, 0.0) + SIGMA_DECADES_ABOVE,
            step=0.05,
            description="σ × paper",
            style={"description_width": "initial"},
            readout_format=".3g",
            continuous_update=False,
        )
        self.scale_toggle = widgets.ToggleButtons(
            options=[("log", True), ("linear", False)], value=bool(log_y), description="density"
        )
        self.refresh_button = widgets.Button(
            description="refresh", icon="refresh", tooltip="re-read the run and pick up new steps"
        )
        self.status = widgets.HTML()
        self.chart_widget = _jupyter_chart(self.build_chart(), offline)

        for control in (self.step_slider, self.sigma_slider, self.scale_toggle):
            control.observe(self._redraw, names="value")
        self.run_select.observe(self._on_run, names="value")
        self.block_select.observe(self._on_block, names="value")
        self.refresh_button.on_click(lambda _button: self.refresh())
        controls = widgets.HBox([self.play, self.step_slider, self.run_select, self.block_select])
        options = widgets.HBox([self.sigma_slider, self.scale_toggle, self.refresh_button])
        super().__init__([controls, options, self.chart_widget, self.status])
        self._update_status()

    # ------------------------------------------------------------------ state
    def _load(self) -> xr.Dataset:
        source = self._source
        if isinstance(source, xr.Dataset):
            ds = source
        elif isinstance(source, (str, Path)):
            ds = runs.open_path(source)
        elif callable(source):
            ds = source()
        elif hasattr(source, "dataset"):  # a hessnb.Tracker: the run recorded so far
            ds = source.dataset
            if ds is None:
                raise ValueError("the tracker has recorded no step yet; record one first")
        else:
            raise TypeError(
                "explore() needs a run dataset, the path of a run file, a hessnb.Tracker, "
                f"or a function returning a dataset; got {type(source).__name__}"
            )
        return require(ds, QUADRATURE, "the explorer")

    def _select(self, run: str | None, block: str | None) -> None:
        """Point the views at ``run`` and ``block`` of the dataset (every curvature kept)."""
        self._shown = runs.pick_blocks(self.dataset, block)  # every run: one x range
        self._run_ds = runs.select_series(self._shown, {"run": run, "block": block})
        self._records = runs.select_series(
            self._shown, {"run": run, "block": block}, densities_only=False
        )
        self._layers = (
            runs.select_run(self.dataset, run, densities_only=False) if block is not None else None
        )

    def _first(self) -> tuple[str | None, xr.Dataset]:
        """The first series shown and its label: the first curvature (or the run itself)."""
        return runs.each_series(self._run_ds)[0]

    def _step_options(self) -> list[tuple[str, int]]:
        return [(str(s), int(s)) for s in runs.steps_of(self._run_ds)]

    @property
    def step(self) -> int:
        """The step shown; setting a step that was not recorded raises ValueError."""
        return int(self.step_slider.value)

    @step.setter
    def step(self, value: int) -> None:
        self.step_slider.value = runs.check_step(self._run_ds, value)

    @property
    def sigma_scale(self) -> float:
        """Multiplier of every step's paper kernel width; setting it re-smooths (> 0)."""
        return float(self.sigma_slider.value)

    @sigma_scale.setter
    def sigma_scale(self, value: float) -> None:
        value = check_sigma(value)
        exponent = math.log10(value)
        slider = self.sigma_slider
        with slider.hold_sync():
            slider.min, slider.max = min(slider.min, exponent), max(slider.max, exponent)
            slider.value = value

    @property
    def kernel(self) -> Kernel:
        """Kernel width and grid of the density drawn (the current step's own).

        With several curvatures, that of the first curvature's density.
        """
        one = self._first()[1].sel(step=[self.step])
        return self.smoothing.kernels(one)[0]

    @property
    def sigma(self) -> float:
        """Kernel width drawn at the current step (``sigma_scale`` x that step's paper σ)."""
        return self.kernel.sigma

    @property
    def points(self) -> int:
        """Most grid points of one step's density (fixed when the explorer is made)."""
        return self._points

    @property
    def log_y(self) -> bool:
        """Logarithmic density axis."""
        return bool(self.scale_toggle.value)

    @log_y.setter
    def log_y(self, value: bool) -> None:
        self.scale_toggle.value = bool(value)

    @property
    def run(self) -> str | None:
        """Run shown (None for a dataset without a ``run`` dimension)."""
        return self.run_select.value

    @run.setter
    def run(self, value: str) -> None:
        names = runs.run_names(self.dataset)
        if value not in names:
            raise ValueError(f"no run named {value!r}; the dataset holds runs {names}")
        self.run_select.value = value

    @property
    def block(self) -> str | None:
        """Block shown (None for a dataset without a ``block`` dimension)."""
        return self.block_select.value

    @block.setter
    def block(self, value: str) -> None:
        runs.pick_blocks(self.dataset, value)  # raises, naming the blocks, for an unknown one
        self.block_select.value = value

    @property
    def smoothing(self) -> Smoothing:
        """How the densities are smoothed (each step's paper kernel times ``sigma_scale``).

        Its x range covers every run's spectra of the block shown.
        """
        if self._smoothing.scale != self.sigma_scale:
            self._resmooth()
        return self._smoothing

    def _resmooth(self) -> None:
        self._smoothing = Smoothing.of(
            self._shown, None, self._points, self._x_scale, scale=self.sigma_scale
        )

    def density(self) -> xr.DataArray:
        """The density drawn: ``ds.hess.density(sigma, grid)`` of the run at the step.

        With several curvatures, the first curvature's.
        """
        kernel = self.kernel
        one = self._first()[1].sel(step=[self.step])
        return one.hess.density(sigma=kernel.sigma, grid=kernel.grid).isel(step=0)

    # ------------------------------------------------------------------ drawing
    def _top_of_axis(self) -> float:
        """Largest density over every step and curvature of the run (fixed while stepping)."""
        sm = self.smoothing
        key = (self.run, self.block, sm.scale, self.log_y, self._run_ds.sizes["step"])
        if key not in self._y_max:
            peak = max(
                float(frames.density_frame(one, sm)["density"].max())
                for _, one in runs.each_series(self._run_ds)
            )
            self._y_max[key] = peak * (3.0 if self.log_y else 1.15)
        return self._y_max[key]

    def _measured(self, step: int) -> bool:
        """Whether every curvature shown stores the gradient's spectral measure at ``step``."""
        return all(
            step in frames.gradient_measure_steps(one) for _, one in runs.each_series(self._run_ds)
        )

    def build_chart(self) -> alt.TopLevelMixin:
        """The chart for the current controls.

        Returns
        -------
        altair chart
            Rows: the density, beside it the gradient share (when stored); the sharpness
            (more than one record), beside it the gradient's spectral measure at the step
            (when stored there); the spectrum statistics over training (when stored);
            every block's λ₁ over training (per-block spectra). With several curvatures
            every view (a panel per curvature) has a row of its own.
        """
        step = int(self.step_slider.value)
        records = self._records
        density = charts.density_chart(
            self._run_ds,
            step,
            smoothing=self.smoothing,
            log_y=self.log_y,
            band=self._band,
            y_max=self._top_of_axis(),
            width=DENSITY_WIDTH,
        )
        rows = [[density]]
        if "grad_fraction" in records:
            rows[0].append(charts.gradient_chart(records, step, width=GRAD_WIDTH))
        rows.append([])
        if records.sizes["step"] > 1:
            rows[1].append(charts.sharpness_chart(records, step, width=DENSITY_WIDTH))
        if self._measured(step):
            rows[1].append(charts.gradient_measure_chart(self._run_ds, step, width=GRAD_WIDTH))
        if frames.statistics_in(self._run_ds):
            rows.append([charts.statistics_chart(self._run_ds, step)])
        if self._layers is not None and "top_eigenvalues" in self._layers:
            rows.append([charts.layer_sharpness_chart(self._layers, step)])
        if len(runs.labels(self._run_ds, "curvature")) > 1:
            rows = [[view] for row in rows for view in row]
        shown = [row[0] if len(row) == 1 else alt.hconcat(*row) for row in rows if row]
        return shown[0] if len(shown) == 1 else alt.vconcat(*shown)

    def _redraw(self, _change: Any = None) -> None:
        if self._quiet:
            return
        self.chart_widget.chart = self.build_chart()
        self._update_status()

    def _update_status(self) -> None:
        steps = runs.steps_of(self._run_ds)
        top_k = self._records.sizes["step"] - steps.size
        kernel = self.kernel
        run = "".join(
            f"{dim} <b>{label}</b> · "
            for dim, label in (("run", self.run), ("block", self.block))
            if label is not None
        )
        curvature = self._first()[0]
        at = f" ({curvature})" if curvature else ""
        widened = f", widened ×{kernel.widening:.2g} to fit the grid" if kernel.widened else ""
        records = f" and {top_k} top-k records" if top_k else ""
        self.status.value = (
            f"{run}{steps.size} recorded densities ({steps[0]}…{steps[-1]}){records} · "
            f"σ = {self.sigma_scale:.3g} × the paper's, {kernel.sigma:.3g} at step "
            f"{self.step}{at}{widened} · {kernel.grid.size} grid points"
        )

    def _reselect(self, run: str | None, block: str | None) -> None:
        """Point the controls at ``run`` and ``block``, keeping the step if any."""
        old_step = self.step
        was_last = self.step_slider.index == len(self.step_slider.options) - 1
        self._select(run, block)
        options = self._step_options()
        steps = [s for _, s in options]
        self._quiet = True
        try:
            self.step_slider.options = options
            self.play.max = len(options) - 1
            keep = old_step in steps and not was_last
            self.step_slider.value = old_step if keep else steps[-1]
        finally:
            self._quiet = False

    def _on_run(self, change: dict[str, Any]) -> None:
        if self._quiet:
            return
        self._reselect(change["new"], self.block)
        self._redraw()

    def _on_block(self, change: dict[str, Any]) -> None:
        if self._quiet:
            return
        self._reselect(self.run, change["new"])
        self._resmooth()  # the block's own x range
        self._y_max.clear()
        self._redraw()

    def _offer(
        self, select: widgets.Dropdown, options: list[str], value: str | None = None
    ) -> str | None:
        """Give ``select`` the ``options`` quietly, selecting ``value`` (default: its own).

        Keeps the value if it is one of the options, else selects the first (None for no
        options; the control is then hidden). Returns the value selected.
        """
        value = select.value if value is None else value
        value = value if value in options else (options or [None])[0]
        self._quiet = True
        try:
            select.options = options
            select.value = value
        finally:
            self._quiet = False
        select.layout.display = None if options else "none"
        return value

    def refresh(self, dataset: xr.Dataset | None = None) -> Explorer:
        """Re-read the source (or take ``dataset``) and redraw, picking up new steps.

        If the last step was shown, the new last step is shown; otherwise the step stays.
        """
        self.dataset = (
            self._load() if dataset is None else require(dataset, QUADRATURE, "the explorer")
        )
        self._y_max.clear()
        run = self._offer(self.run_select, runs.run_names(self.dataset))
        block = self._offer(self.block_select, runs.labels(self.dataset, "block"))
        self._reselect(run, block)
        self._resmooth()
        self._redraw()
        return self


def explore(source: Source, **kwargs: Any) -> Explorer:
    """Open an :class:`Explorer` on a run dataset, a run file, or a dataset-returning function.

    Parameters
    ----------
    source : xarray.Dataset, path, hessnb.Tracker or callable
        As for :class:`Explorer`.
    **kwargs
        Keyword arguments of :class:`Explorer` (``run``, ``step``, ``sigma_scale``,
        ``points``, ``log_y``, ``x_scale``, ``band``, ``offline``, ``interval_ms``).

    Returns
    -------
    Explorer
        The widget; display it as a notebook cell's last expression.
    """
    return Explorer(source, **kwargs)
