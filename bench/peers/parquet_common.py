"""Shared set-up of the Parquet peers: the records' schema (the one sluice's job declares) and
pyarrow's S3 file system on the bench's endpoint."""

import os
from urllib.parse import urlparse

# The columns of the records case, as sluice's job declares them: `tags` (a JSON array in the
# source) is a string column holding its compact JSON text, `ts` a UTC timestamp in
# microseconds, the codec zstd at its default level. Every peer writes the same columns, so the
# sizes compare.
RECORD_COLUMNS = ["id", "name", "kind", "ref", "value", "ts", "tags", "active"]
CODEC = "zstd"
# Rows per row group the peers that choose one write (pyarrow's ParquetWriter makes one row
# group per write_table call): about 8 MiB of these records, sluice's row group cap at 256 MB.
BATCH_ROWS = 65536


def record_schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("id", pa.int64()),
            ("name", pa.string()),
            ("kind", pa.string()),
            ("ref", pa.string()),
            ("value", pa.float64()),
            ("ts", pa.timestamp("us", tz="UTC")),
            ("tags", pa.string()),
            ("active", pa.bool_()),
        ]
    )


def s3_filesystem():
    """pyarrow.fs.S3FileSystem on $BENCH_S3_ENDPOINT (plain http, path style), credentials and
    region from the environment."""
    from pyarrow import fs

    endpoint = urlparse(os.environ["BENCH_S3_ENDPOINT"])
    return fs.S3FileSystem(
        access_key=os.environ["AWS_ACCESS_KEY_ID"],
        secret_key=os.environ["AWS_SECRET_ACCESS_KEY"],
        region=os.environ.get("AWS_REGION", "us-east-1"),
        endpoint_override=endpoint.netloc,
        scheme=endpoint.scheme,
        force_virtual_addressing=False,
    )
