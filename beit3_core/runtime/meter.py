"""The one training meter: window means of the step metrics over steps and ranks, and throughput.

Values stay on the device between log steps (no host sync in the hot loop); a report does one all-reduce.
Every rank must report the same metric names: a kind that logs metrics only some steps have (per stream kind)
declares them up front (`names`), and a missing one counts as 0 for that step.
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}
"""Dense bf16 peak of the accelerator, for MFU; measured peaks are lower (benchmarks/README.md)."""


class Meter:
    def __init__(self, device: torch.device, names: list[str] | None = None):
        self.device, self.names = device, list(names) if names else None
        self._reset()

    def _reset(self) -> None:
        self.sums: torch.Tensor | None = None
        self.num_steps, self.samples, self.tokens, self.flops = 0, 0, 0, 0.0
        self.start = time.perf_counter()

    def update(self, metrics: dict[str, torch.Tensor], samples: int = 0, tokens: int = 0, flops: float = 0.0) -> None:
        """One optimizer step: its metrics (scalars) and this rank's samples, tokens and matmul FLOPs."""
        if self.names is None:
            self.names = sorted(metrics)
        zero = torch.zeros((), device=self.device)
        values = torch.stack(
            [metrics[n].detach().float().to(self.device) if n in metrics else zero for n in self.names]
        )
        self.sums = values if self.sums is None else self.sums + values
        self.num_steps += 1
        self.samples, self.tokens, self.flops = self.samples + samples, self.tokens + tokens, self.flops + flops

    def report(self) -> dict[str, float]:
        """Means since the last report, averaged over ranks (one all-reduce), plus throughput of all ranks."""
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        means = self.sums / max(1, self.num_steps)
        if world > 1:
            dist.all_reduce(means)
            means /= world
        metrics = dict(zip(self.names, means.tolist(), strict=True))  # the host sync: log steps only
        if self.samples:
            metrics["samples_per_s"] = self.samples * world / elapsed
        if self.tokens:
            metrics["tokens_per_s"] = self.tokens * world / elapsed
        if self.flops and self.device.type == "cuda":
            tflops = self.flops / elapsed / 1e12
            metrics["tflops_per_gpu"] = tflops
            name = torch.cuda.get_device_name(self.device)
            peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
            if peak:
                metrics["mfu"] = tflops / peak
            metrics["memory_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        self._reset()
        return metrics
