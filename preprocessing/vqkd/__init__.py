"""BEiT v2 VQ-KD visual tokenizer: model, teachers, training, checkpoints (see `model.py` for the layout)."""

from preprocessing.vqkd.checkpoint import load_official_vqkd, load_vqkd, save_vqkd, tokenizer_id
from preprocessing.vqkd.model import VQKD, VQKDConfig, build_vqkd, list_vqkd_configs, vqkd_base, vqkd_tiny
from preprocessing.vqkd.teachers import EfficientNetLite0Teacher, HOGColorTeacher, build_teacher, list_teachers
from preprocessing.vqkd.train import codebook_usage, train_vqkd

__all__ = [
    "VQKD",
    "EfficientNetLite0Teacher",
    "HOGColorTeacher",
    "VQKDConfig",
    "build_teacher",
    "build_vqkd",
    "codebook_usage",
    "list_teachers",
    "list_vqkd_configs",
    "load_official_vqkd",
    "load_vqkd",
    "save_vqkd",
    "tokenizer_id",
    "train_vqkd",
    "vqkd_base",
    "vqkd_tiny",
]
