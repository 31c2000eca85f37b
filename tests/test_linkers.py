"""Linkers: tokenisers, padding invariance, the growing concept table, the bi-encoder."""

import pytest
import torch

from kfac_tutorial.linkers import (
    MASKED_LOGIT,
    BiEncoderLinker,
    CharTokenizer,
    ConceptInventory,
    GrowingTableLinker,
    bert_linker,
    cnn_linker,
)

INV = ConceptInventory(
    ["D1", "D2", "D3", "X1", "X2"],
    ["asthma", "gout", "fever", "aspirin", "ibuprofen"],
)
TINY_BERT = dict(
    pretrained=False, config_overrides=dict(num_hidden_layers=1, hidden_size=32, num_attention_heads=2, intermediate_size=64)
)


def test_char_tokenizer_pads_masks_and_lowercases():
    tok = CharTokenizer(max_length=5)
    out = tok(["AB", "abcdefgh", "é"])
    assert out["input_ids"].shape == out["attention_mask"].shape == (3, 5)
    assert out["attention_mask"].tolist() == [[1, 1, 0, 0, 0], [1] * 5, [1, 0, 0, 0, 0]]
    assert out["input_ids"][0, :2].tolist() == out["input_ids"][1, :2].tolist()
    assert out["input_ids"][2, 0] == CharTokenizer.unk_id
    assert (out["input_ids"][out["attention_mask"] == 0] == 0).all()


def test_inventory_union_keeps_task_order_and_first_name():
    class T:
        def __init__(self, concepts):
            self.concepts = concepts

    inv = ConceptInventory.union([T({"a": "A", "b": "B"}), T({"b": "B2", "c": "C"})])
    assert inv.ids == ["a", "b", "c"] and inv.names == ["A", "B", "C"]
    with pytest.raises(ValueError):
        ConceptInventory(["a", "a"], ["x", "y"])


@pytest.mark.parametrize("pooling", ["max", "mean"])
def test_cnn_encoding_does_not_depend_on_padding(pooling):
    linker = cnn_linker(INV, seed=0, pooling=pooling).eval()
    alone = linker.embed(linker.tokenizer(["asthma"]))
    padded = linker.embed(linker.tokenizer(["asthma", "a much longer mention string"]))[:1]
    torch.testing.assert_close(alone, padded, rtol=0, atol=1e-6)


def test_bert_encoding_does_not_depend_on_padding_and_passes_bt_positions():
    linker = bert_linker(INV, seed=0, **TINY_BERT).eval()
    inputs = linker.tokenizer(["gout", "a much longer mention string"])
    b, t = inputs["input_ids"].shape
    assert inputs["position_ids"].shape == inputs["token_type_ids"].shape == (b, t)
    alone = linker.embed(linker.tokenizer(["gout"]))
    torch.testing.assert_close(alone, linker.embed(inputs)[:1], rtol=0, atol=1e-5)


def test_growing_table_masks_unseen_concepts_until_their_task_arrives():
    linker = cnn_linker(INV, seed=0)
    assert isinstance(linker, GrowingTableLinker)
    linker.begin_task(["D1", "D2", "D3"])
    logits = linker(linker.tokenizer(["athsma", "gouty"]))
    assert logits.shape == (2, len(INV))
    assert (logits[:, 3:] == MASKED_LOGIT).all() and (logits[:, :3] > MASKED_LOGIT).all()
    with linker.scoring():  # evaluation: the fixed candidate set, every concept
        assert (linker(linker.tokenizer(["athsma"]))[:, 3:] > MASKED_LOGIT).all()
    assert not linker.score_all


def test_unseen_rows_get_exactly_zero_gradient():
    linker = cnn_linker(INV, seed=0)
    linker.begin_task(["D1", "D2", "D3"])
    inputs = linker.tokenizer(["athsma", "gouty"])
    torch.nn.functional.cross_entropy(linker(inputs), torch.tensor([0, 1])).backward()
    grad = linker.table.weight.grad
    assert (grad[3:] == 0).all() and grad[:3].abs().sum() > 0


def test_new_rows_are_initialised_from_names_and_trained_rows_kept():
    linker = cnn_linker(INV, seed=0)
    linker.begin_task(["D1", "D2", "D3"])
    with torch.no_grad():
        linker.table.weight[:3] += 1.0  # "trained"
    trained = linker.table.weight[:3].clone()
    linker.begin_task(["X1", "X2"])
    torch.testing.assert_close(linker.table.weight[:3], trained)
    every = linker.embed_texts(INV.names)
    expected = torch.nn.functional.normalize(every[3:] - every.mean(0), dim=-1)
    torch.testing.assert_close(linker.table.weight[3:], expected)
    assert linker.seen.all()


def test_pretrained_minilm_links_a_name_to_its_own_row():
    linker = bert_linker(INV)  # the real offline MiniLM
    linker.begin_task(INV.ids)
    linker.eval()
    logits = linker(linker.tokenizer(INV.names))
    assert logits.argmax(1).tolist() == list(range(len(INV)))


def test_default_checkpoint_can_point_at_a_copied_folder(tmp_path, monkeypatch):
    from kfac_tutorial.linkers import default_checkpoint

    packaged = default_checkpoint()
    monkeypatch.setenv("KFAC_BERT_CHECKPOINT", str(tmp_path / "minilm"))
    assert default_checkpoint() == str(tmp_path / "minilm") != packaged
    with pytest.raises(OSError):  # an empty folder is not a checkpoint: said by transformers
        bert_linker(INV)


def test_bi_encoder_scores_against_the_current_task_inventory():
    linker = cnn_linker(INV, seed=0, setting="per_task")
    assert isinstance(linker, BiEncoderLinker)
    linker.begin_task(["X1", "X2"])
    assert linker(linker.tokenizer(["asprin"])).shape == (1, 2)
    assert linker.columns(["X2", "X1"]).tolist() == [1, 0]
    with linker.scoring(["D1", "D2", "D3"]):
        assert linker(linker.tokenizer(["asprin"])).shape == (1, 3)
    assert linker.candidate_ids == ["X1", "X2"]
    # gradients reach the encoder through both the mentions and the names
    linker(linker.tokenizer(["asprin"])).logsumexp(-1).sum().backward()
    assert linker.encoder.embed.weight.grad.abs().sum() > 0


def test_unknown_setting_is_refused():
    with pytest.raises(ValueError, match="growing"):
        cnn_linker(INV, setting="shared")
