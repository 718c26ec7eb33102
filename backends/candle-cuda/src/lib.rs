//! candle with its CUDA kernels, as a plugin. A binary linked with them
//! needs `libcuda.so.1` from an NVIDIA driver just to start, so this cannot
//! be built into `nngeo`: as a plugin it fails to load where there is no
//! driver, `nngeo backends` shows the loader's reason, and CPU candle keeps
//! working. Build recipe: backends/README.md.

use nngeo::backend::{candle::CandleOps, Backend, BackendError};
use nngeo::engine::Engine;
use nngeo::plugin::BackendPlugin;

pub struct CandleCuda;

fn cuda_devices() -> Vec<String> {
    let mut v = vec!["cpu".to_string()];
    // Probe ordinals until one fails to open.
    for n in 0..16 {
        if candle_core_device(n).is_err() {
            break;
        }
        v.push(format!("cuda:{n}"));
    }
    v
}

fn candle_core_device(n: usize) -> Result<CandleOps, String> {
    CandleOps::new(&format!("cuda:{n}"), nngeo::plan::Dtype::F32).map_err(|e| e.to_string())
}

impl BackendPlugin for CandleCuda {
    const NAME: &'static str = "candle-cuda";
    fn framework() -> String {
        "candle-core 0.11 with CUDA kernels (cudarc)".into()
    }
    fn features() -> Vec<String> {
        vec!["cuda".into()]
    }
    fn create() -> Result<Box<dyn Backend>, BackendError> {
        Ok(Box::new(
            Engine::new(
                "candle-cuda",
                concat!(
                    "nngeo ",
                    env!("CARGO_PKG_VERSION"),
                    ", candle-core 0.11 + CUDA"
                ),
                CandleOps::new,
            )
            .with_devices(cuda_devices())
            // Training steps the weights on the GPU (`CandleOps::trains_on_device`).
            .with_linalg(vec!["linalg:host".into(), "train:update:cuda".into()]),
        ))
    }
}

nngeo::export_backend!(CandleCuda);
