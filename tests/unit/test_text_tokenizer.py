"""Tests for `beit3_core.text_tokenizer` on a tiny SentencePiece model trained from generated text."""

import random

import numpy as np
import pytest
import sentencepiece as spm

from beit3_core.text_tokenizer import XLMRTokenizer, train_sentencepiece

NUM_PIECES = 200


def _make_sentences(num_sentences: int, seed: int) -> list[str]:
    """Sentences of pseudo-words built from random syllables (lower-case ASCII, single spaces)."""
    rand = random.Random(seed)
    syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
    words = ["".join(rand.choice(syllables) for _ in range(rand.randint(1, 3))) for _ in range(400)]
    return [" ".join(rand.choice(words) for _ in range(rand.randint(4, 14))) for _ in range(num_sentences)]


@pytest.fixture(scope="module")
def sentences() -> list[str]:
    return _make_sentences(600, seed=0)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory, sentences):
    return train_sentencepiece(sentences, tmp_path_factory.mktemp("spm") / "tiny", NUM_PIECES)


@pytest.fixture(scope="module")
def tok(model_file) -> XLMRTokenizer:
    return XLMRTokenizer(model_file)


def test_trained_model_has_beit3_spm_layout(model_file):
    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()) == (0, 1, 2, -1)
    assert sp.get_piece_size() == NUM_PIECES


def test_vocab_arithmetic(tok):
    assert tok.num_pieces == NUM_PIECES
    assert tok.mask_id == NUM_PIECES + 1
    assert tok.vocab_size == NUM_PIECES + 2 == len(tok)
    assert (tok.bos_id, tok.pad_id, tok.eos_id, tok.unk_id) == (0, 1, 2, 3)


def test_encode_maps_spm_ids_to_fairseq_layout(tok, model_file, sentences):
    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    # Upper-case letters never occur in training, so they become spm's <unk> (spm id 0) -> 3.
    for text in [*sentences[:50], "ba QX ze"]:
        ids = tok.encode(text)
        assert ids[0] == 0 and ids[-1] == 2
        spm_ids = sp.encode(text)
        assert ids[1:-1] == [3 if k == 0 else k + 1 for k in spm_ids]
        assert all(4 <= i < tok.mask_id or i == 3 for i in ids[1:-1])
    assert 3 in tok.encode("ba QX ze")


def test_round_trip_on_unseen_sentences(tok):
    for text in _make_sentences(100, seed=1):
        assert tok.decode(tok.encode(text)) == text


def test_decode_special_handling(tok):
    ids = tok.encode("ba ze")
    with_mask = [ids[0], tok.mask_id, *ids[1:], tok.pad_id]
    assert tok.decode(with_mask) == "ba ze"
    shown = tok.decode(with_mask, skip_special=False)
    assert shown.startswith("<s><mask>") and shown.endswith("</s><pad>")
    assert "ba ze" in shown
    assert tok.decode(np.array(ids)) == "ba ze"
    with pytest.raises(ValueError, match="outside"):
        tok.decode([0, tok.vocab_size, 2])
    with pytest.raises(ValueError, match="outside"):
        tok.decode([0, -100, 2])


def test_truncation_keeps_eos_last(tok, sentences):
    text = max(sentences, key=len)
    full = tok.encode(text)
    assert len(full) > 10
    cut = tok.encode(text, max_length=8)
    assert cut == full[:7] + [2]
    assert tok.encode(text, max_length=len(full) + 5) == full
    assert tok.encode(text, max_length=2) == [0, 2]
    with pytest.raises(ValueError, match="max_length"):
        tok.encode(text, max_length=1)


def test_encode_batch_padding_layout(tok, sentences):
    long_text = max(sentences, key=len)
    texts = ["", "ba", sentences[3], long_text]
    max_length = 12
    ids_BT, pad_BT = tok.encode_batch(texts, max_length)
    assert ids_BT.shape == pad_BT.shape == (4, max_length)
    assert ids_BT.dtype == np.int64 and pad_BT.dtype == np.bool_
    for row, text in enumerate(texts):
        expected = tok.encode(text, max_length)
        num_real = len(expected)
        assert ids_BT[row, :num_real].tolist() == expected
        assert (ids_BT[row, num_real:] == 1).all()
        assert not pad_BT[row, :num_real].any() and pad_BT[row, num_real:].all()
    assert ids_BT[0, :2].tolist() == [0, 2] and pad_BT[0].sum() == max_length - 2
    assert not pad_BT[3].any() and ids_BT[3, -1] == 2


def test_training_is_deterministic_for_both_inputs(tmp_path, sentences):
    first = train_sentencepiece(sentences, tmp_path / "a", NUM_PIECES)
    second = train_sentencepiece(sentences, tmp_path / "b", NUM_PIECES)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(sentences) + "\n", encoding="utf-8")
    from_file = train_sentencepiece(corpus, tmp_path / "c", NUM_PIECES)
    assert first == tmp_path / "a.model" and first.is_file()
    vocab = first.with_suffix(".vocab").read_text(encoding="utf-8")
    assert second.with_suffix(".vocab").read_text(encoding="utf-8") == vocab
    assert from_file.with_suffix(".vocab").read_text(encoding="utf-8") == vocab


def test_training_file_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        train_sentencepiece(tmp_path / "nope.txt", tmp_path / "m", NUM_PIECES)


def test_bad_model_files(tmp_path, sentences):
    missing = tmp_path / "missing.model"
    with pytest.raises(FileNotFoundError, match="missing.model"):
        XLMRTokenizer(missing)
    garbage = tmp_path / "garbage.model"
    garbage.write_bytes(b"not a sentencepiece model")
    with pytest.raises(ValueError, match="garbage.model"):
        XLMRTokenizer(garbage)
    # A model with another special-id layout would shift every id by the wrong amount.
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_prefix=str(tmp_path / "other"),
        vocab_size=NUM_PIECES,
        unk_id=2,
        bos_id=0,
        eos_id=1,
        minloglevel=2,
    )
    with pytest.raises(ValueError, match="other.model"):
        XLMRTokenizer(tmp_path / "other.model")
