"""The sweep's folder on any storage Ray accepts: a local path or a URI (s3://, gs://, file://...).

Everything goes through ``pyarrow.fs``, as Ray itself does, so the driver and every trial write to
the same ``STORAGE/NAME/`` whether it is a local disk, a shared mount or a bucket.
"""

from __future__ import annotations

import os
from pathlib import Path


def experiment_uri(storage_path: str, name: str) -> str:
    return f"{storage_path.rstrip('/')}/{name}"


def absolute(storage_path: str) -> str:
    """Local paths made absolute (trials run elsewhere); URIs as they are."""
    return storage_path if "://" in storage_path else os.path.abspath(os.path.expanduser(storage_path))


class Store:
    """Files in one folder of a (possibly remote) filesystem."""

    def __init__(self, uri: str) -> None:
        import pyarrow.fs

        self.fs, self.root = pyarrow.fs.FileSystem.from_uri(uri)  # an absolute path or a URI
        self.uri = uri

    def _path(self, name: str) -> str:
        return f"{self.root}/{name}" if name else self.root

    def exists(self, name: str = "") -> bool:
        import pyarrow.fs

        return self.fs.get_file_info(self._path(name)).type != pyarrow.fs.FileType.NotFound

    def read(self, name: str) -> bytes:
        with self.fs.open_input_stream(self._path(name)) as f:
            return f.read()

    def write(self, name: str, data: bytes) -> None:
        """Write ``name`` whole (folders are created as needed)."""
        self.fs.create_dir(self._path(name).rsplit("/", 1)[0], recursive=True)
        with self.fs.open_output_stream(self._path(name)) as f:
            f.write(data)

    def upload(self, local: Path, name: str, skip: tuple[str, ...] = ()) -> int:
        """Copy the files of the local folder ``local`` to ``name``, leaving out top-level entries in
        ``skip``; returns how many files were copied."""
        copied = 0
        for path in sorted(local.rglob("*")):
            relative = path.relative_to(local)
            if path.is_file() and relative.parts[0] not in skip and not path.name.endswith(".tmp"):
                self.write(f"{name}/{relative.as_posix()}", path.read_bytes())
                copied += 1
        return copied

    def where(self, name: str) -> str:
        return f"{self.uri}/{name}"
