#!/usr/bin/env python3
"""Writes the seed corpus of the fuzz targets (fuzz/corpus/<target>/seed-*), small and
adversarial: deep nesting, huge numbers, commas-only lines, truncated and concatenated
compressed streams. Run from the repository root; `make fuzz` grows the corpus beyond these
seeds in fuzz/corpus-local/ (not committed)."""
import gzip
import os
import shutil
import struct
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


# postgres_tuple: a column list (count byte, type bytes; see pg_columns in fuzz/src/checks.rs),
# then binary COPY tuples.
PG_TYPES = ["int2", "int4", "int8", "float4", "float8", "numeric", "bool", "text", "varchar",
            "bpchar", "name", "date", "timestamp", "timestamptz", "uuid", "bytea", "json",
            "jsonb", "mood", "positive"]
PG_OIDS = {"int2": 21, "int4": 23, "int8": 20, "float4": 700, "float8": 701, "numeric": 1700,
           "bool": 16, "text": 25, "varchar": 1043, "bpchar": 1042, "name": 19, "date": 1082,
           "timestamp": 1114, "timestamptz": 1184, "uuid": 2950, "bytea": 17, "json": 114,
           "jsonb": 3802, "mood": 90002, "positive": 90001}
NUMERIC_POS, NUMERIC_NEG, NUMERIC_NAN, NUMERIC_PINF = 0x0000, 0x4000, 0xC000, 0xD000


def pg_columns(*cols) -> bytes:
    """Each column: a type name (`int4`, `text[]`) or (`numeric` or `numeric[]`, precision,
    scale); a numeric without them has no type modifier."""
    out = bytes([len(cols) - 1])
    for c in cols:
        name, typmod = (c, (0, 0)) if isinstance(c, str) else (c[0], c[1:])
        array = name.endswith("[]")
        t = PG_TYPES.index(name.removesuffix("[]")) | (0x80 if array else 0)
        out += bytes([t])
        if name.removesuffix("[]") == "numeric":
            out += bytes([typmod[0]]) + struct.pack(">b", typmod[1])
    return out


def pg_tuple(*fields) -> bytes:
    out = struct.pack(">h", len(fields))
    for f in fields:
        out += struct.pack(">i", -1) if f is None else struct.pack(">i", len(f)) + f
    return out


def pg_numeric(sign: int, weight: int, dscale: int, digits) -> bytes:
    return struct.pack(">hhHH", len(digits), weight, sign, dscale) + b"".join(
        struct.pack(">h", d) for d in digits)


def pg_array(element: str, items, dims=None) -> bytes:
    """A one-dimensional array of `items` (bytes or None); `dims` overrides the dimensions."""
    dims = [len(items)] if dims is None else dims
    out = struct.pack(">iiI", len(dims), int(None in items), PG_OIDS[element])
    for d in dims:
        out += struct.pack(">ii", d, 1)
    for i in items:
        out += struct.pack(">i", -1) if i is None else struct.pack(">i", len(i)) + i
    return out


def i2(v): return struct.pack(">h", v)
def i4(v): return struct.pack(">i", v)
def i8(v): return struct.pack(">q", v)


DAY_2024 = 8766  # 2024-01-01, in days since 2000-01-01
US_2024 = DAY_2024 * 86_400_000_000
UUID = bytes.fromhex("a0eebc999c0b4ef8bb6d6bb9bd380a11")
numbers = pg_columns("int2", "int4", "int8", "float4", "float8", "bool", "positive")
money = pg_columns(("numeric", 12, 2), "numeric", ("numeric", 38, 38), ("numeric", 40, 2),
                   ("numeric", 5, -2), ("numeric", 2, 5))
texts = pg_columns("text", "varchar", "bpchar", "name", "mood", "json", "jsonb", "bytea")
times = pg_columns("date", "timestamp", "timestamptz", "uuid")
arrays = pg_columns("int4[]", "text[]", ("numeric[]", 12, 2), "date[]", "bool[]", "mood[]",
                    "jsonb[]", "uuid[]")
numbers_row = pg_tuple(i2(-7), i4(-2**31), i8(1 << 40), struct.pack(">f", 1.5),
                       struct.pack(">d", -0.25), b"\x01", i8(9))
write("postgres_tuple", {
    "numbers": numbers + numbers_row + pg_tuple(*[None] * 7)
               + pg_tuple(i2(2**15 - 1), i4(0), i8(-1), struct.pack(">f", float("inf")),
                          struct.pack(">d", float("nan")), b"\x00", i8(0)),
    "numerics": money
                # -123.45 | 12345678901234567890.123456789 | 0.00000001 | 1.5 | 100 | 0.001
                + pg_tuple(pg_numeric(NUMERIC_NEG, 0, 2, [123, 4500]),
                           pg_numeric(NUMERIC_POS, 4, 9,
                                      [1234, 5678, 9012, 3456, 7890, 1234, 5678, 9000]),
                           pg_numeric(NUMERIC_POS, -2, 8, [1]),
                           pg_numeric(NUMERIC_POS, 0, 1, [1, 5000]),
                           pg_numeric(NUMERIC_POS, 0, 0, [100]),
                           pg_numeric(NUMERIC_POS, -1, 3, [10]))
                # 0.00 | NaN | -0.5 | Infinity | NULL | 0
                + pg_tuple(pg_numeric(NUMERIC_POS, 0, 2, []), pg_numeric(NUMERIC_NAN, 0, 0, []),
                           pg_numeric(NUMERIC_NEG, -1, 38, [5000]),
                           pg_numeric(NUMERIC_PINF, 0, 0, []), None,
                           pg_numeric(NUMERIC_POS, 0, 0, [])),
    "numeric-nan-in-decimal": pg_columns(("numeric", 12, 2))
                              + pg_tuple(pg_numeric(NUMERIC_NAN, 0, 0, [])),
    "numeric-too-many-digits": money
                               + pg_tuple(pg_numeric(NUMERIC_POS, 3, 0, [1]), *[None] * 5),
    "texts": texts
             + pg_tuple("héllo".encode(), b"", b"ab  ", b"pg_class", b"sad", b'{"a": [1, "x"]}',
                        b'\x01{"k": null}', b"\x00\xff")
             + pg_tuple(*[None] * 8),
    "text-invalid-utf8": texts + pg_tuple(b"\xff\xfe", *[None] * 7),
    "jsonb-version-2": texts + pg_tuple(*[None] * 6, b"\x02{}", None),
    "times": times
             + pg_tuple(i4(DAY_2024), i8(US_2024 + 1), i8(-946_684_800_000_000), UUID)
             + pg_tuple(i4(-2**31 + 1), i8(0), None, bytes(16))
             + pg_tuple(*[None] * 4),
    "date-infinity": times + pg_tuple(i4(2**31 - 1), None, None, None),
    "uuid-short": times + pg_tuple(None, None, None, UUID[:15]),
    "arrays": arrays
              + pg_tuple(pg_array("int4", [i4(1), None, i4(-3)]),
                         pg_array("text", [b"a", None, b"b,c"]),
                         pg_array("numeric", [pg_numeric(NUMERIC_POS, 0, 2, [12, 3400]), None]),
                         pg_array("date", [i4(0), i4(DAY_2024)]),
                         pg_array("bool", [b"\x01", b"\x00", None]),
                         pg_array("mood", [b"ok"]),
                         pg_array("jsonb", [b"\x01[]", None]),
                         pg_array("uuid", [UUID]))
              # Empty arrays (no dimensions) and NULL arrays.
              + pg_tuple(struct.pack(">iiI", 0, 0, 23), struct.pack(">iiI", 0, 0, 25),
                         None, None, None, None, None, None),
    "array-2d": pg_columns("int4[]") + pg_tuple(pg_array("int4", [i4(1)] * 4, dims=[2, 2])),
    "array-wrong-element-type": pg_columns("int4[]") + pg_tuple(pg_array("int8", [i8(1)])),
    "truncated": numbers + numbers_row + numbers_row[:-5],
    "wrong-field-count": numbers + numbers_row + pg_tuple(i4(1)) + numbers_row,
    "trailer": pg_columns("text") + pg_tuple(b"x") + i2(-1),
    "columns-only": money,
})
