//! Handing memory that the run no longer uses back to the operating
//! system at step boundaries.
//!
//! The `nngeo` binary's allocator keeps freed pages mapped for reuse: a
//! ResNet's passes free and reallocate tens of MB per layer, and fresh
//! pages cost a page fault and the kernel's zeroing each (over half of a
//! ResNet18 KFAC's time without it). Kept pages count towards the
//! process's resident size, though, and the plan's memory estimate is a
//! bound per step. So after each step the executor calls [`release`],
//! which the binary points at its allocator's purge; within a step the
//! pages stay. A library user with another allocator registers nothing
//! and [`release`] does nothing.

use std::sync::OnceLock;

static RELEASE: OnceLock<fn()> = OnceLock::new();

/// Registers the function that returns freed memory to the OS (the
/// first registration wins).
pub fn set_release(f: fn()) {
    let _ = RELEASE.set(f);
}

/// Returns freed memory to the OS, if a release function is registered.
pub fn release() {
    if let Some(f) = RELEASE.get() {
        f();
    }
}
