//! Compression and decompression. All codecs in sluice are built here, so every decoder gets
//! the same settings (multi-member gzip and zstd; zstd windows limited by the memory budget,
//! [`MemoryBudget::zstd_window_log_max`](crate::MemoryBudget::zstd_window_log_max); gzip's is
//! 32 KiB by format) and every error the same classes (`UnexpectedEof` for a truncated stream,
//! `InvalidData` for corrupt data or a window over the limit).

mod compress;
pub mod csv_records;
mod decompress;
pub mod json_records;
pub mod members;
pub mod ndjson;

pub use compress::{Codec, Compression, Encoder};
pub use decompress::Decoding;
pub use members::{MemberDecoder, MemberStart, MemberStarts};
