"""Records peer, the usual Python approach: json.loads of the page, json.dumps per record into
NDJSON, compressed with gzip.GzipFile, then boto3 upload_fileobj (TransferConfig 8 MiB parts,
4 threads).

    python records_boto3.py URL BUCKET KEY PATH MODE    (PATH: data for $.data[*];
                                                         MODE: none | gzip-N | zstd-N)
"""

import gzip
import io
import json
import sys

import requests
from boto3.s3.transfer import TransferConfig

from common import MIB, parse_mode, s3_client


def main():
    url, bucket, key, path, mode = sys.argv[1:6]
    codec, level = parse_mode(mode)
    resp = requests.get(url, timeout=60)
    resp.raise_for_status()
    doc = json.loads(resp.content)
    del resp
    records = doc[path]
    out = io.BytesIO()
    if codec == "gzip":
        sink = gzip.GzipFile(fileobj=out, mode="wb", compresslevel=level, mtime=0)
    elif codec == "zstd":
        import zstandard

        sink = zstandard.ZstdCompressor(level=level).stream_writer(out, closefd=False)
    else:
        sink = out
    for record in records:
        sink.write((json.dumps(record) + "\n").encode())
    if sink is not out:
        sink.close()
    del doc, records
    out.seek(0)
    s3 = s3_client()
    s3.upload_fileobj(
        out, bucket, key, Config=TransferConfig(multipart_chunksize=8 * MIB, max_concurrency=4)
    )


if __name__ == "__main__":
    main()
