"""BEiT-3 model core: the Multiway Transformer, released-checkpoint I/O and the masked data modeling objective.

Public API:
    build_model(name, **overrides)                 -> BEiT3 backbone
    load_released_checkpoint(path, name, ...)      -> BEiT3 backbone with released weights
    BEiT3ForMDM, MDMBatch                           masked data modeling heads and loss
    BEiT3ForITC, load_released_itc(path, name)     the image-text contrastive dual encoder
"""

from importlib import import_module
from typing import TYPE_CHECKING

# Loaded on first use (PEP 562): the data contract (`beit3_core.data`) and the runtime helpers are imported
# by preprocessing workers that never build a model, and importing torch costs each of them seconds.
_LAZY = {
    "export_released_checkpoint": "beit3_core.checkpoint",
    "load_checkpoint": "beit3_core.checkpoint",
    "load_released_checkpoint": "beit3_core.checkpoint",
    "load_released_itc": "beit3_core.checkpoint",
    "load_released_mdm": "beit3_core.checkpoint",
    "save_checkpoint": "beit3_core.checkpoint",
    "MODEL_CONFIGS": "beit3_core.config",
    "BEiT3Config": "beit3_core.config",
    "get_config": "beit3_core.config",
    "list_models": "beit3_core.config",
    "BEiT3ForITC": "beit3_core.itc",
    "BEiT3ForMDM": "beit3_core.mdm",
    "ImageStream": "beit3_core.mdm",
    "MDMBatch": "beit3_core.mdm",
    "PairStream": "beit3_core.mdm",
    "TextStream": "beit3_core.mdm",
    "BEiT3": "beit3_core.model",
}

if TYPE_CHECKING:
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


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'beit3_core' has no attribute {name!r}")


def build_model(name: str, **overrides) -> "BEiT3":
    """Build the named backbone (`list_models()`), with config fields overridden, e.g. `img_size=384`."""
    from beit3_core.config import get_config
    from beit3_core.model import BEiT3

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
