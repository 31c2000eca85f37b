"""Former home of the layer rules, kept so that ``kfac_tutorial.curvature.layers`` imports
keep working: the rules now live in :mod:`kfac_tutorial.curvature.rules`."""

from .rules import RULES, LayerRule, SparseRows, lookup, register, rule_for, why_no_rule  # noqa: F401
