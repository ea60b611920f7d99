"""Peer (b): smart_open writing requests' iter_content chunks to s3:// (smart_open's own
defaults: 50 MiB parts, uploaded as they fill); compression with gzip.GzipFile or zstandard
over the smart_open stream (smart_open's extension-based compression disabled, so the level is
ours).

    python smart_open_stream.py URL BUCKET KEY MODE     (MODE: none | gzip-N | zstd-N)
"""

import gzip
import sys

import requests
import smart_open

from common import MIB, parse_mode, s3_client


def main():
    url, bucket, key, mode = sys.argv[1:5]
    codec, level = parse_mode(mode)
    params = {"client": s3_client()}
    with requests.get(url, stream=True, timeout=60) as resp:
        resp.raise_for_status()
        with smart_open.open(
            f"s3://{bucket}/{key}", "wb", transport_params=params, compression="disable"
        ) as out:
            if codec == "gzip":
                sink = gzip.GzipFile(fileobj=out, mode="wb", compresslevel=level, mtime=0)
            elif codec == "zstd":
                import zstandard

                sink = zstandard.ZstdCompressor(level=level).stream_writer(out, closefd=False)
            else:
                sink = out
            for chunk in resp.iter_content(chunk_size=1 * MIB):
                sink.write(chunk)
            if sink is not out:
                sink.close()


if __name__ == "__main__":
    main()
