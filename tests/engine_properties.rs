//! The engine's mathematical properties (tests/conformance/engine_properties/)
//! on the built-in candle backend, CPU. The libtorch backend runs the same
//! module from backends/tch/tests/conformance.rs.

use nngeo::plan::Dtype;

type TestOps = nngeo::backend::candle::CandleOps;

fn test_ops(dtype: Dtype) -> TestOps {
    TestOps::new("cpu", dtype).unwrap()
}

#[path = "conformance/common.rs"]
mod common;

#[path = "conformance/engine_properties/mod.rs"]
mod engine_properties;
