//! Records of partitions that have no open object, kept on local disk (a Lambda's `/tmp`)
//! until the final pass writes them.
//!
//! One file per run, unlinked as soon as it is created: it lives as long as its descriptor, so
//! a run that fails, panics or is killed leaves nothing in `/tmp`. Records are buffered per
//! partition (length-prefixed), and a buffer that fills (or the largest one, when all buffers
//! together reach their cap) is compressed as one zstd frame and appended to the file; an
//! index in memory lists each partition's frames. Written pages are synced and dropped from
//! the page cache as they go, so the spill does not count against the function's memory.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// A partition's buffer is compressed into a frame at this size.
const FRAME_BYTES: usize = 256 * 1024;
/// Written bytes between a sync and page-cache drop.
const SYNC_BYTES: u64 = 8 * 1024 * 1024;
/// zstd level of the frames: fast, about 5× on JSON.
const LEVEL: i32 = 1;

#[derive(Debug, Clone, Copy)]
struct Frame {
    offset: u64,
    len: u32,
    raw_len: u32,
}

/// The spill file of one run.
pub(crate) struct Spill {
    file: File,
    dir: PathBuf,
    /// Bytes the file may grow to.
    budget: u64,
    on_disk: u64,
    unsynced: u64,
    buffers: HashMap<usize, Vec<u8>>,
    buffered: usize,
    buffer_cap: usize,
    frames: HashMap<usize, Vec<Frame>>,
    records: HashMap<usize, u64>,
    /// Bytes each partition holds on disk.
    sizes: HashMap<usize, u64>,
    /// End of the file (taken frames are punched out, so `on_disk` can be less).
    end: u64,
    /// Most bytes the file held, for the summary.
    peak: u64,
    /// Bytes read since the page cache was last dropped.
    unread: u64,
    compressor: zstd::bulk::Compressor<'static>,
}

impl std::fmt::Debug for Spill {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spill")
            .field("dir", &self.dir)
            .field("budget", &self.budget)
            .field("on_disk", &self.on_disk)
            .field("buffered", &self.buffered)
            .finish()
    }
}

/// A partition's spilled records, taken out of the spill: frames to read, then a tail that
/// was still buffered.
#[derive(Debug)]
pub(crate) struct Spilled {
    frames: std::vec::IntoIter<Frame>,
    tail: Option<Vec<u8>>,
}

impl Spill {
    /// A spill in `dir` that may grow to `budget` bytes, buffering at most `buffer_cap`
    /// bytes in memory across partitions.
    pub fn create(dir: &Path, budget: u64, buffer_cap: usize) -> io::Result<Self> {
        let path = dir.join(format!(
            "sluice-spill-{}-{:016x}",
            std::process::id(),
            fastrand::u64(..)
        ));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        // Unlinked at once: the data lives until the descriptor closes, whatever ends the run.
        std::fs::remove_file(&path)?;
        // Frames are read one by one, out of order: readahead would only fill the page cache
        // (which counts against the function's memory) with other partitions' frames.
        // SAFETY: posix_fadvise only reads its integer arguments; the descriptor is open.
        unsafe {
            libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM);
        }
        Ok(Spill {
            file,
            dir: dir.to_owned(),
            budget,
            on_disk: 0,
            unsynced: 0,
            buffers: HashMap::new(),
            buffered: 0,
            buffer_cap: buffer_cap.max(FRAME_BYTES),
            frames: HashMap::new(),
            records: HashMap::new(),
            sizes: HashMap::new(),
            end: 0,
            peak: 0,
            unread: 0,
            compressor: zstd::bulk::Compressor::new(LEVEL)?,
        })
    }

    /// Whether the file has reached its budget (new records must go elsewhere).
    pub fn is_full(&self) -> bool {
        self.on_disk >= self.budget
    }

    /// The partition holding the most bytes on disk.
    pub fn largest(&self) -> Option<usize> {
        self.sizes
            .iter()
            .max_by_key(|(id, bytes)| (**bytes, std::cmp::Reverse(**id)))
            .map(|(id, _)| *id)
    }

    /// Most bytes the file held.
    pub fn peak_bytes(&self) -> u64 {
        self.peak
    }

    /// The partitions with spilled records, in index order.
    pub fn partitions(&self) -> Vec<usize> {
        let mut ids: Vec<usize> = self.records.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Keeps `record` of `partition`. Call [`is_full`](Self::is_full) first.
    pub fn push(&mut self, partition: usize, record: &[u8]) -> io::Result<()> {
        let len = u32::try_from(record.len())
            .map_err(|_| io::Error::other("a record over 4 GiB cannot be spilled"))?;
        let buf = self.buffers.entry(partition).or_default();
        buf.extend_from_slice(&len.to_le_bytes());
        buf.extend_from_slice(record);
        self.buffered += 4 + record.len();
        *self.records.entry(partition).or_default() += 1;
        if buf.len() >= FRAME_BYTES {
            self.flush(partition)?;
        }
        while self.buffered > self.buffer_cap {
            let largest = self
                .buffers
                .iter()
                .max_by_key(|(_, b)| b.len())
                .map(|(p, _)| *p);
            match largest {
                Some(p) => self.flush(p)?,
                None => break,
            }
        }
        Ok(())
    }

    /// Compresses `partition`'s buffer into a frame at the end of the file.
    fn flush(&mut self, partition: usize) -> io::Result<()> {
        let Some(raw) = self.buffers.remove(&partition) else {
            return Ok(());
        };
        self.buffered -= raw.len();
        let frame = self.compressor.compress(&raw)?;
        let too_big = || io::Error::other("a spill frame over 4 GiB");
        let entry = Frame {
            offset: self.on_disk,
            len: u32::try_from(frame.len()).map_err(|_| too_big())?,
            raw_len: u32::try_from(raw.len()).map_err(|_| too_big())?,
        };
        let entry = Frame {
            offset: self.end,
            ..entry
        };
        self.file.write_all_at(&frame, self.end)?;
        self.end += frame.len() as u64;
        self.on_disk += frame.len() as u64;
        *self.sizes.entry(partition).or_default() += frame.len() as u64;
        self.peak = self.peak.max(self.on_disk);
        self.unsynced += frame.len() as u64;
        if self.unsynced >= SYNC_BYTES {
            self.file.sync_data()?;
            drop_cache(&self.file, 0, 0);
            self.unsynced = 0;
        }
        self.frames.entry(partition).or_default().push(entry);
        Ok(())
    }

    /// Takes `partition`'s records out of the spill; its frames stop counting against the
    /// budget (their blocks are freed as they are read).
    pub fn take(&mut self, partition: usize) -> Spilled {
        let frames = self.frames.remove(&partition).unwrap_or_default();
        self.on_disk -= self.sizes.remove(&partition).unwrap_or(0);
        let tail = self.buffers.remove(&partition);
        if let Some(t) = &tail {
            self.buffered -= t.len();
        }
        self.records.remove(&partition);
        Spilled {
            frames: frames.into_iter(),
            tail,
        }
    }

    /// The next block of `spilled`'s records (length-prefixed; see [`records`]), or `None`.
    pub fn next_block(&mut self, spilled: &mut Spilled) -> io::Result<Option<Vec<u8>>> {
        if let Some(frame) = spilled.frames.next() {
            let mut compressed = vec![0; frame.len as usize];
            self.file.read_exact_at(&mut compressed, frame.offset)?;
            free(&self.file, frame.offset, u64::from(frame.len));
            self.unread += u64::from(frame.len);
            if self.unread >= SYNC_BYTES {
                drop_cache(&self.file, 0, 0);
                self.unread = 0;
            }
            let raw = zstd::bulk::decompress(&compressed, frame.raw_len as usize)?;
            if raw.len() != frame.raw_len as usize {
                return Err(io::Error::other(
                    "a spill frame decompressed to another size",
                ));
            }
            return Ok(Some(raw));
        }
        Ok(spilled.tail.take())
    }
}

/// The records of a block from [`Spill::next_block`].
pub(crate) fn records(block: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = block;
    std::iter::from_fn(move || {
        let (len, tail) = rest.split_first_chunk::<4>()?;
        let len = u32::from_le_bytes(*len) as usize;
        let record = tail.get(..len)?;
        rest = &tail[len..];
        Some(record)
    })
}

/// Asks the kernel to drop the file's cached pages (they were synced, or only read).
fn drop_cache(file: &File, offset: u64, len: u64) {
    // SAFETY: posix_fadvise only reads its integer arguments; the descriptor is open.
    unsafe {
        libc::posix_fadvise(
            file.as_raw_fd(),
            offset as libc::off_t,
            len as libc::off_t,
            libc::POSIX_FADV_DONTNEED,
        );
    }
}

/// Frees a frame's blocks (a hole in the file) and its cached pages. A file system that
/// cannot punch holes keeps the blocks until the run ends.
fn free(file: &File, offset: u64, len: u64) {
    // SAFETY: fallocate only reads its integer arguments; the descriptor is open.
    unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset as libc::off_t,
            len as libc::off_t,
        );
    }
    drop_cache(file, offset, len);
}

/// Free bytes for an unprivileged writer in the file system holding `dir`.
pub(crate) fn free_bytes(dir: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::other("a spill directory with a NUL byte"))?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid C string and `stat` a valid out-pointer for the call.
    if unsafe { libc::statvfs(c.as_ptr(), &mut stat) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_come_back_per_partition_in_order_and_nothing_stays_on_disk() {
        let dir = std::env::temp_dir();
        let before: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        let mut spill = Spill::create(&dir, u64::MAX, 64 * 1024).unwrap();
        let after: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(
            after
                .iter()
                .all(|p| before.contains(p) || !p.to_string_lossy().contains("sluice-spill")),
            "the spill file is unlinked at once"
        );
        for i in 0..20_000u32 {
            let record = format!(
                "{{\"i\":{i},\"pad\":\"{}\"}}",
                "x".repeat((i % 97) as usize)
            );
            spill.push((i % 7) as usize, record.as_bytes()).unwrap();
        }
        assert!(spill.peak_bytes() > 0, "frames went to disk");
        assert_eq!(spill.partitions(), (0..7).collect::<Vec<_>>());
        for p in 0..7usize {
            let mut s = spill.take(p);
            let mut seen = Vec::new();
            while let Some(block) = spill.next_block(&mut s).unwrap() {
                for r in records(&block) {
                    let v: serde_json::Value = serde_json::from_slice(r).unwrap();
                    seen.push(v["i"].as_u64().unwrap() as u32);
                }
            }
            let expected: Vec<u32> = (0..20_000u32).filter(|i| (i % 7) as usize == p).collect();
            assert_eq!(seen, expected, "partition {p}");
        }
        assert!(spill.partitions().is_empty());
    }

    #[test]
    fn a_small_budget_fills() {
        let mut spill = Spill::create(&std::env::temp_dir(), 1, 0).unwrap();
        assert!(!spill.is_full());
        for i in 0..100_000u32 {
            spill
                .push(0, format!("{i:x}{}", fastrand::u64(..)).as_bytes())
                .unwrap();
        }
        assert!(spill.is_full());
        assert!(free_bytes(&std::env::temp_dir()).unwrap() > 0);
    }
}
