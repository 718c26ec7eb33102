//! Parse + check + compile + render arbitrary text: must never panic.
//! Run with `cargo +nightly fuzz run parse_check` (seed corpus:
//! `experiments/`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use nngeo::check::CheckOptions;

fuzz_target!(|data: &[u8]| {
    let src = String::from_utf8_lossy(data);
    let opts = CheckOptions {
        default_budget: 1 << 30,
        ..CheckOptions::default()
    };
    if let Err(diags) = nngeo::compile_source(&src, &opts) {
        let _ = nngeo::diag::render("fuzz.ngx", &src, &diags);
    }
});
