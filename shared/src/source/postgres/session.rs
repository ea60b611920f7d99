//! An open connection: connecting with the TLS policy, the connection task, and cancelling
//! a running statement.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::error::pg_error;
use super::settings::{ConnectionSettings, SslMode};
use super::tls::tls_connector;
use crate::error::{Error, ErrorKind, Result};

/// The connection task; aborting it closes the socket, which ends the server's backend at
/// its next write.
pub(super) struct ConnectionTask(pub(super) tokio::task::JoinHandle<()>);

impl Drop for ConnectionTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// An open connection.
pub struct Session {
    pub(super) client: Arc<tokio_postgres::Client>,
    pub(super) task: ConnectionTask,
    pub(super) database: String,
    tls: bool,
    pub(super) canceller: Canceller,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("database", &self.database)
            .field("tls", &self.tls)
            .finish()
    }
}

impl Session {
    /// `user@host:port/dbname`.
    pub fn database(&self) -> &str {
        &self.database
    }

    /// Cancels the statement an [`export`](super::export) runs on this session; see
    /// [`Canceller`].
    pub fn canceller(&self) -> Canceller {
        self.canceller.clone()
    }

    /// The driver's client, for statements outside an export (tests, diagnostics).
    pub fn client(&self) -> &tokio_postgres::Client {
        &self.client
    }

    /// Whether the connection is encrypted.
    pub async fn is_tls(&self) -> Result<bool> {
        let row = self
            .client
            .query_one(
                "SELECT coalesce((SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), false)",
                &[],
            )
            .await
            .map_err(|e| pg_error(&self.database, "query", &e, None))?;
        Ok(row.get(0))
    }
}

/// Connects with the TLS policy of `settings`.
pub async fn connect(settings: &ConnectionSettings) -> Result<Session> {
    let tls = tls_connector(settings)?;
    let connector = tls.clone();
    let database = settings.database.clone();
    let (client, connection) = settings
        .config
        .connect(tls)
        .await
        .map_err(|e| connect_error(&database, settings.ssl_mode, &e))?;
    let tls = settings.ssl_mode != SslMode::Disable;
    let name = database.clone();
    let task = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(database = %name, error = %e, "postgres connection ended with an error");
        }
    });
    tracing::info!(%database, sslmode = settings.ssl_mode.name(), "postgres connected");
    let canceller = Canceller(Arc::new(CancelState {
        token: client.cancel_token(),
        tls: connector,
        database: database.clone(),
        settled: AtomicBool::new(false),
    }));
    Ok(Session {
        client: Arc::new(client),
        task: ConnectionTask(task),
        database,
        tls,
        canceller,
    })
}

/// Cancels the export's statement on the server when the export gives up before its
/// `COMMIT` (deadline, failed upload, dropped stream), so the backend stops working at once
/// rather than at its next write or at `statement_timeout`. Cheap to clone; cancels at most
/// once; a no-op after the export completed.
#[derive(Clone)]
pub struct Canceller(Arc<CancelState>);

struct CancelState {
    token: tokio_postgres::CancelToken,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    database: String,
    settled: AtomicBool,
}

impl fmt::Debug for Canceller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Canceller")
            .field("database", &self.0.database)
            .field("settled", &self.0.settled.load(Ordering::Relaxed))
            .finish()
    }
}

impl Canceller {
    /// Sends a cancel request for the running statement (a separate short connection, as
    /// Postgres's protocol wants), waiting at most 3 s. Does nothing after the export
    /// completed or after an earlier cancel.
    pub async fn cancel(&self) {
        if self.0.settled.swap(true, Ordering::SeqCst) {
            return;
        }
        let database = &self.0.database;
        match tokio::time::timeout(
            Duration::from_secs(3),
            self.0.token.cancel_query(self.0.tls.clone()),
        )
        .await
        {
            Ok(Ok(())) => tracing::info!(%database, "postgres statement cancelled"),
            Ok(Err(e)) => tracing::warn!(%database, error = %e, "postgres cancel request failed"),
            Err(_) => tracing::warn!(%database, "postgres cancel request timed out"),
        }
    }

    pub(super) fn settle(&self) {
        self.0.settled.store(true, Ordering::SeqCst);
    }

    fn is_settled(&self) -> bool {
        self.0.settled.load(Ordering::SeqCst)
    }
}

/// Cancels from a spawned task when dropped unsettled.
pub(super) struct CancelOnDrop(pub(super) Canceller);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if self.0.is_settled() {
            return;
        }
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let canceller = self.0.clone();
            handle.spawn(async move { canceller.cancel().await });
        }
    }
}

fn connect_error(database: &str, mode: SslMode, e: &tokio_postgres::Error) -> Error {
    let mut err = pg_error(database, "connect", e, None);
    if let Error::Postgres {
        sqlstate: None,
        message,
        kind,
        ..
    } = &mut err
    {
        // A certificate or TLS refusal does not heal by retrying.
        if message.contains("certificate")
            || message.contains("does not support TLS")
            || message.contains("InvalidCertificate")
        {
            *kind = ErrorKind::Upstream;
            if message.contains("does not support TLS") && mode != SslMode::Disable {
                message.push_str(
                    " (add sslmode=disable or sslmode=prefer to the URL to allow plaintext)",
                );
            }
        }
    }
    err
}
