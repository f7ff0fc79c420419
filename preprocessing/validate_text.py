"""Validate and normalise one caption or text record, and detect exact duplicates by content hash.

Text feeds the SentencePiece tokenizer of BEiT-3 (Wang et al., 2022, arXiv:2208.10442; reference
implementation microsoft/unilm `beit3/`, which reads captions as plain UTF-8 strings). Normalising before
tokenization keeps equal captions equal: Unicode NFC (per the `unicodedata` documentation) so composed and
decomposed accents match, and whitespace runs collapsed to one space.

Rejection reasons (`TextReason`): `not_utf8`, `control_chars`, `empty`, and `duplicate` (set by callers of
`Deduplicator`, with detail `duplicate_of=<first key>`).

Normalisations recorded on accepted text, in the order they are applied:
    `bom_removed`            a leading UTF-8 byte-order mark was dropped.
    `nfc`                    NFC changed the string.
    `control_chars_removed`  C0/C1 control characters other than whitespace were dropped.
    `whitespace_collapsed`   runs of whitespace (newlines and tabs included) became one space, ends stripped.
    `truncated`              the text was cut to `max_chars`.
"""

from __future__ import annotations

import enum
import hashlib
import unicodedata
from dataclasses import dataclass

__all__ = ["Deduplicator", "TextReason", "TextResult", "TextRules", "text_sha256", "validate_text"]

_BOM = "\ufeff"


class TextReason(enum.StrEnum):
    """Machine-readable rejection reasons (stored as plain strings in the quarantine table)."""

    NOT_UTF8 = "not_utf8"
    CONTROL_CHARS = "control_chars"
    EMPTY = "empty"
    DUPLICATE = "duplicate"


@dataclass(kw_only=True, frozen=True)
class TextRules:
    """Acceptance limits for one text record."""

    max_chars: int = 2000
    """Longer texts are truncated (and the truncation recorded), not rejected: the head of a long
    description is still a valid caption, and the tokenizer cuts to the model's context anyway."""
    max_control_fraction: float = 0.05
    """Reject when more than this fraction of characters are control characters: such records are binary
    or mis-decoded data, not prose. Below it the stray characters are removed."""
    min_non_space_chars: int = 1
    """Fewer non-whitespace characters than this after normalisation means the record is empty."""

    def __post_init__(self) -> None:
        if self.max_chars < 1:
            raise ValueError(f"max_chars must be >= 1, got {self.max_chars}")
        if not 0.0 <= self.max_control_fraction <= 1.0:
            raise ValueError(f"max_control_fraction must be in [0, 1], got {self.max_control_fraction}")
        if not 1 <= self.min_non_space_chars <= self.max_chars:
            raise ValueError(f"min_non_space_chars must be in [1, max_chars], got {self.min_non_space_chars}")


@dataclass(frozen=True)
class TextResult:
    """Outcome of `validate_text`: accepted normalised text, or a rejection reason.

    Attributes:
        text: The normalised text when accepted, else None.
        normalizations: Changes applied to an accepted text, in order (see the module docstring).
        reason: Rejection reason when rejected, else None.
        message: Human-readable detail for a rejection; empty when accepted.
    """

    text: str | None
    normalizations: tuple[str, ...] = ()
    reason: TextReason | None = None
    message: str = ""

    @property
    def accepted(self) -> bool:
        """True when the text passed every rule."""
        return self.reason is None


def _reject(reason: TextReason, message: str) -> TextResult:
    return TextResult(text=None, reason=reason, message=message)


def _is_control(char: str) -> bool:
    # Category Cc covers C0/C1 controls and DEL. Tab, newline and carriage return are Cc too but are
    # whitespace, handled by the collapse step. Format characters (Cf, e.g. the zero-width joiner inside
    # emoji sequences) are legitimate text and stay.
    return unicodedata.category(char) == "Cc" and not char.isspace()


def _truncate(text: str, max_chars: int) -> str:
    # Called only when len(text) > max_chars, on whitespace-collapsed text (single spaces, none at the ends).
    cut = text[:max_chars]
    if text[max_chars] == " ":
        return cut.rstrip()
    # Prefer ending on a word boundary so the tokenizer does not see a half word, but never give up more
    # than half the budget for it (one very long token, or scripts written without spaces).
    head, space, _ = cut.rpartition(" ")
    return head if space and len(head) >= max_chars // 2 else cut


def validate_text(raw: bytes | str, rules: TextRules | None = None) -> TextResult:
    """Decodes and normalises one text record, or rejects it.

    Args:
        raw: UTF-8 bytes as read from a file or shard, or an already decoded string.
        rules: Acceptance limits; `TextRules()` defaults when None.

    Returns:
        A `TextResult`; check `.accepted` before using `.text`.
    """
    rules = rules or TextRules()
    notes: list[str] = []
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            return _reject(TextReason.NOT_UTF8, f"invalid UTF-8 at byte {err.start}: {err.reason}")
    else:
        text = raw
    if text.startswith(_BOM):
        text = text[len(_BOM) :]
        notes.append("bom_removed")

    nfc = unicodedata.normalize("NFC", text)
    if nfc != text:
        notes.append("nfc")
    text = nfc

    num_control = sum(_is_control(c) for c in text)
    if num_control:
        fraction = num_control / len(text)
        if fraction > rules.max_control_fraction:
            return _reject(
                TextReason.CONTROL_CHARS,
                f"{num_control}/{len(text)} control characters > max_control_fraction={rules.max_control_fraction}",
            )
        text = "".join(c for c in text if not _is_control(c))
        notes.append("control_chars_removed")

    # str.split() with no argument splits on every Unicode whitespace run (NBSP and ideographic space too).
    collapsed = " ".join(text.split())
    if collapsed != text:
        notes.append("whitespace_collapsed")
    text = collapsed

    num_non_space = len(text) - text.count(" ")
    if num_non_space < rules.min_non_space_chars:
        return _reject(TextReason.EMPTY, f"{num_non_space} non-space characters < {rules.min_non_space_chars}")

    if len(text) > rules.max_chars:
        text = _truncate(text, rules.max_chars)
        notes.append("truncated")
    return TextResult(text=text, normalizations=tuple(notes))


def text_sha256(text: str) -> str:
    """Hex sha256 of the UTF-8 encoding of an already normalised text, the key for exact deduplication."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class Deduplicator:
    """Remembers content digests and reports the record that first carried each one.

    Works for any hex digest: `text_sha256` of normalised text, or `image_sha256` of the encoded image
    bytes. Memory is one 32-byte digest plus the key per distinct record, so one instance per source (or
    per shard-building job) is intended, not a global index across the whole corpus.

    Example:
        >>> dedup = Deduplicator()
        >>> dedup.first_key(text_sha256("a cat"), "rec-1") is None
        True
        >>> dedup.first_key(text_sha256("a cat"), "rec-7")
        'rec-1'
    """

    def __init__(self) -> None:
        self._first_key_by_digest: dict[bytes, str] = {}

    def __len__(self) -> int:
        return len(self._first_key_by_digest)

    def first_key(self, digest: str, key: str) -> str | None:
        """Records `digest` for `key` and returns the key that carried it first, if that was another record.

        Args:
            digest: Hex sha256 of the record content.
            key: The record's own key.

        Returns:
            None when the content is new (or `key` is the record that first carried it, so re-checking a
            record is harmless); otherwise the key of the first record with this content.
        """
        # Stored as raw bytes: half the memory of the hex string.
        first = self._first_key_by_digest.setdefault(bytes.fromhex(digest), key)
        return None if first == key else first

    @staticmethod
    def detail(first_key: str) -> str:
        """The quarantine detail string for a duplicate of `first_key`."""
        return f"duplicate_of={first_key}"
