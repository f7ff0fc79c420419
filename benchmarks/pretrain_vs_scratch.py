"""Does pretraining help at a pipeline's fine-tuning budgets? Each unit from the pipeline's checkpoint and from
random initialisation, over several seeds, paired by seed.

One seed decides little on the demo's test sets (a few hundred items, runs of a few hundred steps). For each
benchmark of a pipeline config (or those named with `--units`) and each seed this runs the pipeline's own
fine-tune of the unit (`flows.steps.config.benchmark_config`, `run.seed` = the seed) twice: from the checkpoint
its `init` names (the last `pretrain` or `itc` step of the run directory's ledger) and from a random model of that
checkpoint's architecture drawn with the same seed (`evaluation.baselines.scratch.random_init_like`, the
pipeline's `--compare-scratch` control). It prints, per unit, the headline metric of every run, both means,
the mean paired difference with its standard error over seeds, and the seeds pretraining won, lost and tied
(`evaluation.baselines.stats.paired_difference`). Units scored with a fine-tuned model of another unit
(`evaluate_also`, e.g. NoCaps) are not run.

    python benchmarks/pretrain_vs_scratch.py [--config configs/pipeline_demo.yaml] [--units imagenet vqav2]
        [--seeds 0 1 2 3 4] [--parallel 2] [--set run.epochs=10 ...]

`--set` changes every named unit's fine-tune alike (both arms), to ask the question at another budget or recipe.

Runs, their MLflow store (SQLite) and the summary (`summary.json`) go to `<run_dir>/pretrain_vs_scratch/<name>`
(`--name`, default `default`: one name per question asked). A finished run records what it ran (the fingerprint
of its resolved config, so the YAML files it names and the seed, the initial checkpoint's sha256 and the arm); a
rerun reads it back when all of these are the same, so an interrupted sweep resumes, and runs it again when any
differs (a new pretraining, an edited config file, another `--set`).
"""

import argparse
import hashlib
import json
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from beit3_core.runtime.atomic import write_text_atomic  # noqa: E402
from beit3_core.runtime.config import merge  # noqa: E402
from evaluation.baselines.scratch import random_init_like  # noqa: E402
from evaluation.baselines.stats import paired_difference  # noqa: E402
from flows.overrides import add_override_argument, parse_overrides  # noqa: E402
from flows.settings import Settings, ensure_ray  # noqa: E402
from flows.steps.config import benchmark_config, load_pipeline_config, resolve_preprocess  # noqa: E402
from flows.steps.reference import display, headline_metrics  # noqa: E402
from flows.steps.runner import Ledger, MissingStepOutput  # noqa: E402

KINDS = ("pretrained", "scratch")
_print_lock = threading.Lock()


def _say(line: str) -> None:
    with _print_lock:
        print(line, flush=True)


def _init_checkpoint(ledger: Ledger, init: str) -> tuple[Path, str]:
    """The checkpoint of the run directory's last `init` step (`pretrain` or `itc`) and its sha256."""
    try:
        output = ledger.last_completed(init)["output"]
    except MissingStepOutput as error:
        raise SystemExit(f"{ledger.path}: {error}") from error
    return Path(output["checkpoint"]), output["checkpoint_sha256"]


def _one_run(task: str, config: dict, init: tuple[Path, str], kind: str, seed: int, root: Path, uri: str) -> float:
    """The unit's headline metric (published scale) of one fine-tune; read back when this very run finished."""
    from evaluation.finetune import build_finetune_config, run_finetune

    checkpoint, sha256 = init
    out_dir = root / task / f"{kind}-seed{seed}"
    done = out_dir / "metrics.json"
    metric = headline_metrics(task)[0]
    run_config = {k: v for k, v in config.items() if k != "storage_path"}  # these runs keep their own
    run_config = merge(
        run_config,
        {
            "run": {"seed": seed, "output_dir": str(out_dir), "storage_path": str(root / "ray")},
            "mlflow_tracking_uri": uri,
            "mlflow_experiment": "pretrain-vs-scratch",
        },
    )
    # What shapes the result: the resolved config (the YAML files it names read now, the seed), the initial
    # checkpoint's content and the arm. A finished run with another key is run again, never read back.
    resolved = build_finetune_config(task, run_config).fingerprint()
    key = hashlib.sha256(json.dumps([resolved, sha256, kind]).encode()).hexdigest()
    record = json.loads(done.read_text()) if done.is_file() else {}
    if record.get("key") != key:
        start = checkpoint
        if kind == "scratch":
            start = random_init_like(checkpoint, out_dir / "random_init.safetensors", seed)
        metrics = run_finetune(task, run_config, str(start))["metrics"]
        record = {"key": key, "metrics": metrics}
        write_text_atomic(done, json.dumps(record, indent=2, sort_keys=True, default=float))
    value = display(task, metric, float(record["metrics"][metric]))
    _say(f"{task} {kind} seed {seed}: {metric} {value:.2f}")
    return value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/pipeline_demo.yaml")
    parser.add_argument("--units", nargs="*", help="benchmark tasks of the config (default: all)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--parallel", type=int, help="fine-tunes at a time (default: the config's)")
    parser.add_argument("--name", default="default", help="folder of this sweep under <run_dir>/pretrain_vs_scratch")
    add_override_argument(parser, "run.epochs=10")
    args = parser.parse_args()
    overrides = parse_overrides(args.overrides)
    cfg = load_pipeline_config(args.config)
    pre_cfg = resolve_preprocess(cfg)
    run_dir = Path(cfg.run_dir)
    benchmarks = [b for b in cfg.benchmarks if not args.units or b.task in args.units]
    unknown = set(args.units or ()) - {b.task for b in cfg.benchmarks}
    if unknown:
        raise SystemExit(f"{args.config}: no benchmark {sorted(unknown)}; it has {[b.task for b in cfg.benchmarks]}")
    ledger = Ledger(run_dir)
    root = run_dir / "pretrain_vs_scratch" / args.name
    uri = f"sqlite:///{(root / 'mlflow.db').resolve()}"
    root.mkdir(parents=True, exist_ok=True)
    ensure_ray(Settings())
    jobs = {
        (b.task, kind, seed): (
            b.task,
            merge(benchmark_config(b, cfg, pre_cfg), overrides),
            _init_checkpoint(ledger, b.init),
        )
        for b in benchmarks
        for seed in args.seeds
        for kind in KINDS
    }
    parallel = args.parallel or cfg.execution.max_parallel_finetunes
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        futures = {
            key: pool.submit(_one_run, task, config, ckpt, key[1], key[2], root, uri)
            for key, (task, config, ckpt) in jobs.items()
        }
        values = {key: future.result() for key, future in futures.items()}
    units = {}
    for b in benchmarks:
        runs = {kind: [values[(b.task, kind, s)] for s in args.seeds] for kind in KINDS}
        units[b.task] = {
            "metric": headline_metrics(b.task)[0],
            "init": b.init,
            "seeds": args.seeds,
            **runs,
            "paired": paired_difference(runs["pretrained"], runs["scratch"]),
        }
    write_text_atomic(root / "summary.json", json.dumps({"overrides": overrides, "units": units}, indent=2))
    print("unit | metric | pretrained, by seed | scratch, by seed | means | difference +- stderr | won / lost / tied")
    for task, row in units.items():
        p = row["paired"]
        stderr = "-" if p["difference_stderr"] is None else f"{p['difference_stderr']:.2f}"
        print(
            f"{task} | {row['metric']} | {' / '.join(f'{v:.2f}' for v in row['pretrained'])} | "
            f"{' / '.join(f'{v:.2f}' for v in row['scratch'])} | {p['mean']:.2f} vs {p['other_mean']:.2f} | "
            f"{p['difference']:+.2f} +- {stderr} | {p['wins']} / {p['losses']} / {p['ties']}"
        )
    print(f"summary: {root / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
