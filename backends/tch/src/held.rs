//! A dense result kept where libtorch computed it ([`DeviceMatrix`]): the
//! NTK of a CUDA run stays on the GPU, and its reductions, products and
//! spectrum run there. The host receives the few numbers a measurement
//! returns, and every value only when a result needs them all.
//!
//! Every answer is accumulated in f64, as the host's reductions of a
//! stored matrix are: the values are read a band of rows at a time and
//! widened to f64 on the device, so the temporary is a band, never a
//! second copy of the whole matrix.

use crate::ops::TchOps;
use nngeo::geometry::hostcopy::BlockAt;
use nngeo::geometry::ops::{OpsError, OpsResult};
use nngeo::linalg::{DeviceMatrix, Held, Mat, Stored};
use nngeo::plan::Dtype;
use std::sync::{Arc, Mutex};
use tch::{Device, Kind, TchError, Tensor};

/// Values widened to f64 at a time (a band of rows): 128 MiB.
const BAND: usize = 1 << 24;

/// A 2-d libtorch tensor handed over by [`nngeo::geometry::ops::Ops::hold`].
pub struct HeldTensor {
    /// `tch::Tensor` is `Send` but not `Sync`; reads take turns.
    t: Mutex<Tensor>,
    rows: usize,
    cols: usize,
    dtype: Dtype,
    device: String,
}

impl std::fmt::Debug for HeldTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "HeldTensor([{}, {}], {:?}, {})",
            self.rows, self.cols, self.dtype, self.device
        )
    }
}

fn msg(err: TchError) -> String {
    let s = err.to_string();
    match s.find("\nException raised from") {
        Some(i) => format!("tch: {}", &s[..i]),
        None => format!("tch: {s}"),
    }
}

fn host(t: &Tensor) -> Result<Vec<f64>, String> {
    let t = t
        .f_to_device(Device::Cpu)
        .and_then(|t| t.f_to_kind(Kind::Double))
        .and_then(|t| t.f_contiguous())
        .map_err(msg)?;
    let n = t.numel();
    let mut out = vec![0.0f64; n];
    t.f_copy_data(&mut out, n).map_err(msg)?;
    Ok(out)
}

impl HeldTensor {
    /// Hands `t` over, once every kernel writing it has finished (reading
    /// one value waits for the device's stream), so that a timer stopped
    /// after it counts the whole build.
    pub fn new(t: Tensor, ops: &TchOps) -> OpsResult<HeldTensor> {
        let size = t.size();
        let [rows, cols] = size[..] else {
            return Err(OpsError(format!(
                "tch: a held matrix is 2-d, got shape {size:?}"
            )));
        };
        if rows > 0 && cols > 0 {
            t.f_double_value(&[0, 0])
                .map_err(|err| OpsError(msg(err)))?;
        }
        // The tensor's own precision: KFAC's factors are f64 in any run.
        let dtype = match t.kind() {
            Kind::Double => Dtype::F64,
            Kind::Float => Dtype::F32,
            _ => nngeo::geometry::ops::Ops::dtype(ops),
        };
        Ok(HeldTensor {
            t: Mutex::new(t),
            rows: rows as usize,
            cols: cols as usize,
            dtype,
            device: nngeo::geometry::ops::Ops::device(ops),
        })
    }

    /// A result computed from this matrix (f64 or f32), held beside it,
    /// row-major as every other held matrix (LAPACK's results are
    /// column-major): the products of a basis then do not depend on
    /// whether it was decomposed here or loaded from a file.
    fn sibling(&self, t: Tensor) -> Result<Stored, String> {
        let t = t.f_contiguous().map_err(msg)?;
        let size = t.size();
        let [rows, cols] = size[..] else {
            return Err(format!("tch: a held matrix is 2-d, got shape {size:?}"));
        };
        let dtype = if t.kind() == Kind::Float {
            Dtype::F32
        } else {
            Dtype::F64
        };
        Ok(Stored::Device(Held(Arc::new(HeldTensor {
            t: Mutex::new(t),
            rows: rows as usize,
            cols: cols as usize,
            dtype,
            device: self.device.clone(),
        }))))
    }

    /// The tensor, shared (not copied).
    pub fn tensor(&self) -> Tensor {
        self.with(|t| Ok(t.shallow_clone()))
            .expect("a shallow clone does not fail")
    }

    /// `(M + λI)⁻¹ B` for `B [rows, k]` (row-major), factored in f64 on
    /// the device: the host solver's input rules and words.
    fn solve_system(&self, b: &[f64], k: usize, damping: f64) -> Result<Tensor, String> {
        if self.rows != self.cols || b.len() != self.rows * k {
            return Err(format!(
                "solve: a {}×{} matrix and {} values for {k} right-hand sides",
                self.rows,
                self.cols,
                b.len()
            ));
        }
        let non_finite =
            || nngeo::linalg::LinalgError::NonFiniteInput { op: "solve_sym" }.to_string();
        if !damping.is_finite() || b.iter().any(|x| !x.is_finite()) {
            return Err(non_finite());
        }
        let rhs = self.on_device(b)?;
        let Some(a) = self.damped_f64(damping)? else {
            return Err(non_finite());
        };
        let b = rhs
            .f_to_kind(Kind::Double)
            .and_then(|b| b.f_reshape([self.rows as i64, k as i64]))
            .map_err(msg)?;
        crate::ops::solve_sym_tensor(&a, &b).map_err(|err| err.0)
    }

    /// `M + λI` in an f64 copy on the device (a copy even where `M` is
    /// already f64: the damping goes on its diagonal in place); `None`
    /// where `M` has a value that is not finite.
    fn damped_f64(&self, damping: f64) -> Result<Option<Tensor>, String> {
        self.with(|t| {
            if !all_finite(t)? {
                return Ok(None);
            }
            let a = t.f_to_dtype(Kind::Double, false, true)?;
            if damping != 0.0 {
                let _ = a.f_diagonal(0, 0, 1)?.f_add_scalar_(damping)?;
            }
            Ok(Some(a))
        })
    }

    fn with<R>(&self, f: impl FnOnce(&Tensor) -> Result<R, TchError>) -> Result<R, String> {
        let t = self.t.lock().unwrap_or_else(|p| p.into_inner());
        f(&t).map_err(msg)
    }

    /// Rows per band, and `f(first row, band as f64)` over the bands.
    fn bands(
        &self,
        rows_per: usize,
        mut f: impl FnMut(usize, &Tensor) -> Result<(), TchError>,
    ) -> Result<(), String> {
        self.with(|t| {
            let mut r = 0;
            while r < self.rows {
                let k = rows_per.min(self.rows - r);
                let band = t.f_narrow(0, r as i64, k as i64)?.f_to_kind(Kind::Double)?;
                f(r, &band)?;
                r += k;
            }
            Ok(())
        })
    }

    fn rows_per_band(&self) -> usize {
        (BAND / self.cols.max(1)).max(1)
    }

    fn on_device(&self, v: &[f64]) -> Result<Tensor, String> {
        let device = self.with(|t| Ok(t.device()))?;
        Tensor::f_from_slice(v)
            .and_then(|t| t.f_to_device(device))
            .map_err(msg)
    }
}

fn scalar(t: &Tensor) -> Result<f64, TchError> {
    t.f_double_value(&[])
}

/// Whether every value of `t` is finite (one value read back).
fn all_finite(t: &Tensor) -> Result<bool, TchError> {
    Ok(t.f_isfinite()?.f_all()?.f_int64_value(&[])? != 0)
}

impl DeviceMatrix for HeldTensor {
    fn rows(&self) -> usize {
        self.rows
    }
    fn cols(&self) -> usize {
        self.cols
    }
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn device(&self) -> String {
        self.device.clone()
    }

    fn to_host(&self) -> Result<Mat, String> {
        let data = self
            .with(|t| Ok(t.shallow_clone()))
            .and_then(|t| host(&t))?;
        Ok(Mat::from_vec(self.rows, self.cols, data))
    }

    fn trace(&self) -> Result<f64, String> {
        self.with(|t| scalar(&t.f_diagonal(0, 0, 1)?.f_sum(Kind::Double)?))
    }

    fn diag(&self) -> Result<Vec<f64>, String> {
        let d = self.with(|t| t.f_diagonal(0, 0, 1))?;
        host(&d)
    }

    fn frobenius(&self) -> Result<f64, String> {
        self.frobenius2().map(f64::sqrt)
    }

    fn frobenius2(&self) -> Result<f64, String> {
        let mut sq = 0.0;
        self.bands(self.rows_per_band(), |_, b| {
            sq += scalar(&b.f_square()?.f_sum(Kind::Double)?)?;
            Ok(())
        })?;
        Ok(sq)
    }

    fn matvec(&self, v: &[f64]) -> Result<Vec<f64>, String> {
        if v.len() != self.cols {
            return Err(format!(
                "matvec: a {}×{} matrix times a vector of {}",
                self.rows,
                self.cols,
                v.len()
            ));
        }
        let x = self.on_device(v)?;
        let mut out = Vec::with_capacity(self.rows);
        let mut parts = Vec::new();
        self.bands(self.rows_per_band(), |_, b| {
            parts.push(b.f_mv(&x)?);
            Ok(())
        })?;
        for p in parts {
            out.extend(host(&p)?);
        }
        Ok(out)
    }

    fn eigvalsh(&self) -> Result<Vec<f64>, String> {
        if self.rows != self.cols {
            return Err(format!(
                "eigvalsh: matrix must be square, got {}×{}",
                self.rows, self.cols
            ));
        }
        if self.rows == 0 {
            return Ok(Vec::new());
        }
        // The host's input rule: finite, and symmetrised (A + Aᵀ)/2.
        let vals = self.with(|t| {
            let a = t.f_to_kind(Kind::Double)?;
            if !all_finite(&a)? {
                return Ok(None);
            }
            let s = a.f_add(&a.f_transpose(0, 1)?)?.f_mul_scalar(0.5)?;
            drop(a);
            s.f_linalg_eigvalsh("L").map(Some)
        })?;
        match vals {
            Some(v) => host(&v),
            None => Err("eigvalsh: input contains NaN or infinite entries".into()),
        }
    }

    /// `(M + λI)⁻¹ v` from an f64 copy on the device (the host solver's
    /// precision), factored there: nothing of the matrix comes to the host.
    fn solve(&self, v: &[f64], damping: f64) -> Result<Vec<f64>, String> {
        if self.rows == self.cols && v.len() == self.rows && self.rows == 0 {
            return Ok(Vec::new());
        }
        host(&self.solve_system(v, 1, damping)?)
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    /// In f64 on the device where `right` is libtorch's too.
    fn sandwich(
        &self,
        x: &Mat,
        right: &dyn DeviceMatrix,
        t_left: bool,
        t_right: bool,
    ) -> Result<Mat, String> {
        let Some(r) = right.as_any().downcast_ref::<HeldTensor>() else {
            let (l, r) = (self.to_host()?, right.to_host()?);
            return Ok(nngeo::linalg::sandwich_host(&l, x, &r, t_left, t_right));
        };
        let (lr, lc) = if t_left {
            (self.cols, self.rows)
        } else {
            (self.rows, self.cols)
        };
        let (rr, rc) = if t_right {
            (r.cols, r.rows)
        } else {
            (r.rows, r.cols)
        };
        if x.rows != lc || x.cols != rr {
            return Err(format!(
                "sandwich: [{lr}, {lc}] · [{}, {}] · [{rr}, {rc}]",
                x.rows, x.cols
            ));
        }
        let xt = self
            .on_device(&x.data)?
            .f_reshape([x.rows as i64, x.cols as i64])
            .map_err(msg)?;
        let rt = r.tensor();
        let y = self.with(|l| {
            let op = |t: &Tensor, tr: bool| -> Result<Tensor, TchError> {
                let t = t.f_to_kind(Kind::Double)?;
                if tr {
                    t.f_transpose(0, 1)
                } else {
                    Ok(t)
                }
            };
            op(l, t_left)?
                .f_matmul(&xt.f_to_kind(Kind::Double)?)?
                .f_matmul(&op(&rt, t_right)?)
        })?;
        Ok(Mat::from_vec(lr, rc, host(&y)?))
    }

    /// `torch.linalg.eigh` in f64 on the device; the basis stays there.
    fn eigh(&self) -> Result<(Vec<f64>, Stored), String> {
        if self.rows != self.cols {
            return Err(format!(
                "eigh: matrix must be square, got {}×{}",
                self.rows, self.cols
            ));
        }
        if self.rows == 0 {
            return Ok((Vec::new(), Stored::from(Mat::zeros(0, 0))));
        }
        // The host's input rule: finite, and symmetrised (A + Aᵀ)/2.
        let pair = self.with(|t| {
            let a = t.f_to_kind(Kind::Double)?;
            if !all_finite(&a)? {
                return Ok(None);
            }
            let s = a.f_add(&a.f_transpose(0, 1)?)?.f_mul_scalar(0.5)?;
            s.f_linalg_eigh("L").map(Some)
        })?;
        let Some((vals, vecs)) = pair else {
            return Err(nngeo::linalg::LinalgError::NonFiniteInput { op: "eigh" }.to_string());
        };
        Ok((host(&vals)?, self.sibling(vecs)?))
    }

    fn solve_many(&self, b: &Mat, damping: f64) -> Result<Mat, String> {
        if b.rows == self.rows && self.rows == self.cols && (b.rows == 0 || b.cols == 0) {
            return Ok(Mat::zeros(b.rows, b.cols));
        }
        let x = self.solve_system(&b.data, b.cols, damping)?;
        Ok(Mat::from_vec(b.rows, b.cols, host(&x)?))
    }

    /// In f64 on the device, kept there: Cholesky's inverse, LU's solve
    /// with the identity (made there) where Cholesky breaks down.
    fn damped_inverse(&self, damping: f64) -> Result<Stored, String> {
        if self.rows != self.cols {
            return Err(format!(
                "inverse: a {}×{} matrix is not square",
                self.rows, self.cols
            ));
        }
        if self.rows == 0 {
            return Ok(Stored::from(Mat::zeros(0, 0)));
        }
        let non_finite =
            || nngeo::linalg::LinalgError::NonFiniteInput { op: "solve_sym" }.to_string();
        if !damping.is_finite() {
            return Err(non_finite());
        }
        let Some(a) = self.damped_f64(damping)? else {
            return Err(non_finite());
        };
        let inverse = || -> Result<(Tensor, bool), TchError> {
            let (l, info) = a.f_linalg_cholesky_ex(false, false)?;
            if info.f_int64_value(&[])? == 0 {
                let x = l.f_cholesky_inverse(false)?;
                if all_finite(&x)? {
                    return Ok((x, true));
                }
            }
            drop(l);
            let eye = Tensor::f_eye(self.rows as i64, (Kind::Double, a.device()))?;
            let x = Tensor::f_linalg_solve(&a, &eye, true)?;
            let finite = all_finite(&x)?;
            Ok((x, finite))
        };
        let (x, finite) = inverse().map_err(msg)?;
        if !finite {
            return Err(
                "solve_sym: matrix is singular to working precision (solution is not finite)"
                    .into(),
            );
        }
        self.sibling(x)
    }

    /// `ca·M + cb·R` in f64 on the device where `R` is libtorch's too,
    /// in `M`'s precision.
    fn combine(&self, right: &dyn DeviceMatrix, ca: f64, cb: f64) -> Result<Stored, String> {
        let Some(r) = right.as_any().downcast_ref::<HeldTensor>() else {
            return nngeo::linalg::combine_host(self, right, ca, cb);
        };
        if (r.rows, r.cols) != (self.rows, self.cols) {
            return Err(format!(
                "combine: a {}×{} and a {}×{} matrix",
                self.rows, self.cols, r.rows, r.cols
            ));
        }
        let rt = r.tensor();
        let y = self.with(|l| {
            let kind = l.kind();
            l.f_to_kind(Kind::Double)?
                .f_mul_scalar(ca)?
                .f_add(&rt.f_to_kind(Kind::Double)?.f_mul_scalar(cb)?)?
                .f_to_kind(kind)
        })?;
        self.sibling(y)
    }

    fn diagonal_block_sum(&self, c: usize, n: usize) -> Result<Mat, String> {
        if c * n != self.rows || c * n != self.cols {
            return Err(format!(
                "a {}×{} matrix is not {c} × {c} blocks of {n}",
                self.rows, self.cols
            ));
        }
        let acc = self.with(|t| {
            let mut acc = Tensor::f_zeros([n as i64, n as i64], (Kind::Double, t.device()))?;
            for a in 0..c {
                let (s, w) = ((a * n) as i64, n as i64);
                let blk = t.f_narrow(0, s, w)?.f_narrow(1, s, w)?;
                acc = acc.f_add(&blk.f_to_kind(Kind::Double)?)?;
            }
            Ok(acc)
        })?;
        Ok(Mat::from_vec(n, n, host(&acc)?))
    }

    /// Centred, one band per output `a` (the `n` rows of its examples):
    /// its rows' means over each output's examples `r`, its columns' means
    /// `s`, their mean `t`, and `Σ (K − r − s + t)²` entry by entry, as the
    /// host does (no cancellation from expanding the square).
    fn alignment_terms(
        &self,
        y: &[f64],
        c: usize,
        n: usize,
        centered: bool,
    ) -> Result<(f64, f64), String> {
        let m = c * n;
        if m != self.rows || m != self.cols || y.len() != m {
            return Err(format!(
                "alignment: a {}×{} kernel over {c} outputs × {n} examples with {} targets",
                self.rows,
                self.cols,
                y.len()
            ));
        }
        if m == 0 {
            return Ok((0.0, 0.0));
        }
        let yt = self.on_device(y)?;
        let (mut num, mut sq) = (0.0, 0.0);
        let per = if centered { n } else { self.rows_per_band() };
        self.bands(per, |r0, b| {
            let k = b.size()[0];
            let ky = b.f_mv(&yt)?;
            num += scalar(&ky.f_dot(&yt.f_narrow(0, r0 as i64, k)?)?)?;
            if !centered {
                sq += scalar(&b.f_square()?.f_sum(Kind::Double)?)?;
                return Ok(());
            }
            let (ci, ni) = (c as i64, n as i64);
            let v = b.f_view([ni, ci, ni])?;
            let r = v.f_mean_dim(Some(&[2i64][..]), true, Kind::Double)?;
            let s = b.f_mean_dim(Some(&[0i64][..]), false, Kind::Double)?;
            let s = s.f_view([1, ci, ni])?;
            let t = s.f_mean_dim(Some(&[2i64][..]), true, Kind::Double)?;
            let centred = v.f_sub(&r)?.f_sub(&s)?.f_add(&t)?;
            sq += scalar(&centred.f_square()?.f_sum(Kind::Double)?)?;
            Ok(())
        })?;
        Ok((num, sq))
    }
}

/// `dst[at]` ← `t` (added where `at.accumulate`), and its mirror.
pub fn write_block(t: &Tensor, dst: &Tensor, at: BlockAt) -> OpsResult<()> {
    let go = || -> Result<(), TchError> {
        let place = |r0: usize, c0: usize, src: &Tensor| -> Result<(), TchError> {
            let mut view =
                dst.f_narrow(0, r0 as i64, src.size()[0])?
                    .f_narrow(1, c0 as i64, src.size()[1])?;
            if at.accumulate {
                let _ = view.f_add_(src)?;
            } else {
                view.f_copy_(src)?;
            }
            Ok(())
        };
        let t = t.f_reshape([at.rows as i64, at.cols as i64])?;
        place(at.r0, at.c0, &t)?;
        if at.mirror {
            place(at.c0, at.r0, &t.f_transpose(0, 1)?)?;
        }
        Ok(())
    };
    go().map_err(|err| OpsError(msg(err)))
}

/// The handle the engine keeps.
pub fn hold(t: Tensor, ops: &TchOps) -> OpsResult<nngeo::linalg::Held> {
    Ok(nngeo::linalg::Held(Arc::new(HeldTensor::new(t, ops)?)))
}
