"""Figures saved as PNG and PDF.

Matplotlib is imported inside the functions (it is an optional dependency, `[plot]`), and
only its object-oriented API is used: a `matplotlib.figure.Figure` renders through the Agg
canvas without pyplot, so no global backend state is touched and nothing opens a window.
"""

import os
from pathlib import Path
from typing import TYPE_CHECKING, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from dv_jax import checks
from dv_jax import results

if TYPE_CHECKING:
  from matplotlib.axes import Axes
  from matplotlib.figure import Figure

PathLike = Union[str, os.PathLike]
FORMATS = ('png', 'pdf')


def new_figure(*, nrows: int = 1, ncols: int = 1, panel_size: Tuple[float, float] = (4.5, 3.4),
               squeeze: bool = False) -> Tuple['Figure', np.ndarray]:
  """A pyplot-free figure with a grid of axes (`[nrows, ncols]` array unless squeezed)."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=(panel_size[0] * ncols, panel_size[1] * nrows), layout='constrained')
  axes = fig.subplots(nrows, ncols, squeeze=squeeze)
  return fig, axes


def save_figure(fig: 'Figure', path_without_suffix: PathLike, *, dpi: int = 150
                ) -> List[Path]:
  """Saves `fig` as `<path>.png` and `<path>.pdf`, each atomically (temp file + rename).

  Args:
    fig: a matplotlib figure.
    path_without_suffix: destination without extension; parents are created.
    dpi: resolution of the PNG.

  Returns:
    The written paths, PNG first.
  """
  base = Path(path_without_suffix)
  written = []
  for fmt in FORMATS:
    target = base.with_name(f'{base.name}.{fmt}')
    with results.atomic_path(target) as temporary:
      fig.savefig(temporary, format=fmt, dpi=dpi)
    written.append(target)
  return written


class Curve(NamedTuple):
  """One log-log curve with its breakpoints.

  Attributes:
    x: `[T]` positive abscissae.
    y: `[T]` positive values.
    label: legend entry.
    predicted_breaks: x positions drawn as solid vertical lines.
    fitted_breaks: x positions drawn as dashed vertical lines.
    fit: `[T]` fitted curve on `x`, drawn dotted on top of the curve (optional).
    color: matplotlib color (None: the axes' cycle).
    style: line style of the curve itself (e.g. ':' for a guide such as an asymptote).
    width: line width of the curve.
    fit_color: color of the fit (None: the curve's; a close fit then hides under it).
  """
  x: Sequence[float]
  y: Sequence[float]
  label: str
  predicted_breaks: Sequence[float] = ()
  fitted_breaks: Sequence[float] = ()
  fit: Optional[Sequence[float]] = None
  color: Optional[str] = None
  style: str = '-'
  width: float = 1.6
  fit_color: Optional[str] = None


class Points(NamedTuple):
  """Markers with optional vertical error bars (e.g. Monte Carlo estimates, quoted values).

  Attributes:
    x: `[P]` positions.
    y: `[P]` values.
    label: legend entry.
    yerr: `[P]` half-widths of the error bars (optional).
    marker: matplotlib marker.
    color: matplotlib color (None: the axes' cycle).
  """
  x: Sequence[float]
  y: Sequence[float]
  label: str
  yerr: Optional[Sequence[float]] = None
  marker: str = 'o'
  color: Optional[str] = None


def percent(level: float) -> str:
  """A coverage level as a percentage, as precise as it was given: 0.95 -> '95%',
  0.975 -> '97.5%' (rounded to a whole number it read '98%')."""
  return f'{round(100 * float(level), 6):g}%'


def whisker_key(ci_level: Optional[float] = None, *, label: Optional[str] = None):
  """A legend handle for black error whiskers: `label`, or the bootstrap CI at `ci_level`
  (a bar's own legend entry would show its filled patch instead)."""
  from matplotlib.lines import Line2D  # pylint: disable=g-import-not-at-top
  if label is None:
    label = (f'{percent(ci_level)} ' if ci_level is not None else '') + 'bootstrap CI'
  return Line2D([], [], color='k', marker='|', ms=6, lw=1.0, label=label)


def interval_bars(ax: 'Axes', positions: Sequence[float], low: Sequence[float],
                  high: Sequence[float], *, horizontal: bool = False, color: str = 'k',
                  label: Optional[str] = None) -> None:
  """Whiskers spanning `[low, high]` at `positions`, drawn from the interval's own ends.

  A percentile interval need not contain the estimate it goes with (a bootstrap of a fitted
  break, of a rank correlation), so whiskers of `estimate - low` and `high - estimate`
  clipped at zero drew `[low, estimate]` instead of what the results file records. A row
  whose interval is NaN gets no whisker (not one of zero length, which reads as certainty).

  Args:
    ax: the axes.
    positions: where along the other axis (y for `horizontal`, x otherwise).
    low, high: the interval's ends, like `positions`.
    horizontal: whiskers along x (beside horizontal bars), else along y.
    color: whisker color.
    label: legend label; by default none (matplotlib's '_' prefix).
  """
  positions, low, high = (np.asarray(v, dtype=float).ravel() for v in (positions, low, high))
  if not positions.shape == low.shape == high.shape:
    raise ValueError(f'positions, low and high must have one length, got {positions.shape}, '
                     f'{low.shape} and {high.shape}')
  known = np.isfinite(low) & np.isfinite(high)
  if not known.any():
    return
  span = np.vstack([np.zeros(known.sum()), high[known] - low[known]])
  where = dict(x=low[known], y=positions[known], xerr=span) if horizontal else dict(
      x=positions[known], y=low[known], yerr=span)
  ax.errorbar(**where, fmt='none', ecolor=color, capsize=2,
              label='_interval' if label is None else label)


def _key_color(colors: Sequence[str]) -> str:
  """A legend key's color: that of the curves it describes when they share one, else gray."""
  from matplotlib.colors import to_hex  # pylint: disable=g-import-not-at-top
  unique = {to_hex(color) for color in colors}
  return unique.pop() if len(unique) == 1 else 'gray'


def _finite(positions: Sequence[float]) -> np.ndarray:
  positions = np.asarray(positions, dtype=float).ravel()
  return positions[np.isfinite(positions)]


def plot_loglog_curves(ax: 'Axes', curves: Sequence[Curve], *, points: Sequence[Points] = (),
                       title: Optional[str] = None, xlabel: str = 'n (training samples)',
                       ylabel: str = 'E(n)', legend: bool = True,
                       shared_breaks: Sequence[float] = (),
                       shared_label: str = 'predicted break (shared)',
                       mark_fitted_breaks: bool = False) -> 'Axes':
  """Draws curves on log-log axes with predicted (solid) and fitted (dashed) breakpoints.

  Vertical lines take their curve's color; non-finite break positions are skipped.

  Args:
    ax: target axes.
    curves: the curves.
    points: markers drawn on top (e.g. Monte Carlo estimates with error bars).
    title: axes title.
    xlabel: x axis label.
    ylabel: y axis label.
    legend: draw a legend (curves plus a key to the line styles).
    shared_breaks: predicted breaks common to several curves, drawn once in black (in one
      curve's color, the last drawn would hide the others').
    shared_label: their legend entry.
    mark_fitted_breaks: also mark each fitted break with a triangle near the top of the
      axes, one row per curve, so that near-coincident breaks of different curves, whose
      dashed lines overlap, stay distinguishable.

  Returns:
    `ax`.
  """
  from matplotlib.lines import Line2D  # pylint: disable=g-import-not-at-top
  predicted_colors, fitted_colors, fit_colors = [], [], []
  for index, curve in enumerate(curves):
    (line,) = ax.loglog(np.asarray(curve.x), np.asarray(curve.y), curve.style,
                        lw=curve.width, color=curve.color, label=curve.label)
    color = line.get_color()
    if curve.fit is not None:
      fit_color = color if curve.fit_color is None else curve.fit_color
      # Above the curve: a good fit runs along it and would otherwise be hidden.
      ax.loglog(np.asarray(curve.x), np.asarray(curve.fit), ':', lw=1.4, color=fit_color,
                zorder=line.get_zorder() + 0.5)
      fit_colors.append(fit_color)
    predicted = _finite(curve.predicted_breaks)
    for position in predicted:
      ax.axvline(position, color=color, lw=1.0, ls='-', alpha=0.6)
    fitted = _finite(curve.fitted_breaks)
    for position in fitted:
      ax.axvline(position, color=color, lw=1.0, ls='--', alpha=0.9)
    if mark_fitted_breaks and fitted.size:
      # x in data, y in axes coordinates: a row per curve, top down.
      ax.plot(fitted, np.full(fitted.shape, 0.97 - 0.035 * index), 'v', ms=5, color=color,
              transform=ax.get_xaxis_transform(), clip_on=False)
    if predicted.size:
      predicted_colors.append(color)
    if fitted.size:
      fitted_colors.append(color)
  shared = _finite(shared_breaks)
  for position in shared:
    ax.axvline(position, color='k', lw=1.0, ls='-', alpha=0.8)
  for group in points:
    ax.errorbar(np.asarray(group.x), np.asarray(group.y),
                yerr=None if group.yerr is None else np.asarray(group.yerr),
                fmt=group.marker, ms=5, capsize=3, color=group.color, label=group.label,
                zorder=5)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  if title:
    ax.set_title(title, fontsize=9)
  ax.grid(True, which='major', alpha=0.3)
  if legend:
    # Keys to the line styles, in the color drawn when every such line has one color.
    handles, _ = ax.get_legend_handles_labels()
    if predicted_colors:
      handles.append(Line2D([], [], color=_key_color(predicted_colors), ls='-', lw=1.0,
                            label='predicted break'))
    if shared.size:
      handles.append(Line2D([], [], color='k', ls='-', lw=1.0, label=shared_label))
    if fitted_colors:
      handles.append(Line2D([], [], color=_key_color(fitted_colors), ls='--', lw=1.0,
                            marker='v' if mark_fitted_breaks else None, ms=5,
                            label='fitted break'))
    if fit_colors:
      handles.append(Line2D([], [], color=_key_color(fit_colors), ls=':', lw=1.4,
                            label='broken power law'))
    ax.legend(handles=handles, fontsize=7, loc='lower left')
  return ax


def curve_grid(panels: Sequence[Tuple[str, Sequence[Curve]]], *, ncols: int = 3,
               suptitle: Optional[str] = None, **plot_kwargs) -> 'Figure':
  """A figure with one log-log panel per `(title, curves)` pair, row-major.

  Args:
    panels: `(title, curves)` per panel.
    ncols: panels per row.
    suptitle: figure title.
    **plot_kwargs: passed to `plot_loglog_curves`.

  Returns:
    The figure (save it with `save_figure`).

  Raises:
    ValueError: no panels, or `ncols` not an integer >= 1.
  """
  if not panels:
    raise ValueError('panels is empty')
  ncols = min(checks.check_int(ncols, 'ncols'), len(panels))
  nrows = -(-len(panels) // ncols)
  fig, axes = new_figure(nrows=nrows, ncols=ncols)
  for ax, (title, curves) in zip(axes.ravel(), panels):
    plot_loglog_curves(ax, curves, title=title, **plot_kwargs)
  for ax in axes.ravel()[len(panels):]:
    ax.set_visible(False)
  if suptitle:
    fig.suptitle(suptitle)
  return fig
