//! Where bytes come from.

pub mod guard;
pub mod http;
pub mod postgres;
pub mod rate;
pub mod retry;
pub mod s3;
