"""Figures of the book, each one call on a results dict (the CLI's JSON).

>>> from kfac_tutorial import plots
>>> from kfac_tutorial.experiments import read_results
>>> results = read_results("results.json")            # doctest: +SKIP
>>> fig = plots.accuracy_heatmaps(results)             # doctest: +SKIP

Styling lives once in :mod:`.style` (:func:`set_style`, :data:`METHOD_COLORS`); the figures are
grouped by what they show: :mod:`.sequences` (one run), :mod:`.tradeoff` (λ),
:mod:`.evidence` (several seeds), :mod:`.cost` (memory and speed), :mod:`.data`. Every
function returns its ``matplotlib`` figure.
"""

from .cost import memory_bars, ratio_bars, variant_bars
from .data import accuracy_by_mention, growth_panels
from .evidence import forgetting_split_bars, interval_bars
from .sequences import accuracy_heatmaps, accuracy_over_time, forgetting_bars, training_curve
from .style import METHOD_COLORS, METHOD_LABELS, set_style
from .tradeoff import final_accuracy_over_lambda, frontier_bands, lambda_curves, lambda_tradeoff

__all__ = [
    "METHOD_COLORS",
    "METHOD_LABELS",
    "accuracy_heatmaps",
    "accuracy_over_time",
    "accuracy_by_mention",
    "forgetting_bars",
    "growth_panels",
    "lambda_curves",
    "lambda_tradeoff",
    "memory_bars",
    "ratio_bars",
    "set_style",
    "training_curve",
    "variant_bars",
    "frontier_bands",
    "interval_bars",
    "forgetting_split_bars",
    "final_accuracy_over_lambda",
]
