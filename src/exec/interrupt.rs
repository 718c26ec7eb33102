//! Ctrl-C and `kill` (SIGINT, SIGTERM) during `exec`: the run stops after
//! the step in progress, so that the manifest says why it stopped and the
//! CSV, plots and summary are rebuilt from every finished result. A second
//! signal acts at once (the handler is reset after the first), as the
//! default would.

use std::sync::atomic::{AtomicI32, Ordering};

/// The first signal received (0: none).
static RECEIVED: AtomicI32 = AtomicI32::new(0);

#[cfg(unix)]
extern "C" fn on_signal(sig: libc::c_int) {
    RECEIVED.store(sig, Ordering::SeqCst);
    const MSG: &[u8] =
        b"\nnngeo: stopping after the current step (send the signal again to stop at once)\n";
    // SAFETY: write(2) is async-signal-safe; the buffer is static; errno
    // is restored, since the interrupted code may be about to read it.
    unsafe {
        let errno = *libc::__errno_location();
        libc::write(2, MSG.as_ptr().cast(), MSG.len());
        *libc::__errno_location() = errno;
    }
}

/// Installs the handlers (for the `exec` command only: the others end
/// quickly and keep the default).
pub fn install() {
    #[cfg(unix)]
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction with a plain handler and an empty
        // mask is valid; SA_RESETHAND restores the default after one use,
        // SA_RESTART resumes the system calls the signal interrupted (the
        // step goes on).
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as libc::sighandler_t;
            sa.sa_flags = libc::SA_RESETHAND | libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// The signal that asked the run to stop, if one did.
pub fn requested() -> Option<&'static str> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        #[cfg(unix)]
        libc::SIGINT => Some("SIGINT"),
        #[cfg(unix)]
        libc::SIGTERM => Some("SIGTERM"),
        _ => Some("a signal"),
    }
}
