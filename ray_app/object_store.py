"""A folder on S3 (or an S3-compatible server) with compare-and-swap writes of small JSON objects.

What the model registry needs from object storage and pyarrow's filesystem does not offer:
conditional PUTs (`If-None-Match: *` to create, `If-Match: <etag>` to replace), the same
primitive LanceDB's commits rely on. AWS S3 has honoured both since 2024; SeaweedFS (the
suite's server), MinIO and Ceph do too. Credentials, region and endpoint come from the standard
AWS variables and files (`AWS_ENDPOINT_URL` for a non-AWS server), exactly what LanceDB reads.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlparse

# PUT preconditions that did not hold: 412 from every server; AWS answers 409 while another
# conditional write to the key is in flight. Both mean "read again and retry".
_CONFLICTS = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}


def is_uri(path: str | os.PathLike) -> bool:
    return "://" in str(path)


class S3Folder:
    """`s3://bucket/prefix`: keys are relative to the prefix."""

    def __init__(self, uri: str):
        parsed = urlparse(uri)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ValueError(f"{uri!r} is not an s3://bucket/prefix URI")
        self.uri = uri.rstrip("/")
        self.bucket, self.prefix = parsed.netloc, parsed.path.strip("/")
        import boto3
        from botocore.config import Config

        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        # a custom endpoint (MinIO, SeaweedFS, an IP) has no per-bucket host names: path-style addressing
        config = Config(retries={"max_attempts": 6, "mode": "standard"}, connect_timeout=10, read_timeout=60,
                        s3={"addressing_style": "path"} if endpoint else {})
        self.client = boto3.client("s3", config=config)

    def key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    # -- small JSON objects with their ETag ------------------------------------------------
    def get_json(self, rel: str) -> tuple[Optional[dict[str, Any]], Optional[str]]:
        """(object, etag), or (None, None) when the key does not exist."""
        from botocore.exceptions import ClientError

        try:
            got = self.client.get_object(Bucket=self.bucket, Key=self.key(rel))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None, None
            raise
        return json.loads(got["Body"].read()), got["ETag"]

    def put_json_if(self, rel: str, data: dict[str, Any], etag: Optional[str]) -> bool:
        """Write `data` only if the object is still at `etag` (None: only if it does not exist).
        False when another writer got there first."""
        from botocore.exceptions import ClientError

        condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
        try:
            self.client.put_object(Bucket=self.bucket, Key=self.key(rel), ContentType="application/json",
                                   Body=json.dumps(data, indent=2, default=str).encode(), **condition)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            status = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
            if error.get("Code") in _CONFLICTS or status in _CONFLICTS:
                return False
            raise
        return True

    # -- folders -----------------------------------------------------------------------------
    def upload_folder(self, folder: Path, rel: str) -> int:
        """Every file under `folder` to `<prefix>/<rel>/...`; bytes uploaded."""
        total = 0
        for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
            self.client.upload_file(str(path), self.bucket, self.key(f"{rel}/{path.relative_to(folder).as_posix()}"))
            total += path.stat().st_size
        return total

    def download_folder(self, rel: str, folder: Path) -> int:
        """Every object under `<prefix>/<rel>/` into `folder`; files downloaded."""
        base = self.key(rel).rstrip("/") + "/"
        count = 0
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base):
            for item in page.get("Contents", []):
                target = Path(folder) / item["Key"][len(base):]
                target.parent.mkdir(parents=True, exist_ok=True)
                self.client.download_file(self.bucket, item["Key"], str(target))
                count += 1
        return count

    def delete_folder(self, rel: str) -> None:
        base = self.key(rel).rstrip("/") + "/"
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base):
            keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if keys:
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True})


class Output:
    """A folder of job outputs (reports, figures) at `dest`, a local folder or a URI (s3://, gs://).

      with Output(config.report_dir) as out:
          (out.folder / "eval.md").write_text(...)
          where = out.uri(out.folder / "eval.md")   # what to print: the file's final place

    Locally `folder` is `dest` itself. For a URI it is a temporary folder whose files are copied
    to `dest` (through pyarrow's filesystem, the same credentials as everything else) when the
    block ends without an error; a failed job publishes nothing half-written."""

    def __init__(self, dest: str | os.PathLike):
        self.dest = str(dest)
        self._tmp = None

    def __enter__(self) -> "Output":
        if is_uri(self.dest):
            import tempfile

            self._tmp = tempfile.TemporaryDirectory(prefix="shopsearch-out-")
            self.folder = Path(self._tmp.name)
        else:
            self.folder = Path(self.dest)
            self.folder.mkdir(parents=True, exist_ok=True)
        return self

    def uri(self, path: Path) -> str:
        if self._tmp is None:
            return str(path)
        return f"{self.dest.rstrip('/')}/{Path(path).relative_to(self.folder).as_posix()}"

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._tmp is None:
            return
        try:
            if exc_type is None:
                import pyarrow.fs as pafs

                fs, base = pafs.FileSystem.from_uri(self.dest.rstrip("/"))
                local = pafs.LocalFileSystem()
                for path in sorted(p for p in self.folder.rglob("*") if p.is_file()):
                    pafs.copy_files(str(path), f"{base.rstrip('/')}/{path.relative_to(self.folder).as_posix()}",
                                    source_filesystem=local, destination_filesystem=fs)
        finally:
            self._tmp.cleanup()


def write_text(dest: str | os.PathLike, text: str) -> str:
    """Write one text file at `dest` (a local path or a URI); returns where it is."""
    dest = str(dest)
    parent, _, name = dest.rstrip("/").rpartition("/")
    with Output(parent or ".") as out:
        path = out.folder / name
        path.write_text(text)
        return out.uri(path)


def read_text(path: str | os.PathLike) -> str:
    """A whole UTF-8 file from a local path or a URI; FileNotFoundError when there is none."""
    path = str(path)
    if not is_uri(path):
        return Path(path).read_text(encoding="utf-8")
    import pyarrow.fs as pafs

    fs, inner = pafs.FileSystem.from_uri(path)
    if fs.get_file_info(inner).type != pafs.FileType.File:
        raise FileNotFoundError(f"no such file: {path}")
    with fs.open_input_stream(inner) as f:
        return f.read().decode("utf-8")
