"""S3 data store (boto3): line parts and artifacts under ``<retention>/<prefix>/<key>/<reference>/``.

``s3://bucket/prefix``, or ``s3://bucket-a,bucket-b/prefix`` to spread executions over
several buckets (the chosen bucket's name is kept on the record as ``bucket_name``).  The
endpoint of an S3-compatible server (MinIO, ...) comes from boto3's own settings
(``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``) or the ``s3_endpoint_url`` setting;
credentials from boto3's usual chain.

A cycle's objects are written concurrently on a bounded pool of ``concurrency`` threads
(boto3's connection pool sized to match): at a real S3's ~20 ms a request, one put after
another would cap a worker at ~50 executions a second.
"""

from __future__ import annotations

import re
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterable
from urllib.parse import urlsplit

from ..errors import ConfigError, StoreError
from .layout import DEFAULT_PREFIX

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")


def parse_s3_url(url: str) -> tuple[list[str], str]:
    parts = urlsplit(url)
    buckets = [b for b in parts.netloc.split(",") if b]
    if not buckets:
        raise ConfigError(f"S3 URL {url!r} names no bucket: use s3://bucket/prefix")
    for bucket in buckets:
        if not _BUCKET.match(bucket):
            raise ConfigError(f"S3 URL {url!r}: {bucket!r} is not a valid bucket name (3-63 lower-case letters, digits, '.', '-')")
    prefix = parts.path.strip("/") or DEFAULT_PREFIX
    return buckets, prefix


class S3DataStore:
    def __init__(
        self,
        url: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        client: Any = None,
        concurrency: int = 32,
    ) -> None:
        self.url = url
        self.concurrency = max(1, concurrency)
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self.buckets, self.prefix = parse_s3_url(url)
        self.bucket_name = self.buckets[0]
        if client is None:
            try:
                import boto3
                from botocore.config import Config as BotoConfig
            except ImportError:
                raise ConfigError("S3 data stores need boto3: pip install 'trifle-otel[s3]'") from None
            try:
                client = boto3.client(
                    "s3",
                    endpoint_url=endpoint_url or None,
                    region_name=region or None,
                    config=BotoConfig(
                        retries={"max_attempts": 3, "mode": "standard"},
                        connect_timeout=5,
                        read_timeout=30,
                        max_pool_connections=self.concurrency,
                    ),
                )
            except ValueError as exc:
                raise ConfigError(f"S3 settings for {url!r} are not valid: {exc}") from None
        self.client = client

    def bucket_for(self, reference: str) -> str:
        """The bucket an execution's data goes to: stable for a reference."""
        if len(self.buckets) == 1:
            return self.buckets[0]
        return self.buckets[zlib.crc32(reference.encode()) % len(self.buckets)]

    def _error(self, what: str, key: str, bucket: str, exc: Exception) -> StoreError:
        return StoreError(f"cannot {what} s3://{bucket}/{key}: {exc}; check the bucket, credentials and endpoint "
                          "(AWS_ENDPOINT_URL_S3 for an S3-compatible server)")

    def put(self, key: str, body: bytes, bucket: str | None = None) -> None:
        bucket = bucket or self.bucket_name
        content_type = "application/json" if ".json" in key else "application/octet-stream"
        try:
            self.client.put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type)
        except Exception as exc:
            raise self._error("write", key, bucket, exc) from None

    def put_many(self, items) -> list[int]:
        """Write the items concurrently; returns the indexes of those that failed (raises
        StoreError when every one did, so the caller backs off)."""
        futures = None if len(items) <= 1 or self.concurrency == 1 else self._submit_all(items)
        if futures is None:  # one item, no concurrency, or the interpreter is exiting
            failed, error = [], None
            for number, (key, body, bucket) in enumerate(items):
                try:
                    self.put(key, body, bucket)
                except StoreError as exc:
                    failed.append(number)
                    error = exc
        else:
            failed, error = [], None
            for number, future in enumerate(futures):
                exc = future.exception()
                if exc is not None:
                    failed.append(number)
                    error = exc if isinstance(exc, StoreError) else self._error("write", items[number][0], items[number][2] or self.bucket_name, exc)
        if error is not None and len(failed) == len(items):
            raise error
        return failed

    def _submit_all(self, items) -> list | None:
        """The puts as futures on the pool; None when it takes no more work: at exit Python
        stops thread pools before the last flush runs, which then writes one put at a time."""
        try:
            with self._pool_lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="trifle-otel-s3")
                pool = self._pool
            return [pool.submit(self.put, key, body, bucket) for key, body, bucket in items]
        except RuntimeError:  # "cannot schedule new futures after (interpreter) shutdown"
            return None

    def get(self, key: str, bucket: str | None = None) -> bytes | None:
        bucket = bucket or self.bucket_name
        try:
            return self.client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except Exception as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code")
            if code in ("NoSuchKey", "404", "NotFound"):
                return None
            raise self._error("read", key, bucket, exc) from None

    def delete_prefix(self, prefix: str, bucket: str | None = None) -> None:
        bucket = bucket or self.bucket_name
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
                keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                if keys:
                    self.client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
        except Exception as exc:
            raise self._error("delete", prefix, bucket, exc) from None

    def setup(self, retention_days: Iterable[int]) -> list[str]:
        """Create missing buckets and one lifecycle rule per retention class (idempotent)."""
        done = []
        days = sorted(set(int(d) for d in retention_days))
        for bucket in self.buckets:
            try:
                self.client.head_bucket(Bucket=bucket)
            except Exception:
                try:
                    region = self.client.meta.region_name
                    kwargs = {}
                    if region and region != "us-east-1":
                        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
                    self.client.create_bucket(Bucket=bucket, **kwargs)
                    done.append(f"created bucket {bucket}")
                except Exception as exc:
                    raise self._error("create bucket", "", bucket, exc) from None
            rules = [
                {
                    "ID": f"trifle-otel-retention-{d}d",
                    "Filter": {"Prefix": f"{d}/{self.prefix}/"},
                    "Status": "Enabled",
                    "Expiration": {"Days": d},
                }
                for d in days
            ]
            try:
                existing = []
                try:
                    existing = self.client.get_bucket_lifecycle_configuration(Bucket=bucket).get("Rules", [])
                except Exception:
                    existing = []
                keep = [r for r in existing if not str(r.get("ID", "")).startswith("trifle-otel-retention-")]
                self.client.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": keep + rules})
            except Exception as exc:
                raise self._error("set the lifecycle rules of", "", bucket, exc) from None
            done.append(f"bucket {bucket}: lifecycle rules " + ", ".join(f"{d}/{self.prefix}/ expires after {d} days" for d in days))
        return done

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
