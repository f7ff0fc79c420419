"""Pass 2 on Ray: CPU tasks render views, long-lived tokenizer actors encode them, CPU tasks write the shards.

Per shard, a render task (1 CPU) decodes each stored image once, renders its K views and encodes the texts;
its outputs go to Ray's object store as three objects (a small summary, the records, the views uint8
[V, S, S, 3]). The driver groups rendered shards until a group holds at least one tokenizer batch and sends
the group's views to the least loaded actor, so a batch spans records and shards. Each actor loads the
visual tokenizer once for the whole run. A write task then attaches the tokens to the records and writes the
shard files atomically (`preprocessing.shard_writer`), exactly as a single process would.

Resources: CPU actors reserve no Ray CPU by default and run `actor_threads` torch threads each (default 1),
one actor per that many cluster CPUs; they share the cores with the render and write tasks and the OS divides the cores,
so no core idles while either stage has work. GPU actors take `actor_gpus` GPUs each and leave the CPUs to
the CPU stage. Actors are spread over the nodes. Views waiting for tokens are bounded, so the object store
holds a few batches per actor, not the data set.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from preprocessing.config import PreprocessConfig, VisualStage
from preprocessing.plan import ShardPlan
from preprocessing.shard_writer import is_shard_complete, write_shard

_BATCHES_IN_FLIGHT_PER_ACTOR = 4
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


def write_task(job: ShardJob, records: list[dict], tokens: np.ndarray | None, out: Path) -> dict:
    from preprocessing.tokenize_shard import attach_tokens

    if tokens is not None:
        attach_tokens(records, tokens)
    write_shard(records, out, job.plan.name, job.fingerprint)
    return {"shard": job.plan.name, "reused": False}


class TokenizerActor:
    """Holds one visual tokenizer for the whole run and encodes groups of views."""

    def __init__(self, vqkd_path: str, device: str, threads: int, batch_size: int) -> None:
        import torch

        from preprocessing.vqkd.checkpoint import load_official_vqkd, load_vqkd

        torch.set_num_threads(threads)
        load = load_vqkd if vqkd_path.endswith(".safetensors") else load_official_vqkd
        self.model = load(vqkd_path).to(device).eval()
        self.batch_size = batch_size

    def encode(self, *pixels: np.ndarray) -> np.ndarray | list[np.ndarray]:
        """Tokens int64 [V_i, grid*grid] per views array uint8 [V_i, S, S, 3]; one array when given one."""
        from preprocessing.tokenize_shard import encode_views

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


def start_actors(plan: ActorPlan, vqkd_path: str, batch_size: int) -> list:
    import ray

    # Encoding is a pure function of its input, so an actor lost (e.g. to the node's OOM killer) is restarted
    # and its pending calls are retried.
    actor_class = ray.remote(TokenizerActor).options(
        num_cpus=plan.num_cpus,
        num_gpus=plan.num_gpus,
        scheduling_strategy="SPREAD",
        max_restarts=_ACTOR_RETRIES,
        max_task_retries=_ACTOR_RETRIES,
    )
    return [actor_class.remote(vqkd_path, plan.device, plan.threads, batch_size) for _ in range(plan.count)]


def run_token_stage(
    jobs: list[ShardJob],
    cfg: PreprocessConfig,
    out: Path,
    work: Path,
    spm_path: str,
    vqkd_path: str,
    img_size: int,
    on_rendered: Callable[[dict], None],
    progress=None,
) -> list[dict]:
    """Build every shard of `jobs`; results ({"shard", "reused"}) in job order.

    `on_rendered(summary)` runs in the driver for each rendered shard (e.g. to record its quarantine) before
    that shard is written.
    """
    import ray

    resources = ray.cluster_resources()
    actor_plan = plan_actors(cfg.visual, resources.get("CPU", 1), resources.get("GPU", 0))
    actors = start_actors(actor_plan, vqkd_path, cfg.visual.batch_size_encode)
    try:
        return _Scheduler(jobs, cfg, out, work, spm_path, img_size, actors, on_rendered, progress).run(
            max(2, int(resources.get("CPU", 2)))
        )
    finally:
        for actor in actors:
            ray.kill(actor)


class _Scheduler:
    """The driver loop of `run_token_stage`: render, group, encode on the least loaded actor, write."""

    def __init__(self, jobs, cfg, out, work, spm_path, img_size, actors, on_rendered, progress) -> None:
        import ray

        self.render = ray.remote(render_task).options(num_cpus=1, num_returns=3)
        self.write = ray.remote(write_task).options(num_cpus=1)
        self.jobs, self.cfg, self.out, self.work = jobs, cfg, out, work
        self.spm_path, self.img_size, self.actors = spm_path, img_size, actors
        self.on_rendered, self.progress = on_rendered, progress
        self.batch = cfg.visual.batch_size_encode
        self.max_views = _BATCHES_IN_FLIGHT_PER_ACTOR * self.batch * len(actors)
        self.load = [0] * len(actors)  # views sent to each actor and not yet written
        self.group: list[tuple[int, object, object, int]] = []  # (job index, records ref, views ref, views)
        self.rendering: dict = {}  # summary ref -> (job index, records ref, views ref)
        self.writing: dict = {}  # write ref -> (job index, actor index or None, views)
        self.results: list[dict | None] = [None] * len(jobs)

    def _group_views(self) -> int:
        return sum(item[3] for item in self.group)

    def _dispatch_group(self) -> None:
        actor = int(np.argmin(self.load))
        views = [item[2] for item in self.group]
        refs = self.actors[actor].encode.options(num_returns=len(views)).remote(*views)
        refs = refs if isinstance(refs, list) else [refs]
        for (index, records, _, count), tokens in zip(self.group, refs, strict=True):
            ref = self.write.remote(self.jobs[index], records, tokens, self.out)
            self.writing[ref] = (index, actor, count)
            self.load[actor] += count
        self.group = []

    def _finish(self, index: int, result: dict, task) -> None:
        self.results[index] = result
        if self.progress:
            self.progress.advance(task)

    def run(self, render_slots: int) -> list[dict]:
        import ray

        task = self.progress.add_task("tokenize + shard", total=len(self.jobs)) if self.progress else None
        queue = list(range(len(self.jobs)))
        while queue or self.rendering or self.group or self.writing:
            waiting = sum(self.load) + self._group_views()
            while queue and len(self.rendering) < render_slots and waiting < self.max_views:
                index = queue.pop(0)
                summary, records, views = self.render.remote(
                    self.jobs[index], self.out, self.work, self.cfg, self.spm_path, self.img_size
                )
                self.rendering[summary] = (index, records, views)
            more_coming = bool(queue or self.rendering)
            if self.group and (self._group_views() >= self.batch or not more_coming or min(self.load) == 0):
                self._dispatch_group()
                continue
            done, _ = ray.wait([*self.rendering, *self.writing], num_returns=1)
            for ref in done:
                if ref in self.rendering:
                    index, records, views = self.rendering.pop(ref)
                    summary = ray.get(ref)
                    if summary["reused"]:
                        self._finish(index, {"shard": summary["shard"], "reused": True}, task)
                        continue
                    self.on_rendered(summary)
                    if summary["views"]:
                        self.group.append((index, records, views, summary["views"]))
                    else:
                        self.writing[self.write.remote(self.jobs[index], records, None, self.out)] = (index, None, 0)
                else:
                    index, actor, count = self.writing.pop(ref)
                    if actor is not None:
                        self.load[actor] -= count
                    self._finish(index, ray.get(ref), task)
        return self.results
