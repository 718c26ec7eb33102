//! The shared conformance tests (tests/conformance/ at the workspace root:
//! the engine's mathematical properties, NNGeometry's oracle values, and
//! PyTorch's BatchNorm training and graph layers) on the libtorch backend,
//! with the candle backend's tolerances. On `cpu`, or
//! on the device `$NNGEO_TEST_DEVICE` names (e.g. `cuda` on a GPU machine,
//! where this test binary is carried and run from the repository root).

use nngeo::plan::Dtype;
use std::path::PathBuf;

type TestOps = nngeo_backend_tch::TchOps;

fn test_ops(dtype: Dtype) -> TestOps {
    let device = std::env::var("NNGEO_TEST_DEVICE").unwrap_or_else(|_| "cpu".into());
    TestOps::new(&device, dtype).unwrap_or_else(|e| panic!("{e}"))
}

fn fixtures_dir() -> PathBuf {
    let built = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/oracle");
    if built.is_dir() {
        built
    } else {
        // A carried test binary, run from another checkout's root.
        PathBuf::from("tests/fixtures/oracle")
    }
}

#[path = "../../../tests/conformance/common.rs"]
mod common;

#[path = "../../../tests/conformance/engine_properties/mod.rs"]
mod engine_properties;

#[path = "../../../tests/conformance/oracle.rs"]
mod oracle;

#[path = "../../../tests/conformance/bn_training.rs"]
mod bn_training;
