"""Fine-tuning and evaluation of the BEiT-3 benchmark tasks on Ray Train, one MLflow run per task.

BEiT-3 (arXiv 2208.10442); recipes, heads and metrics follow microsoft/unilm `beit3/` (see `evaluation.tasks`).

    run_finetune(task, config, init_checkpoint=None) -> {"metrics", "mlflow_run_id", "checkpoint", "submission", ...}
    evaluate_checkpoint(task, checkpoint, config)     -> the same keys, without training

Modules: `config` (FinetuneConfig, recipe defaults, YAML), `weights` (backbone shape, initialisation, task
checkpoints), `loop` (the Ray Train worker loop), `predict` (split evaluation, submission), `launcher` (driver).
"""

from evaluation.finetune.config import FinetuneConfig, build_finetune_config, load_finetune_config
from evaluation.finetune.launcher import evaluate_checkpoint, run_finetune

__all__ = ["FinetuneConfig", "build_finetune_config", "evaluate_checkpoint", "load_finetune_config", "run_finetune"]
