"""Transform -> Parquet peer with pyarrow, streaming end to end: the gzip CSV opened on S3
through pyarrow.fs.S3FileSystem (an 8 MiB read buffer), decompressed by pa.CompressedInputStream, read batch by batch
by pyarrow.csv.open_csv (every column as text; a ragged row is caught by invalid_row_handler
and skipped), the seed pipeline per batch with pyarrow.compute (int columns matched against a
regex, the date parsed with strptime and formatted back, the filter, replace, concat, select and rename), the
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


def all_of(masks):
    out = masks[0]
    for m in masks[1:]:
        out = pc.and_(out, m)
    return out


def main():
    source_key, bucket, key, quarantine_key = sys.argv[1:5]
    fs = s3_filesystem()
    bad, ragged_rows = [], [0]

    def ragged(row):
        # The streaming reader does not know row numbers (row.number is None).
        bad.append(json.dumps({"reason": "ragged row", "raw": row.text}))
        ragged_rows[0] += 1
        return "skip"

    # Unbuffered, every 64 KiB read of the decompressor would be a ranged GET of its own.
    raw = fs.open_input_stream(f"{bucket}/{source_key}", compression=None, buffer_size=8 << 20)
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
            # strptime rolls an impossible day over (02/30 -> 03/02), so the parsed date is
            # formatted back and compared with the text.
            date = pc.strptime(batch[DATE[0]], format=DATE[1], unit="s", error_is_null=True)
            same = pc.equal(pc.strftime(date, format=DATE[1]), batch[DATE[0]])
            ok = all_of([pc.match_substring_regex(batch[c], r"^[+-]?\d+$") for c in INTS]
                        + [pc.fill_null(same, False)])
            for summons in batch.filter(pc.invert(ok))[INTS[0]].to_pylist():
                bad.append(json.dumps({INTS[0]: summons, "reason": "not an int or not a date"}))
            kept = batch.filter(all_of([ok] + [pc.equal(batch[c], v) for c, v in FILTER.items()]))
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
    rows_in += ragged_rows[0]
    if bad:
        s3_client().put_object(Bucket=bucket, Key=quarantine_key,
                               Body="\n".join(bad).encode() + b"\n")
    print(json.dumps({"rows_in": rows_in, "rows_out": rows_out, "quarantined": len(bad)}))


if __name__ == "__main__":
    main()
