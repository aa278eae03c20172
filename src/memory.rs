//! Giving memory the process no longer uses back to the operating system.
//!
//! Owns two things. **Freed heap:** glibc's malloc keeps what a burst freed (a batch import's
//! bodies, connections the bounded cache has evicted) for reuse, so the process's RSS stays at
//! its high-water mark; measured with `bench/scale.py`, a 1M import left ~50 MiB resident after
//! its memory was freed. `malloc_trim` releases whole free pages in every arena.
//! **Start-up code:** start-up runs code from all over the binary once (CLI, YAML, rule
//! compilation, migrations, TLS roots) and the kernel maps 64 KiB around every page it faults
//! in, so a fresh process held ~8 MiB of its 11 MiB of code that serving never runs again.
//! Dropping the binary's read-only mappings once start-up is over leaves only what runs after.
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

/// Drops this process's mappings of its own binary's code and read-only data (the file-backed
/// `r-xp` segment and the `r--p` segment at offset 0), once start-up is over; returns the
/// bytes advised. Those pages are clean copies of the file, still in the page cache: whatever
/// runs next faults its pages back in (a minor fault, no disk read). The relocated read-only
/// data (RELRO) and the writable segments are private, written memory and are left alone.
pub fn release_startup_code() -> usize {
    #[cfg(target_os = "linux")]
    {
        let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
            return 0;
        };
        let mut released = 0;
        for (start, end) in own_clean_segments(&maps, release_startup_code as *const () as usize) {
            // SAFETY: the range is a private, never-written file mapping of our own binary, so
            // MADV_DONTNEED only drops page-table entries; the next access maps the identical
            // file page again. Nothing in it was written, so nothing is lost.
            if unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED)
            } == 0
            {
                released += end - start;
            }
        }
        released
    }
    #[cfg(not(target_os = "linux"))]
    0
}

/// The `(start, end)` of the binary's clean segments in `/proc/self/maps` text: the mappings
/// of the file that holds `code` (an address in our own text) that are `r-xp`, or `r--p` at
/// offset 0. Other `r--p` mappings of the file are RELRO, written by the dynamic loader.
#[cfg(target_os = "linux")]
fn own_clean_segments(maps: &str, code: usize) -> Vec<(usize, usize)> {
    let parsed: Vec<(usize, usize, &str, &str, &str)> = maps
        .lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let (range, perms, offset) = (f.next()?, f.next()?, f.next()?);
            let path = f.nth(2)?; // after dev and inode
            let (start, end) = range.split_once('-')?;
            let start = usize::from_str_radix(start, 16).ok()?;
            let end = usize::from_str_radix(end, 16).ok()?;
            Some((start, end, perms, offset, path))
        })
        .collect();
    let Some(exe) = parsed
        .iter()
        .find(|(s, e, ..)| (*s..*e).contains(&code))
        .map(|m| m.4)
    else {
        return Vec::new();
    };
    parsed
        .iter()
        .filter(|(_, _, perms, offset, path)| {
            *path == exe
                && (*perms == "r-xp"
                    || (*perms == "r--p" && offset.trim_start_matches('0').is_empty()))
        })
        .map(|(s, e, ..)| (*s, *e))
        .collect()
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

    /// Resident bytes of this binary's code mapping (`r-xp`), from `/proc/self/smaps`.
    fn code_rss() -> usize {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let exe = exe.to_str().unwrap();
        let mut in_code = false;
        let mut total = 0;
        for line in smaps.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields
                .first()
                .is_some_and(|f| f.contains('-') && !f.ends_with(':'))
            {
                in_code = fields.get(1) == Some(&"r-xp") && fields.last() == Some(&exe);
            } else if in_code && fields.first() == Some(&"Rss:") {
                total += fields[1].parse::<usize>().unwrap() * 1024;
            }
        }
        total
    }

    #[test]
    fn start_up_code_leaves_the_process_and_what_runs_next_comes_back() {
        // Every page of the binary's clean segments is made resident first (read, not run),
        // so the figure does not depend on how much code other tests' threads have run.
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let segments = super::own_clean_segments(&maps, code_rss as *const () as usize);
        for &(start, end) in &segments {
            for page in (start..end).step_by(4096) {
                // SAFETY: a readable mapping of our own binary, from /proc/self/maps.
                unsafe { std::ptr::read_volatile(page as *const u8) };
            }
        }
        let before = code_rss();
        let released = super::release_startup_code();
        let after = code_rss();
        assert!(
            released >= before,
            "advised {released} of {before} resident bytes"
        );
        // Other tests' threads fault some code back in meanwhile; a quarter is far above that.
        assert!(
            after < before / 4,
            "code RSS went from {before} to {after} bytes"
        );
        // Code that was dropped runs again: a fresh parse through code paths the call unmapped.
        let v: serde_json::Value = serde_json::from_str(r#"{"after":[1,2,3]}"#).unwrap();
        assert_eq!(v["after"][2], 3);
    }

    #[test]
    fn only_the_binarys_clean_segments_are_chosen() {
        let maps = "\
55d0a0000000-55d0a0321000 r--p 00000000 fe:01 42 /usr/bin/grantd
55d0a0321000-55d0a0df6000 r-xp 00321000 fe:01 42 /usr/bin/grantd
55d0a0df7000-55d0a0e53000 r--p 00df5000 fe:01 42 /usr/bin/grantd
55d0a0e53000-55d0a0e5e000 rw-p 00e51000 fe:01 42 /usr/bin/grantd
7f0000000000-7f0000028000 r--p 00000000 fe:01 7 /usr/lib/x86_64-linux-gnu/libc.so.6
7f0000028000-7f000019d000 r-xp 00028000 fe:01 7 /usr/lib/x86_64-linux-gnu/libc.so.6
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]
";
        let chosen = super::own_clean_segments(maps, 0x55d0a0400000);
        assert_eq!(
            chosen,
            [
                (0x55d0a0000000, 0x55d0a0321000),
                (0x55d0a0321000, 0x55d0a0df6000)
            ],
            "offset-0 rodata and code of the binary only: not RELRO, data, libc or the stack"
        );
        assert!(
            super::own_clean_segments(maps, 0x1000).is_empty(),
            "an address in no mapping"
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
