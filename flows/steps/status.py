"""`beit3 status`: each step's last state (from the ledger) and whether it is stale, i.e. would rerun now.

A step is stale when its cache key, recomputed from the current files and config with the same functions the
flow uses, differs from the key of its last completed run. Keys of the data steps are computed from the raw
files directly; a later step's key needs its upstream output, so it is reported stale when its upstream is.
"""

from dataclasses import dataclass
from pathlib import Path

from flows.settings import Settings
from flows.steps.config import (
    benchmark_config,
    load_pipeline_config,
    resolve_preprocess,
    resolve_pretrain,
    zeroshot_config,
)
from flows.steps.finetune import PRETRAINED, SCRATCH, finetune_key_of, with_transfers
from flows.steps.ingest import ingest_key_of, source_fingerprints
from flows.steps.itc import itc_key_of
from flows.steps.keys import digest
from flows.steps.preprocess import preprocess_key_of
from flows.steps.pretrain import pretrain_key_of
from flows.steps.report import report_key_of
from flows.steps.runner import Ledger
from flows.steps.zeroshot import zeroshot_key_of


@dataclass
class StepStatus:
    label: str
    last_state: str
    updated: str
    stale: bool
    reason: str


def pipeline_status(config_path: str | Path) -> list[StepStatus]:
    cfg = load_pipeline_config(config_path)
    settings = Settings()
    pre_cfg = resolve_preprocess(cfg)
    pretrain_cfg = resolve_pretrain(cfg, settings.tracking_uri(cfg.run_dir), settings.ray_address)
    ledger = Ledger(cfg.run_dir).read()
    rows: list[StepStatus] = []

    def check(label: str, key: str | None, upstream_stale: str | None = None, error: str | None = None) -> bool:
        last = ledger.get(label, {})
        output = last.get("output") or {}
        missing = [f for f in output.get("files", []) if f and not Path(f).exists()]
        if error:
            reason = error
        elif not last:
            reason = "never run"
        elif last["state"] == "Failed":
            reason = f"last run failed: {last.get('message')}"
        elif upstream_stale:
            reason = f"upstream {upstream_stale} is stale"
        elif missing:
            reason = f"output missing: {missing[0]}"
        elif key != last.get("key"):
            reason = "inputs, config or code changed"
        else:
            reason = ""
        rows.append(StepStatus(label, last.get("state", "-"), last.get("updated", "-"), bool(reason), reason))
        return bool(reason)

    sources = []
    for spec in pre_cfg.sources:
        try:
            shards = source_fingerprints(spec, pre_cfg.shards.files_per_shard, pre_cfg.output)
        except (OSError, ValueError) as error:
            check(f"ingest[{spec.name}]", None, error=str(error))
            sources = None
            continue
        check(f"ingest[{spec.name}]", ingest_key_of(spec, pre_cfg.shards.files_per_shard, shards))
        if sources is not None:
            sources.append({"source": spec.name, "fingerprint": digest(shards)})

    upstream = None if sources is not None else "ingest"
    stale = check("preprocess", preprocess_key_of(pre_cfg, sources) if sources is not None else None, upstream)
    dataset = (ledger.get("preprocess") or {}).get("output")
    upstream = "preprocess" if stale or not dataset else None
    stale = check("pretrain", None if upstream else pretrain_key_of(pretrain_cfg, dataset), upstream)
    pretrained = (ledger.get("pretrain") or {}).get("output")
    upstream = "pretrain" if stale or not pretrained else None
    benchmarks, any_stale, tuned, itc_upstream = _itc_and_zeroshot_status(
        cfg, pre_cfg, settings, ledger, check, dataset, pretrained, upstream
    )
    inits = {"pretrain": (pretrained, upstream), "itc": (tuned, itc_upstream)}
    kinds = [PRETRAINED, SCRATCH] if cfg.compare_scratch else [PRETRAINED]
    for kind, b in ((kind, b) for kind in kinds for b in cfg.benchmarks):
        label = f"{kind}[{b.task}]"
        config = benchmark_config(b, cfg, pre_cfg)
        init, init_upstream = inits[b.init]
        key = None if init_upstream else finetune_key_of(b.task, config, init, str(cfg.run_dir), kind, b.evaluate_also)
        any_stale |= check(label, key, init_upstream)
        never_run = {"task": b.task, "kind": kind, "status": "never run"}
        benchmarks += with_transfers([(ledger.get(label) or {}).get("output") or never_run])
    upstream = upstream or ("finetune or zeroshot" if any_stale else None)
    key = None if upstream else report_key_of(str(cfg.run_dir), dataset, pretrained, benchmarks)
    check("report", key, upstream)
    return rows


def _itc_and_zeroshot_status(
    cfg, pre_cfg, settings, ledger, check, dataset, pretrained, upstream
) -> tuple[list, bool, dict | None, str | None]:
    """Check the ITC step and the zero-shot units: (the units' outputs for the report's key, whether any is stale,
    the ITC step's last output, the stale step upstream of what starts from it)."""
    if not cfg.itc:
        return [], False, None, upstream
    itc_cfg = resolve_pretrain(cfg, settings.tracking_uri(cfg.run_dir), settings.ray_address, "itc")
    stale = check("itc", None if upstream else itc_key_of(itc_cfg, dataset, pretrained), upstream)
    tuned = (ledger.get("itc") or {}).get("output")
    upstream = upstream or ("itc" if stale or not tuned else None)
    outputs, any_stale = [], stale
    for z in cfg.zeroshot:
        label = f"zeroshot[{z.unit}]"
        config = zeroshot_config(z, pre_cfg)
        key = None if upstream else zeroshot_key_of(z.unit, config, tuned, dataset, str(cfg.run_dir))
        any_stale |= check(label, key, upstream)
        outputs.append((ledger.get(label) or {}).get("output") or {"task": z.unit, "status": "never run"})
    return outputs, any_stale, tuned, upstream
