"""The `beit3-pipeline` Prefect flow: raw sources -> shards -> MDM pretraining -> benchmarks -> results.json.

    ingest[<source>] --> preprocess --> pretrain --> finetune[<task>] ----------------> report
    (one per source)                         |       (one per benchmark)                  ^
                                             |-----> finetune-scratch[<task>] ------------|
                                             |       (with compare_scratch)               |
                                             +--> itc --> zeroshot[<unit>] ---------------+
                                                   |      (one per zero-shot unit)        |
                                                   +----> finetune[<task>], init: itc ----+
                                                          (the retrieval recipe)

Each step is a task in `flows.steps` whose cache key is the content fingerprint of its inputs + its resolved
config + its code version (`flows.steps.keys`), so an unchanged rerun is all cache hits and a changed raw file
or benchmark config reruns only what depends on it. Cached results live in `BEIT3_RESULT_STORAGE` (default: the
run directory) and count only while the files they name exist (`flows.steps.cache`). Heavy steps call Ray from
inside the task (no RayTaskRunner, spec 1.4); the default thread runner fans out ingest and fine-tuning. One
MLflow parent run per flow run, nested runs per executed step. With `compare_scratch` (config or
`beit3 run --compare-scratch`) every benchmark is fine-tuned a second time from random initialisation with the same
config and seed, and the report shows both beside the unit's trivial baseline.

Run it with `beit3 run CONFIG` (`flows.commands.run`), which sets up the local environment first; a deployment
(`beit3 deploy`) calls the flow with the same parameters.
"""

from pathlib import Path

from prefect import flow
from prefect.runtime import flow_run

from flows.settings import Settings
from flows.steps.cache import result_storage
from flows.steps.config import (
    benchmark_config,
    load_pipeline_config,
    resolve_preprocess,
    resolve_pretrain,
    zeroshot_config,
)
from flows.steps.finetune import PRETRAINED, SCRATCH, finetune, with_transfers
from flows.steps.ingest import ingest
from flows.steps.itc import itc
from flows.steps.preprocess import preprocess
from flows.steps.pretrain import pretrain
from flows.steps.report import RESULTS_FILE, report
from flows.steps.runner import Selection, StepRunner
from flows.steps.tracking import finish_parent_run, start_parent_run
from flows.steps.zeroshot import zeroshot


@flow(name="beit3-pipeline")
def beit3_pipeline(
    config_path: str,
    only: list[str] | None = None,
    from_step: str | None = None,
    force: list[str] | None = None,
    compare_scratch: bool | None = None,
) -> dict:
    """Run the pipeline of one config file.

    Args:
        config_path: Pipeline YAML (see `flows.steps.config`).
        only: Run only these steps (`preprocess`, `finetune`, `finetune:vqav2`, ...); earlier steps' last outputs
            from the run directory's ledger feed them.
        from_step: Run this step and every step after it; earlier steps are not run.
        force: Ignore the cache of these steps (`all` for every step).
        compare_scratch: Also fine-tune every benchmark from random initialisation; None = the config's
            `compare_scratch`.
    """
    cfg = load_pipeline_config(config_path)
    scratch = cfg.compare_scratch if compare_scratch is None else compare_scratch
    settings = Settings()
    pre_cfg = resolve_preprocess(cfg)
    pretrain_cfg = resolve_pretrain(cfg, settings.tracking_uri(cfg.run_dir), settings.ray_address)
    itc_cfg = (
        resolve_pretrain(cfg, settings.tracking_uri(cfg.run_dir), settings.ray_address, "itc") if cfg.itc else None
    )
    labels = [f"ingest[{s.name}]" for s in pre_cfg.sources] + ["preprocess", "pretrain"]
    labels += ["itc"] * bool(cfg.itc) + [f"zeroshot[{z.unit}]" for z in cfg.zeroshot]
    labels += [f"{PRETRAINED}[{b.task}]" for b in cfg.benchmarks]
    labels += [f"{SCRATCH}[{b.task}]" for b in cfg.benchmarks if scratch] + ["report"]
    selection = Selection.parse(only, from_step, force)
    selection.check(labels)
    storage = result_storage(settings, cfg.run_dir)  # a wrong BEIT3_RESULT_STORAGE fails before any step

    tracking = start_parent_run(
        settings.tracking_uri(cfg.run_dir),
        cfg.mlflow_experiment,
        settings.artifact_location(cfg.run_dir),
        f"pipeline-{flow_run.name}",
        cfg.fingerprint(),
        {"beit3.prefect_flow_run_id": str(flow_run.id), "beit3.run_dir": str(cfg.run_dir)},
    )
    steps = StepRunner(cfg.run_dir, labels, selection, cfg.execution, storage, str(flow_run.id))
    dataset = results = None
    status = "FAILED"
    try:
        files_per_shard = pre_cfg.shards.files_per_shard
        ingest_calls = {
            s.name: {"spec": s, "files_per_shard": files_per_shard, "memo_root": pre_cfg.output, "settings": settings}
            for s in pre_cfg.sources
        }
        sources = steps.map("ingest", ingest, ingest_calls)
        dataset = steps.run(
            "preprocess", preprocess, cfg=pre_cfg, sources=list(sources.values()), settings=settings, tracking=tracking
        )
        pretrained = steps.run(
            "pretrain",
            pretrain,
            cfg=pretrain_cfg,
            dataset=dataset,
            settings=settings,
            tracking=tracking,
            force=selection.forced("pretrain"),
            run_dir=str(cfg.run_dir),
        )
        tuned, zeroshot_results = _itc_and_zeroshot(
            cfg, itc_cfg, pre_cfg, steps, selection, dataset, pretrained, settings, tracking
        )
        inits = {"pretrain": pretrained, "itc": tuned}
        kinds = [PRETRAINED, SCRATCH] if scratch else [PRETRAINED]
        finetuned = []
        for kind in kinds:
            calls = {
                b.task: {
                    "task_name": b.task,
                    "config": benchmark_config(b, cfg, pre_cfg),
                    "pretrained": inits[b.init],
                    "run_dir": str(cfg.run_dir),
                    "settings": settings,
                    "tracking": tracking,
                    "kind": kind,
                    "also_evaluate": b.evaluate_also,
                }
                for b in cfg.benchmarks
            }
            outputs = steps.map(kind, finetune, calls, cfg.execution.max_parallel_finetunes)
            finetuned += with_transfers(list(outputs.values()))
        reported = steps.run(
            "report",
            report,
            run_dir=str(cfg.run_dir),
            dataset=dataset,
            pretrained=pretrained,
            benchmarks=list(zeroshot_results.values()) + finetuned,
        )
        results = reported["results"] if reported else None
        status = "FINISHED"
    finally:
        tags = {"beit3.dataset_version": dataset["dataset_version"]} if dataset else {}
        failed = [label for label, s in steps.states.items() if s["state"] not in ("Completed", "Cached", "Skipped")]
        tags |= {"beit3.failed_step": failed[0]} if failed else {}
        results_file = Path(cfg.run_dir) / RESULTS_FILE if results else None
        finish_parent_run(tracking, status, steps.states, results, results_file, tags)
        steps.close()
    return {
        "flow_run_id": str(flow_run.id),
        "mlflow_run_id": tracking.parent_run_id,
        "run_dir": str(cfg.run_dir),
        "steps": steps.states,
        "results": results,
    }


def _itc_and_zeroshot(
    cfg, itc_cfg, pre_cfg, steps, selection, dataset, pretrained, settings, tracking
) -> tuple[dict | None, dict]:
    """The ITC step's output and the zero-shot units after it (their outputs by unit), when configured; not
    called at all when neither they, a fine-tune starting from ITC nor the report run, so `--only finetune` of a
    benchmark that starts from the MDM checkpoint needs no earlier ITC output."""
    wanted = ["itc", *(f"zeroshot[{z.unit}]" for z in cfg.zeroshot), "report"]
    wanted += [f"{kind}[{b.task}]" for b in cfg.benchmarks if b.init == "itc" for kind in (PRETRAINED, SCRATCH)]
    if not cfg.itc or not any(selection.runs(label) for label in wanted):
        return None, {}
    tuned = steps.run(
        "itc",
        itc,
        cfg=itc_cfg,
        dataset=dataset,
        pretrained=pretrained,
        settings=settings,
        tracking=tracking,
        force=selection.forced("itc"),
    )
    return tuned, steps.map(
        "zeroshot",
        zeroshot,
        {
            z.unit: {
                "unit": z.unit,
                "config": zeroshot_config(z, pre_cfg),
                "itc_out": tuned,
                "dataset": dataset,
                "run_dir": str(cfg.run_dir),
                "tracking": tracking,
            }
            for z in cfg.zeroshot
        },
    )
