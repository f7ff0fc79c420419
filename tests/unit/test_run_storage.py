import pytest

from beit3_core.runtime.storage import RunStorage


def test_local_path_and_file_uri_give_the_same_files(tmp_path):
    for location in (str(tmp_path / "a"), (tmp_path / "b").as_uri()):
        storage = RunStorage(location)
        assert not storage.exists("run", "info.json")
        storage.write_text('{"x": 1}', "run", "info.json")
        assert storage.exists("run", "info.json") and storage.read_text("run", "info.json") == '{"x": 1}'
        local = tmp_path / "model.bin"
        local.write_bytes(b"\x00\x01weights")
        where = storage.upload_file(local, "run", "final", "model.bin")
        assert storage.exists("run", "final", "model.bin") and where.endswith("run/final/model.bin")
        assert not [p for p in (storage.local_root / "run").rglob("*.tmp")]  # atomic: no leftovers
    assert (tmp_path / "b" / "run" / "final" / "model.bin").read_bytes() == b"\x00\x01weights"


def test_remote_storage_removes_runs_and_gives_local_copies(tmp_path):
    import pyarrow.fs as pafs

    fsspec = pytest.importorskip("fsspec")
    remote = pafs.PyFileSystem(pafs.FSSpecHandler(fsspec.filesystem("memory")))
    storage = RunStorage("/bucket/runs", filesystem=remote)
    assert storage.local_root is None
    local = tmp_path / "model.bin"
    local.write_bytes(b"weights")
    storage.upload_file(local, "run", "final", "model.bin")
    copy = storage.local_copy(tmp_path / "mirror" / "model.bin", "run", "final", "model.bin")
    assert copy == tmp_path / "mirror" / "model.bin" and copy.read_bytes() == b"weights"
    storage.remove("run")
    assert not storage.exists("run", "final", "model.bin") and not storage.exists("run")
    storage.remove("run")  # removing what is not there is not an error


def test_local_copy_of_local_storage_is_the_file_itself(tmp_path):
    storage = RunStorage(str(tmp_path / "runs"))
    storage.write_text("x", "run", "final", "note.txt")
    assert storage.local_copy(tmp_path / "unused", "run", "final", "note.txt") == tmp_path / "runs/run/final/note.txt"
    assert not (tmp_path / "unused").exists()
