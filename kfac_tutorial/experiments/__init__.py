"""Sequential-training experiments: the harness, its profiles and the command line.

>>> from kfac_tutorial.experiments import get_profile, load_tasks, run_experiment
>>> profile = get_profile("cnn", "test")
>>> tasks = load_tasks(["toy-a", "toy-b"], profile)
>>> results = run_experiment("cnn", tasks, ["finetune"], profile, progress=False)  # doctest: +SKIP

Command line: ``python -m kfac_tutorial.experiments --help``.
"""

from .harness import (
    METHODS,
    MODELS,
    SETTINGS,
    build_linker,
    load_tasks,
    next_lambda,
    prepare_task,
    run_experiment,
    validate,
)
from .methods import METHOD_SPECS, L2Anchor, MethodSpec, frozen_encoder, method_spec
from .seeds import combine_seeds, first_tasks, merge_recorded, run_seeds, seed_runs
from .book import chapter_settings, evidence_for, reproduce_recorded
from .ablations import (
    FISHER_FLAVOURS,
    compare_variants,
    reproduce_variant,
    summary_rows,
    variants_as_results,
    variants_over_seeds,
    variants_table,
)
from .cache import cache_key, run_or_load
from .cost import (
    count_work,
    estimate_breakdown,
    estimate_seconds,
    measure_rates,
    plain_fwd_bwd,
    time_curvature,
    time_penalty_steps,
)
from .profiles import PROFILE_NAMES, Profile, get_profile
from .results import (
    benchmark_tables,
    comparisons_table,
    evidence_table,
    format_interval,
    frontier_sentence,
    frontier_table,
    verdict_sentence,
    methods_table,
    read_recorded,
    read_results,
    reproduction_check,
    sweep_table,
    write_json_atomic,
)
from .toy import Task, toy_task

__all__ = [
    "L2Anchor",
    "METHOD_SPECS",
    "METHODS",
    "MODELS",
    "MethodSpec",
    "combine_seeds",
    "first_tasks",
    "chapter_settings",
    "evidence_for",
    "merge_recorded",
    "reproduce_recorded",
    "seed_runs",
    "frozen_encoder",
    "method_spec",
    "next_lambda",
    "run_seeds",
    "PROFILE_NAMES",
    "Profile",
    "SETTINGS",
    "Task",
    "benchmark_tables",
    "build_linker",
    "comparisons_table",
    "evidence_table",
    "format_interval",
    "frontier_table",
    "reproduction_check",
    "frontier_sentence",
    "verdict_sentence",
    "cache_key",
    "compare_variants",
    "FISHER_FLAVOURS",
    "reproduce_variant",
    "variants_as_results",
    "variants_over_seeds",
    "variants_table",
    "count_work",
    "estimate_breakdown",
    "estimate_seconds",
    "get_profile",
    "load_tasks",
    "measure_rates",
    "methods_table",
    "plain_fwd_bwd",
    "prepare_task",
    "read_recorded",
    "read_results",
    "run_experiment",
    "run_or_load",
    "summary_rows",
    "sweep_table",
    "time_curvature",
    "time_penalty_steps",
    "toy_task",
    "validate",
    "write_json_atomic",
]
