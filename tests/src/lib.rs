//! Test bed for sluice: real local servers and an emulated Lambda environment.
//!
//! - [`stack`]: the Garage and moto S3 servers started by `scripts/stack.sh up`, and S3 helpers.
//! - [`fixture`]: an HTTP server of large generated bodies and faults ([`FixtureServer`]).
//! - [`runtime_api`]: a Lambda Runtime API emulator ([`RuntimeApi`]).
//! - [`lambda`]: a built Lambda binary run as a child process ([`LambdaProcess`]).
//! - [`cgroup`]: cgroup v1 memory and CPU limits ([`MemoryCgroup`], [`CpuCgroup`]).
//! - [`members`]: gzip members and zstd frames of fixed decoded size, as pigz `--independent`
//!   and bgzip write them.
//! - [`postgres`]: a throwaway Postgres server from Debian's packages ([`PgServer`](postgres::PgServer)).

use std::path::PathBuf;

pub mod bench;
pub mod cgroup;
pub mod emf;
pub mod events;
pub mod fixture;
pub mod fixture_api;
pub mod harness;
pub mod lake;
pub mod lambda;
pub mod local;
pub mod members;
pub mod parking;
pub mod postgres;
pub mod runtime_api;
pub mod s3_proxy;
mod server;
pub mod stack;

pub use cgroup::{CpuCgroup, MemoryCgroup};
pub use fixture::{FixtureServer, body_stream, expected_crc64nvme};
pub use lambda::{LambdaProcess, binary_path};
pub use runtime_api::{Invocation, RuntimeApi};
pub use s3_proxy::{S3Op, S3Proxy};
pub use stack::{S3Server, object_exists, object_stream, read_object, uploads_in_progress};

/// The workspace's root directory (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    root.canonicalize().unwrap_or(root)
}
