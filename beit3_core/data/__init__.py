"""Data contract between preprocessing and pretraining: stored-image views and the shard format.

Public API:
    ViewParams, sample_views, render_view, to_model_input, to_tokenizer_input   view replay (views.py)
    resize_short_side, encode_stored_image, decode_stored_image                 stored JPEG (views.py)
    SHARD_SCHEMA, read_parquet_shard, iter_webdataset_shard                     shard reading (shard_format.py)
"""

from beit3_core.data.shard_format import (
    COLUMNS,
    SHARD_SCHEMA,
    ShardFormatError,
    decode_wds_key,
    encode_wds_key,
    iter_webdataset_shard,
    normalize_record,
    read_parquet_shard,
)
from beit3_core.data.views import (
    RENDER_VERSION,
    ViewParams,
    canonical_view,
    decode_stored_image,
    encode_stored_image,
    render_info,
    render_view,
    resize_short_side,
    sample_views,
    to_model_input,
    to_tokenizer_input,
)

__all__ = [
    "COLUMNS",
    "RENDER_VERSION",
    "SHARD_SCHEMA",
    "ShardFormatError",
    "ViewParams",
    "canonical_view",
    "decode_stored_image",
    "decode_wds_key",
    "encode_stored_image",
    "encode_wds_key",
    "iter_webdataset_shard",
    "normalize_record",
    "read_parquet_shard",
    "render_info",
    "render_view",
    "resize_short_side",
    "sample_views",
    "to_model_input",
    "to_tokenizer_input",
]
