"""Integrations with training frameworks (imported on demand, never by ``kfac_tutorial``).

* :mod:`.hf_trainer`: ``ConsolidationTrainer``, a Hugging Face ``Trainer`` with the
  consolidation penalty in its loss, its log, and the new task's curvature at the end
  (needs ``transformers`` and ``accelerate``).
"""
