"""Records -> Parquet peer with pyarrow, the way a Python user writes it: requests.get of the
page and json.loads of the whole body (pyarrow.json reads newline-delimited JSON only, not a
`{"data": [...]}` envelope, and a streaming JSON parser such as ijson is a step few take), then
the records in batches of BATCH_ROWS: `tags` to compact JSON text, pa.Table.from_pylist, `ts`
cast from its ISO 8601 text to a UTC timestamp, each batch one write_table of a
pq.ParquetWriter (zstd) opened straight on S3 through pyarrow.fs.S3FileSystem (pyarrow's own
multipart upload).

    python records_pyarrow.py URL BUCKET KEY

Prints {"rows": N} as JSON.
"""

import json
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import requests

from parquet_common import BATCH_ROWS, CODEC, record_schema, s3_filesystem


def main():
    url, bucket, key = sys.argv[1:4]
    resp = requests.get(url, timeout=60)
    resp.raise_for_status()
    records = json.loads(resp.content)["data"]
    del resp
    schema = record_schema()
    # from_pylist takes `ts` as text; the cast below parses it.
    read_schema = schema.set(schema.get_field_index("ts"), pa.field("ts", pa.string()))
    ts = schema.get_field_index("ts")
    rows = 0
    with pq.ParquetWriter(
        f"{bucket}/{key}", schema, filesystem=s3_filesystem(), compression=CODEC
    ) as writer:
        for start in range(0, len(records), BATCH_ROWS):
            batch = records[start:start + BATCH_ROWS]
            for r in batch:
                r["tags"] = json.dumps(r["tags"], separators=(",", ":"))
            table = pa.Table.from_pylist(batch, schema=read_schema)
            table = table.set_column(ts, schema.field(ts), table.column(ts).cast(schema.field(ts).type))
            writer.write_table(table)
            rows += table.num_rows
            # The batch's dicts are garbage now; drop them as a careful user would.
            records[start:start + BATCH_ROWS] = [None] * len(batch)
    print(json.dumps({"rows": rows}))


if __name__ == "__main__":
    main()
