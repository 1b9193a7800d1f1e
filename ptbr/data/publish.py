"""``ptbr shards publish``: upload a built dataset to S3 with commit semantics.

Order of operations (readers trust a prefix only when _SUCCESS matches manifest.json):

1. refuse a prefix that holds anything but this dataset (a different dataset, foreign objects, an
   unfinished upload of another dataset) unless ``force``; write a ``_PUBLISHING`` claim;
2. upload every shard in parallel (boto3's transfer manager: multipart, many objects at once)
   with its xxh64 in the object metadata (botocore adds a CRC32 the server checks in transit);
   skip objects already present with equal size and xxh64; verify each upload by HEAD;
3. only when every shard is verified: tokenizer.json, the index.json files, manifest.json;
4. with ``force``, delete objects that are not part of this dataset;
5. ``_SUCCESS`` holding sha256(manifest.json); then remove the claim.

An interrupted run leaves no _SUCCESS (or the previous one removed first), and a re-run only
sends what is missing.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import xxhash

from ptbr.data import s3
from ptbr.data.hashing import sha256_bytes
from ptbr.data.manifest import INDEX, MANIFEST, SUCCESS, manifest_sha256, parse_manifest, stored_file
from ptbr.errors import DataError
from ptbr.progress import ProgressBar

CLAIM = "_PUBLISHING"
META_HASH = "xxh64"
DEFAULT_PART_SIZE = 16 << 20


@dataclass
class LocalObject:
    rel: str
    path: Path
    size: int
    xxh64: str = ""
    index_xxh64: str | None = None  # what the MDS index recorded, for shards


@dataclass
class PublishReport:
    url: str
    objects: int = 0
    uploaded: int = 0
    skipped: int = 0
    deleted: int = 0
    bytes_total: int = 0
    bytes_uploaded: int = 0
    upload_seconds: float = 0.0
    seconds: float = 0.0
    manifest_sha256: str = ""
    dataset_hash: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def hash_local(obj: LocalObject, buffer: bytearray | None = None) -> LocalObject:
    """xxh64 of the file (~13 GB/s: small next to the upload, which is CPU-bound on a small host)."""
    h = xxhash.xxh64()
    buf = buffer if buffer is not None else bytearray(8 << 20)
    view = memoryview(buf)
    with open(obj.path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    obj.xxh64 = h.hexdigest()
    return obj


def mismatch(obj: LocalObject, head: dict[str, Any] | None) -> str | None:
    """Why the remote object is not this local file (None when it is).

    Content in transit is protected by the CRC32 that botocore sends with every upload (checked by
    the server); the xxh64 recorded in the metadata ties the object to this exact local file.
    """
    if head is None:
        return "missing"
    if int(head["ContentLength"]) != obj.size:
        return f"size {head['ContentLength']} != {obj.size}"
    if head.get("Metadata", {}).get(META_HASH) != obj.xxh64:
        return "xxh64 metadata differs"
    return None


def plan_objects(local: Path, manifest: dict[str, Any]) -> tuple[list[LocalObject], list[LocalObject]]:
    """(shards, metadata files) of a local build, checked against its indexes."""
    shards: list[LocalObject] = []
    meta: list[LocalObject] = []
    if (local / "tokenizer.json").is_file():
        meta.append(LocalObject("tokenizer.json", local / "tokenizer.json", (local / "tokenizer.json").stat().st_size))
    for split, split_meta in manifest["splits"].items():
        index_path = local / split / INDEX
        if not index_path.is_file():
            raise DataError(f"{local}: {split}/{INDEX} is missing; rebuild with 'ptbr shards build'")
        data = index_path.read_bytes()
        if sha256_bytes(data) != split_meta["index_sha256"]:
            raise DataError(f"{local}: {split}/{INDEX} does not match manifest.json; rebuild the dataset")
        for shard in json.loads(data)["shards"]:
            d = stored_file(shard)
            p = local / split / d["basename"]
            if not p.is_file() or p.stat().st_size != d["bytes"]:
                raise DataError(
                    f"{local}: shard {split}/{d['basename']} is missing or truncated; "
                    f"run 'ptbr shards verify {local}' and rebuild"
                )
            shards.append(LocalObject(f"{split}/{d['basename']}", p, d["bytes"], index_xxh64=d["hashes"].get("xxh64")))
        meta.append(LocalObject(f"{split}/{INDEX}", index_path, len(data)))
    meta.append(LocalObject(MANIFEST, local / MANIFEST, (local / MANIFEST).stat().st_size))
    return shards, meta


class _ProgressSubscriber:
    """s3transfer subscriber feeding a shared byte counter."""

    def __init__(self, counter: _Counter) -> None:
        self.counter = counter

    def on_queued(self, future: Any, **kwargs: Any) -> None:
        pass

    def on_progress(self, future: Any, bytes_transferred: int, **kwargs: Any) -> None:
        self.counter.add(bytes_transferred)

    def on_done(self, future: Any, **kwargs: Any) -> None:
        pass


class _Counter:
    """Bytes sent and objects verified, shared by the transfer threads; drives the progress line."""

    def __init__(self, bar: ProgressBar) -> None:
        self.bytes = 0
        self.objects = 0
        self.bar = bar
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self.bytes += n
            self.bar.update(self.bytes, self.objects)

    def done(self) -> None:
        with self._lock:
            self.objects += 1
            self.bar.update(self.bytes, self.objects)


class Publisher:
    def __init__(
        self,
        local: Path,
        url: s3.S3Url,
        *,
        force: bool,
        jobs: int,
        part_size: int,
        progress: bool,
        log: Callable[[str], None],
    ) -> None:
        self.local, self.url, self.force, self.jobs = local, url, force, max(1, jobs)
        self.part_size, self.progress, self.log = part_size, progress, log
        self.client = s3.make_client(max_pool_connections=self.jobs * 2 + 4)
        self.report = PublishReport(url=str(url))

    # ------------------------------------------------------------------ prefix ownership
    def _committed(self, existing: dict[str, int], msha: str) -> bool:
        """The prefix's ``_SUCCESS`` names the manifest whose sha256 is ``msha``."""
        success = s3.get_bytes(self.client, self.url, SUCCESS) if SUCCESS in existing else None
        return success is not None and success.decode(errors="replace").strip() == msha

    def _read_remote_state(self, msha: str, dhash: str) -> tuple[dict[str, int], str | None]:
        """Objects under the prefix, and why they do not belong to this dataset (None if they do)."""
        existing = s3.list_objects(self.client, self.url)
        if not existing:
            return existing, None
        if self._committed(existing, msha):
            return existing, None
        claim = s3.get_bytes(self.client, self.url, CLAIM) if CLAIM in existing else None
        claimed = _json_or_none(claim) or {}
        if claimed.get("dataset_hash") == dhash:
            return existing, None
        remote_manifest = _json_or_none(s3.get_bytes(self.client, self.url, MANIFEST)) if MANIFEST in existing else None
        if remote_manifest and remote_manifest.get("dataset_hash") == dhash:
            return existing, None
        if remote_manifest and remote_manifest.get("dataset_hash"):
            what = f"dataset {str(remote_manifest['dataset_hash'])[:16]}"
            what += "" if SUCCESS in existing else " (never committed)"
        elif claimed.get("dataset_hash"):
            what = f"an unfinished upload of dataset {str(claimed['dataset_hash'])[:16]}"
        else:
            what = f"{len(existing)} object(s) that are not a ptbr dataset"
        return existing, what

    # ------------------------------------------------------------------------ uploads
    def _upload_all(self, objects: list[LocalObject], existing: dict[str, int], phase: str) -> None:
        """Upload (or skip) ``objects``, verifying each; raises DataError on a failed verification.

        Hashing (and the HEAD of objects already in the bucket) runs in a thread pool and each
        object is handed to the transfer manager as soon as it is known to be needed, so hashing
        overlaps the uploads instead of preceding them.
        """
        from boto3.s3.transfer import TransferConfig, create_transfer_manager

        config = TransferConfig(
            multipart_threshold=self.part_size,
            multipart_chunksize=self.part_size,
            max_concurrency=self.jobs,
            use_threads=True,
        )
        bar = ProgressBar(f"publish {phase}", sum(o.size for o in objects), rate_unit="objects", enabled=self.progress)
        counter = _Counter(bar)

        buffers = threading.local()

        def needed(obj: LocalObject) -> bool:
            if not hasattr(buffers, "buf"):
                buffers.buf = bytearray(8 << 20)
            hash_local(obj, buffers.buf)
            if obj.index_xxh64 is not None and obj.index_xxh64 != obj.xxh64:
                raise DataError(
                    f"{self.local}/{obj.rel} does not match the xxh64 in its index (corrupted); rebuild the dataset"
                )
            remote = s3.head(self.client, self.url, obj.rel) if obj.rel in existing else None
            return mismatch(obj, remote) is not None

        def finish(item: tuple[LocalObject, Any]) -> None:
            obj, future = item
            future.result()
            self._verify_uploaded(obj)
            counter.done()

        t0 = time.perf_counter()
        uploads: list[tuple[LocalObject, Any]] = []
        with create_transfer_manager(self.client, config) as manager, ThreadPoolExecutor(self.jobs) as pool:
            checks = [pool.submit(needed, o) for o in objects]
            for obj, check in zip(objects, checks):
                if not check.result():
                    self.report.skipped += 1
                    counter.add(obj.size)
                    continue
                uploads.append(
                    (
                        obj,
                        manager.upload(
                            str(obj.path),
                            self.url.bucket,
                            self.url.key(obj.rel),
                            extra_args={"Metadata": {META_HASH: obj.xxh64}},
                            subscribers=[_ProgressSubscriber(counter)],
                        ),
                    )
                )
            list(pool.map(finish, uploads))
        bar.close()
        if uploads:
            self.report.upload_seconds += time.perf_counter() - t0
            self.report.uploaded += len(uploads)
            self.report.bytes_uploaded += sum(o.size for o, _ in uploads)

    def _verify_uploaded(self, obj: LocalObject) -> None:
        why = mismatch(obj, s3.head(self.client, self.url, obj.rel))
        if why is None:
            return
        self.log(f"warning: {obj.rel} failed verification after upload ({why}); uploading again")
        with open(obj.path, "rb") as f:
            self.client.put_object(
                Bucket=self.url.bucket, Key=self.url.key(obj.rel), Body=f, Metadata={META_HASH: obj.xxh64}
            )
        why = mismatch(obj, s3.head(self.client, self.url, obj.rel))
        if why is not None:
            raise DataError(f"{self.url}/{obj.rel}: verification failed after upload ({why}); not committing")

    def _abort_stale_multipart(self) -> None:
        resp = self.client.list_multipart_uploads(Bucket=self.url.bucket, Prefix=self.url.list_prefix)
        for up in resp.get("Uploads", []) or []:
            self.client.abort_multipart_upload(Bucket=self.url.bucket, Key=up["Key"], UploadId=up["UploadId"])

    def _delete(self, rels: list[str]) -> None:
        for i in range(0, len(rels), 1000):
            chunk = rels[i : i + 1000]
            resp = self.client.delete_objects(
                Bucket=self.url.bucket, Delete={"Objects": [{"Key": self.url.key(r)} for r in chunk], "Quiet": True}
            )
            errors = resp.get("Errors") or []
            if errors:
                first = errors[0]
                raise DataError(
                    f"{self.url}: could not delete {len(errors)} object(s), e.g. {first.get('Key')}: "
                    f"{first.get('Code')} {first.get('Message', '')}".rstrip()
                )
        self.report.deleted += len(rels)

    # --------------------------------------------------------------------------- main
    def run(self) -> PublishReport:
        t0 = time.perf_counter()
        mpath = self.local / MANIFEST
        if not mpath.is_file():
            raise DataError(f"{self.local}: no {MANIFEST} (not a complete 'ptbr shards build' output)")
        mbytes = mpath.read_bytes()
        manifest = parse_manifest(mbytes, str(self.local))
        msha, dhash = manifest_sha256(mbytes), manifest["dataset_hash"]
        self.report.manifest_sha256, self.report.dataset_hash = msha, dhash
        shards, meta = plan_objects(self.local, manifest)
        self.report.objects = len(shards) + len(meta) + 1
        self.report.bytes_total = sum(o.size for o in shards + meta)

        s3.check_access(self.client, self.url, f"publishing to {self.url}")
        with s3.s3_errors(f"publishing to {self.url}", self.url):
            existing, foreign = self._read_remote_state(msha, dhash)
            if foreign and not self.force:
                raise DataError(
                    f"{self.url} already holds {foreign}; pass --force to replace it, or publish to another prefix"
                )
            committed = self._committed(existing, msha)
            if SUCCESS in existing and not committed:
                self._delete([SUCCESS])  # readers must not trust the prefix while it changes
            self.client.put_object(
                Bucket=self.url.bucket,
                Key=self.url.key(CLAIM),
                Body=json.dumps({"dataset_hash": dhash, "manifest_sha256": msha}).encode(),
            )
            self._abort_stale_multipart()
            self._upload_all(shards, existing, "shards")
            self._upload_all(meta, existing, "indexes")
            if self.force:
                keep = {o.rel for o in shards + meta} | {SUCCESS, CLAIM}
                extra = sorted(k for k in existing if k not in keep)
                if extra:
                    self.log(f"deleting {len(extra)} object(s) of the previous content of {self.url}")
                    self._delete(extra)
            if committed:
                self.report.skipped += 1
            else:
                self.client.put_object(Bucket=self.url.bucket, Key=self.url.key(SUCCESS), Body=(msha + "\n").encode())
                self.report.uploaded += 1
            if not self._committed({SUCCESS: 0}, msha):
                raise DataError(f"{self.url}/{SUCCESS} did not read back as written")
            self.client.delete_object(Bucket=self.url.bucket, Key=self.url.key(CLAIM))
        self.report.seconds = time.perf_counter() - t0
        return self.report


def _json_or_none(data: bytes | None) -> dict[str, Any] | None:
    if not data:
        return None
    try:
        obj = json.loads(data)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def publish(
    local: str | Path,
    url: str,
    *,
    force: bool = False,
    jobs: int = 8,
    part_size: int = DEFAULT_PART_SIZE,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> PublishReport:
    """Publish the build in ``local`` to ``url`` (s3://bucket/prefix); see the module docstring."""
    target = s3.parse_s3_url(url)
    if part_size < 5 << 20:
        raise DataError("--part-size must be at least 5 MiB (S3 minimum for multipart parts)")
    return Publisher(Path(local), target, force=force, jobs=jobs, part_size=part_size, progress=progress, log=log).run()
