"""Data store on a local directory, with the same key layout as the S3 store."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

from ..errors import StoreError
from .layout import DEFAULT_PREFIX


class DirectoryDataStore:
    def __init__(self, root: str | Path, *, create: bool = True) -> None:
        self.root = Path(root)
        self.bucket_name = ""
        self.prefix = DEFAULT_PREFIX
        self._root = str(self.root.resolve())
        self._made: set[str] = set()
        if not create:
            return
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"cannot create the data directory {self.root}: {exc.strerror}; "
                "check the permissions or set another data URL (TRIFLE_OTEL_DATA_URL)"
            ) from None

    def _path(self, key: str) -> str:
        # Keys come from the layout (sanitized segments); refuse anything that could escape.
        if key.startswith("/") or "\\" in key or any(p in ("..", ".") for p in key.split("/")):
            raise StoreError(f"data key {key!r} points outside the data directory")
        return os.path.join(self._root, key)

    def bucket_for(self, reference: str) -> str:
        return ""

    def put(self, key: str, body: bytes, bucket: str | None = None) -> None:
        path = self._path(key)
        directory = os.path.dirname(path)
        tmp = f"{path}.tmp-{os.getpid()}-{threading.get_ident()}"
        try:
            if directory not in self._made:
                os.makedirs(directory, exist_ok=True)
                if len(self._made) > 10_000:
                    self._made.clear()
                self._made.add(directory)
            try:
                fh = open(tmp, "wb")
            except FileNotFoundError:  # removed behind our back: make it again
                os.makedirs(directory, exist_ok=True)
                fh = open(tmp, "wb")
            with fh:
                fh.write(body)
            os.replace(tmp, path)
        except OSError as exc:
            raise StoreError(f"cannot write {path}: {exc.strerror}") from None

    def put_many(self, items) -> list[int]:
        """Write each item; returns the indexes of those that failed (raises when all did)."""
        failed: list[int] = []
        error: StoreError | None = None
        for number, (key, body, _) in enumerate(items):
            try:
                self.put(key, body)
            except StoreError as exc:
                failed.append(number)
                error = exc
        if error is not None and len(failed) == len(items):
            raise error
        return failed

    def get(self, key: str, bucket: str | None = None) -> bytes | None:
        path = self._path(key)
        try:
            with open(path, "rb") as fh:
                return fh.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"cannot read {path}: {exc.strerror}") from None

    def delete_prefix(self, prefix: str, bucket: str | None = None) -> None:
        path = self._path(prefix.rstrip("/"))
        self._made.discard(path)
        shutil.rmtree(path, ignore_errors=True)

    def setup(self, retention_days=()) -> list[str]:
        return [f"data directory {self.root}"]

    def close(self) -> None:
        pass
