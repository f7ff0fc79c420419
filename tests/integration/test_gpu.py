"""Checks only a CUDA device can run: FSDP2 with bf16 mixed precision, its sharded checkpoints and recovery.

Marked `gpu` and skipped without a CUDA device; `benchmarks/gpu_suite.sh` runs them with the GPU benchmarks.
"""

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_fsdp_bf16_run_recovers_from_a_killed_worker_with_identical_weights(tmp_path):
    from integration.test_pretrain_ray import _final_weights, _max_diff, _pretrain, _write_config
    from support.shards import build_test_shards

    shards = build_test_shards(tmp_path / "shards")
    gpu = {"use_gpu": True, "strategy": "fsdp", "bf16": True, "num_workers": 1, "cpus_per_worker": 2}
    reference = tmp_path / "reference"
    reference.mkdir()
    _pretrain(_write_config(reference, shards, reference / "runs", **gpu))
    marker = tmp_path / "killed"
    fault = {"kill_rank": 0, "at_step": 7, "marker": str(marker)}
    _pretrain(_write_config(tmp_path, shards, tmp_path / "runs", fault_injection=fault, max_failures=1, **gpu))
    assert marker.read_text() == "killed rank 0 at step 7\n"
    restored, uninterrupted = _final_weights(tmp_path / "runs"), _final_weights(reference / "runs")
    assert all(v.dtype == torch.float32 for v in restored.values())  # bf16 compute, fp32 master weights
    # CUDA's embedding backward adds with atomics, so sums are order-dependent run to run: a bound, not 1e-6.
    assert _max_diff(restored, uninterrupted) <= 1e-4


def test_bf16_fsdp_train_step_learns_on_the_gpu():
    """One process, a one-rank mesh: the loss of a fixed batch falls under FSDP2 + bf16 mixed precision."""
    import os

    import torch.distributed as dist

    from beit3_core.config import get_config
    from beit3_core.mdm import BEiT3ForMDM
    from beit3_core.synthetic import SyntheticMDMData
    from beit3_core.train.config import build_config
    from beit3_core.train.model_setup import parallelize

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29561")
    dist.init_process_group("nccl", rank=0, world_size=1)
    try:
        cfg = build_config("tiny_cpu", {"run": {"strategy": "fsdp", "use_gpu": True, "bf16": True}})
        config = get_config("beit3_tiny", vocab_size=1024, visual_vocab_size=64)
        torch.manual_seed(0)
        model = parallelize(BEiT3ForMDM(config), cfg, torch.device("cuda"))
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        batch = SyntheticMDMData(config, text_len=32, seed=0).batch(8, 8, 8).to("cuda")
        losses = []
        for _ in range(20):
            loss = model(batch)["loss"]
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
        assert losses[-1] < 0.5 * losses[0]
    finally:
        dist.destroy_process_group()
