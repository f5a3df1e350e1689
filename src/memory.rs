//! Allocator settings for training. A step allocates and frees the same large buffers again
//! and again (activations, logits, gradients); glibc returns big freed blocks to the operating
//! system and every step then faults them in and zeroes them again, which cost a third of the
//! cycles of a step on the reference machine (DESIGN.md, performance facts). Keeping freed
//! memory in the process avoids that; the peak is unchanged.

/// Tells glibc to serve large blocks from the heap and never trim it. Call once at start-up,
/// before the first large allocation.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called before other threads
    // allocate large blocks.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}
