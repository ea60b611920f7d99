"""Transform peer, the seed's approach: boto3 get_object streaming body -> gzip.GzipFile ->
io.TextIOWrapper -> csv.DictReader generator -> schema check, filter, replace, concat, select,
rename in Python -> csv.writer -> gzip.GzipFile, read by boto3 upload_fileobj (TransferConfig
8 MiB parts, 4 threads) through a file-like object over the generator: streaming end to end,
never a whole-file buffer. Bad rows (the pipeline's schema) go to a quarantine NDJSON.

    python transform_csv.py SOURCE_KEY BUCKET KEY QUARANTINE_KEY MODE   (MODE: gzip-N)

Prints {"rows_in", "rows_out", "quarantined"} as JSON.
"""

import csv
import gzip
import io
import json
import sys
from datetime import datetime

from boto3.s3.transfer import TransferConfig

from common import MIB, CompressingReader, parse_mode, s3_client

# events/transform-s3.pipeline.json, in Python.
INTS = ("Summons Number", "Violation Code", "Vehicle Year")
DATE = ("Issue Date", "%m/%d/%Y")
FILTER = {"Registration State": "NJ", "Vehicle Make": "FORD", "Issuing Agency": "P"}
REPLACE = {"P": "police"}
CONCAT = ("House Number", "Street Name", "Registration State")
HEADER = ["vehicle_make", "issuing_agency", "address"]


def check(row, last):
    """The reason a row breaks the input schema, or None."""
    if None in row or row[last] is None:
        return "ragged row"
    for col in INTS:
        try:
            int(row[col])
        except ValueError:
            return f"{col}: not an int"
    try:
        datetime.strptime(row[DATE[0]], DATE[1])
    except ValueError:
        return f"{DATE[0]}: not a date"
    return None


def transformed(reader, bad, counts):
    """The output rows: a generator over the reader."""
    last = reader.fieldnames[-1]
    for line, row in enumerate(reader, start=2):
        counts["rows_in"] += 1
        reason = check(row, last)
        if reason:
            bad.append(json.dumps({"line": line, "reason": reason}))
            continue
        if all(row[c] == v for c, v in FILTER.items()):
            agency = REPLACE.get(row["Issuing Agency"], row["Issuing Agency"])
            address = ", ".join(row[c] for c in CONCAT)
            counts["rows_out"] += 1
            yield (row["Vehicle Make"], agency, address)


def csv_chunks(rows):
    """CSV text of the rows, in ~64 KiB encoded chunks."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(HEADER)
    for row in rows:
        writer.writerow(row)
        if buf.tell() >= 65536:
            yield buf.getvalue().encode()
            buf.seek(0)
            buf.truncate()
    yield buf.getvalue().encode()


def main():
    source_key, bucket, key, quarantine_key, mode = sys.argv[1:6]
    codec, level = parse_mode(mode)
    if codec != "gzip":
        raise SystemExit(f"the transform writes gzip CSV, not {mode!r}")
    s3 = s3_client()
    body = s3.get_object(Bucket=bucket, Key=source_key)["Body"]
    text = io.TextIOWrapper(gzip.GzipFile(fileobj=body), encoding="utf-8", newline="")
    reader = csv.DictReader(text)
    bad, counts = [], {"rows_in": 0, "rows_out": 0}
    stream = CompressingReader(csv_chunks(transformed(reader, bad, counts)), "gzip", level)
    s3.upload_fileobj(
        stream, bucket, key, Config=TransferConfig(multipart_chunksize=8 * MIB, max_concurrency=4)
    )
    if bad:
        s3.put_object(Bucket=bucket, Key=quarantine_key, Body="\n".join(bad).encode() + b"\n")
    print(json.dumps({**counts, "quarantined": len(bad)}))


if __name__ == "__main__":
    main()
