"""S3 plumbing: URLs, a boto3 client that honours S3_ENDPOINT_URL, and one-line error messages.

Credentials are resolved the boto3 way (environment, profile, instance role) and never printed;
endpoint URLs are shown without any user:password part.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ptbr.errors import DataError, DataSourceError

CREDENTIAL_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "InvalidClientTokenId",
    "AuthorizationHeaderMalformed",
}


@dataclass(frozen=True)
class S3Url:
    bucket: str
    prefix: str  # no leading or trailing slash; "" for the bucket root

    def key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def rel(self, key: str) -> str:
        return key[len(self.prefix) + 1 :] if self.prefix else key

    @property
    def list_prefix(self) -> str:
        return f"{self.prefix}/" if self.prefix else ""

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"


def is_s3(source: str | os.PathLike[str]) -> bool:
    return str(source).startswith("s3://")


def parse_s3_url(url: str) -> S3Url:
    if not is_s3(url):
        raise DataError(f"not an S3 URL: {url!r} (expected s3://bucket/prefix)")
    rest = url[len("s3://") :]
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise DataError(f"S3 URL {url!r} has no bucket (expected s3://bucket/prefix)")
    return S3Url(bucket, prefix.strip("/"))


def endpoint_url() -> str | None:
    return os.environ.get("S3_ENDPOINT_URL") or None


def safe_endpoint() -> str:
    """The endpoint for messages, without credentials embedded in the URL."""
    ep = endpoint_url()
    if not ep:
        return "the default AWS endpoint"
    parts = urlsplit(ep)
    return urlunsplit(parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else "")))


def make_client(*, max_pool_connections: int = 10) -> Any:
    """A boto3 S3 client: S3_ENDPOINT_URL (path-style addressing there), standard retries."""
    import boto3
    from botocore.config import Config

    ep = endpoint_url()
    config = Config(
        retries={"max_attempts": 3, "mode": "standard"},
        connect_timeout=10,
        read_timeout=120,
        max_pool_connections=max_pool_connections,
        s3={"addressing_style": "path"} if ep else None,
    )
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if ep and not region:
        region = "us-east-1"
    return boto3.session.Session().client("s3", endpoint_url=ep, region_name=region, config=config)


def error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def translate(exc: BaseException, context: str, url: S3Url | None = None) -> DataError | None:
    """A one-line DataError for a boto/botocore/s3transfer failure, or None if it is not one."""
    from botocore import exceptions as bx

    if isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError):
        return DataError(
            f"{context}: no usable S3 credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)"
        )
    if isinstance(
        exc, bx.EndpointConnectionError | bx.ConnectionClosedError | bx.ConnectTimeoutError | bx.ReadTimeoutError
    ):
        return DataSourceError(f"{context}: cannot reach S3 at {safe_endpoint()} ({exc.__class__.__name__})")
    if isinstance(exc, bx.ClientError):
        code = error_code(exc)
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        bucket = url.bucket if url else "?"
        if code in CREDENTIAL_CODES:
            return DataError(
                f"{context}: S3 rejected the credentials ({code}); check AWS_ACCESS_KEY_ID and "
                f"AWS_SECRET_ACCESS_KEY for {safe_endpoint()}"
            )
        if code == "NoSuchBucket":
            return DataError(f"{context}: bucket {bucket!r} does not exist at {safe_endpoint()}")
        if code in ("AccessDenied", "403") or status == 403:
            return DataError(
                f"{context}: access denied to s3://{bucket} (wrong credentials or missing "
                f"permissions) at {safe_endpoint()}"
            )
        message = exc.response.get("Error", {}).get("Message", "")
        return DataError(f"{context}: S3 error {code or status}: {message}".rstrip(": "))
    if isinstance(exc, bx.BotoCoreError):
        return DataError(f"{context}: {exc.__class__.__name__}: {exc}")
    if exc.__class__.__name__ == "S3UploadFailedError":
        cause = exc.__cause__ or exc.__context__
        inner = translate(cause, context, url) if cause is not None else None
        return inner or DataError(f"{context}: upload failed: {str(exc).splitlines()[0][:200]}")
    return None


@contextlib.contextmanager
def s3_errors(context: str, url: S3Url | None = None) -> Iterator[None]:
    """Turn S3 failures inside the block into one-line DataErrors."""
    try:
        yield
    except DataError:
        raise
    except Exception as exc:
        err = translate(exc, context, url)
        if err is None:
            raise
        raise err from None


def is_not_found(exc: BaseException) -> bool:
    return error_code(exc) in ("404", "NoSuchKey", "NotFound")


def head(client: Any, url: S3Url, rel: str) -> dict[str, Any] | None:
    """HEAD an object (None when absent)."""
    from botocore.exceptions import ClientError

    try:
        return client.head_object(Bucket=url.bucket, Key=url.key(rel))
    except ClientError as exc:
        if is_not_found(exc):
            return None
        raise


def get_bytes(client: Any, url: S3Url, rel: str) -> bytes | None:
    """Whole object body (None when absent)."""
    from botocore.exceptions import ClientError

    try:
        return client.get_object(Bucket=url.bucket, Key=url.key(rel))["Body"].read()
    except ClientError as exc:
        if is_not_found(exc):
            return None
        raise


def list_objects(client: Any, url: S3Url) -> dict[str, int]:
    """Every object under the prefix: relative key -> size."""
    out: dict[str, int] = {}
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=url.bucket, Prefix=url.list_prefix):
        for obj in page.get("Contents", []):
            out[url.rel(obj["Key"])] = int(obj["Size"])
    return out


def check_access(client: Any, url: S3Url, context: str) -> None:
    """Fail early, with a clear message, on a missing bucket or bad credentials."""
    with s3_errors(context, url):
        client.list_objects_v2(Bucket=url.bucket, Prefix=url.list_prefix, MaxKeys=1)
