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

/// For a binary whose global allocator is mimalloc: freed memory stays
/// mapped and is reused by the next tensor of its size instead of being
/// handed back to the OS after mimalloc's default second. With the system
/// allocator every large tensor (tens of MB in a convolution's backward
/// pass) was a fresh `mmap` whose pages the kernel zeroes on first touch,
/// and its `munmap` cost a TLB shootdown on every core: page faults of a
/// ResNet18 KFAC fell from 500k to 2k and its time by a third, an SGD
/// step's by half. The purge is scheduled an hour out, so that the
/// executor can still hand everything freed back at each step's end
/// ([`release`], a forced `mi_collect`), which keeps the resident size
/// within the plan's per-step estimate. `MIMALLOC_PURGE_DELAY` in the
/// environment still wins.
pub fn keep_freed_mimalloc_pages() {
    // mimalloc 3's `mi_option_purge_delay` (libmimalloc-sys does not name it).
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets a plain integer option; mimalloc reads it when it
        // next schedules a purge.
        unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, 3_600_000) };
    }
    set_release(|| {
        // SAFETY: mimalloc's documented collection entry point; `force`
        // purges every free range already scheduled, whatever its delay.
        unsafe { libmimalloc_sys::mi_collect(true) }
    });
}
