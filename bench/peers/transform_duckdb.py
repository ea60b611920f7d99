"""Transform -> Parquet peer with DuckDB: the gzip CSV downloaded to a local file (boto3
download_file; DuckDB's httpfs extension would read and write S3 itself, but extensions are
downloaded from the internet on first use, which this machine cannot reach), a view over
read_csv of that file (every column as text; store_rejects keeps the ragged rows out, in
reject_errors), the seed pipeline in SQL (TRY_CAST for the int columns, try_strptime for the
date, the filter, replace, concat, select and rename), COPY ... TO a local Parquet file (FORMAT
parquet, COMPRESSION zstd) and the bad rows COPY ... TO NDJSON (each COPY scans the CSV: the
view is not materialized, so memory stays bounded), both uploaded with boto3 (upload_file,
TransferConfig 8 MiB parts, 4 threads). DuckDB's own settings are left at their defaults.

    python transform_duckdb.py SOURCE_KEY BUCKET KEY QUARANTINE_KEY

Prints {"rows_out", "quarantined"} as JSON (counting the input rows would take a third scan).
"""

import json
import os
import sys
import tempfile

import duckdb
from boto3.s3.transfer import TransferConfig

from common import MIB, s3_client

CHECKED = """
CREATE VIEW checked AS
SELECT *,
    CASE
        WHEN TRY_CAST("Summons Number" AS BIGINT) IS NULL
            OR TRY_CAST("Violation Code" AS BIGINT) IS NULL
            OR TRY_CAST("Vehicle Year" AS BIGINT) IS NULL THEN 'not an int'
        WHEN try_strptime("Issue Date", '%m/%d/%Y') IS NULL THEN 'not a date'
    END AS reason
FROM read_csv(?, all_varchar = true, store_rejects = true)
"""

OUTPUT = """
SELECT "Vehicle Make" AS vehicle_make,
       CASE "Issuing Agency" WHEN 'P' THEN 'police' ELSE "Issuing Agency" END AS issuing_agency,
       concat_ws(', ', coalesce("House Number", ''), coalesce("Street Name", ''),
                 "Registration State") AS address
FROM checked
WHERE reason IS NULL AND "Registration State" = 'NJ' AND "Vehicle Make" = 'FORD'
  AND "Issuing Agency" = 'P'
"""

BAD = """
SELECT NULL::BIGINT AS line, "Summons Number" AS summons, reason FROM checked
WHERE reason IS NOT NULL
UNION ALL
SELECT line, NULL, 'ragged row' FROM ragged
"""


def main():
    source_key, bucket, key, quarantine_key = sys.argv[1:5]
    s3 = s3_client()
    transfer = TransferConfig(multipart_chunksize=8 * MIB, max_concurrency=4)
    with tempfile.TemporaryDirectory(prefix="bench-duckdb-") as tmp:
        src = os.path.join(tmp, "source.csv.gz")
        s3.download_file(bucket, source_key, src, Config=transfer)
        out, bad = os.path.join(tmp, "out.parquet"), os.path.join(tmp, "bad.ndjson")
        con = duckdb.connect()
        con.execute(CHECKED.replace("?", f"'{src}'"))
        con.execute(f"COPY ({OUTPUT}) TO '{out}' (FORMAT parquet, COMPRESSION zstd)")
        # reject_errors holds one row per missing column of the last scan's ragged rows.
        con.execute("CREATE TEMP TABLE ragged AS SELECT DISTINCT line FROM reject_errors")
        con.execute(f"COPY ({BAD}) TO '{bad}' (FORMAT json)")
        rows_out = con.execute("SELECT count(*) FROM read_parquet(?)", [out]).fetchone()[0]
        quarantined = con.execute("SELECT count(*) FROM read_json(?)", [bad]).fetchone()[0]
        con.close()
        os.remove(src)
        s3.upload_file(out, bucket, key, Config=transfer)
        if quarantined:
            s3.upload_file(bad, bucket, quarantine_key, Config=transfer)
    print(json.dumps({"rows_out": rows_out, "quarantined": quarantined}))


if __name__ == "__main__":
    main()
