"""Read-only access to a dataset in a local directory or under an s3:// prefix, by relative path."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ptbr.data import s3


class LocalStore:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.remote = False

    def __str__(self) -> str:
        return str(self.root)

    def get(self, rel: str) -> bytes | None:
        try:
            return (self.root / rel).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None


class S3Store:
    def __init__(self, url: str, client: Any | None = None, *, max_pool_connections: int = 10) -> None:
        self.url = s3.parse_s3_url(url)
        self.client = client or s3.make_client(max_pool_connections=max_pool_connections)
        self.remote = True

    def __str__(self) -> str:
        return str(self.url)

    def get(self, rel: str) -> bytes | None:
        with s3.s3_errors(f"reading {self.url}/{rel}", self.url):
            return s3.get_bytes(self.client, self.url, rel)


def open_store(source: str | os.PathLike[str], **kwargs: Any) -> LocalStore | S3Store:
    return S3Store(str(source), **kwargs) if s3.is_s3(source) else LocalStore(source)
