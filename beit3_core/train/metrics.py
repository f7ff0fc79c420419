"""Training metrics: running means per stream kind, throughput, and on GPUs achieved TFLOP/s, MFU and memory.

Values stay on the device between log steps (no host sync in the hot loop); a report does one all-reduce.
"""

import time

import torch
import torch.distributed as dist

from beit3_core.config import BEiT3Config
from beit3_core.itc import ITC_METRICS
from beit3_core.mdm import STREAM_KINDS, MDMBatch
from beit3_core.train.config import PretrainConfig

# Dense bf16 peak of the accelerator, for MFU; measured peaks are lower (benchmarks/README.md).
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def _encoder_flops(config: BEiT3Config, batch_size: int, tokens: int) -> float:
    dim, ffn = config.embed_dim, config.ffn_dim
    per_layer = 2 * tokens * (4 * dim * dim + 2 * dim * ffn) + 4 * tokens * tokens * dim
    return batch_size * config.num_layers * per_layer


def itc_step_flops(config: BEiT3Config, batch: MDMBatch) -> float:
    """Matmul FLOPs of one ITC step (3x forward): separate image and text passes, the two projections and the
    local x global similarity matrices (the batch of every rank is the same size)."""
    s, dim = batch.pair, config.embed_dim
    world = dist.get_world_size() if dist.is_initialized() else 1
    total = _encoder_flops(config, s.batch_size, 1 + config.num_patches) + _encoder_flops(
        config, s.batch_size, s.text.shape[1]
    )
    total += 2 * (2 * s.batch_size * dim * dim) + 2 * (2 * s.batch_size * world * s.batch_size * dim)
    return 3 * total


def step_flops(config: BEiT3Config, batch: MDMBatch) -> float:
    """Matmul FLOPs of one MDM training step (3x forward): projections, FFN, attention and the MDM heads."""
    dim = config.embed_dim
    total = 0.0
    for stream in batch.streams():
        if stream is None:
            continue
        tokens = (1 + config.num_patches if hasattr(stream, "image") else 0) + (
            stream.text.shape[1] if hasattr(stream, "text") else 0
        )
        total += _encoder_flops(config, stream.batch_size, tokens)
        if hasattr(stream, "image_mask"):
            total += 2 * stream.image_mask.shape[0] * stream.image_mask.shape[1] * 0.4 * dim * config.visual_vocab_size
        if hasattr(stream, "text_labels"):
            total += 2 * stream.text_labels.numel() * 0.3 * dim * config.vocab_size
    return 3 * total


class StepMeter:
    """Running means of the objective's metrics (MDM: per-kind loss and accuracy; ITC: loss, in-batch retrieval
    accuracy both ways, logit scale), the gradient norm and throughput."""

    def __init__(self, cfg: PretrainConfig, model_config: dict, device: torch.device):
        self.config = BEiT3Config(**model_config)
        self.device = device
        if cfg.model.objective == "itc":
            self.names, self.flops_of = [*ITC_METRICS, "grad_norm"], itc_step_flops
        else:
            self.names = [f"{m}/{k}" for k in STREAM_KINDS for m in ("loss", "accuracy")] + ["loss", "grad_norm"]
            self.flops_of = step_flops
        self._reset()

    def _reset(self) -> None:
        self.sums = torch.zeros(len(self.names), device=self.device)
        self.num_steps = 0
        self.samples = 0
        self.tokens = 0
        self.flops = 0.0
        self.start = time.perf_counter()

    def update(self, outputs: list[tuple[dict, MDMBatch]], grad_norm: torch.Tensor) -> None:
        values = []
        for name in self.names[:-1]:
            found = [out[name].detach().float() for out, _ in outputs if name in out]
            values.append(torch.stack(found).mean() if found else torch.zeros((), device=self.device))
        values.append(grad_norm.detach().float())
        self.sums += torch.stack(values)
        self.num_steps += 1
        for _, batch in outputs:
            self.samples += sum(batch.num_samples().values())
            self.tokens += _num_tokens(batch, self.config)
            self.flops += self.flops_of(self.config, batch)

    def report(self, step: int, lr: float) -> dict[str, float]:
        """Means since the last report, averaged over ranks (one all-reduce), plus throughput of all ranks."""
        elapsed = time.perf_counter() - self.start
        world = dist.get_world_size() if dist.is_initialized() else 1
        means = self.sums / max(1, self.num_steps)
        if dist.is_initialized():
            dist.all_reduce(means)
            means /= world
        metrics = dict(zip(self.names, means.tolist(), strict=True))
        metrics |= {
            "step": step,
            "lr": lr,
            "samples_per_s": self.samples * world / elapsed,
            "tokens_per_s": self.tokens * world / elapsed,
        }
        if self.device.type == "cuda":
            tflops = self.flops / elapsed / 1e12
            metrics["tflops_per_gpu"] = tflops
            name = torch.cuda.get_device_name(self.device)
            peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
            if peak:
                metrics["mfu"] = tflops / peak
            metrics["memory_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        self._reset()
        return metrics


def _num_tokens(batch: MDMBatch, config: BEiT3Config) -> int:
    total = 0
    for stream in batch.streams():
        if stream is None:
            continue
        if hasattr(stream, "image"):
            total += stream.batch_size * (1 + config.num_patches)
        if hasattr(stream, "text_padding_mask"):
            total += int(stream.text_padding_mask.numel())
    return total
