"""Shared set-up of the Python peers: the S3 client and the compressing reader."""

import gzip
import io
import os

import boto3
from botocore.config import Config

MIB = 1024 * 1024


def s3_client():
    """A boto3 S3 client for the endpoint in $BENCH_S3_ENDPOINT (path-style, like the others)."""
    return boto3.client(
        "s3",
        endpoint_url=os.environ["BENCH_S3_ENDPOINT"],
        config=Config(s3={"addressing_style": "path"}),
    )


def parse_mode(mode):
    """`none`, `gzip-N` or `zstd-N` -> (codec or None, level)."""
    if mode == "none":
        return None, 0
    codec, level = mode.split("-")
    if codec not in ("gzip", "zstd"):
        raise SystemExit(f"unknown mode {mode!r}")
    return codec, int(level)


class CompressingReader(io.RawIOBase):
    """A readable file over an iterator of chunks, compressed on the fly with gzip.GzipFile or
    zstandard: what a Python user writes to hand a compressed stream to upload_fileobj."""

    def __init__(self, chunks, codec, level):
        self.chunks = iter(chunks)
        self.buf = io.BytesIO()
        if codec == "gzip":
            self.enc = gzip.GzipFile(fileobj=self.buf, mode="wb", compresslevel=level, mtime=0)
        else:
            import zstandard

            self.enc = zstandard.ZstdCompressor(level=level).stream_writer(
                self.buf, closefd=False
            )
        self.pending = b""
        self.eof = False

    def readable(self):
        return True

    def _fill(self, n):
        while len(self.pending) < n and not self.eof:
            chunk = next(self.chunks, None)
            if chunk is None:
                self.enc.close()
                self.eof = True
            else:
                self.enc.write(chunk)
            data = self.buf.getvalue()
            if data:
                self.pending += data
                self.buf.seek(0)
                self.buf.truncate()

    def read(self, n=-1):
        if n is None or n < 0:
            n = 1 << 62
        self._fill(n)
        out, self.pending = self.pending[:n], self.pending[n:]
        return out

    def readinto(self, b):
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)
