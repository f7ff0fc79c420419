"""Tests for beit3_core.data.shard_format: schema, key escaping, Parquet/tar round trips and reader errors."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

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
from beit3_core.data.views import ViewParams, encode_stored_image, sample_views
from preprocessing.shard_writer import write_shard


def _record(kind: str, index: int, source: str = "coco.2017") -> dict[str, Any]:
    """A small valid record; images are 24x32 JPEGs with three views of 6 tokens."""
    record: dict[str, Any] = {name: None for name in COLUMNS}
    record.update(key=f"{source}/{kind}.{index}", source=source, kind=kind, provenance="unit", input_file="in.jsonl")
    if kind != "image":
        record.update(caption=f"caption {index} ünïcode", text_ids=np.array([0, 100 + index, 64001, 2]))
    if kind != "text":
        rng = np.random.default_rng(index)
        image_bytes = encode_stored_image(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
        views = [
            {**vars(view), "tokens": rng.integers(0, 8192, 6, dtype=np.int64)} for view in sample_views(24, 32, 3, rng)
        ]
        record.update(image_bytes=image_bytes, image_sha256=hashlib.sha256(image_bytes).hexdigest(), views=views)
        record.update(stored_height=24, stored_width=32, label="n01440764" if kind == "image" else None)
    return record


def _mixed_records() -> list[dict[str, Any]]:
    return [_record(kind, i) for i, kind in enumerate(["image", "text", "pair", "pair", "text", "image"])]


@pytest.fixture()
def shard(tmp_path: Path) -> tuple[Path, list[dict[str, Any]]]:
    records = _mixed_records()
    write_shard(records, tmp_path, "train-000000", fingerprint="fp")
    return tmp_path / "train-000000", records


def test_parquet_round_trip_equals_input(shard: tuple[Path, list[dict[str, Any]]]) -> None:
    stem, records = shard
    table = read_parquet_shard(stem.with_suffix(".parquet"))
    assert table.schema.equals(SHARD_SCHEMA, check_metadata=True)
    rows = table.to_pylist()
    assert rows == [normalize_record(r) for r in records]
    # Spot-check against the raw input, not only the normalizer.
    assert rows[0]["views"][1]["tokens"] == records[0]["views"][1]["tokens"].tolist()
    assert rows[1]["text_ids"] == [0, 101, 64001, 2] and rows[1]["views"] is None
    assert rows[0]["caption"] is None and rows[0]["label"] == "n01440764"


def test_tar_round_trip_equals_input(shard: tuple[Path, list[dict[str, Any]]]) -> None:
    stem, records = shard
    samples = list(iter_webdataset_shard(stem.with_suffix(".tar")))
    assert [s["key"] for s in samples] == [r["key"] for r in records]
    assert [s["kind"] for s in samples] == [r["kind"] for r in records]
    assert [s["image_bytes"] for s in samples] == [r.get("image_bytes") for r in records]
    assert [s["meta"] for s in samples] == [normalize_record(r) for r in records]


def test_tar_members_are_webdataset_safe(shard: tuple[Path, list[dict[str, Any]]]) -> None:
    stem, _ = shard
    with tarfile.open(stem.with_suffix(".tar")) as tar:
        names = tar.getnames()
    assert names[:3] == ["coco_2e2017_2fimage_2e0.jpg", "coco_2e2017_2fimage_2e0.json", "coco_2e2017_2ftext_2e1.json"]
    assert all(name.count(".") == 1 and "/" not in name for name in names)


@pytest.mark.parametrize("key", ["a/b", "laion.400m/x.y_z", "src/é ü/東京", "a_2e", "a.", "-_-"])
def test_key_escaping_round_trips(key: str) -> None:
    stem = encode_wds_key(key)
    assert stem.replace("_", "").replace("-", "").isalnum() or stem.replace("_", "").replace("-", "") == ""
    assert "." not in stem and "/" not in stem
    assert decode_wds_key(stem) == key
    assert encode_wds_key("a_2e") != encode_wds_key("a.")


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"kind": "video"}, "kind must be one of"),
        ({"key": "other/image.0"}, "key must be"),
        ({"caption": "an image has no caption"}, "caption must be None"),
        ({"image_sha256": "0" * 64}, "image_sha256 does not match"),
        ({"image_bytes": None}, "image_bytes must be set"),
        ({"views": [{"top": 1, "left": 0, "height": 24, "width": 32, "flip": False, "tokens": [1]}]}, "exceeds"),
        ({"views": [{"top": 0, "left": 0, "height": 8, "width": 8, "flip": False, "tokens": [70000]}]}, "tokens"),
        ({"views": []}, "at least one view"),
        ({"provenance": None}, "provenance must be a non-empty string"),
        ({"views": [{"top": 0, "left": 0, "height": 8, "width": 8, "flip": False, "tokens": []}]}, "non-zero"),
    ],
)
def test_invalid_records_are_rejected(change: dict[str, Any], match: str) -> None:
    record = {**_record("image", 0), **change}
    with pytest.raises(ValueError, match=match) as err:
        normalize_record(record)
    assert str(err.value).startswith(f"record {record['key']!r}")


def test_nullable_columns_may_be_omitted() -> None:
    full = _record("text", 1)
    sparse = {name: value for name, value in full.items() if value is not None}
    assert normalize_record(sparse) == normalize_record(full)


def test_text_ids_need_bos_and_eos() -> None:
    with pytest.raises(ValueError, match="<s>"):
        normalize_record({**_record("text", 1), "text_ids": [5, 6, 2]})


def test_view_params_objects_are_accepted() -> None:
    record = _record("image", 0)
    record["views"] = [ViewParams(0, 0, 24, 24, True)]
    with pytest.raises(ValueError, match="tokens"):  # a ViewParams alone has no tokens
        normalize_record(record)


def test_schema_mismatch_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "wrong.parquet"
    schema = SHARD_SCHEMA.set(SHARD_SCHEMA.get_field_index("text_ids"), pa.field("text_ids", pa.list_(pa.int64())))
    pq.write_table(pa.Table.from_pylist([], schema=schema), path)
    with pytest.raises(ShardFormatError, match="text_ids") as err:
        read_parquet_shard(path)
    assert str(path) in str(err.value)
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(ShardFormatError, match="junk.parquet"):
        read_parquet_shard(tmp_path / "junk.parquet")


def _tar_offsets(path: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(path) as tar:
        return tar.getmembers()


def test_corrupt_tar_header_names_the_shard(shard: tuple[Path, list[dict[str, Any]]]) -> None:
    stem, _ = shard
    path = stem.with_suffix(".tar")
    data = bytearray(path.read_bytes())
    third = _tar_offsets(path)[2]
    data[third.offset + 10] ^= 0xFF  # inside the name field: the header checksum no longer matches
    path.write_bytes(bytes(data))
    # tarfile alone would silently stop after two members; the reader must not.
    with pytest.raises(ShardFormatError, match="corrupt") as err:
        list(iter_webdataset_shard(path))
    assert str(path) in str(err.value)


def test_corrupt_image_bytes_fail_the_hash_check(shard: tuple[Path, list[dict[str, Any]]]) -> None:
    stem, _ = shard
    path = stem.with_suffix(".tar")
    data = bytearray(path.read_bytes())
    first = _tar_offsets(path)[0]
    data[first.offset_data + first.size // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ShardFormatError, match=r"member coco_2e2017_2fimage_2e0\.jpg: sha256"):
        list(iter_webdataset_shard(path))


@pytest.mark.parametrize("cut", ["mid_data", "member_boundary", "no_end_marker", "mid_header"])
def test_truncated_tar_names_the_shard(shard: tuple[Path, list[dict[str, Any]]], cut: str) -> None:
    stem, _ = shard
    path = stem.with_suffix(".tar")
    members = _tar_offsets(path)
    last = members[-1]
    end_of_data = last.offset_data + -(-last.size // 512) * 512
    length = {
        "mid_data": members[0].offset_data + 100,
        "member_boundary": members[3].offset,
        "no_end_marker": end_of_data,
        "mid_header": members[2].offset + 200,
    }[cut]
    path.write_bytes(path.read_bytes()[:length])
    with pytest.raises(ShardFormatError, match="tar") as err:
        list(iter_webdataset_shard(path))
    assert str(path) in str(err.value)


def _handmade_tar(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_bad_json_names_the_shard_and_member(tmp_path: Path) -> None:
    path = tmp_path / "bad.tar"
    _handmade_tar(path, {"src_2fk.json": b"{not json"})
    with pytest.raises(ShardFormatError, match=r"bad\.tar: member src_2fk\.json: bad JSON"):
        list(iter_webdataset_shard(path))


def test_unexpected_members_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "odd.tar"
    _handmade_tar(path, {"src_2fk.txt": b"hello"})
    with pytest.raises(ShardFormatError, match="odd.tar: member src_2fk"):
        list(iter_webdataset_shard(path))
