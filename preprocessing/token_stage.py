"""Pass 2 on Ray: CPU tasks render views, long-lived tokenizer actors encode them, CPU tasks write the shards.

Per shard, a render task (1 CPU) decodes each stored image once, renders its K views and encodes the texts;
its outputs go to Ray's object store as three objects (a small summary, the records, the views uint8
[V, S, S, 3]). The driver cuts the rendered views, oldest shard first, into chunks of one tokenizer batch
(a chunk may span shards, a shard may span chunks) and sends each chunk to the least loaded actor once that
actor has fewer than two batches queued, so every actor stays busy to the end and no actor is left with a
whole shard while the others idle. Each actor loads the visual tokenizer once for the whole run. When all
of a shard's views are sent, a write task waits for their tokens, attaches them to the records and writes
the shard files atomically (`preprocessing.shard_writer`), exactly as a single process would.

Resources: CPU actors reserve no Ray CPU by default and run `actor_threads` torch threads each (default 1),
one actor per that many cluster CPUs; they share the cores with the render and write tasks and the OS
divides the cores, so no core idles while either stage has work. GPU actors take `actor_gpus` GPUs each and
leave the CPUs to the CPU stage. Actors are placed on the nodes in proportion to their CPUs (GPUs for GPU
actors). Views waiting for tokens are bounded, so the object store holds a few batches per actor, not the
data set.
"""

from __future__ import annotations

import contextlib
import functools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from preprocessing.config import PreprocessConfig, VisualStage
from preprocessing.plan import ShardPlan
from preprocessing.shard_writer import is_shard_complete, write_shard

_BATCHES_IN_FLIGHT_PER_ACTOR = 4
_BATCHES_QUEUED_PER_ACTOR = 2  # one encoding, one waiting: the actor never waits for the driver
_ACTOR_RETRIES = 3


@dataclass(frozen=True)
class ShardJob:
    plan: ShardPlan
    fingerprint: str
    duplicates: dict[str, str]


@functools.lru_cache(maxsize=2)
def _text_tokenizer(spm_path: str):
    from beit3_core.text_tokenizer import XLMRTokenizer

    return XLMRTokenizer(spm_path)


def render_task(job: ShardJob, out: Path, work: Path, cfg: PreprocessConfig, spm_path: str, img_size: int):
    """(summary, records without tokens, views uint8 [V, S, S, 3]); records and views are None when reused."""
    from preprocessing.tokenize_shard import render_records

    name = job.plan.name
    if is_shard_complete(out, name, job.fingerprint, verify_hashes=False):
        return {"shard": name, "reused": True, "views": 0, "quarantine": []}, None, None
    records, quarantine, pixels = render_records(
        work / f"{name}.clean.parquet",
        job.duplicates,
        job.plan.source.name,
        _text_tokenizer(spm_path),
        cfg.text.max_tokens,
        img_size,
        cfg.views,
        cfg.seed,
    )
    return {"shard": name, "reused": False, "views": len(pixels), "quarantine": quarantine}, records, pixels


def write_task(job: ShardJob, records: list[dict], out: Path, *tokens: np.ndarray) -> dict:
    """Attach `tokens` (the shard's views' tokens in view order, in one or more pieces) and write the shard."""
    from preprocessing.tokenize_shard import attach_tokens

    if tokens:
        attach_tokens(records, np.concatenate(tokens))
    write_shard(records, out, job.plan.name, job.fingerprint)
    return {"shard": job.plan.name, "reused": False}


class TokenizerActor:
    """Holds one visual tokenizer for the whole run and encodes groups of views.

    The actor starts without a tokenizer (its process start and `import torch` take seconds, so the pipeline
    starts the actors before the clean pass) and loads the checkpoint named by the first call that needs it.
    Every call names its checkpoint, so an actor restarted by Ray after a crash reloads it by itself.
    """

    def __init__(self, device: str, threads: int, batch_size: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self.device, self.batch_size = device, batch_size
        self.checkpoint: str | None = None
        self.model = None

    def load(self, checkpoint: str) -> None:
        """Load the visual tokenizer of `checkpoint` (.safetensors, or an official .pth) unless already held."""
        if checkpoint == self.checkpoint:
            return
        from preprocessing.vqkd.checkpoint import load_official_vqkd, load_vqkd

        load = load_vqkd if checkpoint.endswith(".safetensors") else load_official_vqkd
        self.model = load(checkpoint).to(self.device).eval()
        self.checkpoint = checkpoint

    def encode(
        self, *pixels: np.ndarray, checkpoint: str, bounds: list[tuple[int, int]] | None = None
    ) -> np.ndarray | list[np.ndarray]:
        """Tokens int64 [V_i, grid*grid] per views array uint8 [V_i, S, S, 3]; one array when given one.

        With `bounds`, only views `pixels[i][start:stop]` of each array are encoded (a chunk of a shard).
        """
        from preprocessing.tokenize_shard import encode_views

        self.load(checkpoint)
        if bounds is not None:
            pixels = tuple(views[start:stop] for views, (start, stop) in zip(pixels, bounds, strict=True))
        tokens = encode_views(self.model, np.concatenate(pixels), self.batch_size)
        parts = np.split(tokens, np.cumsum([len(p) for p in pixels])[:-1])
        return parts[0] if len(parts) == 1 else parts


@dataclass(frozen=True)
class ActorPlan:
    count: int
    threads: int
    num_cpus: float
    num_gpus: float

    @property
    def device(self) -> str:
        return "cuda" if self.num_gpus > 0 else "cpu"


def plan_actors(visual: VisualStage, cluster_cpus: float, cluster_gpus: float) -> ActorPlan:
    """How many tokenizer actors to start and what each reserves (see `VisualStage` for the defaults).

    Raises:
        ValueError: The actors would reserve every CPU, so no render or write task could ever run.
    """
    gpus = visual.actor_gpus if visual.actor_gpus is not None else (1.0 if cluster_gpus >= 1 else 0.0)
    threads = visual.actor_threads or max(1, round(visual.actor_cpus or 0))
    if gpus > 0:
        count = visual.actors or max(1, int(cluster_gpus // gpus))
        cpus = visual.actor_cpus if visual.actor_cpus is not None else float(threads)
    else:
        cpus = visual.actor_cpus if visual.actor_cpus is not None else 0.0
        # Actors that reserve CPUs get half of the cluster's; free-riding ones one per `threads` CPUs.
        count = visual.actors or max(1, int((cluster_cpus / 2 if cpus else cluster_cpus) // max(cpus, threads)))
    if count * cpus > cluster_cpus - 1:
        raise ValueError(
            f"{count} tokenizer actors x {cpus} CPUs leave no CPU of the cluster's {cluster_cpus:g} for the render "
            "and write tasks; lower visual.actors or visual.actor_cpus"
        )
    return ActorPlan(count=count, threads=threads, num_cpus=cpus, num_gpus=gpus)


def place_actors(count: int, capacity: dict[str, float]) -> list[str]:
    """Node id of each of `count` actors, spread over the nodes in proportion to `capacity` (actors per node).

    Each actor goes to the node with the fewest actors for its capacity (ties: the earlier node), so equal
    nodes get equal shares and a node twice as large gets twice the actors. Nodes of no capacity get none.

    Raises:
        ValueError: No node has capacity.
    """
    nodes = [node for node, slots in capacity.items() if slots > 0]
    if not nodes:
        raise ValueError(f"no node can hold a tokenizer actor (capacity per node: {capacity})")
    placed = {node: 0 for node in nodes}
    order = []
    for _ in range(count):
        node = min(nodes, key=lambda n: (placed[n] + 1) / capacity[n])
        placed[node] += 1
        order.append(node)
    return order


def node_capacity(plan: ActorPlan, nodes: list[dict]) -> dict[str, float]:
    """Actors each alive node can hold by its GPUs (GPU actors) or CPUs (one per `plan.threads`); `ray.nodes()`."""
    capacity = {}
    for node in nodes:
        if node.get("Alive"):
            resources = node.get("Resources", {})
            if plan.num_gpus > 0:
                capacity[node["NodeID"]] = resources.get("GPU", 0) / plan.num_gpus
            else:
                capacity[node["NodeID"]] = resources.get("CPU", 0) / plan.threads
    return capacity


def start_actors(plan: ActorPlan, batch_size: int) -> list:
    """Start `plan.count` tokenizer actors (without a tokenizer yet, see `TokenizerActor`) over the nodes."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    # Placed node by node rather than with Ray's best-effort SPREAD, which can put every zero-CPU actor on one
    # node; and hard affinity, because Ray places a zero-resource request with soft affinity on a random node
    # (ray-project/ray#25360). An actor that dies (e.g. to the node's OOM killer) restarts on its node and its
    # pending calls are retried, since encoding is a pure function of its input; if the node itself is lost,
    # the run fails and a rerun resumes from the shards already written.
    actor_class = ray.remote(TokenizerActor)
    options = {
        "num_cpus": plan.num_cpus,
        "num_gpus": plan.num_gpus,
        "max_restarts": _ACTOR_RETRIES,
        "max_task_retries": _ACTOR_RETRIES,
    }
    return [
        actor_class.options(**options, scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(
            plan.device, plan.threads, batch_size
        )
        for node in place_actors(plan.count, node_capacity(plan, ray.nodes()))
    ]


@contextlib.contextmanager
def tokenizer_actors(visual: VisualStage):
    """The run's tokenizer actors, planned on the connected cluster's resources and killed on exit."""
    import ray

    resources = ray.cluster_resources()
    plan = plan_actors(visual, resources.get("CPU", 1), resources.get("GPU", 0))
    actors = start_actors(plan, visual.batch_size_encode)
    try:
        yield actors
    finally:
        for actor in actors:
            ray.kill(actor)


def run_token_stage(
    jobs: list[ShardJob],
    cfg: PreprocessConfig,
    out: Path,
    work: Path,
    spm_path: str,
    vqkd_path: str,
    img_size: int,
    actors: list,
    on_rendered: Callable[[dict], None],
    progress=None,
) -> list[dict]:
    """Build every shard of `jobs` with `actors` (from `tokenizer_actors`); results ({"shard", "reused"}) in job
    order.

    `on_rendered(summary)` runs in the driver for each rendered shard (e.g. to record its quarantine) before
    that shard is written.
    """
    import ray

    for actor in actors:  # queued before any encode call: the load overlaps the first renders
        actor.load.remote(vqkd_path)
    scheduler = _Scheduler(jobs, cfg, out, work, spm_path, vqkd_path, img_size, actors, on_rendered, progress)
    return scheduler.run(max(2, int(ray.cluster_resources().get("CPU", 2))))


@dataclass
class _Rendered:
    """A rendered shard whose views are being sent to the actors, chunk by chunk."""

    index: int
    records: object  # ObjectRef of its records
    views: object  # ObjectRef of its views uint8 [V, S, S, 3]
    count: int
    sent: int = 0
    tokens: list = field(default_factory=list)  # ObjectRefs of its tokens, one per chunk piece, in view order


class _Scheduler:
    """The driver loop of `run_token_stage`: render, cut into batches, encode on the least loaded actor, write."""

    def __init__(self, jobs, cfg, out, work, spm_path, vqkd_path, img_size, actors, on_rendered, progress) -> None:
        import ray

        self.render = ray.remote(render_task).options(num_cpus=1, num_returns=3)
        self.write = ray.remote(write_task).options(num_cpus=1)
        self.jobs, self.cfg, self.out, self.work = jobs, cfg, out, work
        self.spm_path, self.vqkd_path, self.img_size, self.actors = spm_path, vqkd_path, img_size, actors
        self.on_rendered, self.progress = on_rendered, progress
        self.batch = cfg.visual.batch_size_encode
        self.max_views = _BATCHES_IN_FLIGHT_PER_ACTOR * self.batch * len(actors)
        self.load = [0] * len(actors)  # views sent to each actor and not yet encoded
        self.ready: deque[_Rendered] = deque()  # rendered shards with views not yet sent, oldest first
        self.rendering: dict = {}  # summary ref -> (job index, records ref, views ref)
        self.encoding: dict = {}  # first token ref of an encode call -> (actor index, views)
        self.writing: dict = {}  # write ref -> job index
        self.results: list[dict | None] = [None] * len(jobs)

    def _unsent(self) -> int:
        return sum(item.count - item.sent for item in self.ready)

    def _send_chunk(self) -> None:
        """Up to one batch of the oldest unsent views to the least loaded actor; writes shards fully sent."""
        actor = int(np.argmin(self.load))
        pieces: list[tuple[_Rendered, int, int]] = []
        room = self.batch
        while self.ready and room:
            item = self.ready[0]
            stop = min(item.count, item.sent + room)
            pieces.append((item, item.sent, stop))
            room -= stop - item.sent
            item.sent = stop
            if stop == item.count:
                self.ready.popleft()
        refs = (
            self.actors[actor]
            .encode.options(num_returns=len(pieces))
            .remote(
                *[item.views for item, _, _ in pieces],
                checkpoint=self.vqkd_path,
                bounds=[(start, stop) for _, start, stop in pieces],
            )
        )
        refs = refs if isinstance(refs, list) else [refs]
        sent = self.batch - room
        self.encoding[refs[0]] = (actor, sent)
        self.load[actor] += sent
        for (item, _, stop), tokens in zip(pieces, refs, strict=True):
            item.tokens.append(tokens)
            if stop == item.count:
                self._start_write(item.index, item.records, item.tokens)

    def _start_write(self, index: int, records, tokens: list) -> None:
        self.writing[self.write.remote(self.jobs[index], records, self.out, *tokens)] = index

    def _finish(self, index: int, result: dict, task) -> None:
        self.results[index] = result
        if self.progress:
            self.progress.advance(task)

    def run(self, render_slots: int) -> list[dict]:
        import ray

        task = self.progress.add_task("tokenize + shard", total=len(self.jobs)) if self.progress else None
        queue = list(range(len(self.jobs)))
        while queue or self.rendering or self.ready or self.encoding or self.writing:
            while queue and len(self.rendering) < render_slots and sum(self.load) + self._unsent() < self.max_views:
                index = queue.pop(0)
                summary, records, views = self.render.remote(
                    self.jobs[index], self.out, self.work, self.cfg, self.spm_path, self.img_size
                )
                self.rendering[summary] = (index, records, views)
            unsent, more_coming = self._unsent(), bool(queue or self.rendering)
            # Full batches only while more views are coming, unless an actor has nothing to do.
            if unsent and min(self.load) < _BATCHES_QUEUED_PER_ACTOR * self.batch:
                if unsent >= self.batch or not more_coming or min(self.load) == 0:
                    self._send_chunk()
                    continue
            done, _ = ray.wait([*self.rendering, *self.encoding, *self.writing], num_returns=1)
            for ref in done:
                if ref in self.rendering:
                    index, records, views = self.rendering.pop(ref)
                    summary = ray.get(ref)
                    if summary["reused"]:
                        self._finish(index, {"shard": summary["shard"], "reused": True}, task)
                        continue
                    self.on_rendered(summary)
                    if summary["views"]:
                        self.ready.append(_Rendered(index, records, views, summary["views"]))
                    else:
                        self._start_write(index, records, [])
                elif ref in self.encoding:
                    actor, count = self.encoding.pop(ref)
                    self.load[actor] -= count
                else:
                    self._finish(self.writing.pop(ref), ray.get(ref), task)
        return self.results
