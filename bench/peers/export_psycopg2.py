"""Export peer, the pattern data engineers write: psycopg2 named (server-side) cursor,
fetchmany(10000) batches -> csv.writer (the cursor's column names as the header) ->
gzip.GzipFile at the case's level, read by boto3 upload_fileobj (TransferConfig 8 MiB parts,
4 threads) through a file-like object over the generator: streaming end to end, never the
whole result or output in memory. Values are rendered by Python (True, 2024-01-01
00:00:00+00:00), not by Postgres' output functions as COPY renders them.

    python export_psycopg2.py QUERY BUCKET KEY MODE   (MODE: gzip-N; connection: $BENCH_PG_URL)

Prints {"rows"} as JSON.
"""

import csv
import io
import json
import os
import sys

import psycopg2
from boto3.s3.transfer import TransferConfig

from common import MIB, CompressingReader, parse_mode, s3_client

BATCH = 10000


def csv_chunks(cursor, counts):
    """CSV text of the cursor's rows, header first, one encoded chunk per fetchmany batch."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    rows = cursor.fetchmany(BATCH)
    # A named cursor describes its columns once the first FETCH ran.
    writer.writerow([column.name for column in cursor.description])
    while rows:
        writer.writerows(rows)
        counts["rows"] += len(rows)
        yield buf.getvalue().encode()
        buf.seek(0)
        buf.truncate()
        rows = cursor.fetchmany(BATCH)
    yield buf.getvalue().encode()


def main():
    query, bucket, key, mode = sys.argv[1:5]
    codec, level = parse_mode(mode)
    if codec != "gzip":
        raise SystemExit(f"the export writes gzip CSV, not {mode!r}")
    s3 = s3_client()
    conn = psycopg2.connect(os.environ["BENCH_PG_URL"])
    counts = {"rows": 0}
    with conn, conn.cursor(name="export") as cursor:
        cursor.execute(query)
        stream = CompressingReader(csv_chunks(cursor, counts), "gzip", level)
        s3.upload_fileobj(
            stream,
            bucket,
            key,
            Config=TransferConfig(multipart_chunksize=8 * MIB, max_concurrency=4),
        )
    conn.close()
    print(json.dumps(counts))


if __name__ == "__main__":
    main()
