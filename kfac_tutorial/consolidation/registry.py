"""State kinds by name (``"EWC"``, ``"KFAC"``), filled as the state classes are defined.

The base class and the per-task sum read this table instead of importing the
subclasses, so imports run one way: registry ← base ← EWC, KFAC ← loader.
"""

from __future__ import annotations

STATE_TYPES: dict[str, type] = {}


def state_type(kind: str, source: str, what: str = "state") -> type:
    """The class registered for ``kind``, or a :class:`StateFileError` naming ``source``."""
    from ..persistence import StateFileError

    if kind not in STATE_TYPES:
        raise StateFileError(f"{source}: {what} has unknown kind {kind!r} (known: {sorted(STATE_TYPES)})")
    return STATE_TYPES[kind]
