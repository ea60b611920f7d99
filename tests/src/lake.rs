//! The lake's own readers on what sluice writes: DuckDB and pyarrow (from the project's
//! venv, `.venv/bin/python`, installed by `scripts/setup.sh`) read a Parquet file and report
//! its rows, columns, types, row groups, sums and first rows as JSON.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// The venv's Python: `SLUICE_PYTHON`, else `<workspace>/.venv/bin/python`.
pub fn python() -> PathBuf {
    if let Ok(p) = std::env::var("SLUICE_PYTHON") {
        return PathBuf::from(p);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python")
}

const REPORT: &str = r#"
import json, sys
import duckdb, pyarrow.parquet as pq
path, sums = sys.argv[1], json.loads(sys.argv[2])
con = duckdb.connect()
rel = f"read_parquet('{path}')"
out = {"duckdb": {}, "pyarrow": {}}
d = out["duckdb"]
d["rows"] = con.execute(f"SELECT count(*) FROM {rel}").fetchone()[0]
d["columns"] = [[r[0], r[1]] for r in con.execute(f"DESCRIBE SELECT * FROM {rel}").fetchall()]
d["sums"] = {c: (None if (v := con.execute(f'SELECT sum("{c}") FROM {rel}').fetchone()[0]) is None else str(v)) for c in sums}
d["row_groups"] = [[r[0], r[1]] for r in con.execute(
    f"SELECT row_group_id, max(row_group_num_rows) FROM parquet_metadata('{path}') GROUP BY 1 ORDER BY 1").fetchall()]
d["first"] = json.loads(con.execute(f"SELECT to_json(list(t)) FROM (SELECT * FROM {rel} LIMIT 3) t").fetchone()[0] or "[]")
f = pq.ParquetFile(path)
m = f.metadata
p = out["pyarrow"]
p["rows"] = m.num_rows
p["columns"] = [[fld.name, str(fld.type)] for fld in f.schema_arrow]
p["row_groups"] = m.num_row_groups
p["row_group_bytes"] = [m.row_group(i).total_byte_size for i in range(m.num_row_groups)]
p["compressed_bytes"] = [sum(m.row_group(i).column(j).total_compressed_size for j in range(m.num_columns)) for i in range(m.num_row_groups)]
p["codecs"] = sorted({m.row_group(i).column(j).compression for i in range(m.num_row_groups) for j in range(m.num_columns)})
p["statistics"] = all(m.row_group(i).column(j).is_stats_set for i in range(m.num_row_groups) for j in range(m.num_columns))
t = f.read()
import pyarrow.compute as pc
p["sums"] = {c: (None if (v := pc.sum(t.column(c)).as_py()) is None else str(v)) for c in sums}
def finite(x):
    # DuckDB's to_json and pyarrow hand back NaN and infinities, which JSON has no words for.
    if isinstance(x, float) and (x != x or x in (float("inf"), float("-inf"))):
        return str(x)
    if isinstance(x, dict):
        return {k: finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [finite(v) for v in x]
    return x
print(json.dumps(finite(out)))
"#;

/// Reads the Parquet file at `path` with DuckDB and pyarrow; `sums` names columns to sum.
/// Panics (the test fails) when either reader cannot read the file.
pub fn parquet_report(path: &Path, sums: &[&str]) -> Value {
    let out = Command::new(python())
        .arg("-c")
        .arg(REPORT)
        .arg(path)
        .arg(serde_json::to_string(sums).expect("names serialise"))
        .output()
        .expect("the venv's python runs (make test installs it)");
    assert!(
        out.status.success(),
        "DuckDB/pyarrow could not read {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the report is JSON")
}

/// Runs one DuckDB query on the Parquet file at `path` (as `t`), returning its rows as JSON.
pub fn duckdb_query(path: &Path, sql: &str) -> Value {
    let script = r#"
import json, sys, duckdb
con = duckdb.connect()
con.execute(f"CREATE VIEW t AS SELECT * FROM read_parquet('{sys.argv[1]}')")
print(con.execute(f"SELECT to_json(list(q)) FROM ({sys.argv[2]}) q").fetchone()[0] or "[]")
"#;
    let out = Command::new(python())
        .arg("-c")
        .arg(script)
        .arg(path)
        .arg(sql)
        .output()
        .expect("the venv's python runs");
    assert!(
        out.status.success(),
        "DuckDB query {sql:?} on {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("DuckDB answers JSON")
}

/// Runs `sql` in DuckDB (any view or table function: `read_json`, `read_parquet` on a
/// directory with `hive_partitioning = true`) and returns its rows as JSON objects.
pub fn duckdb_sql(sql: &str) -> Value {
    let script = r#"
import json, sys, duckdb
con = duckdb.connect()
con.execute("SET enable_progress_bar = false")
print(con.execute(f"SELECT to_json(list(q)) FROM ({sys.argv[1]}) q").fetchone()[0] or "[]")
"#;
    let out = Command::new(python())
        .arg("-c")
        .arg(script)
        .arg(sql)
        .output()
        .expect("the venv's python runs");
    assert!(
        out.status.success(),
        "DuckDB query {sql:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("DuckDB answers JSON")
}
