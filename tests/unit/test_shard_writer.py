"""Tests for preprocessing.shard_writer: sidecars, byte-identical rewrites and interrupted writes."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from beit3_core.data.shard_format import COLUMNS, iter_webdataset_shard, read_parquet_shard
from beit3_core.data.views import encode_stored_image
from preprocessing.shard_writer import (
    TMP_PREFIX,
    ShardInfo,
    is_shard_complete,
    read_manifest,
    read_shard_info,
    remove_stale_temporaries,
    write_manifest,
    write_shard,
    write_sizes,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
NAME = "train-000003"


def _records() -> list[dict[str, Any]]:
    """Two texts, one image and one pair."""
    image_bytes = encode_stored_image(np.random.default_rng(0).integers(0, 256, (16, 20, 3), dtype=np.uint8))
    image = {
        "image_bytes": image_bytes,
        "image_sha256": hashlib.sha256(image_bytes).hexdigest(),
        "stored_height": 16,
        "stored_width": 20,
        "views": [{"top": 0, "left": 2, "height": 16, "width": 16, "flip": False, "tokens": list(range(4))}],
    }
    text = {"caption": "a dog", "text_ids": [0, 7, 9, 2]}
    base = {name: None for name in COLUMNS} | {"source": "s", "provenance": "unit", "input_file": "x.jsonl"}
    return [
        base | text | {"key": "s/t0", "kind": "text"},
        base | image | {"key": "s/i0", "kind": "image", "label": "dog"},
        base | image | text | {"key": "s/p0", "kind": "pair"},
        base | text | {"key": "s/t1", "kind": "text"},
    ]


def _visible(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if not p.name.startswith(TMP_PREFIX))


def _temporaries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(TMP_PREFIX))


def test_write_shard_produces_files_and_sidecar(tmp_path: Path) -> None:
    info = write_shard(_records(), tmp_path / "out", NAME, fingerprint="abc")
    out = tmp_path / "out"
    assert _visible(out) == [f"{NAME}.done.json", f"{NAME}.parquet", f"{NAME}.tar"] and not _temporaries(out)
    assert info.num_records == 4 and info.num_per_kind == {"image": 1, "text": 2, "pair": 1}
    assert info.tar_sha256 == hashlib.sha256((out / f"{NAME}.tar").read_bytes()).hexdigest()
    assert read_shard_info(out, NAME) == info
    assert read_parquet_shard(out / f"{NAME}.parquet").num_rows == 4
    assert len(list(iter_webdataset_shard(out / f"{NAME}.tar"))) == 4
    assert is_shard_complete(out, NAME, "abc")
    assert not is_shard_complete(out, NAME, "other-fingerprint")
    assert not is_shard_complete(out, "train-000004", "abc")


def test_same_records_give_byte_identical_files(tmp_path: Path) -> None:
    write_shard(_records(), tmp_path / "a", NAME, fingerprint="f")
    write_shard(_records(), tmp_path / "b", NAME, fingerprint="f")
    first = {p.name: p.read_bytes() for p in (tmp_path / "a").iterdir()}
    write_shard(_records(), tmp_path / "a", NAME, fingerprint="f")  # rewrite in place
    for directory in ("a", "b"):
        assert {p.name: p.read_bytes() for p in (tmp_path / directory).iterdir()} == first


def test_tar_is_byte_identical_to_webdataset_tarwriter(tmp_path: Path) -> None:
    import io

    import webdataset as wds

    from beit3_core.data.shard_format import encode_wds_key, sample_json_bytes

    records = _records()
    write_shard(records, tmp_path, NAME, fingerprint="f")
    rows = read_parquet_shard(tmp_path / f"{NAME}.parquet").to_pylist()
    expected = io.BytesIO()
    writer = wds.TarWriter(expected, encoder=False, mtime=0.0, user="beit3", group="beit3", mode=0o444)
    for row, record in zip(rows, records, strict=True):
        sample = {"__key__": encode_wds_key(row["key"]), "json": sample_json_bytes(row)}
        if record.get("image_bytes") is not None:
            sample["jpg"] = bytes(record["image_bytes"])
        writer.write(sample)
    writer.close()
    assert (tmp_path / f"{NAME}.tar").read_bytes() == expected.getvalue()


def test_cpu_stage_modules_do_not_import_torch() -> None:
    # Every Ray worker of the clean, render and write tasks imports these; torch would cost each one seconds
    # and ~200 MB. The tokenizer actors import it themselves.
    code = textwrap.dedent(
        """
        import sys
        import preprocessing.pipeline, preprocessing.clean, preprocessing.tokenize_shard
        import preprocessing.shard_writer, preprocessing.token_stage, preprocessing.sources
        print(sorted(m for m in ("torch", "webdataset") if m in sys.modules))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_hash_check_can_be_skipped(tmp_path: Path) -> None:
    write_shard(_records(), tmp_path, NAME, fingerprint="f")
    tar = tmp_path / f"{NAME}.tar"
    data = bytearray(tar.read_bytes())
    data[600] ^= 0xFF  # same size, different content
    tar.write_bytes(bytes(data))
    assert not is_shard_complete(tmp_path, NAME, "f")
    assert is_shard_complete(tmp_path, NAME, "f", verify_hashes=False)
    tar.write_bytes(bytes(data[:-512]))
    assert not is_shard_complete(tmp_path, NAME, "f", verify_hashes=False)


@pytest.mark.parametrize("stage", ["parquet_written", "tar_written"])
def test_exception_mid_write_leaves_no_shard(tmp_path: Path, stage: str) -> None:
    def fail(current: str) -> None:
        if current == stage:
            raise RuntimeError(f"simulated failure at {current}")

    with pytest.raises(RuntimeError, match="simulated"):
        write_shard(_records(), tmp_path, NAME, fingerprint="f", on_stage=fail)
    assert os.listdir(tmp_path) == []  # neither visible files nor temporaries
    assert not is_shard_complete(tmp_path, NAME, "f", verify_hashes=False)


def test_interrupted_rewrite_invalidates_the_old_sidecar(tmp_path: Path) -> None:
    write_shard(_records(), tmp_path, NAME, fingerprint="old")

    def fail(current: str) -> None:
        if current == "files_replaced":
            raise RuntimeError("simulated failure before the sidecar")

    with pytest.raises(RuntimeError):
        write_shard(_records()[:2], tmp_path, NAME, fingerprint="new", on_stage=fail)
    assert not (tmp_path / f"{NAME}.done.json").exists()
    assert not is_shard_complete(tmp_path, NAME, "old", verify_hashes=False)
    assert not is_shard_complete(tmp_path, NAME, "new", verify_hashes=False)


_CHILD = textwrap.dedent(
    """
    import sys, time
    from preprocessing.shard_writer import write_shard

    out_dir, stage = sys.argv[1], sys.argv[2]
    base = dict(source="s", kind="text", caption="c", text_ids=[0, 5, 2], image_sha256=None, stored_height=None,
                stored_width=None, views=None, label=None, provenance="p", input_file="f")
    records = [dict(base, key=f"s/{i}") for i in range(2000)]

    def pause(current):
        if current == stage:
            print(current, flush=True)
            time.sleep(60)

    write_shard(records, out_dir, "train-000003", fingerprint="f", on_stage=pause)
    """
)


@pytest.mark.parametrize("stage", ["parquet_written", "tar_written"])
def test_sigkill_mid_write_leaves_no_shard(tmp_path: Path, stage: str) -> None:
    out = tmp_path / "out"
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(out), stage], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline().strip() == stage
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=30)
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    assert _visible(out) == []
    leftovers = _temporaries(out)  # the killed writer's temporaries, ignored by readers
    assert leftovers and all(name.startswith(f"{TMP_PREFIX}{NAME}.") for name in leftovers)
    assert not is_shard_complete(out, NAME, "f", verify_hashes=False)
    assert [p.name for p in remove_stale_temporaries(out)] == leftovers
    assert os.listdir(out) == []


def test_remove_stale_temporaries_keeps_finished_shards(tmp_path: Path) -> None:
    write_shard(_records(), tmp_path, NAME, fingerprint="f")
    (tmp_path / f"{TMP_PREFIX}{NAME}.tar.123.abcd").write_bytes(b"partial")
    assert [p.name for p in remove_stale_temporaries(tmp_path)] == [f"{TMP_PREFIX}{NAME}.tar.123.abcd"]
    assert is_shard_complete(tmp_path, NAME, "f")
    assert remove_stale_temporaries(tmp_path / "missing") == []


def test_manifest_and_sizes_round_trip(tmp_path: Path) -> None:
    info = write_shard(_records(), tmp_path, NAME, fingerprint="f")
    manifest = {"tokenizer": {"name": "vqkd", "sha256": "00"}, "shards": {NAME: info.tar_sha256}}
    path = write_manifest(tmp_path, manifest)
    assert read_manifest(tmp_path) == manifest and not _temporaries(tmp_path)
    assert path.read_bytes() == write_manifest(tmp_path, dict(reversed(manifest.items()))).read_bytes()
    sizes = write_sizes(tmp_path, [info])
    assert json.loads(sizes.read_text()) == {f"{NAME}.tar": 4}


def test_empty_shard_is_complete_and_reads_back_empty(tmp_path: Path) -> None:
    # Every record of a shard's inputs can be quarantined; the shard must still be written and be skippable.
    info = write_shard([], tmp_path, NAME, fingerprint="f")
    assert info.num_records == 0 and set(info.num_per_kind.values()) == {0}
    assert is_shard_complete(tmp_path, NAME, "f")
    assert read_parquet_shard(tmp_path / f"{NAME}.parquet").num_rows == 0
    assert list(iter_webdataset_shard(tmp_path / f"{NAME}.tar")) == []


@pytest.mark.parametrize("name", ["", "_tmp.x", ".hidden", "a/b"])
def test_bad_shard_names_are_rejected(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="shard name"):
        write_shard(_records(), tmp_path, name, fingerprint="f")


def test_invalid_input_writes_nothing(tmp_path: Path) -> None:
    records = _records()
    with pytest.raises(ValueError, match="repeated keys"):
        write_shard(records + records[:1], tmp_path, NAME, fingerprint="f")
    with pytest.raises(ValueError, match="s/i0"):
        write_shard([records[1] | {"image_bytes": b"other"}], tmp_path, NAME, fingerprint="f")
    assert os.listdir(tmp_path) == []


def test_shard_info_lists_both_files() -> None:
    info = ShardInfo("x", "f", 1, {"image": 0, "text": 1, "pair": 0}, "a", 10, "b", 20)
    assert info.files() == {"x.parquet": ("a", 10), "x.tar": ("b", 20)}
