//! The daemons' allocator, and handing freed heap back to the system.
//!
//! Both daemons allocate with jemalloc ([`Allocator`], the `netctl`
//! binary's global allocator). With glibc's malloc the manager spent a
//! fifth of its CPU in malloc, free and the page faults of arenas handed
//! back and grown again: at 1,000 simulated nodes a one-task change cost it
//! 340 ms of CPU, 150 ms with jemalloc (`bench-fleet`).
//!
//! Either allocator keeps freed memory for later allocations, and the
//! manager and the agent free in bursts (a desired-state model per
//! revision, a reconcile pass's read of every sandbox): without a release
//! their RSS would stay at their largest burst.

/// The allocator of both daemons.
pub use tikv_jemallocator::Jemalloc as Allocator;

/// jemalloc's name for every arena at once (`MALLCTL_ARENAS_ALL`).
const PURGE_EVERY_ARENA: &std::ffi::CStr = c"arena.4096.purge";

/// Returns the free pages of every jemalloc arena, and of glibc's malloc
/// where it is the C library (what C code allocates), to the kernel.
pub fn release_freed_heap() {
    // Fails only for a control name jemalloc does not know (tested).
    let _ = purge_every_arena();
    // SAFETY: malloc_trim only returns free pages of malloc's own arenas to
    // the kernel; it takes no pointers.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Hands the unused dirty pages of every jemalloc arena back; jemalloc's
/// error number, 0 when done.
fn purge_every_arena() -> i32 {
    // SAFETY: the purge control takes and returns nothing (null pointers,
    // zero lengths).
    unsafe {
        tikv_jemalloc_sys::mallctl(
            PURGE_EVERY_ARENA.as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        )
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn jemalloc_knows_the_purge_of_every_arena() {
        // A control name it does not know is ENOENT.
        assert_eq!(super::purge_every_arena(), 0);
    }
}
