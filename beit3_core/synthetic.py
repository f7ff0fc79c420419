"""Generated MDM batches with a learnable structure, for smoke runs, benchmarks and tests without data.

Images are horizontal stripes of palette colours, one colour per patch row; the visual token of a patch is
its colour index, so a masked patch is predictable from the unmasked patches of its row. Texts are
arithmetic runs of token ids, so a masked token is predictable from its neighbours. A pair's text lists its
image's stripe colours, so masked pair text is predictable from the image.
"""

import numpy as np
import torch

from beit3_core.config import BEiT3Config
from beit3_core.masking import BlockMaskGenerator, mask_text
from beit3_core.mdm import ImageStream, MDMBatch, PairStream, TextStream

FIRST_REGULAR_ID = 4  # after <s>, <pad>, </s>, <unk>
BOS_ID, PAD_ID, EOS_ID = 0, 1, 2


class SyntheticMDMData:
    """Draws `MDMBatch`es for a model config; deterministic given the seed."""

    def __init__(
        self,
        config: BEiT3Config,
        text_len: int = 32,
        num_colors: int = 16,
        text_mask_ratio: float = 0.15,
        pair_text_mask_ratio: float = 0.5,
        seed: int = 0,
    ):
        if num_colors > config.visual_vocab_size:
            raise ValueError(f"num_colors={num_colors} exceeds visual_vocab_size={config.visual_vocab_size}")
        self.config = config
        self.text_len = text_len
        self.mask_id = config.vocab_size - 1
        self.text_mask_ratio = text_mask_ratio
        self.pair_text_mask_ratio = pair_text_mask_ratio
        if FIRST_REGULAR_ID + 7 * text_len >= self.mask_id:
            raise ValueError(f"vocab_size={config.vocab_size} is too small for text_len={text_len}")
        self.rng = np.random.default_rng(seed)
        self.palette = self.rng.uniform(-1, 1, size=(num_colors, config.in_chans)).astype(np.float32)
        self.masker = BlockMaskGenerator(grid_size=(config.grid_size, config.grid_size))

    def batch(self, num_images: int, num_texts: int, num_pairs: int) -> MDMBatch:
        return MDMBatch(
            image=self._images(num_images) if num_images else None,
            text=self._texts(num_texts) if num_texts else None,
            pair=self._pairs(num_pairs) if num_pairs else None,
        )

    def _stripes(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        grid, patch = self.config.grid_size, self.config.patch_size
        row_colors = self.rng.integers(0, len(self.palette), size=(batch_size, grid))  # [B, g]
        tokens = np.repeat(row_colors, grid, axis=1)  # [B, g*g], row-major patches
        pixels = self.palette[row_colors]  # [B, g, C]
        image = np.repeat(pixels, patch, axis=1)  # [B, g*patch, C]: one colour per patch row
        image = np.broadcast_to(image[:, :, None, :], (batch_size, grid * patch, grid * patch, image.shape[-1]))
        image = torch.from_numpy(np.ascontiguousarray(image.transpose(0, 3, 1, 2)))  # [B, C, H, W]
        noise = torch.from_numpy(self.rng.normal(0, 0.05, size=image.shape).astype(np.float32))
        return image + noise, torch.from_numpy(tokens), row_colors

    def _images(self, batch_size: int) -> ImageStream:
        image, tokens, _ = self._stripes(batch_size)
        mask = torch.from_numpy(self.masker.sample_batch(batch_size, self.rng))
        return ImageStream(image=image, image_mask=mask, visual_tokens=tokens)

    def _texts(self, batch_size: int) -> TextStream:
        lengths = self.rng.integers(self.text_len // 2, self.text_len - 1, size=batch_size)
        starts = self.rng.integers(FIRST_REGULAR_ID, FIRST_REGULAR_ID + 4 * self.text_len, size=batch_size)
        steps = self.rng.integers(1, 3, size=batch_size)
        pieces = [list(range(s, s + st * n, st))[:n] for s, st, n in zip(starts, steps, lengths - 2, strict=True)]
        return TextStream(*self._mask(pieces, self.text_mask_ratio))

    def _pairs(self, batch_size: int) -> PairStream:
        image, tokens, row_colors = self._stripes(batch_size)
        mask = torch.from_numpy(self.masker.sample_batch(batch_size, self.rng))
        pieces = [list(FIRST_REGULAR_ID + colors[: self.text_len - 2]) for colors in row_colors]
        text, padding, labels = self._mask(pieces, self.pair_text_mask_ratio)
        return PairStream(image, mask, tokens, text, padding, labels)

    def _mask(self, pieces: list[list[int]], ratio: float):
        ids = np.full((len(pieces), self.text_len), PAD_ID, dtype=np.int64)
        for row, seq in enumerate(pieces):
            seq = [BOS_ID, *seq, EOS_ID]
            ids[row, : len(seq)] = seq
        padding = ids == PAD_ID
        masked, labels = mask_text(ids, padding, ratio, self.mask_id, self.rng)
        return torch.from_numpy(masked), torch.from_numpy(padding), torch.from_numpy(labels)
