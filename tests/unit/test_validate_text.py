"""Tests for preprocessing.validate_text: normalisation, rejection reasons and exact deduplication."""

from __future__ import annotations

import pytest

from preprocessing.validate_text import Deduplicator, TextReason, TextRules, text_sha256, validate_text


def test_clean_caption_is_accepted_unchanged() -> None:
    result = validate_text(b"A yellow lemon.")
    assert result.accepted
    assert result.text == "A yellow lemon." and result.normalizations == ()


@pytest.mark.parametrize("raw", [b"", "", b"   ", " \n\t\r\u00a0\u3000 "])
def test_empty_and_whitespace_only_are_rejected(raw: bytes | str) -> None:
    result = validate_text(raw)
    assert result.reason == TextReason.EMPTY
    assert result.text is None


def test_min_non_space_chars() -> None:
    rules = TextRules(min_non_space_chars=3)
    assert validate_text("a b", rules).reason == TextReason.EMPTY
    assert validate_text("a b c", rules).accepted


@pytest.mark.parametrize("raw", [b"caf\xe9 au lait", b"\xff\xfe", b"ok\xc3"])
def test_invalid_utf8_is_rejected(raw: bytes) -> None:
    result = validate_text(raw)
    assert result.reason == TextReason.NOT_UTF8
    assert "byte" in result.message


def test_control_char_heavy_text_is_rejected() -> None:
    result = validate_text(b"\x00\x01\x02PK\x03\x04binary\x00\x00")
    assert result.reason == TextReason.CONTROL_CHARS
    assert "control" in result.message


def test_few_control_chars_are_removed() -> None:
    text = "A logging truck" + "\x07" + " on a road, seen from the side."
    result = validate_text(text)
    assert result.accepted
    assert result.text == "A logging truck on a road, seen from the side."
    assert result.normalizations == ("control_chars_removed",)


def test_control_fraction_threshold() -> None:
    text = "\x01" + "a" * 9  # 10% control characters
    assert validate_text(text, TextRules(max_control_fraction=0.1)).accepted
    assert validate_text(text, TextRules(max_control_fraction=0.09)).reason == TextReason.CONTROL_CHARS


def test_whitespace_is_collapsed_and_not_counted_as_control() -> None:
    result = validate_text("  A\tcat\n\non a\u00a0mat.\r\n")
    assert result.accepted
    assert result.text == "A cat on a mat."
    assert result.normalizations == ("whitespace_collapsed",)


def test_nfc_and_bom() -> None:
    decomposed = "\ufeffcafe\u0301".encode()
    result = validate_text(decomposed)
    assert result.text == "caf\u00e9"
    assert result.normalizations == ("bom_removed", "nfc")


def test_emoji_joiners_are_kept() -> None:
    text = "\U0001f469\u200d\U0001f4bb a coder"  # woman technologist: a zero-width joiner sequence
    result = validate_text(text)
    assert result.accepted and result.text == text and result.normalizations == ()


def test_overlong_text_is_truncated_on_a_word_boundary() -> None:
    text = "word " * 1000
    result = validate_text(text)
    assert result.accepted and result.text is not None
    assert result.normalizations == ("whitespace_collapsed", "truncated")
    assert len(result.text) <= 2000 and len(result.text) > 1990
    assert result.text.endswith("word") and "  " not in result.text


def test_truncation_edge_cases() -> None:
    rules = TextRules(max_chars=3)
    assert validate_text("abc def", rules).text == "abc"  # cut falls exactly on a boundary
    assert validate_text("ab cd ef", TextRules(max_chars=5)).text == "ab cd"  # keeps the last whole word
    assert validate_text("ab cdef", rules).text == "ab"
    assert validate_text("abcdef", rules).text == "abc"  # no space: hard cut
    long_token = "a " + "x" * 5000
    assert validate_text(long_token).text == "a " + "x" * 1998  # never back off more than half the budget
    assert validate_text("x" * 2000).normalizations == ()


def test_deduplicator_reports_first_key_of_normalised_duplicates() -> None:
    dedup = Deduplicator()
    records = {"k1": "A  cat.", "k2": "A dog.", "k3": " A cat.\n", "k4": "a cat.", "k5": "A cat."}
    verdicts = {}
    for key, raw in records.items():
        result = validate_text(raw)
        assert result.text is not None
        verdicts[key] = dedup.first_key(text_sha256(result.text), key)
    assert verdicts == {"k1": None, "k2": None, "k3": "k1", "k4": None, "k5": "k1"}
    assert Deduplicator.detail(verdicts["k3"]) == "duplicate_of=k1"
    assert len(dedup) == 3
    # Re-checking the record that carried the content first is not a duplicate of itself.
    assert dedup.first_key(text_sha256("A cat."), "k1") is None


def test_deduplicator_accepts_image_digests() -> None:
    dedup = Deduplicator()
    digest = "ab" * 32
    assert dedup.first_key(digest, "img-1") is None
    assert dedup.first_key(digest, "img-2") == "img-1"
    with pytest.raises(ValueError):
        dedup.first_key("not-hex", "img-3")


def test_rules_reject_bad_values() -> None:
    with pytest.raises(ValueError, match="max_chars"):
        TextRules(max_chars=0)
    with pytest.raises(ValueError, match="max_control_fraction"):
        TextRules(max_control_fraction=1.5)
    with pytest.raises(ValueError, match="min_non_space_chars"):
        TextRules(min_non_space_chars=0)
