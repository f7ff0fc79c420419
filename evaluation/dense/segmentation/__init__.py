"""Semantic segmentation on the dense BEiT-3 features: the ADE20K reader, the reference train/test pipelines,
sliding-window inference and file scoring. The task is `evaluation.tasks.ade20k`; the model
`evaluation.dense.upernet`."""
