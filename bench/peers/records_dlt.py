"""Records peer with dlt (its own venv, see bench/run.sh), to Parquet or to NDJSON: the rest_api
source on the page's URL (`data_selector: data`; the `single_page` paginator, since the bench's
document is one page served by nginx), the records' types as column hints (`tags` a `json`
column, with max_table_nesting 0 so that dlt does not unnest the list into a child table), a
`filesystem` destination on the bench's S3 (`s3://BUCKET/KEY`, s3fs underneath) and
loader_file_format FORMAT:

- `parquet`: zstd pages (dlt's default is snappy); `tags` stored as JSON text.
- `jsonl`: NDJSON, gzip-compressed as dlt always does unless compression is disabled, in
  `.jsonl.gz` files. dlt has no setting for the gzip level: its writer opens the files with
  Python's `gzip.open` and no `compresslevel`, so level 9 (gzip.open's default), where the
  bench's case asks for level 1 (the others write level 1).

dlt stages the extracted and normalized files in its pipelines directory (a temporary directory
here, as /tmp on Lambda) and adds its own columns (`_dlt_load_id`, `_dlt_id`) and tables
(`_dlt_loads`, `_dlt_version`, `_dlt_pipeline_state`) as it always does.

    python records_dlt.py URL BUCKET KEY FORMAT     (FORMAT: parquet | jsonl)

The records table lands as files under KEY/bench/records/ (`<load id>.<file id>.parquet`, or
`.jsonl.gz`); prints {"rows": N} as JSON.
"""

import json
import os
import shutil
import sys
import tempfile
from urllib.parse import urlsplit

FORMATS = ("parquet", "jsonl")
if len(sys.argv) != 5 or sys.argv[4] not in FORMATS:
    sys.exit(f"usage: {sys.argv[0]} URL BUCKET KEY {{{' | '.join(FORMATS)}}}")
FORMAT = sys.argv[4]

# dlt reads its settings from the environment: no telemetry, its data directory (by default under
# ~/.dlt) in the run's temporary directory and, for Parquet, the page codec.
TMP = tempfile.mkdtemp(prefix="bench-dlt-")
if FORMAT == "parquet":
    os.environ["NORMALIZE__DATA_WRITER__COMPRESSION"] = "zstd"
os.environ["RUNTIME__DLTHUB_TELEMETRY"] = "false"
os.environ["DLT_DATA_DIR"] = os.path.join(TMP, "data")

import dlt  # noqa: E402
from dlt.destinations import filesystem  # noqa: E402
from dlt.sources.rest_api import rest_api_source  # noqa: E402

COLUMNS = {
    "id": {"data_type": "bigint"},
    "name": {"data_type": "text"},
    "kind": {"data_type": "text"},
    "ref": {"data_type": "text"},
    "value": {"data_type": "double"},
    "ts": {"data_type": "timestamp"},
    "tags": {"data_type": "json"},
    "active": {"data_type": "bool"},
}


def main():
    url, bucket, key = sys.argv[1:4]
    parts = urlsplit(url)
    source = rest_api_source(
        {
            "client": {
                "base_url": f"{parts.scheme}://{parts.netloc}/",
                "paginator": "single_page",
            },
            "resource_defaults": {"max_table_nesting": 0},
            "resources": [
                {
                    "name": "records",
                    "endpoint": {"path": parts.path.lstrip("/"), "data_selector": "data"},
                    "columns": COLUMNS,
                }
            ],
        }
    )
    destination = filesystem(
        bucket_url=f"s3://{bucket}/{key}",
        credentials={
            "aws_access_key_id": os.environ["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": os.environ["AWS_SECRET_ACCESS_KEY"],
            "endpoint_url": os.environ["BENCH_S3_ENDPOINT"],
            "region_name": os.environ.get("AWS_REGION", "us-east-1"),
        },
    )
    try:
        pipeline = dlt.pipeline(
            pipeline_name="bench",
            destination=destination,
            dataset_name="bench",
            pipelines_dir=os.path.join(TMP, "pipelines"),
        )
        info = pipeline.run(source, loader_file_format=FORMAT)
        info.raise_on_failed_jobs()
        rows = pipeline.last_trace.last_normalize_info.row_counts.get("records", 0)
    finally:
        shutil.rmtree(TMP, ignore_errors=True)
    print(json.dumps({"rows": rows}))


if __name__ == "__main__":
    main()
