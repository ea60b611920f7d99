"""Reads a tool's Parquet output back for the bench's checks (run by sluice-bench outside the
boxes, after the timing): rows (the footers' num_rows), row groups, page codecs, the columns and
their types, optionally the sum of an int column, and optionally every row as CSV.

    python parquet_check.py [--sum COLUMN] [--csv OUT.csv] FILE...

Several files (dlt writes one per load job) are one table: rows and sums add up, the columns
must be the same. Prints {"rows", "row_groups", "codecs", "columns": [[name, type]], "sum"} as
JSON.
"""

import argparse
import json

import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sum")
    parser.add_argument("--csv")
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()
    rows = row_groups = 0
    total = 0 if args.sum else None
    codecs, columns, writer = set(), None, None
    for path in args.files:
        f = pq.ParquetFile(path)
        meta = f.metadata
        rows += meta.num_rows
        row_groups += meta.num_row_groups
        for g in range(meta.num_row_groups):
            group = meta.row_group(g)
            codecs.update(group.column(c).compression for c in range(group.num_columns))
        schema = f.schema_arrow
        these = [[field.name, str(field.type)] for field in schema]
        if columns is None:
            columns = these
        elif these != columns:
            raise SystemExit(f"{path}: columns {these}, the first file has {columns}")
        if args.sum:
            s = pc.sum(f.read(columns=[args.sum]).column(0)).as_py()
            total += s or 0
        if args.csv:
            if writer is None:
                writer = pacsv.CSVWriter(args.csv, schema)
            for batch in f.iter_batches():
                writer.write_batch(batch)
    if writer is not None:
        writer.close()
    print(json.dumps({"rows": rows, "row_groups": row_groups, "codecs": sorted(codecs),
                      "columns": columns, "sum": total}))


if __name__ == "__main__":
    main()
