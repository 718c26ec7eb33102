//! nngeo against NNGeometry's own float64 results (tests/conformance/oracle.rs)
//! on the built-in candle backend, CPU. The libtorch backend runs the same
//! module from backends/tch/tests/conformance.rs.

use nngeo::plan::Dtype;
use std::path::PathBuf;

type TestOps = nngeo::backend::candle::CandleOps;

fn test_ops(dtype: Dtype) -> TestOps {
    TestOps::new("cpu", dtype).unwrap()
}

fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/oracle")
}

#[path = "conformance/common.rs"]
mod common;

#[path = "conformance/oracle.rs"]
mod oracle;
