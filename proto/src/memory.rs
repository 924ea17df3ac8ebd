//! Handing freed heap back to the system, for both daemons. glibc's malloc
//! keeps what a thread freed in that thread's arena for its next
//! allocations; the manager and the agent free in bursts (a desired-state
//! model per revision, a reconcile pass's read of every sandbox), so
//! without a trim their RSS stays at their largest burst.

/// Returns the free pages of every malloc arena to the kernel (nothing
/// where the C library is not glibc).
pub fn release_freed_heap() {
    // SAFETY: malloc_trim only returns free pages of malloc's own arenas to
    // the kernel; it takes no pointers.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::malloc_trim(0);
    }
}
