//! How this process's allocator treats large blocks.
//!
//! A training step makes and drops tens of tensors of tens of megabytes (candle adds every
//! gradient into a fresh zeroed tensor, and each op allocates its output). glibc serves blocks
//! above its mmap threshold (128 KiB, rising to at most 32 MiB) with a fresh mapping and gives
//! it back on free, so every such tensor faults its pages in one by one and its unmapping
//! interrupts the other threads to flush their TLBs: a fifth of a bf16 tutorial step went
//! there (the profile in docs/PERFORMANCE.md). Serving them from the heap and keeping freed
//! memory there makes the next batch reuse the same pages. Peak memory is what a step holds
//! at once either way; only its return to the system is deferred to the process's end.

/// Keeps large blocks on the heap and freed memory in the process (glibc only; elsewhere the
/// allocator is left as it is).
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // The largest values `mallopt` takes: no block is mapped on its own, and the heap's
        // top is never trimmed in practice.
        // SAFETY: mallopt only changes glibc's tuning; it is called before any thread starts.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, i32::MAX);
            libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
            // One arena: a thread's own arena grows in separately mapped heaps of at most 64
            // MiB, which are unmapped again as they empty, so tensors made on the training
            // thread would still fault their pages in anew every batch.
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}
