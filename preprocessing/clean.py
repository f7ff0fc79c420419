"""Pass 1 of a shard: read its raw records, validate them, and keep the survivors in a normalised form.

A pure function of the shard's input files and the validation rules (no Ray, no tokenizers), so it can run
anywhere and be tested directly. Every record ends up either in the returned rows or in quarantine with its
reason; `records_in == len(rows) + len(quarantine)` holds by construction and is checked.
"""

import hashlib
from dataclasses import dataclass, field

import pyarrow as pa

from beit3_core.data.views import encode_stored_image, resize_short_side_image
from preprocessing.quarantine import QuarantineRecord
from preprocessing.sources import RawRecord, SourceSpec, iter_records_of_files
from preprocessing.validate_image import ImageResult, ImageRules, validate_image
from preprocessing.validate_text import TextRules, text_sha256, validate_text

CLEAN_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("kind", pa.string()),
        ("label", pa.string()),
        ("provenance", pa.string()),
        ("input_file", pa.string()),
        ("caption", pa.string()),
        ("image", pa.binary()),
        ("content_hash", pa.string()),
        ("normalizations", pa.list_(pa.string())),
    ]
)


@dataclass
class CleanResult:
    rows: list[dict] = field(default_factory=list)
    quarantine: list[QuarantineRecord] = field(default_factory=list)
    records_in: int = 0

    def table(self) -> pa.Table:
        return pa.Table.from_pylist(self.rows, schema=CLEAN_SCHEMA)


_JPEG_MAGIC = b"\xff\xd8\xff"


def stored_image_bytes(data: bytes, result: ImageResult, short_side: int, reuse_jpeg: bool = False) -> bytes:
    """The stored JPEG of a validated image: resized once, encoded once.

    With `reuse_jpeg`, a source that already is a plain RGB JPEG of the stored size (nothing normalised, no
    resize needed) is stored as it is: its decoded pixels are exactly what the loader will decode, and the
    encode/decode round trip is saved. Off by default, because the bytes (and so the shards) then differ from
    the re-encoded ones.
    """
    image = result.image
    if reuse_jpeg and not result.normalizations and min(image.size) == short_side and data[:3] == _JPEG_MAGIC:
        return data
    return encode_stored_image(resize_short_side_image(image, short_side))


def _clean_record(
    record: RawRecord, image_rules: ImageRules, text_rules: TextRules, short_side: int, reuse_jpeg: bool = False
):
    """(row, None) for an accepted record, (None, (reason, detail)) for a rejected one."""
    if record.error:
        return None, (str(record.error), record.error_detail)
    notes: list[str] = []
    caption = image = None
    hashes = []
    if record.kind in ("text", "pair"):
        result = validate_text(record.text if record.text is not None else b"", text_rules)
        if not result.accepted:
            return None, (f"text_{result.reason}", result.message)
        caption = result.text
        notes += [f"text:{n}" for n in result.normalizations]
        hashes.append(text_sha256(caption))
    if record.kind in ("image", "pair"):
        result = validate_image(record.image_bytes or b"", image_rules)
        if not result.accepted:
            return None, (f"image_{result.reason}", result.message)
        image = stored_image_bytes(record.image_bytes, result, short_side, reuse_jpeg)
        notes += [f"image:{n}" for n in result.normalizations]
        hashes.append(hashlib.sha256(record.image_bytes).hexdigest())
    row = {
        "key": f"{record.source}/{record.key}",
        "kind": record.kind,
        "label": record.label,
        "provenance": record.provenance,
        "input_file": record.input_file,
        "caption": caption,
        "image": image,
        # Exact duplicates are judged on the original content (raw image bytes, normalised text).
        "content_hash": hashlib.sha256("|".join([record.kind, *hashes]).encode()).hexdigest(),
        "normalizations": notes,
    }
    return row, None


def clean_shard(
    spec: SourceSpec,
    files: tuple,
    image_rules: ImageRules,
    text_rules: TextRules,
    short_side: int,
    reuse_jpeg: bool = False,
) -> CleanResult:
    result = CleanResult()
    for record in iter_records_of_files(spec, files):
        result.records_in += 1
        row, rejection = _clean_record(record, image_rules, text_rules, short_side, reuse_jpeg)
        if row is not None:
            result.rows.append(row)
        else:
            reason, detail = rejection
            result.quarantine.append(
                QuarantineRecord(spec.name, f"{record.source}/{record.key}", reason, detail, record.num_bytes)
            )
    return result
