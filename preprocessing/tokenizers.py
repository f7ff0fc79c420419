"""Train or load the two tokenizers: SentencePiece (text ids) and VQ-KD (visual tokens).

Trained tokenizers are written under `<output>/tokenizers/` with the config they were trained with and are
reused on later runs while that config is unchanged, even when the data changes: retraining a tokenizer would
change every token of every shard, so a data update must not do it implicitly (delete the folder to retrain).
"""

import hashlib
import json
import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from beit3_core.data.views import canonical_view, decode_stored_image, render_view
from beit3_core.text_tokenizer import XLMRTokenizer, train_sentencepiece
from preprocessing.config import TextStage, VisualStage

logger = logging.getLogger(__name__)

RUN_ONLY_FIELDS = ("actors", "actor_threads", "actor_cpus", "actor_gpus")


def file_id(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def prepare_text_tokenizer(stage: TextStage, clean_tables: list[Path], folder: Path) -> tuple[Path, dict]:
    """(model path, manifest info). Trains on up to `sample_lines` texts/captions of the clean tables."""
    if stage.spm_model:
        path = Path(stage.spm_model)
    else:
        path = folder / "spm.model"
        stamp = folder / "spm.config.json"
        config = json.dumps({"vocab_size": stage.vocab_size, "sample_lines": stage.sample_lines}, sort_keys=True)
        if not (path.is_file() and stamp.is_file() and stamp.read_text() == config):
            texts = []
            for table in clean_tables:
                captions = pq.read_table(table, columns=["caption"]).column("caption").to_pylist()
                texts += [c for c in captions if c]
                if len(texts) >= stage.sample_lines:
                    break
            if not texts:
                raise ValueError("no texts or captions to train SentencePiece on; give text.spm_model")
            folder.mkdir(parents=True, exist_ok=True)
            # A soft limit: a small corpus may support fewer pieces than asked for.
            train_sentencepiece(
                texts[: stage.sample_lines], folder / "spm", stage.vocab_size, num_threads=2, hard_vocab_limit=False
            )
            stamp.write_text(config)
    tokenizer = XLMRTokenizer(path)
    return path, {
        "model_id": file_id(path),
        "path": str(path),
        "vocab_size": tokenizer.vocab_size,
        "mask_id": tokenizer.mask_id,
        "max_tokens": stage.max_tokens,
    }


def _sample_images(clean_tables: list[Path], count: int, img_size: int, skip: int = 0) -> np.ndarray:
    """Canonical views of `count` images spread evenly over the clean tables, uint8 [N, S, S, 3].

    Each table contributes its images from position `skip` on, up to an equal share, so every source is
    represented; `skip` keeps a held-out sample (skip=0) apart from a training sample (skip=held-out share).
    """
    per_table = [pq.read_table(t, columns=["image"]).column("image").to_pylist() for t in clean_tables]
    per_table = [[d for d in images if d is not None][skip:] for images in per_table]
    per_table = [images for images in per_table if images]
    if not per_table:
        raise ValueError("no images to train the visual tokenizer on; give visual.checkpoint")
    picked = []
    for round_index in range(max(len(images) for images in per_table)):
        for images in per_table:
            if round_index < len(images) and len(picked) < count:
                picked.append(images[round_index])
    views = []
    for data in picked:
        stored = decode_stored_image(data)
        views.append(render_view(stored, canonical_view(*stored.shape[:2]), img_size))
    return np.stack(views)


def prepare_visual_tokenizer(stage: VisualStage, clean_tables: list[Path], folder: Path, seed: int):
    """(tokenizer path, manifest info incl. held-out codebook usage). Fails when usage is under the minimum."""
    import torch  # here: the pipeline's CPU-stage workers import this package and never need torch

    from preprocessing.vqkd.checkpoint import load_official_vqkd, load_vqkd, save_vqkd, tokenizer_id
    from preprocessing.vqkd.model import build_vqkd
    from preprocessing.vqkd.teachers import build_teacher
    from preprocessing.vqkd.train import codebook_usage, train_vqkd

    if stage.checkpoint:
        path = Path(stage.checkpoint)
        tokenizer = load_vqkd(path) if path.suffix == ".safetensors" else load_official_vqkd(path)
    else:
        path = folder / "vqkd.safetensors"
        stamp = folder / "vqkd.config.json"
        # How the tokenizer is run (actor count and resources) does not change it, so it stays out of the stamp.
        trained_with = {k: v for k, v in asdict(stage).items() if k not in RUN_ONLY_FIELDS}
        config = json.dumps(trained_with | {"seed": seed}, sort_keys=True)
        if path.is_file() and stamp.is_file() and stamp.read_text() == config:
            tokenizer = load_vqkd(path)
        else:
            holdout_share = -(-stage.holdout_images // max(1, len(clean_tables)))
            train_set = _sample_images(clean_tables, stage.train_images, stage.img_size, skip=holdout_share)
            teacher = build_teacher(stage.teacher)
            vq_config = build_vqkd(
                stage.config, num_codes=stage.num_codes, img_size=stage.img_size, teacher_dim=teacher.output_dim
            ).config
            torch.manual_seed(seed)
            logger.info(
                "training the %s visual tokenizer on %d images, %d steps",
                stage.config,
                len(train_set),
                stage.train_steps,
            )
            tokenizer = train_vqkd(
                train_set,
                vq_config,
                teacher,
                steps=stage.train_steps,
                batch_size=stage.batch_size,
                lr=stage.lr,
                seed=seed,
                restart_dead_every=stage.restart_dead_every,
            )
            folder.mkdir(parents=True, exist_ok=True)
            save_vqkd(tokenizer, path)
            stamp.write_text(config)
    tokenizer.eval()
    holdout = _sample_images(clean_tables, stage.holdout_images, tokenizer.config.img_size)
    usage = codebook_usage(tokenizer, holdout, min_usage=stage.min_codebook_usage)
    info = {
        "tokenizer_id": tokenizer_id(tokenizer)[:16],
        "path": str(path),
        "num_codes": tokenizer.num_codes,
        "grid_size": tokenizer.config.grid_size,
        "img_size": tokenizer.config.img_size,
        "codebook_usage": usage["usage"],
        "codebook_perplexity": usage["perplexity"],
        "holdout_images": len(holdout),
    }
    if usage["low_usage"]:
        raise RuntimeError(
            f"visual tokenizer {path} uses {100 * usage['usage']:.1f}% of its {tokenizer.num_codes} codes on "
            f"{len(holdout)} held-out images (minimum {100 * stage.min_codebook_usage:.0f}%): train longer, on "
            "more images or with fewer codes (visual.num_codes), or lower visual.min_codebook_usage knowingly"
        )
    return path, info
