//! The shared conformance tests (tests/conformance/ at the workspace root:
//! the engine's mathematical properties and NNGeometry's oracle values) on
//! the libtorch backend, CPU, with the candle backend's tolerances.

use nngeo::plan::Dtype;
use std::path::PathBuf;

type TestOps = nngeo_backend_tch::TchOps;

fn test_ops(dtype: Dtype) -> TestOps {
    TestOps::new("cpu", dtype).unwrap()
}

fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/oracle")
}

#[path = "../../../tests/conformance/engine_properties.rs"]
mod engine_properties;

#[path = "../../../tests/conformance/oracle.rs"]
mod oracle;
