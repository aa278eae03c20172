//! Giving memory the process no longer uses back to the operating system.
//!
//! Owns two things. **Freed heap:** glibc's malloc keeps what a burst freed (a batch import's
//! bodies, connections the bounded cache has evicted) for reuse, so the process's RSS stays at
//! its high-water mark; measured with `bench/scale.py`, a 1M import left ~50 MiB resident after
//! its memory was freed. `malloc_trim` releases whole free pages in every arena.
//! **Start-up code:** start-up runs code from all over the binary once (CLI, YAML, rule
//! compilation, migrations, TLS roots) and the kernel maps 64 KiB around every page it faults
//! in, so a fresh process held ~8 MiB of its 11 MiB of code that serving never runs again.
//! Dropping the clean file mappings (the binary's and its libraries' code and read-only data)
//! once start-up is over leaves only what runs after.
//! The trim is a no-op off glibc, the unmapping off Linux. Imports nothing of ours.

use std::time::Duration;

/// Returns whole free pages of the heap to the OS (glibc); a no-op elsewhere.
pub fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists, under its arena locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Drops this process's clean file mappings (code and read-only data of the binary and of the
/// libraries it loaded) once start-up is over; returns the bytes advised. A private mapping that
/// is not writable and holds no anonymous (copied-on-write) page is an exact copy of its file,
/// still in the page cache: whatever runs next faults its pages back in (a minor fault, no disk
/// read). RELRO (relocated by the loader, so holding anonymous pages), writable and shared
/// mappings are left alone.
pub fn release_startup_code() -> usize {
    #[cfg(target_os = "linux")]
    {
        let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
            return 0;
        };
        let mut released = 0;
        for m in clean_file_mappings(&smaps) {
            // SAFETY: a private file mapping that cannot be written and has no anonymous page:
            // MADV_DONTNEED only drops page-table entries, the next access maps the identical
            // file page again, and nothing written is lost. Its Anonymous count cannot change
            // between the read above and this call, since nothing can write to it.
            let advised = unsafe {
                libc::madvise(
                    m.start as *mut libc::c_void,
                    m.end - m.start,
                    libc::MADV_DONTNEED,
                )
            };
            if advised == 0 {
                released += m.end - m.start;
            }
        }
        released
    }
    #[cfg(not(target_os = "linux"))]
    0
}

/// A mapping from `/proc/self/smaps`, with its resident bytes.
#[cfg(target_os = "linux")]
#[derive(Debug, PartialEq)]
struct Mapping {
    start: usize,
    end: usize,
    rss: usize,
}

/// The private, read-only, file-backed mappings of `smaps` text with no anonymous page.
#[cfg(target_os = "linux")]
fn clean_file_mappings(smaps: &str) -> Vec<Mapping> {
    let mut found = Vec::new();
    // The mapping being read: kept while it qualifies, with its Rss once seen.
    let mut current: Option<Mapping> = None;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else { continue };
        if let Some((start, end)) = first.split_once('-') {
            let perms = fields.next().unwrap_or("");
            let path = fields.nth(3).unwrap_or(""); // after offset, dev and inode
            let clean = perms.len() == 4 && &perms[1..2] == "-" && perms.ends_with('p');
            current = match (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            ) {
                (Ok(start), Ok(end)) if clean && path.starts_with('/') => {
                    Some(Mapping { start, end, rss: 0 })
                }
                _ => None,
            };
            continue;
        }
        let kib = fields.next().and_then(|v| v.parse::<usize>().ok());
        match (first, current.as_mut()) {
            ("Rss:", Some(m)) => m.rss = kib.unwrap_or(0) * 1024,
            // The last of a mapping's fields this reads: a copied page rules the mapping out.
            ("Anonymous:", Some(_)) => {
                if kib == Some(0) {
                    found.extend(current.take());
                } else {
                    current = None;
                }
            }
            _ => {}
        }
    }
    found
}

/// [`release_startup_code`] once start-up has settled, `delay` after the listeners opened: by
/// then the workers have started and the control plane's first rounds (proactive scan, census,
/// outbox poll) have run, code that would otherwise stay mapped until the process exits.
pub async fn release_startup_code_after(delay: Duration) {
    tokio::time::sleep(delay).await;
    let released = release_startup_code();
    tracing::debug!(kib = released / 1024, "start-up code unmapped");
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

    /// Resident bytes of the mappings the release may drop.
    fn clean_rss() -> usize {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        super::clean_file_mappings(&smaps)
            .iter()
            .map(|m| m.rss)
            .sum()
    }

    #[test]
    fn start_up_code_leaves_the_process_and_what_runs_next_comes_back() {
        // Every page of the clean mappings is made resident first (read, not run), so the
        // figure does not depend on how much code other tests' threads have run.
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        for m in super::clean_file_mappings(&smaps) {
            for page in (m.start..m.end).step_by(4096) {
                // SAFETY: a readable mapping of this process, from /proc/self/smaps.
                unsafe { std::ptr::read_volatile(page as *const u8) };
            }
        }
        let before = clean_rss();
        let released = super::release_startup_code();
        let after = clean_rss();
        assert!(before > 8 << 20, "only {before} bytes were resident");
        assert!(
            released >= before,
            "advised {released} of {before} resident bytes"
        );
        // Other tests' threads fault some code back in meanwhile; a quarter is far above that.
        assert!(
            after < before / 4,
            "clean RSS went from {before} to {after} bytes"
        );
        // Code that was dropped runs again: a fresh parse through code paths the call unmapped.
        let v: serde_json::Value = serde_json::from_str(r#"{"after":[1,2,3]}"#).unwrap();
        assert_eq!(v["after"][2], 3);
    }

    #[test]
    fn only_clean_private_file_mappings_are_chosen() {
        let entry = |range: &str, perms: &str, path: &str, rss: usize, anon: usize| {
            format!(
                "{range} {perms} 00000000 fe:01 42 {path}\nSize: 64 kB\nRss: {rss} kB\n\
                 Pss: {rss} kB\nAnonymous: {anon} kB\nVmFlags: rd mr\n"
            )
        };
        let smaps = [
            entry("1000-3000", "r--p", "/usr/bin/grantd", 8, 0),
            entry("3000-9000", "r-xp", "/usr/bin/grantd", 20, 0),
            entry("9000-a000", "r--p", "/usr/bin/grantd", 4, 4), // RELRO: relocated
            entry("a000-b000", "rw-p", "/usr/bin/grantd", 4, 4),
            entry("b000-c000", "r--s", "/tmp/g.db-shm", 4, 0), // shared
            entry("c000-d000", "rw-p", "[heap]", 4, 4),
            entry("d000-e000", "r-xp", "", 4, 0), // anonymous code (a JIT)
            entry(
                "e000-f000",
                "r-xp",
                "/usr/lib/x86_64-linux-gnu/libc.so.6",
                4,
                0,
            ),
        ]
        .concat();
        let chosen: Vec<(usize, usize, usize)> = super::clean_file_mappings(&smaps)
            .iter()
            .map(|m| (m.start, m.end, m.rss / 1024))
            .collect();
        assert_eq!(
            chosen,
            [
                (0x1000, 0x3000, 8),
                (0x3000, 0x9000, 20),
                (0xe000, 0xf000, 4)
            ],
            "the binary's rodata and code and libc's code; not RELRO, data, shared or anonymous"
        );
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
