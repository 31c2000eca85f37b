"""Run profiles: how big an experiment is (concepts, epochs, λ grid, Fisher settings).

Choices common to every profile, measured on the ``ci`` tasks (dev splits):

* logit scale ``s = 5`` (the linkers' default): with ``s = 20`` both linkers end
  task 0 nearly certain of every training mention (mean ``1 − p_gold`` 1e-3), so a
  sampled-label (MC) Fisher rests on a handful of non-gold draws; ``s = 5`` gives
  0.04 (CNN) and 0.2 (BERT) and equal or better dev accuracy.
* KFAC holds the concept table diagonally (``kfac_diagonal=("table",)``): its ``G``
  is C×C (too big at full scale) and, on the CNN, the Kronecker table lost on dev
  (its ``E[ggᵀ] ⊗ E[aaᵀ]`` protects each concept row along the *average* mention,
  not its own mentions; the diagonal keeps that pairing).
* ``weight_sharing``: ``reduce`` for BERT (mean pooling: the reduce setting);
  ``expand`` for the CNN, whose max pooling sends each channel's gradient to one
  position (measured better on dev than reduce).
* MC samples: enough that ``N · samples · mean(1 − p_gold)`` is in the tens.

``ci``: small enough that the full BERT comparison (finetune, ewc, kfac over three
tasks, λ swept on dev) runs in minutes on 2 CPU cores; ``cpu``: the book's offline
profile (every experimental chapter runs it in CI, so the whole book must execute in
well under an hour on 2 cores: a little larger than ``ci``, with finer λ grids); ``full``: a GPU run with every concept that has a test mention (``require_test``) and every training mention, of the vocabularies the data
module gives; ``test``: tiny, for the test suite (toy tasks, a 1-layer random BERT).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

__all__ = ["EVIDENCE_TASKS", "PROFILE_NAMES", "Profile", "get_profile"]

#: The task order of the recorded multi-seed comparison (book/results/evidence_*.json):
#: phenotypes first, because holding 500 (CNN) / 300 (BERT) dev mentions takes the most
#: concepts there and task 0 is trained once, shared by every method and λ.
EVIDENCE_TASKS = ("phenotypes", "diseases", "drugs")


@dataclass(frozen=True)
class Profile:
    """Settings of one run. λ grids are per consolidation family (``ewc``, ``kfac``);
    the online variants use their family's grid."""

    name: str
    max_concepts: int | dict | None  # concepts per task (None: all; a dict: per task name)
    max_train_per_concept: int | None  # training mentions kept per concept
    max_eval: int | None  # dev / test examples per task
    epochs: int
    batch_size: int
    lr: float  # encoder learning rate
    head_lr: float  # concept-table learning rate
    max_length: int  # characters (CNN) or word pieces (BERT)
    lambdas: dict = field(default_factory=dict)
    fisher: str = "mc"
    mc_samples: int = 1
    fisher_examples: int | None = None  # training examples used for the Fisher
    gamma: float = 1.0  # online decay
    kfac_diagonal: tuple = ("table",)  # modules KFAC holds diagonally (the concept table)
    weight_sharing: str = "reduce"  # KFAC over tokens/positions (see the module notes)
    label_smoothing: float = 0.0
    train_on_names: bool = True  # preferred names are training mentions too
    max_grad_norm: float | None = 5.0
    eval_batch_size: int = 256
    linker: dict = field(default_factory=dict)  # extra arguments of cnn_linker/bert_linker
    split_fractions: tuple | None = None  # (dev, test) fractions of load_task (None: its defaults)
    lambda_extension: int = 3  # at most this many ×10 steps beyond either end of a grid

    def with_overrides(self, **kw) -> "Profile":
        return replace(self, **kw)

    def concepts_for(self, task: str) -> int | None:
        """Concepts kept of ``task`` (``max_concepts``, per task when it is a dict; a
        task the dict does not name keeps its ``"default"`` entry, else all)."""
        if isinstance(self.max_concepts, dict):
            return self.max_concepts.get(task, self.max_concepts.get("default"))
        return self.max_concepts


# The ``cpu`` profile holds at least 500 (CNN) / 300 (BERT) dev and test mentions per task
# (issue 11: evaluation sets big enough to rank methods): 30% of the mentions go to dev and
# 30% to test, and each vocabulary keeps as many concepts as that needs (phenotypes and
# icd10cm concepts have few mentions each, so they need more concepts).
# Phenotypes need the most concepts: the experiments put them first (trained once, shared by
# every method and λ; see EVIDENCE_TASKS).
_CPU_CNN_CONCEPTS = {"diseases": 450, "drugs": 420, "phenotypes": 1450, "icd10cm": 1576, "default": 400}
_CPU_BERT_CONCEPTS = {"diseases": 270, "drugs": 250, "phenotypes": 850, "icd10cm": 1000, "default": 250}

_PROFILES: dict[tuple[str, str], Profile] = {
    ("cnn", "test"): Profile(
        "test",
        max_concepts=12,
        max_train_per_concept=3,
        max_eval=12,
        epochs=3,
        batch_size=16,
        lr=3e-3,
        head_lr=3e-3,
        max_length=24,
        lambdas={"ewc": (1.0, 100.0), "kfac": (1.0, 100.0), "l2": (0.1, 10.0)},
        fisher_examples=32,
        lambda_extension=1,
        linker={"embed_dim": 16, "channels": 32, "dim": 32},
    ),
    ("bert", "test"): Profile(
        "test",
        max_concepts=12,
        max_train_per_concept=3,
        max_eval=12,
        epochs=2,
        batch_size=16,
        lr=1e-3,
        head_lr=3e-3,
        max_length=12,
        lambdas={"ewc": (1.0, 100.0), "kfac": (1.0, 100.0), "l2": (0.1, 10.0)},
        fisher_examples=32,
        lambda_extension=1,
        linker={
            "pretrained": False,
            "config_overrides": {"num_hidden_layers": 1, "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64},
        },
    ),
    ("cnn", "ci"): Profile(
        "ci",
        max_concepts=150,
        max_train_per_concept=4,
        max_eval=200,
        epochs=12,
        batch_size=32,
        lr=2e-3,
        head_lr=2e-3,
        max_length=40,
        lambdas={"ewc": (1e2, 1e3, 1e4, 1e5), "kfac": (1e2, 1e3, 1e4, 1e5), "l2": (1e-2, 1e-1, 1.0)},
        mc_samples=8,
        fisher_examples=256,
        weight_sharing="expand",
    ),
    ("bert", "ci"): Profile(
        "ci",
        max_concepts=100,
        max_train_per_concept=3,
        max_eval=150,
        epochs=3,
        batch_size=32,
        lr=5e-5,
        head_lr=2e-3,
        max_length=16,
        lambdas={"ewc": (1e2, 1e4, 1e6), "kfac": (1e2, 1e4, 1e6), "l2": (1e-2, 1.0)},
        fisher_examples=256,
        linker={"freeze_embeddings": True},
    ),
    ("cnn", "cpu"): Profile(
        "cpu",
        max_concepts=_CPU_CNN_CONCEPTS,
        max_train_per_concept=2,
        max_eval=1000,
        epochs=4,
        batch_size=32,
        lr=2e-3,
        head_lr=2e-3,
        max_length=40,
        lambdas={"ewc": (1e3, 1e4, 1e5), "kfac": (1e3, 1e4, 1e5), "l2": (1e-3, 1e-2, 1e-1)},
        mc_samples=8,
        fisher_examples=256,
        weight_sharing="expand",
        split_fractions=(0.3, 0.3),
    ),
    ("bert", "cpu"): Profile(
        "cpu",
        max_concepts=_CPU_BERT_CONCEPTS,
        max_train_per_concept=2,
        max_eval=600,
        epochs=2,
        batch_size=32,
        lr=5e-5,
        head_lr=2e-3,
        max_length=16,
        lambdas={"ewc": (1e3, 1e4, 1e5), "kfac": (1e3, 1e4, 1e5), "l2": (1e-3, 1e-2, 1e-1)},
        fisher_examples=256,
        linker={"freeze_embeddings": True},
        split_fractions=(0.3, 0.3),
    ),
    ("cnn", "full"): Profile(
        "full",
        max_concepts=None,
        max_train_per_concept=None,
        max_eval=None,
        epochs=15,
        batch_size=128,
        lr=2e-3,
        head_lr=2e-3,
        max_length=64,
        lambdas={"ewc": (1e1, 1e2, 1e3, 1e4, 1e5), "kfac": (1e1, 1e2, 1e3, 1e4, 1e5), "l2": (1e-2, 1e-1, 1.0)},
        mc_samples=8,
        fisher_examples=20000,
        weight_sharing="expand",
        eval_batch_size=1024,
    ),
    ("bert", "full"): Profile(
        "full",
        max_concepts=None,
        max_train_per_concept=None,
        max_eval=None,
        epochs=3,
        batch_size=64,
        lr=3e-5,
        head_lr=2e-3,
        max_length=32,
        lambdas={"ewc": (1e2, 1e3, 1e4, 1e5), "kfac": (1e2, 1e3, 1e4, 1e5), "l2": (1e-2, 1e-1, 1.0)},
        mc_samples=4,
        fisher_examples=20000,
        eval_batch_size=1024,
    ),
}

PROFILE_NAMES = ("test", "ci", "cpu", "full")


def get_profile(model: str, name: str) -> Profile:
    """The profile ``name`` for linker ``model`` (``cnn`` or ``bert``)."""
    try:
        return _PROFILES[(model, name)]
    except KeyError:
        models = sorted({m for m, _ in _PROFILES})
        raise ValueError(f"no profile {name!r} for model {model!r}; models: {models}, profiles: {list(PROFILE_NAMES)}") from None
