"""What the experimental chapters (7–9) call: their settings, checked in one call, and
the live re-run of one recorded seed.

>>> s = chapter_settings("cnn", "cpu", tasks=None, methods=None, seed=0)   # doctest: +SKIP
>>> live, check = reproduce_recorded(recorded, ["finetune", "kfac"], s.profile)  # doctest: +SKIP
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Sequence

from .cache import run_or_load
from .methods import METHODS, method_spec
from .profiles import EVIDENCE_TASKS, Profile, get_profile
from .results import reproduction_check

__all__ = ["BOOK_PROFILES", "ChapterSettings", "chapter_settings", "evidence_for", "recorded_threads", "reproduce_recorded"]

BOOK_PROFILES = ("ci", "cpu", "full")


@dataclass(frozen=True)
class ChapterSettings:
    model: str
    profile: Profile
    tasks: list
    methods: list
    seed: int
    methods_given: bool = True  # False: the book's default list (a record may hold fewer)


def _as_list(value, default) -> list:
    if value is None:
        return list(default)
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return list(value)


def chapter_settings(
    model: str,
    profile: str,
    tasks=None,
    methods=None,
    seed=0,
    default_methods: Sequence[str] = ("finetune", "ewc", "kfac", "l2", "frozen", "joint"),
) -> ChapterSettings:
    """The checked settings of a chapter's parameters cell (papermill may pass strings):
    ``tasks``/``methods`` as a list or ``"a,b"`` (None: the book's defaults,
    :data:`~kfac_tutorial.experiments.profiles.EVIDENCE_TASKS` and ``default_methods``).
    Raises ``ValueError`` naming the valid choices."""
    from ..data import TASK_NAMES

    if profile not in BOOK_PROFILES:
        raise ValueError(f"PROFILE={profile!r}: choose one of {list(BOOK_PROFILES)}")
    methods_given = methods is not None
    tasks, methods, seed = _as_list(tasks, EVIDENCE_TASKS), _as_list(methods, default_methods), int(seed)
    if unknown := [t for t in tasks if t not in TASK_NAMES]:
        raise ValueError(f"unknown task(s) {unknown}; valid: {list(TASK_NAMES)}")
    if len(tasks) < 2 or len(set(tasks)) != len(tasks):
        raise ValueError(f"TASKS must name at least two distinct tasks, got {tasks}")
    if unknown := [m for m in methods if m not in METHODS]:
        raise ValueError(f"unknown method(s) {unknown}; valid: {list(METHODS)}")
    if "finetune" not in methods or len(set(methods)) != len(methods):
        raise ValueError(f"METHODS must list 'finetune' (the baseline) and no method twice, got {methods}")
    return ChapterSettings(model, get_profile(model, profile), tasks, methods, seed, methods_given=methods_given)


def reproduce_recorded(
    recorded: dict,
    methods: Sequence[str],
    profile: Profile,
    seed: int | None = None,
    tolerance_mentions: int = 3,
    progress: bool = True,
) -> tuple[dict, dict]:
    """Re-run one recorded seed live and check it (:func:`~kfac_tutorial.experiments.results.reproduction_check`).

    The swept methods run only at the λ that seed chose on dev (a one-value grid, never
    extended): a method's run does not depend on the other λ values or methods, so the
    live run must give the recorded run of that λ. It runs with the recorded CPU thread
    count (:func:`recorded_threads`). ``seed`` default: the recorded first
    seed. Returns ``(live results, check)``."""
    import json
    from dataclasses import asdict

    seed = recorded["seed"] if seed is None else seed
    if seed not in recorded["seeds"]:
        raise ValueError(f"seed {seed} is not recorded; recorded seeds: {recorded['seeds']}")
    index = recorded["seeds"].index(seed)
    mine = json.loads(json.dumps({k: v for k, v in asdict(profile).items() if k != "lambdas"}))
    theirs = {k: v for k, v in recorded["config"].items() if k != "lambdas"}
    if mine != theirs:
        changed = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        raise ValueError(
            f"the profile differs from the recorded one in {changed}: re-record with "
            "scripts/record_evidence.sh or pass the recorded profile"
        )
    lambdas = dict(profile.lambdas)
    for m in methods:
        spec = method_spec(m)
        if spec.swept:
            lam = recorded["methods"][m]["seeds"][index]["lambda"]
            if (
                spec.family in lambdas
                and len(lambdas[spec.family]) == 1
                and lambdas[spec.family][0] != lam
                and any(method_spec(o).family == spec.family for o in methods[: list(methods).index(m)])
            ):
                raise ValueError(
                    f"{m} shares the {spec.family} λ grid with another method that chose another λ; reproduce them separately"
                )
            lambdas[spec.family] = (lam,)
    live_profile = profile.with_overrides(lambdas=lambdas)
    with recorded_threads(recorded):
        live = run_or_load(recorded["model"], recorded["tasks"], list(methods), live_profile, seed=seed, progress=progress)
    return live, reproduction_check(live, recorded, methods, tolerance_mentions)


@contextmanager
def recorded_threads(recorded: dict):
    """Run the body with the CPU thread count the recorded run used (``torch_threads``;
    a matrix product split over another number of threads sums in another order, and
    training amplifies that float noise), then restore it. On a GPU, or when the record
    does not say, nothing changes."""
    import torch

    before, want = torch.get_num_threads(), recorded.get("torch_threads")
    if want and not torch.cuda.is_available():
        torch.set_num_threads(int(want))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def evidence_for(settings: ChapterSettings, recorded_path: str, progress: bool = True) -> tuple[dict, bool]:
    """The multi-seed comparison a chapter shows: the recorded file (``read_recorded``)
    when the chapter runs the recorded profile, tasks and methods, else (another profile,
    task order or method list, e.g. via papermill) one live run of ``settings.seed``
    (intervals then over test mentions only). With the default method list the record is
    used whatever methods it holds (a recording cut short may lack the baselines).
    Returns ``(results, recorded?)``."""
    from .results import read_recorded
    from .seeds import run_seeds

    try:
        rec = read_recorded(recorded_path)
    except FileNotFoundError:
        rec = None
    if (
        rec is not None
        and rec["profile"] == settings.profile.name
        and rec["tasks"] == settings.tasks
        and "finetune" in rec["methods"]
        and (not settings.methods_given or set(settings.methods) <= set(rec["methods"]))
    ):
        return rec, True
    return run_seeds(
        settings.model, settings.tasks, settings.methods, settings.profile, [settings.seed], progress=progress
    ), False
