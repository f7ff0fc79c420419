from beit3_core.train.storage import RunStorage


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
