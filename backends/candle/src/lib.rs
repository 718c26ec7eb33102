//! The candle backend as a plugin: the same engine that is linked into
//! `nngeo`, loaded through the C ABI. The test suite runs through it
//! (`NNGEO_BACKEND=plugin:candle`) to check the plugin boundary end to end.

use nngeo::backend::{Backend, BackendError};
use nngeo::plugin::BackendPlugin;
use nngeo::select::candle_backend;

pub struct Candle;

impl BackendPlugin for Candle {
    const NAME: &'static str = "candle";
    fn framework() -> String {
        "candle-core 0.11 (CPU)".into()
    }
    fn create() -> Result<Box<dyn Backend>, BackendError> {
        Ok(candle_backend())
    }
}

nngeo::export_backend!(Candle);
