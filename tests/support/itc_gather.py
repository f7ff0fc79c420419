"""Worker of the global-negatives test: one torch.distributed (gloo) rank computing the ITC loss on its slice."""

import os

import torch
import torch.distributed as dist
import torch.nn.functional as F

from beit3_core.itc import contrastive_logits_loss

GLOBAL_BATCH, IN_DIM, DIM = 8, 6, 5


def encoders_and_inputs() -> tuple[torch.nn.Linear, torch.nn.Linear, torch.nn.Parameter, torch.Tensor, torch.Tensor]:
    """Two linear 'encoders', a logit scale and a global batch of raw image and text inputs, all seeded."""
    torch.manual_seed(0)
    image_encoder, text_encoder = torch.nn.Linear(IN_DIM, DIM), torch.nn.Linear(IN_DIM, DIM)
    scale = torch.nn.Parameter(torch.tensor(1.3))
    return image_encoder, text_encoder, scale, torch.randn(GLOBAL_BATCH, IN_DIM), torch.randn(GLOBAL_BATCH, IN_DIM)


def loss_and_grads(rank: int, world: int) -> tuple[float, dict[str, torch.Tensor]]:
    """Loss on this rank's slice and the parameter gradients (averaged over ranks, as DDP does)."""
    image_encoder, text_encoder, scale, images, texts = encoders_and_inputs()
    local = slice(rank * GLOBAL_BATCH // world, (rank + 1) * GLOBAL_BATCH // world)
    image_BD = F.normalize(image_encoder(images[local]), dim=-1)
    text_BD = F.normalize(text_encoder(texts[local]), dim=-1)
    loss, _, _, _ = contrastive_logits_loss(image_BD, text_BD, scale)
    loss.backward()
    params = {"image.weight": image_encoder.weight, "text.weight": text_encoder.weight, "scale": scale}
    grads = {name: p.grad.detach().clone() for name, p in params.items()}
    value = loss.detach().clone()
    if world > 1:
        for grad in [*grads.values(), value]:
            dist.all_reduce(grad)
            grad /= world
    return float(value), grads


def worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        loss, grads = loss_and_grads(rank, world)
        if rank == 0:
            torch.save({"loss": loss, "grads": grads}, os.path.join(out_dir, "distributed.pt"))
        # Both ranks leave together: a rank tearing gloo down while its peer is still in a collective can abort
        # ("terminate called without an active exception").
        dist.barrier()
    finally:
        dist.destroy_process_group()
    # Leave without the interpreter's teardown: gloo and autograd threads can still be joinable then, and a C++
    # destructor aborts the finished process ("terminate called without an active exception"); seen under load.
    os._exit(0)
