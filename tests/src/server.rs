//! An axum server on its own OS thread and tokio runtime, shared by the fixture server and the
//! Runtime API emulator.

use std::net::SocketAddr;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use tokio::sync::oneshot;

/// A running background server; dropping it stops the server and its runtime.
///
/// Shutdown is not graceful on purpose: a fixture may hold connections open forever (`/stall`),
/// so the runtime is dropped, which cancels every connection task.
pub(crate) struct BackgroundServer {
    pub(crate) addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl BackgroundServer {
    /// Binds 127.0.0.1:0 and serves `app` on a dedicated thread with a 2-worker runtime, so the
    /// server keeps answering quickly even when the test's own runtime is busy or blocked.
    pub(crate) async fn start(name: &str, app: Router) -> anyhow::Result<Self> {
        let (ready_tx, ready_rx) = oneshot::channel::<anyhow::Result<SocketAddr>>();
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let thread_name = format!("sluice-{name}");
        let thread = std::thread::Builder::new()
            .name(thread_name.clone())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name(thread_name)
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        let _ = ready_tx.send(Err(error.into()));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
                        Ok(listener) => listener,
                        Err(error) => {
                            let _ = ready_tx.send(Err(error.into()));
                            return;
                        }
                    };
                    let addr = match listener.local_addr() {
                        Ok(addr) => addr,
                        Err(error) => {
                            let _ = ready_tx.send(Err(error.into()));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(addr));
                    tokio::select! {
                        result = axum::serve(listener, app) => {
                            if let Err(error) = result {
                                eprintln!("background server on {addr} failed: {error}");
                            }
                        }
                        _ = shutdown_rx => {}
                    }
                });
                // Cancels the connection tasks still running (stalled bodies, long polls).
                runtime.shutdown_timeout(Duration::from_secs(1));
            })
            .context("spawning the server thread")?;
        let addr = ready_rx
            .await
            .context("server thread died before binding")?
            .context("starting the server")?;
        Ok(Self {
            addr,
            shutdown: Some(shutdown_tx),
            thread: Some(thread),
        })
    }
}

impl Drop for BackgroundServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
