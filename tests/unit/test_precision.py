"""bf16 autocast of a training step (`beit3_core.runtime.precision`): where it applies and what it leaves fp32."""

import logging

import torch

from beit3_core.runtime.precision import cpu_has_native_bf16, step_autocast

CPU = torch.device("cpu")


def _linear_out_dtype(context) -> torch.dtype:
    layer = torch.nn.Linear(8, 4)
    with context:
        return layer(torch.randn(2, 8)).dtype


def test_fp32_unless_asked_for():
    assert _linear_out_dtype(step_autocast(CPU, gpu_bf16=True, cpu_bf16=False)) == torch.float32


def test_cpu_bf16_runs_matmuls_in_bf16_and_keeps_weights_and_losses_fp32(caplog):
    layer = torch.nn.Linear(8, 4)
    with caplog.at_level(logging.WARNING), step_autocast(CPU, gpu_bf16=False, cpu_bf16=True):
        logits = layer(torch.randn(2, 8))
        loss = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 3]))
    if cpu_has_native_bf16():
        assert logits.dtype == torch.bfloat16 and not caplog.records
    else:  # emulated bf16 would be slower than fp32: the step stays fp32 and says so
        assert logits.dtype == torch.float32 and "no native bf16" in caplog.text
    assert loss.dtype == torch.float32  # losses are on autocast's fp32 list
    loss.backward()
    assert layer.weight.dtype == layer.weight.grad.dtype == torch.float32
