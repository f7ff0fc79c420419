"""BEiT-3 model core: the Multiway Transformer, released-checkpoint I/O and the masked data modeling objective.

Public API:
    build_model(name, **overrides)                 -> BEiT3 backbone
    load_released_checkpoint(path, name, ...)      -> BEiT3 backbone with released weights
    BEiT3ForMDM, MDMBatch                           masked data modeling heads and loss
    BEiT3ForITC, load_released_itc(path, name)     the image-text contrastive dual encoder
"""

from beit3_core.checkpoint import (
    export_released_checkpoint,
    load_checkpoint,
    load_released_checkpoint,
    load_released_itc,
    load_released_mdm,
    save_checkpoint,
)
from beit3_core.config import MODEL_CONFIGS, BEiT3Config, get_config, list_models
from beit3_core.itc import BEiT3ForITC
from beit3_core.mdm import BEiT3ForMDM, ImageStream, MDMBatch, PairStream, TextStream
from beit3_core.model import BEiT3


def build_model(name: str, **overrides) -> BEiT3:
    """Build the named backbone (`list_models()`), with config fields overridden, e.g. `img_size=384`."""
    return BEiT3(get_config(name, **overrides))


__all__ = [
    "MODEL_CONFIGS",
    "BEiT3",
    "BEiT3Config",
    "BEiT3ForITC",
    "BEiT3ForMDM",
    "ImageStream",
    "MDMBatch",
    "PairStream",
    "TextStream",
    "build_model",
    "export_released_checkpoint",
    "get_config",
    "list_models",
    "load_checkpoint",
    "load_released_checkpoint",
    "load_released_itc",
    "load_released_mdm",
    "save_checkpoint",
]
