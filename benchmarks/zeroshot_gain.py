"""Does ITC tuning teach zero-shot retrieval? Chance, the MDM checkpoint without ITC, and after ITC, on the demo.

For each zero-shot unit of a pipeline run (the miniature Karpathy test splits, held out of the demo corpus):
- chance: a random ranking, R@k = 100 * k / number of test images (one caption per image);
- MDM without ITC: the pretrained checkpoint with the projections and logit scale at the initialisation the
  ITC run starts from (same seed), i.e. exactly the ITC run's step 0;
- after ITC: the checkpoint of the pipeline's last ITC step (from the run directory's ledger);
evaluated with the zero-shot step's settings of each unit (image size, text length).

    python benchmarks/zeroshot_gain.py [--config configs/pipeline_demo.yaml]   # the config's run_dir
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from beit3_core.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from beit3_core.text_tokenizer import XLMRTokenizer  # noqa: E402
from beit3_core.train.model_setup import build_pretraining_model  # noqa: E402
from evaluation.zeroshot import evaluate_zeroshot  # noqa: E402
from flows.steps.config import load_pipeline_config, resolve_pretrain  # noqa: E402
from flows.steps.runner import Ledger, MissingStepOutput  # noqa: E402

KEYS = ("tr_r1", "tr_r5", "tr_r10", "ir_r1", "ir_r5", "ir_r10")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/pipeline_demo.yaml")
    args = parser.parse_args()
    cfg = load_pipeline_config(args.config)
    run_dir = cfg.run_dir
    # The ITC checkpoint the pipeline's last `itc` step produced (the run directory's ledger), not any earlier one.
    try:
        itc_out = Ledger(run_dir).last_completed("itc")["output"]
    except MissingStepOutput as error:
        raise SystemExit(f"{run_dir}: {error}") from error
    itc_ckpt = Path(itc_out["checkpoint"])
    itc_cfg = resolve_pretrain(cfg, "sqlite://", None, "itc")
    itc_cfg.model.init_checkpoint = itc_out["pretrain_checkpoint"]
    mdm = load_checkpoint(itc_cfg.model.init_checkpoint)
    tokenizer = XLMRTokenizer(str(run_dir / "shards" / "tokenizers" / "spm.model"))
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        start = build_pretraining_model(itc_cfg, mdm.config.to_dict())  # the ITC run's step 0
        no_itc = save_checkpoint(start, Path(tmp) / "mdm_projections_at_init.safetensors")
        for unit in cfg.zeroshot:
            row = {}
            for name, checkpoint in (("mdm_without_itc", no_itc), ("after_itc", itc_ckpt)):
                metrics = evaluate_zeroshot(  # the zero-shot step's settings (flows/steps/zeroshot.py)
                    unit.unit,
                    checkpoint,
                    unit.root,
                    tokenizer,
                    img_size=unit.img_size,
                    batch_size=unit.batch_size,
                    chunk_size=unit.chunk_size,
                    text_len=unit.text_len,
                )
                row[name] = {k: round(metrics[k], 2) for k in KEYS}
            n = metrics["num_images"]
            row["chance"] = {k: round(min(100.0, 100.0 * int(k.split("_r")[1]) / n), 2) for k in KEYS}
            row["num_images"], row["num_texts"] = n, metrics["num_texts"]
            results[unit.unit] = row
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
