"""Entity linkers: a character CNN (from scratch) and a BERT (pretrained), each either
with one concept table that grows with tasks (main setting) or as a bi-encoder ranked
against each task's own inventory (contrast).

>>> from kfac_tutorial.linkers import ConceptInventory, cnn_linker
>>> inv = ConceptInventory(["D1", "D2"], ["asthma", "gout"])
>>> linker = cnn_linker(inv, seed=0)
>>> linker.begin_task(["D1", "D2"])
>>> linker(linker.tokenizer(["athsma"])).shape
torch.Size([1, 2])
"""

from .bert import BertEncoder, bert_linker, default_checkpoint
from .bi_encoder import BiEncoderLinker
from .cnn import CharCNNEncoder, cnn_linker
from .concept_table import MASKED_LOGIT, ConceptInventory, GrowingTableLinker, Linker
from .tokenisation import CharTokenizer, HFTokenizer

__all__ = [
    "BertEncoder",
    "BiEncoderLinker",
    "CharCNNEncoder",
    "CharTokenizer",
    "ConceptInventory",
    "GrowingTableLinker",
    "HFTokenizer",
    "Linker",
    "MASKED_LOGIT",
    "bert_linker",
    "cnn_linker",
    "default_checkpoint",
]
