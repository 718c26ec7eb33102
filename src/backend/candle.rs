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
use candle_core::{DType, Device, Layout, Storage, Tensor, WithDType};
use rayon::prelude::*;

mod fused;

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

fn cpu_slice<'a, D: WithDType>(s: &'a Storage, l: &Layout) -> Option<&'a [D]> {
    match s {
        Storage::Cpu(c) => c.as_slice::<D>().ok().map(|x| &x[l.start_offset()..]),
        _ => None,
    }
}

/// `[..., m, k] × [..., k, n]` with broadcast batch dimensions, through faer,
/// for contiguous CPU tensors; `None` when it does not apply.
fn faer_matmul<D>(a: &Tensor, b: &Tensor) -> Option<OpsResult<Tensor>>
where
    D: WithDType + faer::traits::ComplexField,
{
    let (ad, bd) = (a.dims(), b.dims());
    let (ra, rb) = (ad.len(), bd.len());
    if ra < 2 || rb < 2 || ad[ra - 1] != bd[rb - 2] || !a.is_contiguous() || !b.is_contiguous() {
        return None;
    }
    let (m, k, n) = (ad[ra - 2], ad[ra - 1], bd[rb - 1]);
    let (sa, la) = a.storage_and_layout();
    let (sb, lb) = b.storage_and_layout();
    let xa = cpu_slice::<D>(&sa, la)?;
    let xb = cpu_slice::<D>(&sb, lb)?;
    // Broadcast the batch dimensions, aligned on the right.
    let r = ra.max(rb) - 2;
    let dim = |d: &[usize], rank: usize, i: usize| -> usize {
        let off = r - (rank - 2);
        if i < off {
            1
        } else {
            d[i - off]
        }
    };
    let mut batch = Vec::with_capacity(r);
    for i in 0..r {
        let (x, y) = (dim(ad, ra, i), dim(bd, rb, i));
        if x != y && x != 1 && y != 1 {
            return None;
        }
        batch.push(x.max(y));
    }
    let total: usize = batch.iter().product();
    let mut out = vec![D::zero(); total * m * n];
    if rb == 2 {
        // One tall product: the batch of `a` is just more rows.
        let rows = xa.len().min(total * m * k) / k;
        tall_matmul(&mut out, &xa[..rows * k], &xb[..k * n], rows, k, n);
    } else {
        // Each product's operand offsets, then the products themselves.
        let (mut ia, mut ib) = (vec![0usize; r], vec![0usize; r]);
        let mut offsets = Vec::with_capacity(total);
        for t in 0..total {
            // Multi-index of batch t, then the operands' own batch offsets.
            let mut rem = t;
            for i in (0..r).rev() {
                let idx = rem % batch[i];
                rem /= batch[i];
                ia[i] = if dim(ad, ra, i) == 1 { 0 } else { idx };
                ib[i] = if dim(bd, rb, i) == 1 { 0 } else { idx };
            }
            let flat = |ix: &[usize], d: &[usize], rank: usize| -> usize {
                (0..r).fold(0, |acc, i| acc * dim(d, rank, i) + ix[i])
            };
            offsets.push((flat(&ia, ad, ra) * m * k, flat(&ib, bd, rb) * k * n));
        }
        let one = |dst: &mut [D], (oa, ob): (usize, usize), par: faer::Par| {
            let lhs = faer::MatRef::from_row_major_slice(&xa[oa..oa + m * k], m, k);
            let rhs = faer::MatRef::from_row_major_slice(&xb[ob..ob + k * n], k, n);
            let dst = faer::MatMut::from_row_major_slice_mut(dst, m, n);
            faer::linalg::matmul::matmul(dst, faer::Accum::Replace, lhs, rhs, D::one(), par);
        };
        if m * n > 0 && (total >= 2 * rayon::current_num_threads() || m * k * n < SEQ_WORK) {
            // Many products: one thread each, no barriers inside.
            out.par_chunks_mut(m * n)
                .zip(offsets.into_par_iter())
                .for_each(|(dst, off)| one(dst, off, faer::Par::Seq));
        } else if m * n > 0 {
            for (dst, off) in out.chunks_mut(m * n).zip(offsets) {
                one(dst, off, faer::Par::rayon(0));
            }
        }
    }
    let mut shape = batch;
    shape.extend([m, n]);
    Some(Tensor::from_vec(out, shape, &Device::Cpu).map_err(e))
}

/// Multiply-adds below which a product is not worth splitting over
/// threads: faer's parallel kernels meet at a barrier per block, and on
/// small or thin products the waiting costs more than the work (measured:
/// half of a ResNet18 KFAC's time went to those barriers).
const SEQ_WORK: usize = 1 << 20;

/// Rows of a tall product given to one task: every task packs the
/// right-hand side once, so a block must be tall enough to amortise it.
const ROW_BLOCK: usize = 1024;

/// `out [rows, n] = a [rows, k] · b [k, n]`, row-major. A tall product is
/// split into blocks of rows, each multiplied on one thread; the result is
/// the same as one product's (rows are independent), whatever the threads.
fn tall_matmul<D>(out: &mut [D], a: &[D], b: &[D], rows: usize, k: usize, n: usize)
where
    D: WithDType + faer::traits::ComplexField,
{
    use faer::{Accum, MatMut, MatRef, Par};
    if rows == 0 || n == 0 {
        return;
    }
    let rhs = MatRef::from_row_major_slice(b, k, n);
    let wide = n >= 256 && k >= 256;
    if rows < 2 * ROW_BLOCK || wide {
        // Square-ish or short: faer's own two-dimensional split is better.
        let par = if rows * k * n < SEQ_WORK {
            Par::Seq
        } else {
            Par::rayon(0)
        };
        let lhs = MatRef::from_row_major_slice(a, rows, k);
        let dst = MatMut::from_row_major_slice_mut(out, rows, n);
        faer::linalg::matmul::matmul(dst, Accum::Replace, lhs, rhs, D::one(), par);
        return;
    }
    out.par_chunks_mut(ROW_BLOCK * n)
        .zip(a.par_chunks(ROW_BLOCK * k))
        .for_each(|(o, x)| {
            let r = o.len() / n;
            let lhs = MatRef::from_row_major_slice(x, r, k);
            let dst = MatMut::from_row_major_slice_mut(o, r, n);
            faer::linalg::matmul::matmul(dst, Accum::Replace, lhs, rhs, D::one(), Par::Seq);
        });
}

/// Rows of the shared dimension one task reduces in [`faer_t_matmul`]; a
/// constant, so that partial sums (and so the rounding) do not depend on
/// the number of threads.
const K_BLOCK: usize = 8192;

/// Largest number of partial products [`faer_t_matmul`] keeps at once.
const MAX_PARTIAL_VALUES: usize = 1 << 23;

/// `aᵀ b` for contiguous 2-d CPU tensors `a [k, m]`, `b [k, n]`.
fn faer_t_matmul<D>(a: &Tensor, b: &Tensor) -> Option<OpsResult<Tensor>>
where
    D: WithDType + faer::traits::ComplexField,
{
    let (ad, bd) = (a.dims(), b.dims());
    if ad.len() != 2 || bd.len() != 2 {
        return None;
    }
    faer_t_matmul_cols::<D>(a, (0, ad[1]), b, (0, bd[1]))
}

/// `a[:, ca]ᵀ b[:, cb]` for contiguous 2-d CPU tensors `a [k, ·]`,
/// `b [k, ·]` and column ranges `(start, width)`, read in place.
fn faer_t_matmul_cols<D>(
    a: &Tensor,
    ca: (usize, usize),
    b: &Tensor,
    cb: (usize, usize),
) -> Option<OpsResult<Tensor>>
where
    D: WithDType + faer::traits::ComplexField,
{
    use faer::{Accum, MatMut, MatRef, Par};
    let (ad, bd) = (a.dims(), b.dims());
    if ad.len() != 2
        || bd.len() != 2
        || ad[0] != bd[0]
        || ca.0 + ca.1 > ad[1]
        || cb.0 + cb.1 > bd[1]
        || !a.is_contiguous()
        || !b.is_contiguous()
    {
        return None;
    }
    let (k, m, n) = (ad[0], ca.1, cb.1);
    let (lda, ldb) = (ad[1], bd[1]);
    let (sa, la) = a.storage_and_layout();
    let (sb, lb) = b.storage_and_layout();
    let xa = &cpu_slice::<D>(&sa, la)?[..k * lda];
    let xb = &cpu_slice::<D>(&sb, lb)?[..k * ldb];
    let mut out = vec![D::zero(); m * n];
    if m * n == 0 || k == 0 {
        return Some(Tensor::from_vec(out, (m, n), &Device::Cpu).map_err(e));
    }
    // Rows `r0..r1` of the two column ranges, as faer views.
    let product = |dst: &mut [D], r0: usize, r1: usize, accum: Accum, par: Par| {
        let rows = r1 - r0;
        let x = &xa[r0 * lda + ca.0..(r1 - 1) * lda + ca.0 + m];
        let y = &xb[r0 * ldb + cb.0..(r1 - 1) * ldb + cb.0 + n];
        let lhs = MatRef::from_row_major_slice_with_stride(x, rows, m, lda).transpose();
        let rhs = MatRef::from_row_major_slice_with_stride(y, rows, n, ldb);
        let dst = MatMut::from_row_major_slice_mut(dst, m, n);
        faer::linalg::matmul::matmul(dst, accum, lhs, rhs, D::one(), par);
    };
    let blocks = k.div_ceil(K_BLOCK);
    if blocks >= 2 && k >= 8 * (m + n) && blocks * m * n <= MAX_PARTIAL_VALUES {
        // A long reduction into a small result (a Kronecker factor over
        // every example and position): blocks of the shared dimension on
        // separate threads, summed in a fixed order.
        let parts: Vec<Vec<D>> = (0..blocks)
            .into_par_iter()
            .map(|blk| {
                let mut part = vec![D::zero(); m * n];
                let r0 = blk * K_BLOCK;
                product(
                    &mut part,
                    r0,
                    (r0 + K_BLOCK).min(k),
                    Accum::Replace,
                    Par::Seq,
                );
                part
            })
            .collect();
        for part in &parts {
            for (o, v) in out.iter_mut().zip(part) {
                *o += *v;
            }
        }
    } else {
        let par = if k * m * n < SEQ_WORK {
            Par::Seq
        } else {
            Par::rayon(0)
        };
        product(&mut out, 0, k, Accum::Replace, par);
    }
    Some(Tensor::from_vec(out, (m, n), &Device::Cpu).map_err(e))
}

/// The index map of [`Ops::unfold_patches`] on the host, position-major
/// (`[L, K]`), and `L`; `None` unless it is a contiguous CPU `u32` tensor.
fn host_index(idx: &Tensor, k: usize) -> Option<(Vec<u32>, usize)> {
    if !idx.is_contiguous() || k == 0 {
        return None;
    }
    let (si, li) = idx.storage_and_layout();
    let kl = idx.elem_count();
    let ix = &cpu_slice::<u32>(&si, li)?[..kl];
    let l = kl / k;
    let mut t = vec![0u32; kl];
    for (kk, row) in ix.chunks_exact(l.max(1)).enumerate() {
        for (li, &q) in row.iter().enumerate() {
            t[li * k + kk] = q;
        }
    }
    Some((t, l))
}

/// [`Ops::unfold_patches`] for a contiguous CPU tensor: one pass over the
/// output, in parallel over the batch (instead of a padded copy, a
/// gather and, for `lk`, a transpose).
fn cpu_unfold<D: WithDType>(
    x: &Tensor,
    idx: &Tensor,
    c: usize,
    k: usize,
    fill: f64,
    lk: bool,
) -> Option<OpsResult<Tensor>> {
    let b = *x.dims().first()?;
    let total = x.elem_count();
    if b == 0 || c == 0 || !total.is_multiple_of(b * c) {
        return None;
    }
    let s = total / (b * c);
    let (ixt, l) = host_index(idx, k)?;
    let (sx, lx) = x.storage_and_layout();
    let xs = &cpu_slice::<D>(&sx, lx)?[..total];
    let fill = D::from_f64(fill);
    let ck = c * k;
    let mut out = vec![D::zero(); b * ck * l];
    if ck * l > 0 {
        out.par_chunks_mut(ck * l)
            .zip(xs.par_chunks(c * s))
            .for_each(|(o, x)| {
                if lk {
                    // o [L, c·K]: written in order.
                    for (row, taps) in o.chunks_exact_mut(ck).zip(ixt.chunks_exact(k)) {
                        for (ci, dst) in row.chunks_exact_mut(k).enumerate() {
                            let xc = &x[ci * s..(ci + 1) * s];
                            for (d, &q) in dst.iter_mut().zip(taps) {
                                *d = xc.get(q as usize).copied().unwrap_or(fill);
                            }
                        }
                    }
                } else {
                    // o [c·K, L].
                    for (ci, plane) in o.chunks_exact_mut(k * l).enumerate() {
                        let xc = &x[ci * s..(ci + 1) * s];
                        for (kk, dst) in plane.chunks_exact_mut(l).enumerate() {
                            for (li, d) in dst.iter_mut().enumerate() {
                                let q = ixt[li * k + kk] as usize;
                                *d = xc.get(q).copied().unwrap_or(fill);
                            }
                        }
                    }
                }
            });
    }
    let shape = if lk { [b, l, ck] } else { [b, ck, l] };
    Some(Tensor::from_vec(out, &shape, x.device()).map_err(e))
}

/// [`Ops::fold_patches`] for a contiguous CPU tensor: each example's
/// patches summed onto its pixels in one pass, in parallel over the batch.
fn cpu_fold<D: WithDType>(
    p: &Tensor,
    idx: &Tensor,
    c: usize,
    k: usize,
    s: usize,
    lk: bool,
) -> Option<OpsResult<Tensor>> {
    let b = *p.dims().first()?;
    let (ixt, l) = host_index(idx, k)?;
    let ck = c * k;
    if b == 0 || p.elem_count() != b * ck * l {
        return None;
    }
    let (sp, lp) = p.storage_and_layout();
    let ps = &cpu_slice::<D>(&sp, lp)?[..b * ck * l];
    let mut out = vec![D::zero(); b * c * s];
    if c * s > 0 && ck * l > 0 {
        out.par_chunks_mut(c * s)
            .zip(ps.par_chunks(ck * l))
            .for_each(|(o, p)| {
                if lk {
                    fold_lk(o, p, &ixt, k, s);
                } else {
                    // p [c·K, L].
                    for (ci, plane) in p.chunks_exact(k * l).enumerate() {
                        let oc = &mut o[ci * s..(ci + 1) * s];
                        for (kk, src) in plane.chunks_exact(l).enumerate() {
                            for (li, &v) in src.iter().enumerate() {
                                if let Some(d) = oc.get_mut(ixt[li * k + kk] as usize) {
                                    *d += v;
                                }
                            }
                        }
                    }
                }
            });
    }
    Some(Tensor::from_vec(out, (b, c, s), p.device()).map_err(e))
}

/// Swaps adjacent dimensions `d0 < d1 = d0 + 1` of a contiguous CPU
/// tensor, `[pre, a, b, post]` → `[pre, b, a, post]`, in 32×32 blocks, in
/// parallel over `pre`; `None` for other cases.
fn cpu_transpose<D: WithDType>(t: &Tensor, d0: usize, d1: usize) -> Option<OpsResult<Tensor>> {
    let dims = t.dims();
    if d1 != d0 + 1 || d1 >= dims.len() || !t.is_contiguous() {
        return None;
    }
    let pre: usize = dims[..d0].iter().product();
    let (a, b) = (dims[d0], dims[d1]);
    let post: usize = dims[d1 + 1..].iter().product();
    let total = pre * a * b * post;
    let (st, lt) = t.storage_and_layout();
    let x = &cpu_slice::<D>(&st, lt)?[..total];
    let mut out = vec![D::zero(); total];
    let plane = a * b * post;
    if plane > 0 {
        const BS: usize = 32;
        out.par_chunks_mut(plane)
            .zip(x.par_chunks(plane))
            .for_each(|(o, x)| {
                for i0 in (0..a).step_by(BS) {
                    for j0 in (0..b).step_by(BS) {
                        for i in i0..(i0 + BS).min(a) {
                            for j in j0..(j0 + BS).min(b) {
                                let (to, from) = ((j * a + i) * post, (i * b + j) * post);
                                o[to..to + post].copy_from_slice(&x[from..from + post]);
                            }
                        }
                    }
                }
            });
    }
    let mut shape = dims.to_vec();
    shape.swap(d0, d1);
    Some(Tensor::from_vec(out, shape, t.device()).map_err(e))
}

/// One example's patches `p [L, c·K]` (read in order) added onto its
/// pixels `o [c, s]`; `ixt` is the position-major index map.
fn fold_lk<D: WithDType>(o: &mut [D], p: &[D], ixt: &[u32], k: usize, s: usize) {
    let ck = o.len() / s.max(1) * k;
    for (row, taps) in p.chunks_exact(ck).zip(ixt.chunks_exact(k)) {
        for (ci, src) in row.chunks_exact(k).enumerate() {
            let oc = &mut o[ci * s..(ci + 1) * s];
            for (&v, &q) in src.iter().zip(taps) {
                if let Some(d) = oc.get_mut(q as usize) {
                    *d += v;
                }
            }
        }
    }
}

/// [`Ops::conv_input_grad`] for contiguous CPU tensors, one example at a
/// time in parallel: `g_bᵀ w` (faer, the transpose a free view) into a
/// buffer of `L·c·K` values that stays in cache, folded at once onto the
/// example's pixels. Neither the patches' gradient of the batch nor the
/// transpose of `g` is ever formed.
fn cpu_conv_input_grad<D>(
    g: &Tensor,
    w: &Tensor,
    idx: &Tensor,
    c: usize,
    k: usize,
    s: usize,
) -> Option<OpsResult<Tensor>>
where
    D: WithDType + faer::traits::ComplexField,
{
    use faer::{Accum, MatMut, MatRef, Par};
    let (gd, wd) = (g.dims(), w.dims());
    if gd.len() != 3 || wd.len() != 2 || gd[1] != wd[0] {
        return None;
    }
    let (b, cout, l) = (gd[0], gd[1], gd[2]);
    let ck = c * k;
    if wd[1] != ck || b == 0 || s == 0 || ck == 0 {
        return None;
    }
    let (ixt, li) = host_index(idx, k)?;
    if li != l {
        return None;
    }
    let (sg, lg) = g.storage_and_layout();
    let (sw, lw) = w.storage_and_layout();
    let gs = &cpu_slice::<D>(&sg, lg)?[..b * cout * l];
    let ws = &cpu_slice::<D>(&sw, lw)?[..cout * ck];
    let mut out = vec![D::zero(); b * c * s];
    out.par_chunks_mut(c * s)
        .zip(gs.par_chunks(cout * l))
        .for_each_init(
            || vec![D::zero(); l * ck],
            |buf, (o, gb)| {
                let lhs = MatRef::from_row_major_slice(gb, cout, l).transpose();
                let rhs = MatRef::from_row_major_slice(ws, cout, ck);
                let dst = MatMut::from_row_major_slice_mut(buf, l, ck);
                faer::linalg::matmul::matmul(dst, Accum::Replace, lhs, rhs, D::one(), Par::Seq);
                fold_lk(o, buf, &ixt, k, s);
            },
        );
    Some(Tensor::from_vec(out, (b, c, s), g.device()).map_err(e))
}
