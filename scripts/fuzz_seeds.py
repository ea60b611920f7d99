#!/usr/bin/env python3
"""Writes the seed corpus of the fuzz targets (fuzz/corpus/<target>/seed-*), small and
adversarial: deep nesting, huge numbers, commas-only lines, truncated and concatenated
compressed streams. Run from the repository root; `make fuzz` grows the corpus beyond these
seeds in fuzz/corpus-local/ (not committed)."""
import gzip
import os
import shutil
import subprocess

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
CORPUS = os.path.join(ROOT, "fuzz", "corpus")


def zstd(data: bytes) -> bytes:
    return subprocess.run(["zstd", "-q", "-c", "-3"], input=data, check=True,
                          capture_output=True).stdout


def event(name: str) -> bytes:
    with open(os.path.join(ROOT, "events", name), "rb") as f:
        return f.read()


def write(target: str, seeds: dict) -> None:
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    for name, data in seeds.items():
        if isinstance(data, str):
            data = data.encode()
        with open(os.path.join(d, "seed-" + name), "wb") as f:
            f.write(data)


deep = 200
write("json_records", {
    "data": '{"data":[{"a":1},{"b":[1,2,3]},"x",null],"next":"c2","meta":{"cursor":7}}',
    "top-array": '[1,{"a":"b"},[],{}]',
    "pretty": '{\n  "next": null,\n  "data": [\n    {"a": 1,\n     "b": "x y"}\n  ]\n}\n',
    "escapes": '{"data":["\\"\\\\\\u00e9\\n", {"k\\"ey":"v"}]}',
    "deep-record": '{"data":[' + "[" * deep + "]" * deep + "]}",
    "deep-skipped": '{"skip":' + "[" * deep + "]" * deep + ',"data":[1]}',
    "huge-number": '{"data":[1' + "0" * 400 + ', -1e999999, 1.5E-400]}',
    "records-too-large": '{"data":["' + "x" * 300 + '"]}',
    "truncated": '{"data":[{"a":1},{"b":',
    "trailing": '{"data":[]} x',
    "no-records": '{"error":"rate limited"}',
    "dup-keys": '{"data":[1],"data":[2]}',
    "bad-utf8": b'{"data":["\xff\xfe"]}',
    "commas": '{"data":[,,,]}',
    "capture-object": '{"next":{"a":1},"data":[1]}',
})

write("ndjson", {
    "lines": '{"a":1}\r\n\n  \n[2]\n"x"',
    "blank-and-tabs": "\t\n \r\n{}\n",
    "not-json": '{"a":1}\nnot json\n{"b":2}\n',
    "long-line": '{"a":"' + "x" * 100 + '"}\n{}\n',
    "crcr": "\r\r\n{}\r",
    "huge-number": "1" + "0" * 50 + "\n-0.0e-99999\n",
    "deep": "[" * 30 + "]" * 30 + "\n",
})

write("csv", {
    "quoted": 'a,b\n1,"x, ""y""\nz"\r\n\n3,4',
    "commas-only": ",,,,\n,,\n,\n",
    "unterminated": 'a,b\n1,2\n3,"open\n4,5\n',
    "quote-in-field": 'a,b\n1,2"x\n',
    "crlf": "a,b\r\n1,2\r\n\r\n3,4\r\n",
    "long-row": "a,b\n1," + "x" * 1100 + "\n",
    "many-fields": ",".join(["f"] * 600) + "\n",
    "blank-lines": "\n\n\r\n\na\n",
})

payload = b'{"a":1}\n' * 40
gz = gzip.compress(payload, mtime=0)
zs = zstd(payload)
write("decompress", {
    "gzip": gz,
    "gzip-multi": gzip.compress(b"first\n", mtime=0) + gzip.compress(b"second\n", mtime=0),
    "gzip-truncated": gz[:-8],
    "gzip-corrupt-crc": gz[:-6] + bytes([gz[-6] ^ 0xFF]) + gz[-5:],
    "gzip-trailing-garbage": gz + b"garbage",
    "gzip-header-only": gz[:10],
    "gzip-empty": gzip.compress(b"", mtime=0),
    "zstd": zs,
    "zstd-multi": zstd(b"one\n") + zstd(b"two\n"),
    "zstd-truncated": zs[:-4],
    "zstd-big-window": bytes([0x28, 0xB5, 0x2F, 0xFD, 0x00, 0xF8]) + b"\x00" * 8,
    "zstd-skippable": bytes([0x50, 0x2A, 0x4D, 0x18, 4, 0, 0, 0]) + b"skip" + zs,
    "identity": b"plain text, not compressed\n",
    "bomb-ish": gzip.compress(b"\x00" * 60000, mtime=0),
})

write("job_spec", {
    "basic": event("ingest-http.json"),
    "cursor": event("ingest-http.cursor.json"),
    "incremental": event("ingest-http.incremental.json"),
    "link": event("ingest-http.link_header.json"),
    "ndjson": event("ingest-http.ndjson.json"),
    "scheduler": event("ingest-http.scheduler.json"),
    "deep": "[" * deep + "]" * deep,
    "huge-number": '{"source":{"http":{"url":"https://a/","read_timeout_secs":1e309}},'
                   '"destination":{"bucket":"b","key":"k"},"tuning":{"part_size_mb":'
                   '18446744073709551616}}',
    "bad-key": '{"source":{"http":{"url":"https://a/"}},"destination":{"bucket":"b","key":"{x"}}',
})

write("pipeline", {
    "pipeline": event("transform-s3.pipeline.json"),
    "deep": '{"input":' + "[" * deep + "]" * deep + "}",
    "empty-object": "{}",
    "huge-number": '{"input":{"format":"csv","schema":[{"name":"a","type":"int"}]},'
                   '"limits":{"max_row_bytes":1' + "0" * 30 + "}}",
})

write("export_spec", {
    "export": event("export-postgres.json"),
    "secret-ndjson": event("export-postgres.secret-ndjson.json"),
    "scheduler": event("export-postgres.scheduler.json"),
    "nul-query": '{"source":{"postgres":{"query":"select \\u0000"}},'
                 '"destination":{"bucket":"b","key":"k"}}',
    "deep": '{"source":' + "{\"a\":" * 150 + "1" + "}" * 150 + "}",
})

write("sweep_config", {
    "sweep": event("sweep-uploads.json"),
    "scheduler": event("sweep-uploads.scheduler.json"),
    "null": "null",
    "empty": "{}",
    "max-age": '{"targets":[{"bucket":"b","prefix":""}],"max_age":"99999999999999999999d"}',
    "max-age-units": '{"targets":[{"bucket":"b"}],"max_age":"1h30m"}',
})

write("retry_after", {
    "seconds": "120",
    "u64-max": "18446744073709551615",
    "overflow": "18446744073709551616",
    "date": "Sun, 06 Nov 1994 08:49:37 GMT",
    "future": "Fri, 31 Dec 9999 23:59:59 GMT",
    "negative": "-1",
    "spaces": "  5  ",
})

write("link_header", {
    "github": '<https://api.github.com/x?page=2>; rel="next", <https://api.github.com/x?page=9>; rel="last"',
    "multi-rel": '<https://a/2>; rel="prev next"',
    "unclosed": '<https://a/2; rel="next"',
    "empty-target": '<>; rel=next',
    "commas-in-quotes": '<https://a/1>; title="a, <b>"; rel="next"',
    "nested": "<<<>>>; rel=next",
})

write("key_template", {
    "date": "raw/dt={date}/{run_id}.json.gz",
    "all": "{yyyy}/{mm}/{dd}/{hh}/{scheduled_time}/{page}/{stem}",
    "unclosed": "raw/{date",
    "unmatched": "raw}/",
    "slash": "/abs",
    "long": "k" * 1030,
    "dotdot": "../../etc/{run_id}",
    "empty-braces": "{}",
    "multibyte": "é{date}ü",
})
