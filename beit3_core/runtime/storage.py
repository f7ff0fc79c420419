"""Run storage: a local folder or any pyarrow filesystem URI (s3://, gs://, hdfs://, file://).

Ray Train writes its checkpoints there itself; this class handles the few files the driver writes beside
them (run info, final exports), each written atomically (temporary name, then move).
"""

import uuid
from pathlib import Path

import pyarrow.fs as pafs

from beit3_core.runtime.atomic import atomic_path, copy_atomic


class RunStorage:
    def __init__(self, location: str, filesystem: pafs.FileSystem | None = None):
        """`location`: a local folder or a filesystem URI; or, with `filesystem`, a path inside that filesystem."""
        if filesystem is not None:
            self.fs, self.root, self.uri = filesystem, location.rstrip("/"), location.rstrip("/")
            self.local_root = Path(self.root) if isinstance(filesystem, pafs.LocalFileSystem) else None
        elif "://" in location:
            self.fs, self.root = pafs.FileSystem.from_uri(location)
            self.uri = location.rstrip("/")
            self.local_root = Path(self.root) if isinstance(self.fs, pafs.LocalFileSystem) else None
        else:
            self.local_root = Path(location).resolve()
            self.fs, self.root, self.uri = pafs.LocalFileSystem(), str(self.local_root), str(self.local_root)

    def path(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def ray_storage_path(self) -> str:
        return self.uri

    def exists(self, *parts: str) -> bool:
        return self.fs.get_file_info(self.path(*parts)).type != pafs.FileType.NotFound

    def read_text(self, *parts: str) -> str:
        with self.fs.open_input_stream(self.path(*parts)) as f:
            return f.read().decode()

    def write_text(self, text: str, *parts: str) -> None:
        final = self.path(*parts)
        self.fs.create_dir(final.rsplit("/", 1)[0], recursive=True)
        tmp = f"{final}.{uuid.uuid4().hex}.tmp"
        with self.fs.open_output_stream(tmp) as f:
            f.write(text.encode())
        self.fs.move(tmp, final)

    def upload_file(self, local: Path, *parts: str) -> str:
        """Copy a local file to `parts` atomically; returns its location (a path or a URI)."""
        final = self.path(*parts)
        if self.local_root is not None and Path(local).resolve() == Path(final).resolve():
            return final
        self.fs.create_dir(final.rsplit("/", 1)[0], recursive=True)
        if self.local_root is not None:
            copy_atomic(Path(local), Path(final))
        else:
            tmp = f"{final}.{uuid.uuid4().hex}.tmp"
            pafs.copy_files(str(local), tmp, destination_filesystem=self.fs)
            self.fs.move(tmp, final)
        return final if self.local_root is not None else f"{self.uri}/{'/'.join(parts)}"

    def remove(self, *parts: str) -> None:
        """Delete a run folder (or file) if it exists."""
        info = self.fs.get_file_info(self.path(*parts))
        if info.type == pafs.FileType.Directory:
            self.fs.delete_dir(info.path)
        elif info.type == pafs.FileType.File:
            self.fs.delete_file(info.path)

    def local_copy(self, local: Path, *parts: str) -> Path:
        """A local path holding the file at `parts`: the file itself on local storage, else a copy at `local`
        (downloaded once, atomically)."""
        if self.local_root is not None:
            return Path(self.path(*parts))
        if not local.is_file():
            local.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(local) as tmp:
                pafs.copy_files(self.path(*parts), str(tmp), source_filesystem=self.fs)
        return local
