"""Transform peer with polars: the gzip CSV downloaded whole into memory (boto3 get_object
.read(); polars has no streaming reader for gzip), pl.read_csv of those bytes (polars
decompresses in memory) with only the columns the pipeline needs (plus a second read as raw
lines to find ragged rows, which read_csv pads silently), the schema check, filter,
replace, concat, select and rename as expressions, write_csv into memory, gzip.compress,
boto3 upload_fileobj (TransferConfig 8 MiB parts, 4 threads). Bad rows (the pipeline's schema)
go to a quarantine NDJSON.

    python transform_polars.py SOURCE_KEY BUCKET KEY QUARANTINE_KEY MODE   (MODE: gzip-N)

Prints {"rows_in", "rows_out", "quarantined"} as JSON.
"""

import gzip
import io
import json
import sys

import polars as pl
from boto3.s3.transfer import TransferConfig

from common import MIB, parse_mode, s3_client

INTS = ["Summons Number", "Violation Code", "Vehicle Year"]
DATE = ("Issue Date", "%m/%d/%Y")
NEEDED = INTS + [DATE[0], "Registration State", "Vehicle Make", "Issuing Agency",
                 "House Number", "Street Name"]
FIELDS = 43


def field_counts(data):
    """Fields per data row. read_csv pads a short (ragged) row with empty strings, silently, so
    the rows are read a second time as raw lines: commas outside quoted fields, plus one."""
    raw = pl.read_csv(data, separator="\x1f", quote_char=None, infer_schema=False,
                      new_columns=["raw"], empty_string_is_null=False)
    return raw.select(
        pl.col("raw").str.replace_all('"[^"]*"', "").str.count_matches(",", literal=True) + 1
    ).to_series()


def main():
    source_key, bucket, key, quarantine_key, mode = sys.argv[1:6]
    codec, level = parse_mode(mode)
    if codec != "gzip":
        raise SystemExit(f"the transform writes gzip CSV, not {mode!r}")
    s3 = s3_client()
    data = s3.get_object(Bucket=bucket, Key=source_key)["Body"].read()
    df = pl.read_csv(data, columns=NEEDED, infer_schema=False, empty_string_is_null=False)
    df = df.with_columns(field_counts(data).alias("fields"))
    del data
    df = df.with_row_index("line", offset=2)
    bad_reason = (
        pl.when(pl.col("fields") != FIELDS).then(pl.lit("ragged row"))
        .when(pl.any_horizontal([pl.col(c).cast(pl.Int64, strict=False).is_null() for c in INTS]))
        .then(pl.lit("not an int"))
        .when(pl.col(DATE[0]).str.to_date(DATE[1], strict=False).is_null())
        .then(pl.lit("not a date"))
        .otherwise(None)
        .alias("reason")
    )
    df = df.with_columns(bad_reason)
    bad = df.filter(pl.col("reason").is_not_null()).select("line", "reason")
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
    rows_in, rows_out = df.height, out.height
    del df
    body = gzip.compress(out.write_csv().encode(), compresslevel=level, mtime=0)
    s3.upload_fileobj(
        io.BytesIO(body), bucket, key,
        Config=TransferConfig(multipart_chunksize=8 * MIB, max_concurrency=4),
    )
    if bad.height:
        s3.put_object(Bucket=bucket, Key=quarantine_key, Body=bad.write_ndjson().encode())
    print(json.dumps({"rows_in": rows_in, "rows_out": rows_out, "quarantined": bad.height}))


if __name__ == "__main__":
    main()
