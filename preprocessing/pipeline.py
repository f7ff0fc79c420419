"""The preprocessing pipeline on Ray: raw sources -> validated records -> tokenizers -> shards + manifest.

Stages (each shard is one Ray task per pass, plus long-lived tokenizer actors in pass 2; results are small
dicts, files are written by the tasks):
1. plan: shards per source, each with a content fingerprint of its input files (`preprocessing.plan`);
2. clean (pass 1): read + validate, quarantine rejects, normalise survivors (`preprocessing.clean`);
3. dedup: exact duplicates across the whole dataset, first occurrence in plan order wins;
4. tokenizers: train or load SentencePiece and VQ-KD (`preprocessing.tokenizers`);
5. tokenize (pass 2): text ids, K views with visual tokens, final shard files (`preprocessing.token_stage`);
6. manifest: per-source accounting (records_in == records_out + records_quarantined, or the run fails),
   shard hashes, tokenizer ids, code version, dataset version; one merged quarantine table.

Every task output is written atomically and keyed by a fingerprint of everything it depends on; a rerun
skips finished work, so a killed run resumes with no duplicate and no gap, and changing one input file
redoes only the shards that read it.
"""

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from beit3_core.runtime.atomic import atomic_path
from beit3_core.runtime.cluster import start_ray
from preprocessing.clean import clean_shard
from preprocessing.config import PreprocessConfig
from preprocessing.manifest import dataset_version, shard_entry
from preprocessing.plan import ShardPlan, code_version, hash_memo, plan_source
from preprocessing.quarantine import QUARANTINE_SCHEMA, QuarantineRecord, SourceCounts
from preprocessing.ray_tasks import run_tasks
from preprocessing.shard_writer import read_shard_info, remove_stale_temporaries, write_manifest
from preprocessing.token_stage import ShardJob, run_token_stage, tokenizer_actors
from preprocessing.tokenizers import prepare_text_tokenizer, prepare_visual_tokenizer
from preprocessing.validate_image import ImageRules
from preprocessing.validate_text import TextRules

logger = logging.getLogger(__name__)

WORK = "_work"
QUARANTINE_FILE = "quarantine.parquet"


@dataclass
class PreprocessReport:
    output: Path
    manifest: dict
    shards_built: list[str] = field(default_factory=list)
    shards_reused: list[str] = field(default_factory=list)
    reasons: dict[str, int] = field(default_factory=dict)


def _sha(*parts: str) -> str:
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]


def _write_quarantine(path: Path, records: list[QuarantineRecord]) -> None:
    table = pa.Table.from_pylist([asdict(r) for r in records], schema=QUARANTINE_SCHEMA)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


# Ray task bodies: plain functions of plain arguments, so they are testable without Ray.


def clean_task(plan: ShardPlan, key: str, rules: dict, short_side: int, work: Path, reuse_jpeg: bool = False) -> dict:
    stamp = work / f"{plan.name}.clean.json"
    if stamp.is_file() and json.loads(stamp.read_text())["key"] == key:
        return json.loads(stamp.read_text()) | {"reused": True}
    image_rules, text_rules = ImageRules(**rules["image"]), TextRules(**rules["text"])
    result = clean_shard(plan.source, plan.files, image_rules, text_rules, short_side, reuse_jpeg)
    with atomic_path(work / f"{plan.name}.clean.parquet") as tmp:
        pq.write_table(result.table(), tmp)
    _write_quarantine(work / f"{plan.name}.rejects.parquet", result.quarantine)
    summary = {
        "key": key,
        "shard": plan.name,
        "source": plan.source.name,
        "records_in": result.records_in,
        "records_clean": len(result.rows),
        "rejected": len(result.quarantine),
    }
    with atomic_path(stamp) as tmp:
        Path(tmp).write_text(json.dumps(summary))
    return summary | {"reused": False}


def _find_duplicates(plans: list[ShardPlan], work: Path) -> dict[str, dict[str, str]]:
    """shard -> {duplicate key: key of the first occurrence}, scanning shards in plan order."""
    first: dict[str, str] = {}
    duplicates: dict[str, dict[str, str]] = {p.name: {} for p in plans}
    for plan in plans:
        table = pq.read_table(work / f"{plan.name}.clean.parquet", columns=["key", "content_hash"])
        for key, digest in zip(table.column("key").to_pylist(), table.column("content_hash").to_pylist(), strict=True):
            if digest in first:
                duplicates[plan.name][key] = first[digest]
            else:
                first[digest] = key
    return duplicates


def run_preprocessing(cfg: PreprocessConfig, progress=None) -> PreprocessReport:
    """Run every stage; `progress` is an optional `rich.progress.Progress`."""
    import torch

    start = time.perf_counter()
    out = Path(cfg.output)
    work = out / WORK
    work.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    remove_stale_temporaries(work)
    code = code_version()
    plans = [
        plan
        for spec in cfg.sources
        for plan in plan_source(spec, cfg.shards.files_per_shard, hash_memo(out, spec.name))
    ]
    if not plans:
        raise ValueError("the configured sources hold no input files")
    start_ray(cfg.ray_address)
    # Started before the clean pass: an actor's process start and `import torch` overlap it.
    with tokenizer_actors(cfg.visual) as actors:
        rules = {"image": cfg.validation.image, "text": cfg.validation.text}
        reuse_jpeg = cfg.views.reuse_source_jpeg
        validation_hash = (
            cfg.section_hash("validation") + str(cfg.views.short_side) + ("reuse-jpeg" if reuse_jpeg else "")
        )
        clean_keys = {p.name: _sha(p.input_fingerprint, validation_hash, code) for p in plans}
        clean = run_tasks(
            clean_task,
            [(p, clean_keys[p.name], rules, cfg.views.short_side, work, reuse_jpeg) for p in plans],
            {"num_cpus": 1},
            "validate",
            progress,
        )
        clean_tables = [work / f"{p.name}.clean.parquet" for p in plans]
        duplicates = _find_duplicates(plans, work)

        spm_path, text_info = prepare_text_tokenizer(cfg.text, clean_tables, out / "tokenizers")
        vqkd_path, visual_info = prepare_visual_tokenizer(cfg.visual, clean_tables, out / "tokenizers", cfg.seed)

        views_hash = cfg.section_hash("views", "text") + str(cfg.seed)
        fingerprints = {
            p.name: _sha(
                clean_keys[p.name],
                json.dumps(duplicates[p.name], sort_keys=True),
                text_info["model_id"],
                visual_info["tokenizer_id"],
                views_hash,
                code,
            )
            for p in plans
        }
        jobs = [ShardJob(p, fingerprints[p.name], duplicates[p.name]) for p in plans]

        def record_duplicates(summary: dict) -> None:
            _write_quarantine(work / f"{summary['shard']}.duplicates.parquet", summary["quarantine"])

        built = run_token_stage(
            jobs,
            cfg,
            out,
            work,
            str(spm_path),
            str(vqkd_path),
            visual_info["img_size"],
            actors,
            record_duplicates,
            progress,
        )
    _remove_orphan_shards(out, {p.name for p in plans})

    manifest, reasons = _manifest(cfg, plans, clean, out, work, text_info, visual_info, code)
    manifest["timings"] = {"seconds": round(time.perf_counter() - start, 2), "torch_threads": torch.get_num_threads()}
    write_manifest(out, manifest)
    return PreprocessReport(
        output=out,
        manifest=manifest,
        shards_built=[r["shard"] for r in built if not r["reused"]],
        shards_reused=[r["shard"] for r in built if r["reused"]],
        reasons=reasons,
    )


def _remove_orphan_shards(out: Path, current: set[str]) -> None:
    """Shards whose input files are gone (renamed, deleted) must not linger beside the manifest."""
    for sidecar in out.glob("*.done.json"):
        name = sidecar.name.removesuffix(".done.json")
        if name not in current:
            for suffix in (".done.json", ".parquet", ".tar"):
                (out / f"{name}{suffix}").unlink(missing_ok=True)


def _manifest(cfg, plans, clean, out, work, text_info, visual_info, code) -> tuple[dict, dict]:
    tables, shards, sources = [], [], {}
    reasons: dict[str, int] = {}
    for plan, summary in zip(plans, clean, strict=True):
        info = read_shard_info(out, plan.name)
        shards.append(shard_entry(info))
        rejects = pq.read_table(work / f"{plan.name}.rejects.parquet")
        dups = pq.read_table(work / f"{plan.name}.duplicates.parquet")
        tables += [rejects, dups]
        src = sources.setdefault(
            plan.source.name,
            {"format": plan.source.format, "records_in": 0, "records_out": 0, "records_quarantined": 0, "shards": []},
        )
        src["records_in"] += summary["records_in"]
        src["records_out"] += info.num_records
        src["records_quarantined"] += rejects.num_rows + dups.num_rows
        src["shards"].append(
            {"name": plan.name, "input_fingerprint": plan.input_fingerprint, "num_files": len(plan.files)}
        )
        for reason in rejects.column("reason").to_pylist() + dups.column("reason").to_pylist():
            reasons[f"{plan.source.name}:{reason}"] = reasons.get(f"{plan.source.name}:{reason}", 0) + 1
    for name, src in sources.items():
        SourceCounts(
            source=name,
            records_in=src["records_in"],
            records_out=src["records_out"],
            records_quarantined=src["records_quarantined"],
        ).check()
    quarantine = pa.concat_tables(tables) if tables else QUARANTINE_SCHEMA.empty_table()
    with atomic_path(out / QUARANTINE_FILE) as tmp:
        pq.write_table(quarantine, tmp)
    from beit3_core.data.views import render_info

    manifest = {
        "shards": shards,
        "sources": sources,
        "text_tokenizer": text_info,
        "visual_tokenizer": visual_info,
        "views": asdict(cfg.views) | render_info(visual_info["img_size"]),
        "quarantine": {"file": QUARANTINE_FILE, "records": quarantine.num_rows},
        "code_version": code,
    }
    manifest["dataset_version"] = dataset_version(manifest)
    return manifest, reasons
