//! Where bytes come from.

pub mod http;
