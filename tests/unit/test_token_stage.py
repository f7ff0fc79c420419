"""Tokenizer actors: how many start with what resources, and a group of shards encodes like each shard alone."""

import numpy as np
import pytest
import torch

from preprocessing.config import VisualStage
from preprocessing.token_stage import TokenizerActor, plan_actors
from preprocessing.tokenize_shard import attach_tokens, encode_views
from preprocessing.vqkd.checkpoint import save_vqkd
from preprocessing.vqkd.model import build_vqkd


@pytest.mark.parametrize(
    ("visual", "cpus", "gpus", "expected"),
    [
        # CPU cluster: one single-thread actor per CPU, sharing the cores with the CPU stage.
        (VisualStage(), 16, 0, (16, 1, 0.0, 0.0)),
        (VisualStage(actor_threads=4), 16, 0, (4, 4, 0.0, 0.0)),
        (VisualStage(actor_threads=4), 2, 0, (1, 4, 0.0, 0.0)),
        (VisualStage(actors=3, actor_cpus=1.0), 16, 0, (3, 1, 1.0, 0.0)),
        (VisualStage(actor_cpus=4.0), 16, 0, (2, 4, 4.0, 0.0)),  # half the CPUs; threads follow the reservation
        # GPU cluster: one actor per GPU reserving its threads' CPUs; half a GPU each when asked.
        (VisualStage(), 32, 2, (2, 1, 1.0, 1.0)),
        (VisualStage(actor_gpus=0.5, actor_threads=2), 32, 2, (4, 2, 2.0, 0.5)),
        # GPUs present but the tokenizer kept on the CPU by config.
        (VisualStage(actor_gpus=0), 8, 1, (8, 1, 0.0, 0.0)),
    ],
)
def test_actor_plan(visual: VisualStage, cpus: int, gpus: int, expected: tuple) -> None:
    plan = plan_actors(visual, cpus, gpus)
    assert (plan.count, plan.threads, plan.num_cpus, plan.num_gpus) == expected
    assert plan.device == ("cuda" if expected[3] else "cpu")


def test_actors_that_would_take_every_cpu_are_refused() -> None:
    with pytest.raises(ValueError, match="leave no CPU"):
        plan_actors(VisualStage(actors=4, actor_cpus=1.0), 4, 0)
    with pytest.raises(ValueError, match="leave no CPU"):
        plan_actors(VisualStage(actor_threads=2), 2, 1)  # one GPU actor reserving both CPUs


def test_a_group_of_shards_encodes_like_each_shard_alone(tmp_path) -> None:
    torch.manual_seed(0)
    model = build_vqkd("vqkd_tiny", num_codes=16, img_size=32).eval()
    path = tmp_path / "vqkd.safetensors"
    save_vqkd(model, path)
    rng = np.random.default_rng(0)
    shards = [rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8) for n in (5, 0, 3, 9)]
    actor = TokenizerActor(str(path), "cpu", threads=1, batch_size=4)  # batches cross shard boundaries
    grouped = actor.encode(*shards)
    assert len(grouped) == len(shards)
    for views, tokens in zip(shards, grouped, strict=True):
        alone = encode_views(model, views, batch_size=len(views) or 1)
        assert tokens.shape == (len(views), 4) and np.array_equal(tokens, alone)
        for one, row in zip(views, tokens, strict=True):  # and like each view alone
            with torch.no_grad():
                single = model.encode(torch.as_tensor(one).permute(2, 0, 1)[None].float() / 255)
            assert single[0].tolist() == row.tolist()
    assert np.array_equal(actor.encode(shards[0]), grouped[0])


def test_tokens_are_attached_in_record_order_and_counts_are_checked() -> None:
    records = [{"views": [{"tokens": None}, {"tokens": None}]}, {"views": None}, {"views": [{"tokens": None}]}]
    attach_tokens(records, np.array([[1, 2], [3, 4], [5, 6]]))
    assert [v["tokens"] for r in records for v in r["views"] or []] == [[1, 2], [3, 4], [5, 6]]
    with pytest.raises(ValueError, match="2 token rows for 3 views"):
        attach_tokens(records, np.array([[1, 2], [3, 4]]))
