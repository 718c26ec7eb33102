//! The built-in candle backend: [`Ops`] on `candle_core::Tensor`.
//!
//! Only primitive tensor operations live here; all of the geometry is in
//! [`crate::geometry`], shared with every other backend.

use crate::geometry::hostcopy::BlockAt;
use crate::geometry::ops::{
    conv_input_grad_default, fold_patches_default, sum_products_default, unfold_patches_default,
    Binary, Ops, OpsError, OpsResult, Reduce, Term, Unary,
};
use crate::plan::Dtype;
use candle_core::{DType, Device, Tensor};

mod fused;
mod matmul;
mod patches;

use matmul::{cpu_slice, faer_matmul, faer_t_matmul, faer_t_matmul_cols, tall_matmul};
use patches::{cpu_conv_input_grad, cpu_fold, cpu_transpose, cpu_unfold};

#[derive(Clone, Debug)]
pub struct CandleOps {
    device: Device,
    dtype: Dtype,
}

fn e(err: candle_core::Error) -> OpsError {
    OpsError(format!("candle: {err}"))
}

impl CandleOps {
    /// `device`: `cpu`; `cuda` / `cuda:N` in a build with the `cuda`
    /// feature (the `candle-cuda` plugin).
    pub fn new(device: &str, dtype: Dtype) -> OpsResult<Self> {
        let device = match device {
            "cpu" => Device::Cpu,
            #[cfg(feature = "cuda")]
            d if d == "cuda" || d.starts_with("cuda:") => {
                let n: usize = d
                    .strip_prefix("cuda:")
                    .map(|n| n.parse().map_err(|_| OpsError(format!("bad device `{d}`"))))
                    .transpose()?
                    .unwrap_or(0);
                Device::new_cuda(n).map_err(|err| {
                    OpsError(format!("candle cannot open CUDA device {n}: {err}"))
                })?
            }
            other => {
                return Err(OpsError(format!(
                    "this candle build runs on `cpu` only; `{other}` needs the `candle-cuda` plugin (backends/README.md)"
                )))
            }
        };
        Ok(CandleOps { device, dtype })
    }
    /// [`Ops::write_host_block`] into f64 or f32: straight from the
    /// storage of a contiguous CPU tensor, else through a download.
    fn write_host<T: crate::linalg::HostElem>(
        &self,
        t: &Tensor,
        dst: &mut [T],
        at: BlockAt,
    ) -> OpsResult<()> {
        let done = match t.dtype() {
            DType::F32 => fused::write_host_block::<f32, T>(t, dst, at),
            DType::F64 => fused::write_host_block::<f64, T>(t, dst, at),
            _ => None,
        };
        if done.is_none() {
            let v = self.download(t)?;
            crate::geometry::hostcopy::write_block(&v, dst, at);
        }
        Ok(())
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
        match self.device.location() {
            candle_core::DeviceLocation::Cpu => "cpu".into(),
            candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
            candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
        }
    }
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    /// On a GPU (the `candle-cuda` plugin) the optimiser steps the weights
    /// there; on the CPU the f64 host copy is kept.
    fn trains_on_device(&self) -> bool {
        !self.device.is_cpu()
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
        if t.dtype() == DType::F32 {
            let v = t
                .flatten_all()
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(e)?;
            return Ok(v.into_iter().map(f64::from).collect());
        }
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
        // candle's strided copy walks one element at a time; a blocked
        // copy is several times faster on the large captures.
        let fast = match self.dtype {
            Dtype::F32 => cpu_transpose::<f32>(t, d0.min(d1), d0.max(d1)),
            Dtype::F64 => cpu_transpose::<f64>(t, d0.min(d1), d0.max(d1)),
        };
        if let Some(r) = fast {
            return r;
        }
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
        // On the CPU, faer's kernels use AVX-512 where candle's `gemm` does
        // not: about 4× the FLOP rate on the machines we measured.
        let fast = match self.dtype {
            Dtype::F32 => faer_matmul::<f32>(&a, &b),
            Dtype::F64 => faer_matmul::<f64>(&a, &b),
        };
        if let Some(r) = fast {
            return r;
        }
        if a.rank() == b.rank() && a.dims()[..a.rank() - 2] == b.dims()[..b.rank() - 2] {
            a.matmul(&b).map_err(e)
        } else {
            a.broadcast_matmul(&b).map_err(e)
        }
    }
    fn t_matmul_cols(
        &self,
        a: &Tensor,
        ca: (usize, usize),
        b: &Tensor,
        cb: (usize, usize),
    ) -> OpsResult<Tensor> {
        // Column panels read in place: `narrow` would copy them first.
        let fast = match self.dtype {
            Dtype::F32 => faer_t_matmul_cols::<f32>(a, ca, b, cb),
            Dtype::F64 => faer_t_matmul_cols::<f64>(a, ca, b, cb),
        };
        match fast {
            Some(r) => r,
            None => self.t_matmul(
                &self.narrow(a, 1, ca.0, ca.1)?,
                &self.narrow(b, 1, cb.0, cb.1)?,
            ),
        }
    }
    fn t_matmul(&self, a: &Tensor, b: &Tensor) -> OpsResult<Tensor> {
        // `aᵀ b` with the transpose as a free view in faer.
        let a = a.contiguous().map_err(e)?;
        let b = b.contiguous().map_err(e)?;
        let fast = match self.dtype {
            Dtype::F32 => faer_t_matmul::<f32>(&a, &b),
            Dtype::F64 => faer_t_matmul::<f64>(&a, &b),
        };
        match fast {
            Some(r) => r,
            None => {
                let at = self.transpose(&a, 0, 1)?;
                self.matmul(&at, &b)
            }
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
        if op == Reduce::Sum {
            let fast = match self.dtype {
                Dtype::F32 => fused::cpu_sum_dim::<f32>(t, dim, false),
                Dtype::F64 => fused::cpu_sum_dim::<f64>(t, dim, false),
            };
            if let Some(r) = fast {
                return r;
            }
        }
        match op {
            Reduce::Sum => t.sum_keepdim(dim),
            Reduce::Max => t.max_keepdim(dim),
        }
        .map_err(e)
    }
    fn sum_sqr(&self, t: &Tensor, dim: usize) -> OpsResult<Tensor> {
        // Squared and summed in one pass, without the squares' tensor.
        let fast = match self.dtype {
            Dtype::F32 => fused::cpu_sum_dim::<f32>(t, dim, true),
            Dtype::F64 => fused::cpu_sum_dim::<f64>(t, dim, true),
        };
        match fast {
            Some(r) => r,
            None => self.sum_dim(&self.unary(Unary::Sqr, t)?, dim),
        }
    }
    fn sum_products(&self, terms: &[Term<'_, Tensor>]) -> OpsResult<Tensor> {
        let fast = match self.dtype {
            Dtype::F32 => fused::sum_products::<f32>(terms),
            Dtype::F64 => fused::sum_products::<f64>(terms),
        };
        match fast {
            Some(r) => r,
            None => sum_products_default(self, terms),
        }
    }
    fn write_host_block(&self, t: &Tensor, dst: &mut [f64], at: BlockAt) -> OpsResult<()> {
        self.write_host(t, dst, at)
    }
    fn write_host_block_f32(&self, t: &Tensor, dst: &mut [f32], at: BlockAt) -> OpsResult<()> {
        self.write_host(t, dst, at)
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
    fn unfold_patches(
        &self,
        x: &Tensor,
        idx: &Tensor,
        c: usize,
        k: usize,
        fill: f64,
        lk: bool,
    ) -> OpsResult<Tensor> {
        let x = x.contiguous().map_err(e)?;
        let fast = match self.dtype {
            Dtype::F32 => cpu_unfold::<f32>(&x, idx, c, k, fill, lk),
            Dtype::F64 => cpu_unfold::<f64>(&x, idx, c, k, fill, lk),
        };
        match fast {
            Some(r) => r,
            None => unfold_patches_default(self, &x, idx, c, k, fill, lk),
        }
    }
    fn conv_input_grad(
        &self,
        g: &Tensor,
        w: &Tensor,
        idx: &Tensor,
        c: usize,
        k: usize,
        s: usize,
    ) -> OpsResult<Tensor> {
        let g = g.contiguous().map_err(e)?;
        let w = w.contiguous().map_err(e)?;
        let fast = match self.dtype {
            Dtype::F32 => cpu_conv_input_grad::<f32>(&g, &w, idx, c, k, s),
            Dtype::F64 => cpu_conv_input_grad::<f64>(&g, &w, idx, c, k, s),
        };
        match fast {
            Some(r) => r,
            None => conv_input_grad_default(self, &g, &w, idx, c, k, s),
        }
    }
    fn fold_patches(
        &self,
        p: &Tensor,
        idx: &Tensor,
        c: usize,
        k: usize,
        s: usize,
        lk: bool,
    ) -> OpsResult<Tensor> {
        let p = p.contiguous().map_err(e)?;
        let fast = match self.dtype {
            Dtype::F32 => cpu_fold::<f32>(&p, idx, c, k, s, lk),
            Dtype::F64 => cpu_fold::<f64>(&p, idx, c, k, s, lk),
        };
        match fast {
            Some(r) => r,
            None => fold_patches_default(self, &p, idx, c, k, s, lk),
        }
    }
}
