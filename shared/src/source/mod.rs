//! Where bytes come from.

pub mod http;
pub mod postgres;
pub mod s3;
