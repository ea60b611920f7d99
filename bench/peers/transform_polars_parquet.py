"""Transform -> Parquet peer with polars, lazy and streaming: pl.scan_csv of the gzip object on
S3 itself (polars reads s3:// URLs with storage_options and decompresses gzip as it scans), only
the columns the pipeline needs, plus pl.scan_lines of the same object to count each line's
fields (scan_csv pads a short, ragged row with empty fields silently; a second scan_csv of the
same object with other options fails to plan in polars 2.1, the two scans being taken for one),
joined by row position; the schema check, filter, replace, concat, select and rename as
expressions; then three lazy sinks run together on the streaming engine (pl.collect_all, the
scans shared): sink_parquet (zstd) straight to s3://BUCKET/KEY, sink_ndjson of the bad rows to
a local file (put with boto3 when there are any) and the row count.

    python transform_polars_parquet.py SOURCE_KEY BUCKET KEY QUARANTINE_KEY

Prints {"rows_in", "rows_out", "quarantined"} as JSON.
"""

import json
import os
import sys
import tempfile

import polars as pl

from common import s3_client
from parquet_common import CODEC

INTS = ["Summons Number", "Violation Code", "Vehicle Year"]
DATE = ("Issue Date", "%m/%d/%Y")
NEEDED = INTS + [DATE[0], "Registration State", "Vehicle Make", "Issuing Agency",
                 "House Number", "Street Name"]
FIELDS = 43


def storage_options():
    return {
        "aws_endpoint_url": os.environ["BENCH_S3_ENDPOINT"],
        "aws_access_key_id": os.environ["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": os.environ["AWS_SECRET_ACCESS_KEY"],
        "aws_region": os.environ.get("AWS_REGION", "us-east-1"),
        "aws_allow_http": "true",
    }


def main():
    source_key, bucket, key, quarantine_key = sys.argv[1:5]
    source = f"s3://{bucket}/{source_key}"
    options = storage_options()
    rows = pl.scan_csv(source, infer_schema=False, empty_string_is_null=False,
                       storage_options=options).select(NEEDED)
    # Lines after the header: the generator writes no newline inside a quoted field.
    raw = pl.scan_lines(source, name="raw", storage_options=options).slice(1)
    fields = raw.select(
        (pl.col("raw").str.replace_all('"[^"]*"', "").str.count_matches(",", literal=True) + 1)
        .alias("fields")
    )
    df = pl.concat([rows, fields], how="horizontal").with_row_index("line", offset=2)
    reason = (
        pl.when(pl.col("fields") != FIELDS).then(pl.lit("ragged row"))
        .when(pl.any_horizontal([pl.col(c).cast(pl.Int64, strict=False).is_null() for c in INTS]))
        .then(pl.lit("not an int"))
        .when(pl.col(DATE[0]).str.to_date(DATE[1], strict=False).is_null())
        .then(pl.lit("not a date"))
        .otherwise(None)
        .alias("reason")
    )
    df = df.with_columns(reason)
    out = (
        df.filter(
            pl.col("reason").is_null()
            & (pl.col("Registration State") == "NJ")
            & (pl.col("Vehicle Make") == "FORD")
            & (pl.col("Issuing Agency") == "P")
        )
        .with_columns(
            pl.col("Issuing Agency").replace({"P": "police"}),
            pl.concat_str(
                [pl.col("House Number"), pl.col("Street Name"), pl.col("Registration State")],
                separator=", ",
            ).alias("address"),
        )
        .select("Vehicle Make", "Issuing Agency", "address")
        .rename({"Vehicle Make": "vehicle_make", "Issuing Agency": "issuing_agency"})
    )
    with tempfile.TemporaryDirectory(prefix="bench-polars-") as tmp:
        bad_path = os.path.join(tmp, "bad.ndjson")
        counts_path = os.path.join(tmp, "counts.ndjson")
        pl.collect_all(
            [
                out.sink_parquet(f"s3://{bucket}/{key}", compression=CODEC,
                                 storage_options=options, lazy=True),
                df.filter(pl.col("reason").is_not_null()).select("line", "reason")
                .sink_ndjson(bad_path, lazy=True),
                df.select(pl.len().alias("rows_in")).sink_ndjson(counts_path, lazy=True),
            ],
            engine="streaming",
        )
        rows_in = json.loads(open(counts_path).read())["rows_in"]
        with open(bad_path, "rb") as f:
            quarantined = sum(1 for _ in f)
        if quarantined:
            s3_client().upload_file(bad_path, bucket, quarantine_key)
    rows_out = pl.scan_parquet(f"s3://{bucket}/{key}", storage_options=options) \
        .select(pl.len()).collect().item()
    print(json.dumps({"rows_in": rows_in, "rows_out": rows_out, "quarantined": quarantined}))


if __name__ == "__main__":
    main()
