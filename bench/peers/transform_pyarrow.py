"""Transform -> Parquet peer with pyarrow, streaming end to end: the gzip CSV opened on S3
through pyarrow.fs.S3FileSystem, decompressed by pa.CompressedInputStream, read batch by batch
by pyarrow.csv.open_csv (every column as text; a ragged row is caught by invalid_row_handler
and skipped), the seed pipeline per batch with pyarrow.compute (int columns matched against a
regex, the date parsed with strptime, the filter, replace, concat, select and rename), the
output batches gathered into row groups of BATCH_ROWS (a few rows per 1 MiB block pass the
filter; a row group per block would be mostly overhead), written by a pq.ParquetWriter (zstd)
opened straight on S3 (pyarrow's own multipart upload). Bad rows (the pipeline's schema) go to a
quarantine NDJSON, put with boto3.

    python transform_pyarrow.py SOURCE_KEY BUCKET KEY QUARANTINE_KEY

Prints {"rows_in", "rows_out", "quarantined"} as JSON.
"""

import json
import sys

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from common import s3_client
from parquet_common import BATCH_ROWS, CODEC, s3_filesystem

# events/transform-s3.pipeline.json, in pyarrow.compute.
INTS = ["Summons Number", "Violation Code", "Vehicle Year"]
DATE = ("Issue Date", "%m/%d/%Y")
FILTER = {"Registration State": "NJ", "Vehicle Make": "FORD", "Issuing Agency": "P"}
CONCAT = ["House Number", "Street Name", "Registration State"]
NEEDED = INTS + [DATE[0], "Registration State", "Vehicle Make", "Issuing Agency",
                 "House Number", "Street Name"]
SCHEMA = pa.schema([("vehicle_make", pa.string()), ("issuing_agency", pa.string()),
                    ("address", pa.string())])


def main():
    source_key, bucket, key, quarantine_key = sys.argv[1:5]
    fs = s3_filesystem()
    bad = []

    def ragged(row):
        bad.append(json.dumps({"line": row.number, "reason": "ragged row"}))
        return "skip"

    raw = fs.open_input_stream(f"{bucket}/{source_key}", compression=None)
    reader = pacsv.open_csv(
        pa.CompressedInputStream(raw, "gzip"),
        read_options=pacsv.ReadOptions(block_size=1 << 20),
        parse_options=pacsv.ParseOptions(invalid_row_handler=ragged),
        convert_options=pacsv.ConvertOptions(
            include_columns=NEEDED,
            column_types={c: pa.string() for c in NEEDED},
            strings_can_be_null=False,
        ),
    )
    rows_in = rows_out = 0
    pending, pending_rows = [], 0
    with pq.ParquetWriter(f"{bucket}/{key}", SCHEMA, filesystem=fs, compression=CODEC) as out:
        for batch in reader:
            rows_in += batch.num_rows
            ok = pc.and_(
                pc.and_(*[pc.match_substring_regex(batch[c], r"^[+-]?\d+$") for c in INTS[:2]]),
                pc.match_substring_regex(batch[INTS[2]], r"^[+-]?\d+$"),
            )
            date = pc.strptime(batch[DATE[0]], format=DATE[1], unit="s", error_is_null=True)
            ok = pc.and_(ok, pc.is_valid(date))
            for i in pc.indices_nonzero(pc.invert(ok)).to_pylist():
                bad.append(json.dumps({"row": rows_in - batch.num_rows + i, "reason": "schema"}))
            keep = ok
            for column, value in FILTER.items():
                keep = pc.and_(keep, pc.equal(batch[column], value))
            kept = batch.filter(keep)
            if kept.num_rows:
                agency = kept["Issuing Agency"]
                agency = pc.if_else(pc.equal(agency, "P"), "police", agency)
                address = pc.binary_join_element_wise(*[kept[c] for c in CONCAT], ", ")
                pending.append(pa.RecordBatch.from_arrays(
                    [kept["Vehicle Make"], agency, address], schema=SCHEMA))
                pending_rows += kept.num_rows
                rows_out += kept.num_rows
            if pending_rows >= BATCH_ROWS:
                out.write_table(pa.Table.from_batches(pending, schema=SCHEMA))
                pending, pending_rows = [], 0
        if pending:
            out.write_table(pa.Table.from_batches(pending, schema=SCHEMA))
    rows_in += sum(1 for b in bad if '"ragged row"' in b)
    if bad:
        s3_client().put_object(Bucket=bucket, Key=quarantine_key,
                               Body="\n".join(bad).encode() + b"\n")
    print(json.dumps({"rows_in": rows_in, "rows_out": rows_out, "quarantined": len(bad)}))


if __name__ == "__main__":
    main()
