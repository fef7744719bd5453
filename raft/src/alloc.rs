//! glibc malloc tuning for a long-running member: fewer arenas, and freed memory handed back.
//!
//! Measured at 65,536 leases (docs/benchmarks.md#memory): a member's table and stores need
//! about half of its RSS; the rest was memory freed into malloc's arenas and kept there —
//! every thread that allocates under contention gets its own arena (up to eight per core:
//! tokio's workers, sled's I/O threads), and the fill's short-lived buffers (request bodies,
//! log entries, snapshot encodings) leave each arena with free pages it never returns.

/// Caps glibc malloc at two arenas: the member's allocations are small and its threads few
/// and mostly idle, so more arenas buy no throughput, only memory held in each. Call it
/// before the runtime starts threads (arenas already made are kept).
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a malloc parameter; it is safe to call at any time.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Hands the free pages of every malloc arena back to the kernel. Walking the arenas takes a
/// few milliseconds at 65,536 leases, so it runs after the big allocations (a snapshot built
/// or installed), not on every request.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes malloc's own locks; it is safe to call from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}
