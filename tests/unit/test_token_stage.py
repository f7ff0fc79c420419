"""Tokenizer actors: how many start with what resources, and a group of shards encodes like each shard alone."""

import numpy as np
import pytest
import torch

from preprocessing.config import VisualStage
from preprocessing.token_stage import ActorPlan, TokenizerActor, node_capacity, place_actors, plan_actors
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


def _saved_tokenizer(folder, seed: int = 0):
    """(untrained 16-code tiny VQ-KD at 32 px, its .safetensors path)."""
    torch.manual_seed(seed)
    model = build_vqkd("vqkd_tiny", num_codes=16, img_size=32).eval()
    path = folder / f"vqkd{seed}.safetensors"
    save_vqkd(model, path)
    return model, path


def test_a_group_of_shards_encodes_like_each_shard_alone(tmp_path) -> None:
    model, path = _saved_tokenizer(tmp_path)
    rng = np.random.default_rng(0)
    shards = [rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8) for n in (5, 0, 3, 9)]
    actor = TokenizerActor("cpu", threads=1, batch_size=4)  # batches cross shard boundaries
    grouped = actor.encode(*shards, checkpoint=str(path))
    assert len(grouped) == len(shards)
    for views, tokens in zip(shards, grouped, strict=True):
        alone = encode_views(model, views, batch_size=len(views) or 1)
        assert tokens.shape == (len(views), 4) and np.array_equal(tokens, alone)
        for one, row in zip(views, tokens, strict=True):  # and like each view alone
            with torch.no_grad():
                single = model.encode(torch.as_tensor(one).permute(2, 0, 1)[None].float() / 255)
            assert single[0].tolist() == row.tolist()
    assert np.array_equal(actor.encode(shards[0], checkpoint=str(path)), grouped[0])


def test_actors_are_spread_over_nodes_in_proportion_to_their_capacity() -> None:
    assert place_actors(2, {"a": 1.0, "b": 1.0}) == ["a", "b"]  # one per node, not both on the first
    placed = place_actors(6, {"small": 2.0, "large": 4.0, "none": 0.0})
    assert sorted(placed) == ["large"] * 4 + ["small"] * 2
    assert placed[:2] == ["large", "small"]  # an early stop still leaves work on both nodes
    assert sorted(place_actors(5, {"a": 1.0, "b": 1.0})) == ["a", "a", "a", "b", "b"]  # more actors than slots
    with pytest.raises(ValueError, match="no node can hold"):
        place_actors(1, {"cpu_only": 0.0})


def test_node_capacity_counts_gpus_for_gpu_actors_and_cpus_per_thread_otherwise() -> None:
    nodes = [
        {"NodeID": "gpu", "Alive": True, "Resources": {"CPU": 16.0, "GPU": 2.0}},
        {"NodeID": "cpu", "Alive": True, "Resources": {"CPU": 8.0}},
        {"NodeID": "gone", "Alive": False, "Resources": {"CPU": 64.0, "GPU": 8.0}},
    ]
    cpu_plan = ActorPlan(count=6, threads=4, num_cpus=0.0, num_gpus=0.0)
    assert node_capacity(cpu_plan, nodes) == {"gpu": 4.0, "cpu": 2.0}
    gpu_plan = ActorPlan(count=4, threads=1, num_cpus=1.0, num_gpus=0.5)
    assert node_capacity(gpu_plan, nodes) == {"gpu": 4.0, "cpu": 0.0}


def test_chunks_of_shards_encode_like_the_whole_shards(tmp_path) -> None:
    _, path = _saved_tokenizer(tmp_path)
    rng = np.random.default_rng(1)
    first, second = (rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8) for n in (7, 4))
    actor = TokenizerActor("cpu", threads=1, batch_size=3)
    whole = actor.encode(first, second, checkpoint=str(path))
    # The tail of one shard and the head of the next in one call, as the scheduler cuts them.
    tail, head = actor.encode(first, second, checkpoint=str(path), bounds=[(5, 7), (0, 3)])
    assert np.array_equal(tail, whole[0][5:7]) and np.array_equal(head, whole[1][0:3])
    pieces = [actor.encode(first, checkpoint=str(path), bounds=[(s, min(s + 3, 7))]) for s in range(0, 7, 3)]
    assert np.array_equal(np.concatenate(pieces), whole[0])


def test_an_actor_loads_the_checkpoint_each_call_names(tmp_path) -> None:
    rng = np.random.default_rng(2)
    views = rng.integers(0, 256, size=(6, 32, 32, 3), dtype=np.uint8)
    paths = [_saved_tokenizer(tmp_path, seed)[1] for seed in (0, 1)]
    fresh = [TokenizerActor("cpu", threads=1, batch_size=4).encode(views, checkpoint=str(p)) for p in paths]
    assert not np.array_equal(fresh[0], fresh[1])  # two different tokenizers
    actor = TokenizerActor("cpu", threads=1, batch_size=4)  # as restarted by Ray: no tokenizer held
    assert actor.model is None
    for path, expected in [(paths[0], fresh[0]), (paths[1], fresh[1]), (paths[0], fresh[0])]:
        assert np.array_equal(actor.encode(views, checkpoint=str(path)), expected)


def test_tokens_are_attached_in_record_order_and_counts_are_checked() -> None:
    records = [{"views": [{"tokens": None}, {"tokens": None}]}, {"views": None}, {"views": [{"tokens": None}]}]
    attach_tokens(records, np.array([[1, 2], [3, 4], [5, 6]]))
    assert [v["tokens"] for r in records for v in r["views"] or []] == [[1, 2], [3, 4], [5, 6]]
    with pytest.raises(ValueError, match="2 token rows for 3 views"):
        attach_tokens(records, np.array([[1, 2], [3, 4]]))
