//! How much memory a job may use for buffers, and the part sizes that follow from it.
//!
//! # The formula
//!
//! For a function with `M` MiB of memory (`AWS_LAMBDA_FUNCTION_MEMORY_SIZE`, default 256):
//!
//! - **buffer budget** `B = M / 4` — a quarter of the function's memory holds part buffers; the
//!   rest is left to the runtime, the TLS and HTTP stacks, codec state and the allocator.
//! - **part size** `P = max(8 MiB, B / 17)` rounded down to a whole MiB;
//! - **parts in flight** `F = clamp(B / P - 1, 1, 16)`: `F` parts uploading while one more fills.
//! - **record cap** `R = B / 4`: the largest JSON record or NDJSON line a decoder holds.
//! - **row group cap** `G = B / 8`: a Parquet output flushes a row group into the upload
//!   when it holds this much (8 MiB at 256 MB); it adds about `2 G + G / 4` to the peak.
//! - **zstd window** at most `B / 4` rounded down to a power of two, between 8 MiB (what every
//!   standard level 1–19 writes) and 128 MiB (zstd's own default limit): 16 MiB at 256 MB.
//!
//! # Limits of the job's `tuning`
//!
//! Overrides are refused (naming the field and the limit) when they would not fit `B`:
//! - `(max_in_flight + 1) × part_size ≤ B`: the parts uploading plus the one filling; with only
//!   `part_size` given, `2 × part_size ≤ B` (32 MiB at 256 MB);
//! - `max_record ≤ B / 2` (32 MiB at 256 MB): a record buffer can briefly double while it
//!   grows, so a record at the cap costs at most `B` besides the parts.
//!
//! Peak memory is then about `baseline + (F + 1) × P + codec state`, which stays within `B`
//! plus a baseline of roughly 20–30 MiB. At 256 MB: `B` = 64 MiB, `P` = 8 MiB, `F` = 7.
//!
//! # Growth for streams of unknown length
//!
//! S3 allows at most 10,000 parts, so the part size doubles every 1,000 parts
//! ([`PartSchedule`]): with 8 MiB parts the first 7.8 GiB use 8 MiB parts, up to 23 GiB use
//! 16 MiB, up to 55 GiB use 32 MiB, and 1 TiB is reached at part 7,032. As parts grow, fewer are
//! kept in flight so that `(F + 1) × P` stays within `B`; once a single part in flight no longer
//! fits (past 55 GiB at 256 MB, well beyond what one 15-minute invocation moves at that size),
//! memory grows to two parts.

/// The smallest part S3 accepts (all parts but the last).
pub const MIN_PART_SIZE: u64 = 5 * MIB;
/// What one open object of a partitioned run may hold: two 5 MiB parts (one filling, one
/// uploading) and 2 MiB for its encoder (a zstd window, a Parquet row group of 1 MiB).
pub const PARTITION_OBJECT_BYTES: u64 = 12 * MIB;
/// The largest part S3 accepts.
pub const MAX_PART_SIZE: u64 = 5 * 1024 * MIB;
/// The most parts one multipart upload may have.
pub const MAX_PARTS: u32 = 10_000;
/// Parts per doubling step of the growth schedule.
pub const PARTS_PER_STEP: u32 = 1_000;

const MIB: u64 = 1024 * 1024;
const DEFAULT_MEMORY_MIB: u64 = 256;
const DEFAULT_PART_SIZE: u64 = 8 * MIB;
const MAX_IN_FLIGHT: usize = 16;

/// The memory plan of one job: buffer budget, first part size and upload concurrency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryBudget {
    memory_bytes: u64,
    buffer_bytes: u64,
    part_size: u64,
    max_in_flight: usize,
    vcpu_millis: u32,
}

impl MemoryBudget {
    /// The plan for a function with `memory_mib` MiB of memory (see the module docs).
    pub fn for_memory_mib(memory_mib: u64) -> Self {
        let memory_bytes = memory_mib.max(128) * MIB;
        let buffer_bytes = memory_bytes / 4;
        let part_size = (buffer_bytes / 17 / MIB * MIB).max(DEFAULT_PART_SIZE);
        let max_in_flight = in_flight_for(buffer_bytes, part_size, MAX_IN_FLIGHT);
        let cores = u64::from(available_cores());
        let vcpu_millis = (memory_mib.max(128) * 1000 / LAMBDA_MIB_PER_VCPU).min(cores * 1000);
        MemoryBudget {
            memory_bytes,
            buffer_bytes,
            part_size,
            max_in_flight,
            vcpu_millis: u32::try_from(vcpu_millis).unwrap_or(u32::MAX),
        }
    }

    /// The plan for this Lambda function, from `AWS_LAMBDA_FUNCTION_MEMORY_SIZE` (default 256).
    ///
    /// The CPU it may use is Lambda's share for that memory; outside Lambda (the variable
    /// unset) every core. `SLUICE_VCPUS` (a number of vCPUs, such as `0.145` or `2`) overrides
    /// both: for a box whose CPU is not what its memory would buy on Lambda.
    pub fn from_env() -> Self {
        let mib = std::env::var("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok());
        let budget = Self::for_memory_mib(mib.unwrap_or(DEFAULT_MEMORY_MIB));
        let vcpus = std::env::var("SLUICE_VCPUS")
            .ok()
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|v| v.is_finite() && *v > 0.0);
        match (vcpus, mib) {
            (Some(vcpus), _) => budget.with_vcpu_millis((vcpus * 1000.0).round().min(1e9) as u32),
            (None, None) => budget.with_vcpu_millis(available_cores().saturating_mul(1000)),
            (None, Some(_)) => budget,
        }
    }

    /// Overrides the CPU the job may use, in thousandths of a vCPU; `0` means not known (the
    /// upload window then grows on waits alone, [`PartSchedule::vcpu_millis`]).
    pub fn with_vcpu_millis(mut self, vcpu_millis: u32) -> Self {
        self.vcpu_millis = vcpu_millis;
        self
    }

    /// The CPU the job may use, in thousandths of a vCPU: Lambda's share for the memory (one
    /// vCPU per 1,769 MB; 144 at 256 MB), at most the cores, unless overridden.
    pub fn vcpu_millis(&self) -> u32 {
        self.vcpu_millis
    }

    /// Overrides the first part size (clamped to S3's 5 MiB – 5 GiB); concurrency is re-derived
    /// so the buffers still fit the budget.
    pub fn with_part_size(mut self, part_size: u64) -> Self {
        self.part_size = part_size.clamp(MIN_PART_SIZE, MAX_PART_SIZE);
        self.max_in_flight = in_flight_for(self.buffer_bytes, self.part_size, MAX_IN_FLIGHT);
        self
    }

    /// Overrides the number of parts uploading at once (at least 1). This may exceed the
    /// buffer budget; it is the caller's choice.
    pub fn with_max_in_flight(mut self, max_in_flight: usize) -> Self {
        self.max_in_flight = max_in_flight.max(1);
        self.buffer_bytes = self.buffer_bytes.max(
            (self.max_in_flight as u64)
                .saturating_add(1)
                .saturating_mul(self.part_size),
        );
        self
    }

    /// Threads a compressor may keep busy: the vCPUs Lambda gives this much memory (one per
    /// 1,769 MB, so 1 below 3,538 MB), at most the cores this process may use (the cgroup's
    /// CPU quota, else the CPU count).
    pub fn compress_threads(&self) -> u32 {
        let vcpus = (self.memory_bytes / (LAMBDA_MIB_PER_VCPU * MIB)).max(1);
        u32::try_from(vcpus.min(u64::from(available_cores()))).unwrap_or(1)
    }

    /// The function's memory in bytes.
    pub fn memory_bytes(&self) -> u64 {
        self.memory_bytes
    }

    /// Bytes set aside for part buffers (in flight plus the one filling).
    pub fn buffer_bytes(&self) -> u64 {
        self.buffer_bytes
    }

    /// Size of the first parts, before the growth schedule doubles it.
    pub fn part_size(&self) -> u64 {
        self.part_size
    }

    /// Parts uploading at once while the first part size is in use.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight
    }

    /// The plan for one of `n` jobs running at once in this function: each gets `1/n` of the
    /// buffer budget, with parts between 5 and 8 MiB and at least one part in flight.
    pub fn split(&self, n: u64) -> Self {
        if n <= 1 {
            return *self;
        }
        let buffer_bytes = self.buffer_bytes / n;
        let part_size = (buffer_bytes / 2).clamp(MIN_PART_SIZE, DEFAULT_PART_SIZE) / MIB * MIB;
        MemoryBudget {
            memory_bytes: self.memory_bytes,
            buffer_bytes,
            part_size,
            max_in_flight: in_flight_for(buffer_bytes, part_size, MAX_IN_FLIGHT),
            // The writers measure the whole process's CPU time against the whole share.
            vcpu_millis: self.vcpu_millis,
        }
    }

    /// The largest record (or line) a decoder may hold: a quarter of the buffer budget
    /// (16 MiB at 256 MB), at least 1 MiB. Decoders hold one record at a time, and their
    /// buffer can briefly double while growing, so this stays within the memory plan.
    pub fn record_cap(&self) -> u64 {
        (self.buffer_bytes / 4).max(MIB)
    }

    /// The size at which a Parquet row group is flushed into the upload: an eighth of the
    /// buffer budget (8 MiB at 256 MB, 4 MiB at 128 MB), at least 1 MiB. While a row group
    /// is flushed its bytes exist twice (encoded, then on their way into the parts), so a
    /// Parquet output adds about `2 × G` to the memory plan, plus one batch of rows (`G / 4`).
    pub fn row_group_cap(&self) -> u64 {
        (self.buffer_bytes / 8).max(MIB)
    }

    /// The largest `tuning.row_group_mib` this budget allows, in bytes: half the buffer
    /// budget (32 MiB at 256 MB), at least 1 MiB.
    pub fn max_row_group_cap(&self) -> u64 {
        (self.buffer_bytes / 2 / MIB * MIB).max(MIB)
    }

    /// The largest `tuning.part_size_mib` this budget allows, in bytes: two parts (one
    /// uploading, one filling) must fit the buffer budget, so `B / 2` rounded down to a MiB.
    pub fn max_part_size(&self) -> u64 {
        (self.buffer_bytes / 2 / MIB * MIB).min(MAX_PART_SIZE)
    }

    /// The most parts in flight this budget allows with parts of `part_size` bytes:
    /// `(F + 1) × part_size ≤ B`, so `B / part_size − 1` (0 when not even two fit).
    pub fn max_in_flight_for(&self, part_size: u64) -> u64 {
        (self.buffer_bytes / part_size.max(1)).saturating_sub(1)
    }

    /// The largest `tuning.max_record_mib` this budget allows, in bytes: half the buffer
    /// budget (a record buffer may briefly double while it grows), at least 1 MiB.
    pub fn max_record_cap(&self) -> u64 {
        (self.buffer_bytes / 2 / MIB * MIB).max(MIB)
    }

    /// The largest zstd window a decoder accepts, as a log2 (`window_log_max`): the buffer
    /// budget's quarter rounded down to a power of two, between 23 (8 MiB, what every level
    /// 1–19 writes) and 27 (128 MiB, zstd's default limit). 24 (16 MiB) at 256 MB.
    pub fn zstd_window_log_max(&self) -> u32 {
        let quarter = (self.buffer_bytes / 4).max(1);
        (63 - quarter.leading_zeros()).clamp(23, 27)
    }

    /// The most objects a partitioned run may hold open: half the function's memory in
    /// [`PARTITION_OBJECT_BYTES`] (10 at 256 MB, 5 at 128 MB), at least 1.
    pub fn max_open_partitions(&self) -> usize {
        usize::try_from(self.memory_bytes / 2 / PARTITION_OBJECT_BYTES)
            .unwrap_or(usize::MAX)
            .max(1)
    }

    /// Objects a partitioned run holds open by default: half the most (5 at 256 MB).
    pub fn open_partitions(&self) -> usize {
        (self.max_open_partitions() / 2).max(1)
    }

    /// The part schedule this budget implies.
    pub fn schedule(&self) -> PartSchedule {
        PartSchedule {
            base: self.part_size,
            buffer_bytes: self.buffer_bytes,
            max_in_flight: self.max_in_flight,
            vcpu_millis: self.vcpu_millis,
        }
    }
}

/// The cores this process may use (the cgroup's CPU quota rounded up, else the CPU count).
fn available_cores() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(1))
}

fn in_flight_for(buffer_bytes: u64, part_size: u64, cap: usize) -> usize {
    let slots = (buffer_bytes / part_size.max(1)).saturating_sub(1);
    usize::try_from(slots).unwrap_or(usize::MAX).clamp(1, cap)
}

/// Part sizes and concurrency by part number, for streams whose length is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartSchedule {
    base: u64,
    buffer_bytes: u64,
    max_in_flight: usize,
    vcpu_millis: u32,
}

impl PartSchedule {
    /// Size of part `part_number` (1-based): `base × 2^((n − 1) / 1000)`, at most 5 GiB.
    pub fn part_size(&self, part_number: u32) -> u64 {
        let step = part_number.saturating_sub(1) / PARTS_PER_STEP;
        let size = self.base.saturating_mul(1u64 << step.min(20));
        size.min(MAX_PART_SIZE)
    }

    /// The CPU the job may use, in thousandths of a vCPU (`0`: not known). The upload window
    /// adds a part buffer only while the process leaves this CPU idle: a writer that waits for
    /// a slot while its uploads are computing (signing, checksums) or while the function is
    /// throttled would gain nothing from one more buffer.
    pub fn vcpu_millis(&self) -> u32 {
        self.vcpu_millis
    }

    /// Parts that may upload at once while parts of `part_size` are in use.
    pub fn max_in_flight(&self, part_size: u64) -> usize {
        in_flight_for(self.buffer_bytes, part_size, self.max_in_flight)
    }

    /// How many parts a stream of `total` bytes needs, or `None` beyond 10,000.
    pub fn parts_for(&self, total: u64) -> Option<u32> {
        let mut covered = 0u64;
        for n in 1..=MAX_PARTS {
            covered = covered.saturating_add(self.part_size(n));
            if covered >= total {
                return Some(n);
            }
        }
        None
    }
}

/// Lambda gives a function one vCPU per this many MB of memory.
const LAMBDA_MIB_PER_VCPU: u64 = 1769;

/// Allocations of at least this size get pages of their own from the kernel
/// ([`configure_allocator`]).
pub const OWN_PAGES_BYTES: usize = 1024 * 1024;

/// Heap arenas glibc may use ([`configure_allocator`]).
pub const ARENAS: i32 = 1;

/// Free memory at the top of the heap glibc keeps rather than returns ([`configure_allocator`]).
pub const KEEP_FREE_BYTES: usize = 4 * 1024 * 1024;

/// Sets up glibc's allocator for the memory plan. Must run before any other thread exists
/// (use [`runtime`]): an arena limit does not take back the arenas threads already have.
///
/// - Every allocation of [`OWN_PAGES_BYTES`] or more (part buffers, row groups) gets its own
///   mapping, returned to the kernel when it is freed. glibc otherwise raises its mmap
///   threshold to the size of the largest block freed (up to 32 MiB), after which part
///   buffers come from the heap and their pages stay resident once touched: a run that opens
///   and finishes many objects (a partitioned run) then grows past the budget's plan.
/// - One heap arena ([`ARENAS`]) for every thread. glibc gives a thread that finds the arenas
///   busy one of its own (up to 8 per core), and memory freed in one arena is never reused by
///   another: smaller buffers (batches, encoder state, spill buffers) that tasks allocate on
///   one runtime thread and free on another then leave every arena holding its own high-water
///   mark. The interleaved 2 GiB partitioned run on a busy machine reached a VmHWM of
///   154.5 MiB with the default arenas and 42.1 MiB with one.
/// - Up to [`KEEP_FREE_BYTES`] free at the top of the heap stays mapped (glibc's default
///   returns all but 128 KiB at every free). The HTTP stacks' read buffers (up to about
///   400 KiB each) are allocated and freed on every few reads, and each time the heap shrank
///   their pages had to be faulted in and zeroed again: with 4 MiB kept, a signed byte copy
///   at 256 MB went from 1.18 to 1.00 CPU s/GiB.
pub fn configure_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; it runs before other threads exist, any
    // value up to 32 MiB is valid for M_MMAP_THRESHOLD and any positive one for M_ARENA_MAX.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, OWN_PAGES_BYTES as libc::c_int);
        libc::mallopt(libc::M_ARENA_MAX, ARENAS);
        libc::mallopt(libc::M_TRIM_THRESHOLD, KEEP_FREE_BYTES as libc::c_int);
    }
}

/// The multi-threaded runtime every function and the `sluice` command run on, built after
/// [`configure_allocator`]: the first thing their `main` does, before any thread starts.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    configure_allocator();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIB: u64 = 1024 * 1024 * MIB;

    #[test]
    fn lambda_256_plan() {
        let b = MemoryBudget::for_memory_mib(256);
        assert_eq!(b.buffer_bytes(), 64 * MIB);
        assert_eq!(b.part_size(), 8 * MIB);
        assert_eq!(b.max_in_flight(), 7);
        assert!((b.max_in_flight() as u64 + 1) * b.part_size() <= b.buffer_bytes());
    }

    #[test]
    fn cpu_share_follows_lambda_memory() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        assert_eq!(MemoryBudget::for_memory_mib(256).vcpu_millis(), 144);
        assert_eq!(MemoryBudget::for_memory_mib(128).vcpu_millis(), 72);
        assert_eq!(
            MemoryBudget::for_memory_mib(3538).vcpu_millis(),
            2000.min(cores * 1000)
        );
        let schedule = MemoryBudget::for_memory_mib(256)
            .with_vcpu_millis(0)
            .schedule();
        assert_eq!(schedule.vcpu_millis(), 0);
    }

    #[test]
    fn compress_threads_follow_lambda_vcpus() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        assert_eq!(MemoryBudget::for_memory_mib(256).compress_threads(), 1);
        assert_eq!(MemoryBudget::for_memory_mib(3537).compress_threads(), 1);
        assert_eq!(
            MemoryBudget::for_memory_mib(3538).compress_threads(),
            2.min(cores)
        );
        assert_eq!(
            MemoryBudget::for_memory_mib(10240).compress_threads(),
            5.min(cores)
        );
    }

    #[test]
    fn buffers_fit_the_budget_at_every_memory_size() {
        for mib in [128, 256, 512, 1024, 1769, 3008, 10240] {
            let b = MemoryBudget::for_memory_mib(mib);
            assert!(b.part_size() >= MIN_PART_SIZE);
            assert!(
                (b.max_in_flight() as u64 + 1) * b.part_size() <= b.buffer_bytes(),
                "{mib} MiB: {b:?}"
            );
        }
    }

    #[test]
    fn one_tib_fits_in_ten_thousand_parts() {
        for mib in [128, 256, 1024, 10240] {
            let s = MemoryBudget::for_memory_mib(mib).schedule();
            let parts = s.parts_for(TIB).expect("1 TiB must fit");
            assert!(parts <= MAX_PARTS, "{mib} MiB: {parts} parts");
        }
        // The smallest part size S3 allows still reaches 1 TiB.
        let s = MemoryBudget::for_memory_mib(256)
            .with_part_size(MIN_PART_SIZE)
            .schedule();
        assert!(s.parts_for(TIB).unwrap() <= MAX_PARTS);
        assert_eq!(
            MemoryBudget::for_memory_mib(256).schedule().parts_for(TIB),
            Some(7032)
        );
    }

    #[test]
    fn parts_double_every_thousand() {
        let s = MemoryBudget::for_memory_mib(256).schedule();
        assert_eq!(s.part_size(1), 8 * MIB);
        assert_eq!(s.part_size(1000), 8 * MIB);
        assert_eq!(s.part_size(1001), 16 * MIB);
        assert_eq!(s.part_size(3001), 64 * MIB);
        assert_eq!(s.part_size(10_000), 4096 * MIB);
        // Concurrency shrinks as parts grow, never below one.
        assert_eq!(s.max_in_flight(8 * MIB), 7);
        assert_eq!(s.max_in_flight(16 * MIB), 3);
        assert_eq!(s.max_in_flight(32 * MIB), 1);
        assert_eq!(s.max_in_flight(64 * MIB), 1);
    }

    #[test]
    fn split_budgets_fit_together() {
        let b = MemoryBudget::for_memory_mib(256);
        for n in 1..=6 {
            let s = b.split(n);
            assert!(s.part_size() >= MIN_PART_SIZE);
            assert!(
                n * (s.max_in_flight() as u64 + 1) * s.part_size() <= b.buffer_bytes(),
                "n = {n}: {s:?}"
            );
        }
    }

    #[test]
    fn tuning_limits_follow_the_buffer_budget() {
        let b = MemoryBudget::for_memory_mib(256);
        assert_eq!(b.max_part_size(), 32 * MIB);
        assert_eq!(b.max_in_flight_for(8 * MIB), 7);
        assert_eq!(b.max_in_flight_for(16 * MIB), 3);
        assert_eq!(b.max_in_flight_for(64 * MIB), 0);
        assert_eq!(b.max_record_cap(), 32 * MIB);
        assert_eq!(b.zstd_window_log_max(), 24);
        assert_eq!(MemoryBudget::for_memory_mib(128).zstd_window_log_max(), 23);
        assert_eq!(
            MemoryBudget::for_memory_mib(10240).zstd_window_log_max(),
            27
        );
    }

    #[test]
    fn overrides_are_clamped() {
        let b = MemoryBudget::for_memory_mib(256).with_part_size(1);
        assert_eq!(b.part_size(), MIN_PART_SIZE);
        let b = MemoryBudget::for_memory_mib(256).with_max_in_flight(0);
        assert_eq!(b.max_in_flight(), 1);
    }
}
