//! The built-in candle backend: [`Ops`] on `candle_core::Tensor`.
//!
//! Only primitive tensor operations live here; all of the geometry is in
//! [`crate::geometry`], shared with every other backend.

use crate::geometry::ops::{Binary, Ops, OpsError, OpsResult, Reduce, Unary};
use crate::plan::Dtype;
use candle_core::{DType, Device, Tensor};

#[derive(Clone, Debug)]
pub struct CandleOps {
    device: Device,
    dtype: Dtype,
}

fn e(err: candle_core::Error) -> OpsError {
    OpsError(format!("candle: {err}"))
}

impl CandleOps {
    /// `device`: `cpu` (CUDA needs the `candle-cuda` plugin of a later issue).
    pub fn new(device: &str, dtype: Dtype) -> OpsResult<Self> {
        let device = match device {
            "cpu" => Device::Cpu,
            other => {
                return Err(OpsError(format!(
                    "the built-in candle backend runs on `cpu` only; `{other}` needs a CUDA build of the backend"
                )))
            }
        };
        Ok(CandleOps { device, dtype })
    }
    fn ct(&self) -> DType {
        match self.dtype {
            Dtype::F32 => DType::F32,
            Dtype::F64 => DType::F64,
        }
    }
}

impl Ops for CandleOps {
    type T = Tensor;

    fn name(&self) -> String {
        "candle".into()
    }
    fn device(&self) -> String {
        "cpu".into()
    }
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn upload(&self, shape: &[usize], data: &[f64]) -> OpsResult<Tensor> {
        match self.dtype {
            Dtype::F64 => Tensor::from_slice(data, shape, &self.device).map_err(e),
            Dtype::F32 => {
                let v: Vec<f32> = data.iter().map(|&x| x as f32).collect();
                Tensor::from_vec(v, shape, &self.device).map_err(e)
            }
        }
    }
    fn upload_index(&self, idx: &[u32]) -> OpsResult<Tensor> {
        Tensor::from_slice(idx, idx.len(), &self.device).map_err(e)
    }
    fn download(&self, t: &Tensor) -> OpsResult<Vec<f64>> {
        t.flatten_all()
            .and_then(|t| t.to_dtype(DType::F64))
            .and_then(|t| t.to_vec1::<f64>())
            .map_err(e)
    }
    fn shape(&self, t: &Tensor) -> Vec<usize> {
        t.dims().to_vec()
    }
    fn zeros(&self, shape: &[usize]) -> OpsResult<Tensor> {
        Tensor::zeros(shape, self.ct(), &self.device).map_err(e)
    }
    fn reshape(&self, t: &Tensor, shape: &[usize]) -> OpsResult<Tensor> {
        if t.is_contiguous() {
            t.reshape(shape).map_err(e)
        } else {
            t.contiguous().and_then(|t| t.reshape(shape)).map_err(e)
        }
    }
    fn transpose(&self, t: &Tensor, d0: usize, d1: usize) -> OpsResult<Tensor> {
        t.transpose(d0, d1).and_then(|t| t.contiguous()).map_err(e)
    }
    fn narrow(&self, t: &Tensor, dim: usize, start: usize, len: usize) -> OpsResult<Tensor> {
        t.narrow(dim, start, len)
            .and_then(|t| t.contiguous())
            .map_err(e)
    }
    fn cat(&self, ts: &[Tensor], dim: usize) -> OpsResult<Tensor> {
        Tensor::cat(ts, dim).map_err(e)
    }
    fn matmul(&self, a: &Tensor, b: &Tensor) -> OpsResult<Tensor> {
        // candle's matmul wants contiguous operands with equal batch dims.
        let a = a.contiguous().map_err(e)?;
        let b = b.contiguous().map_err(e)?;
        if a.rank() == b.rank() && a.dims()[..a.rank() - 2] == b.dims()[..b.rank() - 2] {
            a.matmul(&b).map_err(e)
        } else {
            a.broadcast_matmul(&b).map_err(e)
        }
    }
    fn unary(&self, op: Unary, t: &Tensor) -> OpsResult<Tensor> {
        let r = match op {
            Unary::Relu => t.relu(),
            Unary::Step => t.gt(0.0).and_then(|m| m.to_dtype(self.ct())),
            Unary::Tanh => t.tanh(),
            Unary::Sigmoid => candle_core::Tensor::neg(t)
                .and_then(|x| x.exp())
                .and_then(|x| x.affine(1.0, 1.0))
                .and_then(|x| x.recip()),
            Unary::GeluErf => t.gelu_erf(),
            Unary::Erf => t.erf(),
            Unary::Exp => t.exp(),
            Unary::Log => t.log(),
            Unary::Sqrt => t.sqrt(),
            Unary::Sqr => t.sqr(),
            Unary::Recip => t.recip(),
            Unary::Neg => t.neg(),
        };
        r.map_err(e)
    }
    fn binary(&self, op: Binary, a: &Tensor, b: &Tensor) -> OpsResult<Tensor> {
        let r = match op {
            Binary::Add => a.broadcast_add(b),
            Binary::Sub => a.broadcast_sub(b),
            Binary::Mul => a.broadcast_mul(b),
            Binary::Div => a.broadcast_div(b),
            Binary::Max => a.broadcast_maximum(b),
            Binary::Ge => a.broadcast_ge(b).and_then(|m| m.to_dtype(self.ct())),
        };
        r.map_err(e)
    }
    fn affine(&self, t: &Tensor, mul: f64, add: f64) -> OpsResult<Tensor> {
        t.affine(mul, add).map_err(e)
    }
    fn reduce(&self, op: Reduce, t: &Tensor, dim: usize) -> OpsResult<Tensor> {
        match op {
            Reduce::Sum => t.sum_keepdim(dim),
            Reduce::Max => t.max_keepdim(dim),
        }
        .map_err(e)
    }
    fn sum_all(&self, t: &Tensor) -> OpsResult<f64> {
        t.sum_all()
            .and_then(|s| s.to_dtype(DType::F64))
            .and_then(|s| s.to_scalar::<f64>())
            .map_err(e)
    }
    fn index_select(&self, t: &Tensor, idx: &Tensor, dim: usize) -> OpsResult<Tensor> {
        t.contiguous()
            .and_then(|t| t.index_select(idx, dim))
            .map_err(e)
    }
    fn index_add(
        &self,
        base: &Tensor,
        idx: &Tensor,
        src: &Tensor,
        dim: usize,
    ) -> OpsResult<Tensor> {
        let src = src.contiguous().map_err(e)?;
        base.index_add(idx, &src, dim).map_err(e)
    }
}
