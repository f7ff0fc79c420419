"""MDM pretraining on Ray Train: configs and recipes, the data stream, the training loop and its launcher."""
