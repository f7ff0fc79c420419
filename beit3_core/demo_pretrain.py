"""A short single-process MDM pretraining run on generated data: the smoke test of the whole model stack."""

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from beit3_core.checkpoint import export_released_checkpoint, save_checkpoint
from beit3_core.config import get_config
from beit3_core.mdm import BEiT3ForMDM
from beit3_core.optim import build_adamw
from beit3_core.synthetic import SyntheticMDMData

logger = logging.getLogger(__name__)


@dataclass
class DemoPretrainConfig:
    model: str = "beit3_tiny"
    steps: int = 150
    images_per_step: int = 4
    texts_per_step: int = 4
    pairs_per_step: int = 4
    text_len: int = 32
    lr: float = 1e-3
    warmup_steps: int = 10
    weight_decay: float = 0.05
    seed: int = 0
    log_every: int = 25


def run_demo_pretraining(cfg: DemoPretrainConfig, out_dir: Path) -> dict:
    """Pretrain `cfg.model` on synthetic MDM batches; write checkpoints and a metrics JSON to `out_dir`."""
    torch.manual_seed(cfg.seed)
    model_config = get_config(cfg.model, vocab_size=1024, visual_vocab_size=64)
    model = BEiT3ForMDM(model_config)
    data = SyntheticMDMData(model_config, text_len=cfg.text_len, seed=cfg.seed)
    optimizer = build_adamw(model, lr=cfg.lr, weight_decay=cfg.weight_decay)
    warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / cfg.warmup_steps))

    history = []
    start = time.perf_counter()
    for step in range(1, cfg.steps + 1):
        batch = data.batch(cfg.images_per_step, cfg.texts_per_step, cfg.pairs_per_step)
        out = model(batch)
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 3.0)
        optimizer.step()
        warmup.step()
        if step % cfg.log_every == 0 or step in (1, cfg.steps):
            record = {"step": step, "loss": out["loss"].item(), "grad_norm": grad_norm.item()}
            record |= {k: v.item() for k, v in out.items() if k.startswith(("loss/", "accuracy/"))}
            history.append(record)
            logger.info(
                "step %d loss %.3f acc image %.2f text %.2f pair_image %.2f pair_text %.2f",
                step,
                record["loss"],
                *(record[f"accuracy/{k}"] for k in ("image", "text", "pair_image", "pair_text")),
            )
    seconds = time.perf_counter() - start

    out_dir.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model, out_dir / "model.safetensors")
    export_released_checkpoint(model, out_dir / "model_released_layout.pth")
    summary = {"config": asdict(cfg), "seconds": seconds, "history": history}
    (out_dir / "metrics.json").write_text(json.dumps(summary, indent=2))
    return summary
