//! Giving freed heap back to the operating system.
//!
//! Owns one thing: asking the allocator to return free pages. glibc's malloc keeps what a
//! burst freed (a batch import's bodies, connections the bounded cache has evicted) for reuse,
//! so the process's RSS stays at its high-water mark; measured with `bench/scale.py`, a 1M
//! import left ~50 MiB resident after its memory was freed. `malloc_trim` releases whole free
//! pages in every arena. A no-op where the allocator is not glibc's. Imports nothing of ours.

use std::time::Duration;

/// Returns whole free pages of the heap to the OS (glibc); a no-op elsewhere.
pub fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists, under its arena locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Releases free heap every `interval`, for as long as the process runs: evictions from the
/// bounded cache free memory a little at a time, never as one burst worth trimming after.
pub async fn release_periodically(interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        release_free_heap();
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    /// Resident pages of this process, in bytes.
    fn rss() -> usize {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
        pages * 4096
    }

    #[test]
    fn freed_small_allocations_leave_the_process_only_when_released() {
        const MIB: usize = 1 << 20;
        // 256 MiB in small chunks, all freed but the last: the allocator cannot shrink its heap
        // from the top, so without a trim the freed pages stay resident.
        let mut chunks: Vec<Vec<u8>> = (0..(256 * MIB / 512)).map(|_| vec![1u8; 512]).collect();
        let pin = chunks.pop();
        drop(chunks);
        let before = rss();
        super::release_free_heap();
        let after = rss();
        drop(pin);
        assert!(
            before.saturating_sub(after) > 128 * MIB,
            "RSS went from {} MiB to {} MiB",
            before / MIB,
            after / MIB
        );
    }
}
