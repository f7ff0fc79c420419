"""Build the MDM model for a run and wrap it for data parallelism (DDP, or FSDP2 `fully_shard`)."""

import logging
from pathlib import Path

import torch

from beit3_core.checkpoint import load_checkpoint, load_released_state_dict, read_released_state_dict, read_state_dict
from beit3_core.config import BEiT3Config
from beit3_core.itc import BEiT3ForITC
from beit3_core.mdm import BEiT3ForMDM
from beit3_core.train.config import PretrainConfig

logger = logging.getLogger(__name__)


def build_pretraining_model(cfg: PretrainConfig, model_config: dict) -> BEiT3ForMDM | BEiT3ForITC:
    """The run's model (MDM, or the ITC dual encoder) with its resolved config, optionally from a checkpoint.

    ITC starts from an MDM checkpoint (ours or released): the backbone loads strictly, the MDM heads are not
    used, and the projections and logit scale start at their initialisation unless the file holds them.
    """
    torch.manual_seed(cfg.run.seed)  # identical initial weights on every rank
    itc = cfg.model.objective == "itc"
    if itc:
        model = BEiT3ForITC(BEiT3Config(**model_config))
    else:
        model = BEiT3ForMDM(BEiT3Config(**model_config), loss_weights=cfg.model.loss_weights)
    source = cfg.model.init_checkpoint
    if source:
        path = Path(source)
        if itc:
            state = read_state_dict(path)
            load_released_state_dict(model, state, str(path), strict_heads=False).log(path)
        elif path.suffix == ".safetensors":
            model.load_state_dict(load_checkpoint(path).state_dict(), strict=True)
        else:
            load_released_state_dict(model, read_released_state_dict(path), str(path)).log(path)
        logger.info("initialised from %s", path)
    return model


def parallelize(model: BEiT3ForMDM, cfg: PretrainConfig, device: torch.device) -> torch.nn.Module:
    """DDP through Ray Train, or FSDP2 (`fully_shard` per encoder layer, then the root) for large models.

    FSDP2 runs on GPUs (NCCL) and on a CPU mesh (gloo), where bf16 mixed precision is left out.
    """
    import torch.distributed as dist

    if cfg.run.strategy == "ddp" and not dist.is_initialized():
        return model.to(device)  # one process, no process group (`beit3_core.runtime.loop.run_local`)
    import ray.train.torch

    if cfg.run.strategy == "ddp":
        # ITC never uses the mask token (nor VL experts): DDP must be told to expect unused parameters.
        unused = {"find_unused_parameters": True} if cfg.model.objective == "itc" else {}
        return ray.train.torch.prepare_model(model, parallel_strategy="ddp", parallel_strategy_kwargs=unused)
    if cfg.run.strategy != "fsdp":
        raise ValueError(f"run.strategy must be 'ddp' or 'fsdp', got {cfg.run.strategy!r}")
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    model.to(device)
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    kwargs: dict = {"mesh": mesh}
    if cfg.run.bf16 and device.type == "cuda":
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for layer in model.beit3.encoder.layers:
        fully_shard(layer, **kwargs)
    fully_shard(model, **kwargs)
    return model


def gradient_sync(model: torch.nn.Module, enabled: bool):
    """A context in which backward synchronises gradients across ranks only if `enabled` (the last micro-batch
    of an accumulation): FSDP2's `set_requires_gradient_sync`, DDP's `no_sync`."""
    import contextlib

    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2 module

        @contextlib.contextmanager
        def fsdp_sync():
            model.set_requires_gradient_sync(enabled)
            try:
                yield
            finally:
                model.set_requires_gradient_sync(True)

        return fsdp_sync()
    if enabled or not hasattr(model, "no_sync"):
        return contextlib.nullcontext()
    return model.no_sync()
