//! Postgres source: a query streamed out of the server with `COPY (query) TO STDOUT`, never
//! holding the result set.
//!
//! - **Connection**: a `postgres://` URL (from `DATABASE_URL`) or a Secrets Manager secret
//!   holding either such a URL or the RDS JSON shape (`username`, `password`, `host`, `port`,
//!   `dbname`), resolved by [`SecretResolver`](crate::secret::SecretResolver) into a
//!   [`Secret`](crate::secret::Secret), which never prints its content; messages name the
//!   database as `user@host:port/dbname`.
//! - **TLS** (rustls): `sslmode` is honoured, and when the URL names none the connection is
//!   `verify-full` against the system roots (or `sslrootcert`): plaintext only when the URL
//!   asks for it. See [`SslMode`].
//! - **Streaming**: CSV is `COPY (query) TO STDOUT (FORMAT csv, HEADER)`, rendered by the
//!   server. NDJSON is `COPY (SELECT row_to_json(r.*) FROM (query) r) TO STDOUT (FORMAT
//!   binary)`: JSON rendered by the server, framed in binary COPY so no text-COPY escaping
//!   touches it. tokio-postgres stops reading the socket while the consumer is busy, so the
//!   server waits on TCP backpressure: memory is a few socket buffers whatever the row count.
//!   Parquet is `COPY (query) TO STDOUT (FORMAT binary)` of the query's own columns: their
//!   types (from preparing the query in the same transaction) give the Parquet schema before
//!   COPY starts, and each binary tuple is decoded into the column builders
//!   ([`TupleDecoder`], which documents the type mapping).
//! - **Parameters**: `COPY` takes no bind parameters. The query is prepared once so the server
//!   infers each `$n`'s type; the values are then *bound* into transaction-local settings
//!   (`set_config('sluice.pN', $1, true)`), and each `$n` token is replaced by
//!   `current_setting('sluice.pN')::<inferred type>`. Values never enter the SQL text, so no
//!   value can inject SQL whatever it contains.
//! - **Safety**: a `READ ONLY` transaction, `statement_timeout` from the Lambda deadline,
//!   `TimeZone` UTC (configurable) and `DateStyle` ISO. The stream ends only after the
//!   server's `CopyDone` *and* a successful `COMMIT`; any error (a backend terminated
//!   mid-stream, a dropped connection, a query error) surfaces as a read error carrying the
//!   SQLSTATE, which makes the sink abort the upload.

mod binary;
mod copy;
mod error;
mod keyset;
mod params;
mod session;
mod settings;
mod spec;
mod tls;

pub use binary::{ResultColumn, TupleDecoder};
pub use copy::{CopyFormat, ExportSettings, ExportStream, Progress, export};
pub use error::sqlstate_kind;
pub use keyset::{Boundary, KEY_TYPES, Keyset};
pub use params::{Placeholder, find_placeholders};
pub use session::{Canceller, Session, connect};
pub use settings::{ConnectionSettings, RootCerts, SslMode};
pub use spec::PostgresSourceSpec;
