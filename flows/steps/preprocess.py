"""Preprocess step: raw sources -> validated, tokenized shards + manifest, in one call of the library.

The library runs every stage (validate, dedup, SentencePiece, VQ-KD, encode, discretize, write shards) and is
incremental per shard, so when one raw file changed this step reruns but rebuilds only that file's shard.
"""

from pathlib import Path

from prefect import task

from beit3_core.runtime.progress import StageProgress
from flows.settings import Settings, ensure_ray
from flows.steps.config import preprocess_config_hash
from flows.steps.keys import code_hash, step_key
from flows.steps.tracking import Tracking
from preprocessing.config import PreprocessConfig
from preprocessing.pipeline import run_preprocessing
from preprocessing.plan import code_version


def preprocess_key_of(cfg: PreprocessConfig, sources: list[dict]) -> str:
    fingerprints = {s["source"]: s["fingerprint"] for s in sources}
    code = code_version() + code_hash("flows/steps/preprocess.py")
    return step_key("preprocess", fingerprints, preprocess_config_hash(cfg), code)


def preprocess_key(_ctx, params: dict) -> str:
    return preprocess_key_of(params["cfg"], params["sources"])


@task(cache_key_fn=preprocess_key)
def preprocess(cfg: PreprocessConfig, sources: list[dict], settings: Settings, tracking: Tracking) -> dict:
    ensure_ray(settings)
    with StageProgress("preprocess") as progress:
        report = run_preprocessing(cfg, progress=progress)
    summary = summarize(report.manifest, report.shards_built, report.shards_reused, Path(cfg.output))
    summary["key"] = preprocess_key_of(cfg, sources)
    tracking.nested_run(
        "preprocess",
        {"config_hash": preprocess_config_hash(cfg)},
        _metrics(summary),
        {"beit3.dataset_version": summary["dataset_version"]},
    )
    return summary


def summarize(manifest: dict, built: list[str], reused: list[str], output: Path) -> dict:
    return {
        "output": str(output),
        "dataset_version": manifest["dataset_version"],
        "sources": {
            name: {k: src[k] for k in ("records_in", "records_out", "records_quarantined")}
            for name, src in manifest["sources"].items()
        },
        "shards_built": built,
        "shards_reused": reused,
        "codebook_usage": manifest["visual_tokenizer"].get("codebook_usage"),
        "text_tokenizer": manifest["text_tokenizer"]["model_id"],
        # Every file a cache hit hands on: the manifest and each shard's files (its tar and Parquet sidecar).
        "files": [str(output / "manifest.json")]
        + [str(output / name) for shard in manifest["shards"] for name in sorted(shard["files"])],
    }


def _metrics(summary: dict) -> dict[str, float]:
    metrics = {"shards_built": len(summary["shards_built"]), "shards_reused": len(summary["shards_reused"])}
    for name, counts in summary["sources"].items():
        metrics |= {f"{name}/{k}": v for k, v in counts.items()}
    if summary["codebook_usage"] is not None:
        metrics["codebook_usage"] = summary["codebook_usage"]
    return metrics
