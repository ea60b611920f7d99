"""Peer (a), the usual Python approach: requests.get(stream=True) + boto3 upload_fileobj with
TransferConfig(multipart_chunksize=8 MiB, max_concurrency=4); compression with gzip.GzipFile
or zstandard over the response chunks.

    python boto3_stream.py URL BUCKET KEY MODE     (MODE: none | gzip-N | zstd-N)
"""

import sys

import requests
from boto3.s3.transfer import TransferConfig

from common import MIB, CompressingReader, parse_mode, s3_client


def main():
    url, bucket, key, mode = sys.argv[1:5]
    codec, level = parse_mode(mode)
    s3 = s3_client()
    config = TransferConfig(multipart_chunksize=8 * MIB, max_concurrency=4)
    with requests.get(url, stream=True, timeout=60) as resp:
        resp.raise_for_status()
        if codec is None:
            body = resp.raw
        else:
            body = CompressingReader(resp.iter_content(chunk_size=1 * MIB), codec, level)
        s3.upload_fileobj(body, bucket, key, Config=config)


if __name__ == "__main__":
    main()
