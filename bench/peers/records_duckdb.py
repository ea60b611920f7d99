"""Records -> Parquet peer with DuckDB: the page streamed to a local file (requests
iter_content; DuckDB's httpfs extension would read the URL and write to S3 itself, but
extensions are downloaded from the internet on first use, which this machine cannot reach),
read_json of that file with the records' types declared (`data` a list of structs; the
document is one JSON object, so maximum_object_size is raised to the file's size), unnest of
`data` to one row per record, `tags` to its compact JSON text, COPY ... TO a local Parquet file
(FORMAT parquet, COMPRESSION zstd), then boto3 upload_file (TransferConfig 8 MiB parts, 4
threads). DuckDB's own settings are left at their defaults (memory limit, threads).

    python records_duckdb.py URL BUCKET KEY

Prints {"rows": N} as JSON.
"""

import json
import os
import sys
import tempfile

import duckdb
import requests
from boto3.s3.transfer import TransferConfig

from common import MIB, s3_client

RECORD = (
    "STRUCT(id BIGINT, name VARCHAR, kind VARCHAR, ref VARCHAR, value DOUBLE, "
    "ts TIMESTAMPTZ, tags VARCHAR[], active BOOLEAN)"
)


def main():
    url, bucket, key = sys.argv[1:4]
    with tempfile.TemporaryDirectory(prefix="bench-duckdb-") as tmp:
        doc = os.path.join(tmp, "page.json")
        with requests.get(url, stream=True, timeout=60) as resp, open(doc, "wb") as f:
            resp.raise_for_status()
            for chunk in resp.iter_content(chunk_size=MIB):
                f.write(chunk)
        out = os.path.join(tmp, "out.parquet")
        con = duckdb.connect()
        # DuckDB stores TIMESTAMPTZ as UTC; its session zone only changes how one is printed.
        con.execute("SET TimeZone = 'UTC'")
        size = os.path.getsize(doc)
        con.execute(
            f"""
            COPY (
                SELECT r.id, r.name, r.kind, r.ref, r.value, r.ts,
                       to_json(r.tags)::VARCHAR AS tags, r.active
                FROM (
                    SELECT unnest(data) AS r
                    FROM read_json(?, format = 'auto', columns = {{data: '{RECORD}[]'}},
                                   maximum_object_size = {size + 1})
                )
            ) TO '{out}' (FORMAT parquet, COMPRESSION zstd)
            """,
            [doc],
        )
        rows = con.execute("SELECT count(*) FROM read_parquet(?)", [out]).fetchone()[0]
        con.close()
        os.remove(doc)
        s3_client().upload_file(
            out, bucket, key,
            Config=TransferConfig(multipart_chunksize=8 * MIB, max_concurrency=4),
        )
    print(json.dumps({"rows": rows}))


if __name__ == "__main__":
    main()
