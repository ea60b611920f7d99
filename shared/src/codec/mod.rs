//! Compression and decompression. All codecs in sluice are built here, so every decoder gets
//! the same settings (multi-member gzip, bounded windows) and every error the same context.

mod compress;
mod decompress;
pub mod json_records;
pub mod ndjson;

pub use compress::{Codec, Compression, Encoder};
pub use decompress::Decoding;
