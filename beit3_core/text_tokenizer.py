"""SentencePiece text tokenizer with the XLM-R / fairseq id layout used by BEiT-3.

BEiT-3 (arXiv 2208.10442) loads its `beit3.spm` through `XLMRobertaTokenizer`, which shifts SentencePiece ids
into the fairseq layout. This module applies the same mapping directly on the `sentencepiece` package (checked
against microsoft/unilm `beit3/datasets.py` and the HF `XLMRobertaTokenizer` id conversion):

    <s> = 0, <pad> = 1, </s> = 2, <unk> = 3
    spm id 0 (spm's <unk>) -> 3; spm id k >= 3 -> k + 1; spm ids 1, 2 (its <s>, </s>) never come from text
    <mask> = len(spm) + 1; vocab_size = len(spm) + 2

For the released 64000-piece model that is `<mask>` = 64001 and 64002 ids; the model's embedding has 64010
rows, the last 8 unused (microsoft/unilm issue #1318).
"""

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import sentencepiece as spm

BOS_ID = 0
PAD_ID = 1
EOS_ID = 2
UNK_ID = 3
_SPM_UNK, _SPM_BOS, _SPM_EOS = 0, 1, 2
_SPECIAL_PIECES = {BOS_ID: "<s>", PAD_ID: "<pad>", EOS_ID: "</s>"}


class XLMRTokenizer:
    """XLM-R style tokenizer over a SentencePiece model whose own ids are `<unk>`=0, `<s>`=1, `</s>`=2.

    Args:
        model_file: Path to the `.model` / `.spm` file.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: The file is not a SentencePiece model, or its special ids differ from the layout above.
    """

    bos_id = BOS_ID
    pad_id = PAD_ID
    eos_id = EOS_ID
    unk_id = UNK_ID

    def __init__(self, model_file: str | os.PathLike) -> None:
        self.model_file = Path(model_file)
        if not self.model_file.is_file():
            raise FileNotFoundError(f"SentencePiece model not found: {self.model_file}")
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.load(str(self.model_file))
        except (RuntimeError, OSError) as err:
            raise ValueError(f"{self.model_file} is not a SentencePiece model: {err}") from err
        layout = (self._sp.unk_id(), self._sp.bos_id(), self._sp.eos_id())
        if layout != (_SPM_UNK, _SPM_BOS, _SPM_EOS):
            raise ValueError(
                f"{self.model_file} has (unk, bos, eos) ids {layout}; the XLM-R mapping needs (0, 1, 2) "
                "(train with unk_id=0, bos_id=1, eos_id=2, pad_id=-1)"
            )
        self.num_pieces = self._sp.get_piece_size()
        self.mask_id = self.num_pieces + 1
        self.vocab_size = self.num_pieces + 2

    def __len__(self) -> int:
        return self.vocab_size

    def _to_xlmr(self, spm_ids: Sequence[int]) -> list[int]:
        return [UNK_ID if i == _SPM_UNK else i + 1 for i in spm_ids]

    def _wrap(self, piece_ids: list[int], max_length: int | None) -> list[int]:
        if max_length is not None:
            # Keep </s> as the last token after truncation: <s> + (max_length - 2) pieces + </s>.
            piece_ids = piece_ids[: max_length - 2]
        return [BOS_ID, *piece_ids, EOS_ID]

    def encode(self, text: str, max_length: int | None = None) -> list[int]:
        """Tokenizes one text into `[<s>] + pieces + [</s>]`.

        Args:
            text: Raw text.
            max_length: Longest output, counting `<s>` and `</s>`; longer outputs lose their last pieces.

        Returns:
            Ids in the XLM-R layout.
        """
        _check_max_length(max_length)
        return self._wrap(self._to_xlmr(self._sp.encode(text)), max_length)

    def encode_batch(self, texts: Sequence[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
        """Tokenizes texts into a right-padded batch of fixed length.

        Args:
            texts: Raw texts.
            max_length: Output length T; longer texts are truncated as in `encode`.

        Returns:
            `(ids, padding_mask)`: int64 [B, T] ids padded with `<pad>`, and bool [B, T], True at padding.
        """
        _check_max_length(max_length)
        ids_BT = np.full((len(texts), max_length), PAD_ID, dtype=np.int64)
        lengths_B = np.zeros(len(texts), dtype=np.int64)
        for row, spm_ids in enumerate(self._sp.encode(list(texts))):
            seq = self._wrap(self._to_xlmr(spm_ids), max_length)
            ids_BT[row, : len(seq)] = seq
            lengths_B[row] = len(seq)
        return ids_BT, np.arange(max_length)[None, :] >= lengths_B[:, None]

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        """Maps ids back to text.

        Args:
            ids: Ids in the XLM-R layout (a list or a 1-D array).
            skip_special: Drop `<s>`, `<pad>`, `</s>` and `<mask>`; otherwise they appear as their piece
                strings. `<unk>` is always decoded by SentencePiece (as its unknown-piece surface form).

        Returns:
            The decoded text.

        Raises:
            ValueError: An id lies outside [0, vocab_size).
        """
        parts: list[str] = []
        run: list[int] = []
        for i in (int(x) for x in ids):
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"id {i} is outside the tokenizer vocabulary [0, {self.vocab_size})")
            if i in _SPECIAL_PIECES or i == self.mask_id:
                if not skip_special:
                    # Specials split the text, so decode the pieces collected so far on their own.
                    parts.append(self._sp.decode(run))
                    parts.append(_SPECIAL_PIECES.get(i, "<mask>"))
                    run = []
                continue
            run.append(_SPM_UNK if i == UNK_ID else i - 1)
        parts.append(self._sp.decode(run))
        return "".join(parts)


def _check_max_length(max_length: int | None) -> None:
    if max_length is not None and max_length < 2:
        raise ValueError(f"max_length must be >= 2 to hold <s> and </s>, got {max_length}")


def train_sentencepiece(
    texts_or_file: Iterable[str] | str | os.PathLike,
    model_prefix: str | os.PathLike,
    vocab_size: int,
    *,
    model_type: str = "unigram",
    character_coverage: float = 1.0,
    input_sentence_size: int = 0,
    num_threads: int = 1,
    seed: int = 0,
    hard_vocab_limit: bool = True,
) -> Path:
    """Trains a SentencePiece model whose special ids suit `XLMRTokenizer` (like the released beit3.spm).

    The model gets `<unk>`=0, `<s>`=1, `</s>`=2 and no pad piece. Training is deterministic for fixed
    inputs: input order is kept (no shuffling), threads are fixed and the library's generator is seeded.

    Args:
        texts_or_file: An iterable of sentences, or the path of a text file with one sentence per line
            (a `str` is always read as a path).
        model_prefix: Output prefix; writes `<prefix>.model` and `<prefix>.vocab`.
        vocab_size: Number of SentencePiece pieces (the tokenizer then has `vocab_size + 2` ids).
        model_type: SentencePiece algorithm ("unigram" as XLM-R, or "bpe", "char", "word").
        character_coverage: Fraction of characters covered by the alphabet.
        input_sentence_size: Sentences read at most; 0 reads all.
        num_threads: Trainer threads; keep small for reproducible runs.
        seed: Seed of SentencePiece's global random generator.
        hard_vocab_limit: Fail when the corpus cannot support `vocab_size` pieces instead of producing fewer.

    Returns:
        Path of the written `.model` file.
    """
    prefix = Path(model_prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    source: dict[str, object]
    if isinstance(texts_or_file, str | os.PathLike):
        path = Path(texts_or_file)
        if not path.is_file():
            raise FileNotFoundError(f"training text file not found: {path}")
        source = {"input": str(path)}
    else:
        source = {"sentence_iterator": iter(texts_or_file)}
    spm.set_random_generator_seed(seed)
    spm.SentencePieceTrainer.train(
        **source,
        model_prefix=str(prefix),
        vocab_size=vocab_size,
        model_type=model_type,
        character_coverage=character_coverage,
        input_sentence_size=input_sentence_size,
        shuffle_input_sentence=False,
        num_threads=num_threads,
        hard_vocab_limit=hard_vocab_limit,
        unk_id=_SPM_UNK,
        bos_id=_SPM_BOS,
        eos_id=_SPM_EOS,
        pad_id=-1,
        minloglevel=2,
    )
    return prefix.with_name(prefix.name + ".model")
