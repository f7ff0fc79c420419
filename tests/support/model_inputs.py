"""Inputs and a small model shared by the model tests."""

import torch

import beit3_core

# A model small enough for many forwards per test, with the release layout.
SMALL = dict(embed_dim=64, num_layers=2, num_heads=4, ffn_dim=128, img_size=32, patch_size=16, vocab_size=100)


def small_model(**overrides) -> beit3_core.BEiT3:
    torch.manual_seed(0)
    return beit3_core.build_model("beit3_tiny", **(SMALL | overrides)).eval()


def make_inputs(config: beit3_core.BEiT3Config, batch_size: int = 2, text_len: int = 7, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    image = torch.randn(batch_size, config.in_chans, config.img_size, config.img_size, generator=gen)
    text = torch.randint(4, config.vocab_size, (batch_size, text_len), generator=gen)
    padding = torch.zeros(batch_size, text_len, dtype=torch.bool)
    padding[-1, text_len - 2 :] = True
    image_mask = torch.rand(batch_size, config.num_patches, generator=gen) < 0.5
    return image, text, padding, image_mask


def micro_pretrain_overrides(loader_workers: int, warmup_steps: int) -> dict:
    """Pretraining config sections for a micro model on the 2x2-grid test shards (`support.shards`)."""
    return {
        "model": {
            "overrides": {k: SMALL[k] for k in ("embed_dim", "num_layers", "num_heads", "img_size", "patch_size")}
            | {"ffn_dim": 128}
        },
        "data": {
            "images_per_step": 4,
            "texts_per_step": 4,
            "pairs_per_step": 4,
            "text_len": 16,
            "pair_text_len": 8,
            "num_workers": loader_workers,
        },
        "optim": {"warmup_steps": warmup_steps},
    }
