"""The one training runtime every training kind plugs into (MDM pretraining, ITC tuning, task fine-tuning).

- `config`: typed config sections, recipes, merging, `--set` overrides, the fingerprint rule.
- `cluster`: the one Ray start and its CPU policy.
- `storage`: run storage on a local path or a pyarrow filesystem URI.
- `tracking`: the MLflow run lifecycle (the driver opens the run, rank 0 logs into it).
- `driver`: run naming and resume, the `TorchTrainer` build and fit with live progress, final exports.
- `loop`: the per-worker loop (resume, LR schedule, clipping, metering, logging, checkpoints, fault injection);
  a training kind supplies its model, its batches and its step (`loop.TrainingKind`).
- `checkpoint`: the checkpoint folder format (model, optimizer + RNG, JSON state).
- `meter`, `schedule`, `progress`, `faults`, `atomic`: one of each.
"""
