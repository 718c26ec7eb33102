//! Reduced configurations of the shipped experiments (fewer examples and
//! steps), shared by tests/experiments.rs and the tch backend's
//! cross-backend test. Each edit must apply, so that a change to an
//! experiment file cannot silently turn a test into a run of something else.

use std::path::Path;

pub const NTK_ALIGN: &[(&str, &str)] = &[
    (
        "data train = digits(split = train) |> normalize",
        "data train = digits(split = train) |> normalize |> take(300, random, seed = 0)",
    ),
    ("epochs = 20", "epochs = 2"),
    (
        "take(10, per_class, seed = 1)",
        "take(2, per_class, seed = 1)",
    ),
];

pub const EKFAC_OPTIM: &[(&str, &str)] = &[
    (
        "data train = digits(split = train) |> normalize",
        "data train = digits(split = train) |> normalize |> take(256, random, seed = 0)",
    ),
    ("take(100, random, seed = 4)", "take(24, random, seed = 4)"),
    ("hidden = [64, 64]", "hidden = [16, 16]"),
    ("epochs = 10", "epochs = 6"),
    ("every 50 steps", "every 6 steps"),
];

pub const LAZY_VS_HASTY: &[(&str, &str)] = &[
    (
        "take(1000, random, seed = 1)",
        "take(200, random, seed = 1)",
    ),
    ("steps = 3000", "steps = 60"),
    ("every 100 steps", "every 20 steps"),
];

pub const LAZY_VS_HASTY_RESNET: &[(&str, &str)] = &[
    ("take(600, random, seed = 1)", "take(200, random, seed = 1)"),
    ("steps = 600", "steps = 40"),
    ("every 100 steps", "every 20 steps"),
];

/// `experiments/<name>.ngx` under `root` with `edits` applied, each of
/// which must apply.
pub fn source(root: &Path, name: &str, edits: &[(&str, &str)]) -> String {
    let mut src = std::fs::read_to_string(root.join(format!("experiments/{name}.ngx"))).unwrap();
    for (from, to) in edits {
        assert!(src.contains(from), "{name}.ngx no longer contains `{from}`");
        src = src.replace(from, to);
    }
    src
}
