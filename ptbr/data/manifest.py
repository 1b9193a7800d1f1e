"""The dataset manifest: what a build produced, and the hashes that name the dataset version.

``manifest.json`` is written last (tmp file + fsync + rename), so its presence means a complete
local build. Remotely, ``_SUCCESS`` holds the sha256 of manifest.json and is written after every
other object has been verified, so it is the commit point for readers.

``dataset_hash`` covers the sample layout and each split's index.json (which records the size
and xxh64 of every shard): two datasets with the same hash hold the same samples, and readers key
their cache directories on it.
"""

from __future__ import annotations

import json
from typing import Any

from ptbr.data.hashing import sha256_bytes, sha256_json
from ptbr.data.store import open_store
from ptbr.errors import DataError

FORMAT = "ptbr-mds"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SUCCESS = "_SUCCESS"
INDEX = "index.json"
COLUMN = "tokens"
REQUIRED = (
    "format",
    "format_version",
    "vocab_size",
    "seq_len",
    "sample_len",
    "eos_id",
    "dtype",
    "tokenizer",
    "splits",
    "dataset_hash",
)


def dataset_hash(layout: dict[str, Any], index_hashes: dict[str, str]) -> str:
    """Identity of the samples: layout fields plus the sha256 of every split's index.json."""
    return sha256_json({"layout": layout, "splits": index_hashes})


def layout_of(manifest: dict[str, Any]) -> dict[str, Any]:
    keys = ("format", "format_version", "vocab_size", "seq_len", "sample_len", "eos_id", "dtype", "column")
    layout = {k: manifest.get(k) for k in keys}
    layout["tokenizer_sha256"] = manifest.get("tokenizer", {}).get("sha256")
    return layout


def encode_manifest(manifest: dict[str, Any]) -> bytes:
    return (json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def manifest_sha256(data: bytes) -> str:
    return sha256_bytes(data)


def success_matches(success: bytes | None, manifest_bytes: bytes) -> bool:
    """The commit marker is there and names this manifest (``_SUCCESS`` = sha256(manifest.json))."""
    return success is not None and success.decode(errors="replace").strip() == manifest_sha256(manifest_bytes)


def stored_file(shard: dict[str, Any]) -> dict[str, Any]:
    """The file of an index.json shard entry that is actually stored (compressed when it is)."""
    return shard.get("zip_data") or shard["raw_data"]


def parse_manifest(data: bytes, source: str) -> dict[str, Any]:
    """Decode and sanity-check a manifest; problems are one-line DataErrors naming ``source``."""
    try:
        manifest = json.loads(data)
    except ValueError:
        raise DataError(f"{source}: manifest.json is not valid JSON") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{source}: manifest.json is not a ptbr dataset manifest")
    missing = [k for k in REQUIRED if k not in manifest]
    if missing:
        raise DataError(f"{source}: manifest.json lacks {', '.join(missing)}")
    if manifest["format_version"] > FORMAT_VERSION:
        raise DataError(
            f"{source}: manifest format {manifest['format_version']} is newer than this "
            f"ptbr understands ({FORMAT_VERSION}); upgrade ptbr"
        )
    return manifest


def read_manifest(source: str) -> dict[str, Any]:
    """The manifest of a dataset directory or a published s3:// prefix.

    Remotely the prefix must be committed: ``_SUCCESS`` present and equal to sha256(manifest.json).
    """
    store = open_store(source)
    data = store.get(MANIFEST)
    if data is None:
        raise DataError(f"{source}: no {MANIFEST} (not a ptbr dataset, or its build/publish did not finish)")
    if store.remote:
        success = store.get(SUCCESS)
        if success is None:
            raise DataError(
                f"{source}: no {SUCCESS} marker: the dataset is not (completely) published; "
                f"re-run 'ptbr shards publish'"
            )
        if not success_matches(success, data):
            raise DataError(
                f"{source}: {SUCCESS} does not match {MANIFEST} (a publish is in progress or was "
                f"interrupted); re-run 'ptbr shards publish'"
            )
    return parse_manifest(data, source)
