//! A large dense result (the dense NTK) held in the run's precision: a
//! float32 run keeps float32 values, half the memory of f64. Its values
//! are exactly what the backend computed (f32 → f64 is exact), so storing
//! them as they came changes no result; every reduction over them
//! accumulates in f64, and the decompositions read an f64 copy.
//!
//! A backend that computes on an accelerator can keep the matrix where it
//! was assembled ([`Stored::Device`], a [`DeviceMatrix`]): reductions,
//! products and the spectrum then run there, and the host receives a copy
//! only when a result needs every value (a saved matrix, a derived one).

use super::{LinalgError, Mat};
use crate::plan::Dtype;
use rayon::prelude::*;
use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

/// An element type a host matrix can be stored in.
pub trait HostElem: Copy + Send + Sync + 'static {
    fn from_f64(x: f64) -> Self;
    fn to_f64(self) -> f64;
}

impl HostElem for f64 {
    fn from_f64(x: f64) -> Self {
        x
    }
    fn to_f64(self) -> f64 {
        self
    }
}

impl HostElem for f32 {
    fn from_f64(x: f64) -> Self {
        x as f32
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
}

/// A dense matrix a backend keeps on its device, in the run's precision.
/// Every answer is in f64 and accumulated in f64 (as the host variants
/// do), so a device-held matrix gives the host's results to round-off.
/// Errors are the backend's (a device that fails mid-run).
pub trait DeviceMatrix: Send + Sync + fmt::Debug {
    fn rows(&self) -> usize;
    fn cols(&self) -> usize;
    fn dtype(&self) -> Dtype;
    /// Where it lives, as the backend names its device (`cuda:0`).
    fn device(&self) -> String;
    /// Every value, in f64 on the host: the one download.
    fn to_host(&self) -> Result<Mat, String>;
    fn trace(&self) -> Result<f64, String>;
    fn diag(&self) -> Result<Vec<f64>, String>;
    fn frobenius(&self) -> Result<f64, String>;
    /// `‖M‖²_F` as summed (no square root and square between).
    fn frobenius2(&self) -> Result<f64, String> {
        self.frobenius().map(|f| f * f)
    }
    /// `M v`.
    fn matvec(&self, v: &[f64]) -> Result<Vec<f64>, String>;
    /// Every eigenvalue of the (symmetric) matrix, ascending.
    fn eigvalsh(&self) -> Result<Vec<f64>, String>;
    /// `(M + λI)⁻¹ v` for the (symmetric) matrix, factored in f64 on the
    /// device: Cholesky, LU where Cholesky breaks down, non-finite inputs
    /// refused (the host's `solve_sym` rules and words); an error where
    /// the solution is not finite. The default solves a host copy.
    fn solve(&self, v: &[f64], damping: f64) -> Result<Vec<f64>, String> {
        let mut m = self.to_host()?;
        m.add_diag(damping);
        super::solve_sym(&m, &Mat::from_vec(v.len(), 1, v.to_vec()))
            .map(|x| x.data)
            .map_err(|e| e.to_string())
    }
    /// The value itself, for the backend that made it to find its own
    /// tensor again (an operand of [`DeviceMatrix::sandwich`], or of the
    /// run's tensors through `Ops::held_tensor`).
    fn as_any(&self) -> &dyn std::any::Any;
    /// `op(M) X op(R)` for a host matrix `X`, `op` a transpose where
    /// asked and `R` another matrix of the same backend, in f64: KFAC's
    /// `G V A` and EKFAC's rotations `U_Gᵀ V U_A`, `U_G Q U_Aᵀ` with the
    /// factors where they live. The default multiplies host copies.
    fn sandwich(
        &self,
        x: &Mat,
        right: &dyn DeviceMatrix,
        t_left: bool,
        t_right: bool,
    ) -> Result<Mat, String> {
        Ok(sandwich_host(
            &self.to_host()?,
            x,
            &right.to_host()?,
            t_left,
            t_right,
        ))
    }
    /// Eigenvalues (ascending) and eigenvectors (columns, kept where the
    /// matrix lives, in f64) of the symmetric matrix, as
    /// [`super::eigh`] (its input rules and words). The default
    /// decomposes a host copy.
    fn eigh(&self) -> Result<(Vec<f64>, Stored), String> {
        let (v, u) = super::eigh(&self.to_host()?).map_err(|e| e.to_string())?;
        Ok((v, Stored::from(u)))
    }
    /// `(M + λI)⁻¹ B` for the symmetric matrix in f64, as
    /// [`super::solve_sym`] (Cholesky, LU where it breaks down; its
    /// words). The default solves a host copy.
    fn solve_many(&self, b: &Mat, damping: f64) -> Result<Mat, String> {
        let mut m = self.to_host()?;
        m.add_diag(damping);
        super::solve_sym(&m, b).map_err(|e| e.to_string())
    }
    /// `ca·M + cb·R` for `R` another matrix of the same backend, computed
    /// in f64 and kept where `M` lives in `M`'s precision: a running
    /// average of statistics held on the device. The default combines host
    /// copies.
    fn combine(&self, right: &dyn DeviceMatrix, ca: f64, cb: f64) -> Result<Stored, String> {
        combine_host(self, right, ca, cb)
    }
    /// `(M + λI)⁻¹`, kept where the matrix lives, in f64. The default
    /// inverts a host copy.
    fn damped_inverse(&self, damping: f64) -> Result<Stored, String> {
        self.solve_many(&Mat::identity(self.rows()), damping)
            .map(Stored::from)
    }
    /// `Σ_a M[a·n .. (a+1)·n, a·n .. (a+1)·n]` over the `c` diagonal
    /// blocks of a `[c·n, c·n]` matrix: `[n, n]`.
    fn diagonal_block_sum(&self, c: usize, n: usize) -> Result<Mat, String>;
    /// `yᵀ M y` and `‖P M P‖²_F` with `P = (I_n − 11ᵀ/n) ⊗ I_c` where
    /// `centered` (else `‖M‖²_F`): the two reductions kernel–target
    /// alignment needs (`y` already centred by the caller where asked).
    fn alignment_terms(
        &self,
        y: &[f64],
        c: usize,
        n: usize,
        centered: bool,
    ) -> Result<(f64, f64), String>;
}

/// [`DeviceMatrix::combine`] of host copies: `ca·l + cb·r` in `l`'s
/// precision, on the host.
pub fn combine_host(
    l: &(impl DeviceMatrix + ?Sized),
    r: &dyn DeviceMatrix,
    ca: f64,
    cb: f64,
) -> Result<Stored, String> {
    let m = HostMatrix::combine(
        &HostMatrix::from_mat(l.to_host()?, l.dtype()),
        &HostMatrix::from_mat(r.to_host()?, r.dtype()),
        ca,
        cb,
    );
    Ok(Stored::Host(m.to_dtype(l.dtype())))
}

/// `op(l) x op(r)` on the host, `op` a transpose where asked.
pub fn sandwich_host(l: &Mat, x: &Mat, r: &Mat, t_left: bool, t_right: bool) -> Mat {
    let l = if t_left { l.transpose() } else { l.clone() };
    let r = if t_right { r.transpose() } else { r.clone() };
    l.matmul(x).matmul(&r)
}

/// A shared handle on a [`DeviceMatrix`]. Equal when both hold the same
/// values (compared on the host; a device that fails compares unequal).
#[derive(Clone, Debug)]
pub struct Held(pub Arc<dyn DeviceMatrix>);

impl PartialEq for Held {
    fn eq(&self, other: &Held) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
            || matches!((self.0.to_host(), other.0.to_host()), (Ok(a), Ok(b)) if a == b)
    }
}

fn device(e: String) -> LinalgError {
    LinalgError::Backend(e)
}

/// Where a dense result is to be kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keep {
    /// On the host, in this precision.
    Host(Dtype),
    /// On the backend's device, in the run's precision.
    Device,
}

/// A row-major dense matrix on the host, in f64 or f32. Every reduction
/// and product over it accumulates in f64; an f32 matrix is converted to
/// f64 only where a decomposition needs it.
#[derive(Clone, Debug, PartialEq)]
pub enum HostMatrix {
    F64(Mat),
    F32 {
        rows: usize,
        cols: usize,
        data: Vec<f32>,
    },
}

/// Values per block of a reduction: fixed, so that a sum does not depend
/// on how rayon splits the work.
const CHUNK: usize = 1 << 16;

impl HostMatrix {
    /// Zeros in the precision a run of `dtype` stores.
    pub fn zeros(rows: usize, cols: usize, dtype: Dtype) -> HostMatrix {
        match dtype {
            Dtype::F64 => HostMatrix::F64(Mat::zeros(rows, cols)),
            Dtype::F32 => HostMatrix::F32 {
                rows,
                cols,
                data: vec![0.0; rows * cols],
            },
        }
    }

    /// `m` in the precision of `dtype` (rounded to f32 for a float32 run).
    pub fn from_mat(m: Mat, dtype: Dtype) -> HostMatrix {
        match dtype {
            Dtype::F64 => HostMatrix::F64(m),
            Dtype::F32 => HostMatrix::F32 {
                rows: m.rows,
                cols: m.cols,
                data: m.data.par_iter().map(|&x| x as f32).collect(),
            },
        }
    }

    pub fn rows(&self) -> usize {
        match self {
            HostMatrix::F64(m) => m.rows,
            HostMatrix::F32 { rows, .. } => *rows,
        }
    }

    pub fn cols(&self) -> usize {
        match self {
            HostMatrix::F64(m) => m.cols,
            HostMatrix::F32 { cols, .. } => *cols,
        }
    }

    /// Number of stored values.
    pub fn len(&self) -> usize {
        self.rows() * self.cols()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn dtype(&self) -> Dtype {
        match self {
            HostMatrix::F64(_) => Dtype::F64,
            HostMatrix::F32 { .. } => Dtype::F32,
        }
    }

    /// Bytes the values take.
    pub fn bytes(&self) -> usize {
        self.len() * self.dtype().size() as usize
    }

    /// The matrix in f64: borrowed when it is stored so, else a copy.
    pub fn as_f64(&self) -> Cow<'_, Mat> {
        match self {
            HostMatrix::F64(m) => Cow::Borrowed(m),
            HostMatrix::F32 { rows, cols, data } => Cow::Owned(Mat::from_vec(
                *rows,
                *cols,
                data.par_iter().map(|&x| x as f64).collect(),
            )),
        }
    }

    /// Every value in f64, row-major: borrowed when stored so.
    pub fn values_f64(&self) -> Cow<'_, [f64]> {
        match self.as_f64() {
            Cow::Borrowed(m) => Cow::Borrowed(m.data.as_slice()),
            Cow::Owned(m) => Cow::Owned(m.data),
        }
    }

    /// `self = f(self, other)` entry by entry, in the stored precision.
    pub fn zip_in_place(&mut self, other: &HostMatrix, f: impl Fn(f64, f64) -> f64 + Sync) {
        let o = other.values_f64();
        match self {
            HostMatrix::F64(m) => m
                .data
                .par_iter_mut()
                .zip(&o[..])
                .for_each(|(x, y)| *x = f(*x, *y)),
            HostMatrix::F32 { data, .. } => data
                .par_iter_mut()
                .zip(&o[..])
                .for_each(|(x, y)| *x = f(*x as f64, *y) as f32),
        }
    }

    pub fn into_f64(self) -> Mat {
        match self {
            HostMatrix::F64(m) => m,
            other => other.as_f64().into_owned(),
        }
    }

    /// The same values in the precision of `dtype`.
    pub fn to_dtype(self, dtype: Dtype) -> HostMatrix {
        if self.dtype() == dtype {
            self
        } else {
            HostMatrix::from_mat(self.into_f64(), dtype)
        }
    }

    /// Reads the values in their own precision.
    fn read<R>(
        &self,
        f64s: impl FnOnce(&[f64], usize) -> R,
        f32s: impl FnOnce(&[f32], usize) -> R,
    ) -> R {
        match self {
            HostMatrix::F64(m) => f64s(&m.data, m.cols),
            HostMatrix::F32 { cols, data, .. } => f32s(data, *cols),
        }
    }

    /// Applies `f` to every value in place, in the stored precision.
    pub fn map_in_place(&mut self, f: impl Fn(f64) -> f64 + Sync) {
        match self {
            HostMatrix::F64(m) => m.data.par_iter_mut().for_each(|x| *x = f(*x)),
            HostMatrix::F32 { data, .. } => {
                data.par_iter_mut().for_each(|x| *x = f(*x as f64) as f32)
            }
        }
    }

    /// Entry `(r, c)`.
    pub fn get(&self, r: usize, c: usize) -> f64 {
        self.read(|d, w| d[r * w + c], |d, w| d[r * w + c] as f64)
    }

    pub fn diag(&self) -> Vec<f64> {
        fn dg<T: HostElem>(d: &[T], cols: usize, k: usize) -> Vec<f64> {
            (0..k).map(|i| d[i * cols + i].to_f64()).collect()
        }
        let k = self.rows().min(self.cols());
        self.read(|d, c| dg(d, c, k), |d, c| dg(d, c, k))
    }

    pub fn trace(&self) -> f64 {
        self.diag().iter().sum()
    }

    /// `Σ m²`, accumulated in f64 in fixed blocks.
    pub fn frobenius2(&self) -> f64 {
        fn sq<T: HostElem>(d: &[T], _: usize) -> f64 {
            let parts: Vec<f64> = d
                .par_chunks(CHUNK)
                .map(|c| c.iter().map(|&x| x.to_f64() * x.to_f64()).sum())
                .collect();
            parts.iter().sum()
        }
        self.read(sq, sq)
    }

    pub fn frobenius(&self) -> f64 {
        self.frobenius2().sqrt()
    }

    /// `M v`, accumulated in f64.
    pub fn matvec(&self, v: &[f64]) -> Vec<f64> {
        fn mv<T: HostElem>(d: &[T], cols: usize, v: &[f64]) -> Vec<f64> {
            d.par_chunks(cols.max(1))
                .map(|row| row.iter().zip(v).map(|(a, b)| a.to_f64() * b).sum())
                .collect()
        }
        match self {
            HostMatrix::F64(m) => m.matvec(v),
            _ => self.read(|d, c| mv(d, c, v), |d, c| mv(d, c, v)),
        }
    }

    /// The sum of the `c` diagonal `n × n` blocks of a `[c·n, c·n]`
    /// matrix, read in its own precision.
    pub fn diagonal_block_sum(&self, c: usize, n: usize) -> Mat {
        fn sum<T: HostElem>(d: &[T], cols: usize, c: usize, n: usize) -> Mat {
            let mut t = Mat::zeros(n, n);
            for a in 0..c {
                for i in 0..n {
                    let row = &d[(a * n + i) * cols + a * n..][..n];
                    t.data[i * n..(i + 1) * n]
                        .iter_mut()
                        .zip(row)
                        .for_each(|(x, v)| *x += v.to_f64());
                }
            }
            t
        }
        self.read(|d, w| sum(d, w, c, n), |d, w| sum(d, w, c, n))
    }

    /// `M + λI`, in place.
    pub fn add_diag(&mut self, lambda: f64) {
        let k = self.rows().min(self.cols());
        let w = self.cols();
        match self {
            HostMatrix::F64(m) => m.add_diag(lambda),
            HostMatrix::F32 { data, .. } => {
                (0..k).for_each(|i| data[i * w + i] = (data[i * w + i] as f64 + lambda) as f32)
            }
        }
    }

    /// `ca·a + cb·b`, computed in f64 and kept in the wider of the two
    /// precisions.
    pub fn combine(a: &HostMatrix, b: &HostMatrix, ca: f64, cb: f64) -> HostMatrix {
        let dtype = wider(a.dtype(), b.dtype());
        let (x, y) = (a.as_f64(), b.as_f64());
        let data = x
            .data
            .par_iter()
            .zip(&y.data)
            .map(|(p, q)| ca * p + cb * q)
            .collect();
        HostMatrix::from_mat(Mat::from_vec(x.rows, x.cols, data), dtype)
    }

    /// The `k × k` diagonal block starting at `(offset, offset)`.
    pub fn sub_block(&self, offset: usize, k: usize) -> HostMatrix {
        fn sub<T: HostElem>(d: &[T], cols: usize, offset: usize, k: usize) -> Vec<T> {
            let mut s = Vec::with_capacity(k * k);
            for r in 0..k {
                s.extend_from_slice(&d[(offset + r) * cols + offset..][..k]);
            }
            s
        }
        match self {
            HostMatrix::F64(m) => {
                HostMatrix::F64(Mat::from_vec(k, k, sub(&m.data, m.cols, offset, k)))
            }
            HostMatrix::F32 { cols, data, .. } => HostMatrix::F32 {
                rows: k,
                cols: k,
                data: sub(data, *cols, offset, k),
            },
        }
    }
}

/// The precision that holds values of both: f64 unless both are f32.
pub fn wider(a: Dtype, b: Dtype) -> Dtype {
    if a == Dtype::F32 && b == Dtype::F32 {
        Dtype::F32
    } else {
        Dtype::F64
    }
}

/// A dense matrix on the host (f64 or f32) or on a device.
#[derive(Clone, Debug, PartialEq)]
pub enum Stored {
    Host(HostMatrix),
    Device(Held),
}

impl From<HostMatrix> for Stored {
    fn from(m: HostMatrix) -> Stored {
        Stored::Host(m)
    }
}

impl From<Mat> for Stored {
    fn from(m: Mat) -> Stored {
        Stored::Host(HostMatrix::F64(m))
    }
}

impl Stored {
    /// Zeros on the host in the precision a run of `dtype` stores.
    pub fn zeros(rows: usize, cols: usize, dtype: Dtype) -> Stored {
        Stored::Host(HostMatrix::zeros(rows, cols, dtype))
    }

    /// `m` on the host in the precision of `dtype`.
    pub fn from_mat(m: Mat, dtype: Dtype) -> Stored {
        Stored::Host(HostMatrix::from_mat(m, dtype))
    }

    pub fn rows(&self) -> usize {
        match self {
            Stored::Host(m) => m.rows(),
            Stored::Device(d) => d.0.rows(),
        }
    }

    pub fn cols(&self) -> usize {
        match self {
            Stored::Host(m) => m.cols(),
            Stored::Device(d) => d.0.cols(),
        }
    }

    /// Number of stored values.
    pub fn len(&self) -> usize {
        self.rows() * self.cols()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the values take (on the device for a device-held matrix).
    pub fn bytes(&self) -> usize {
        self.len() * self.dtype().size() as usize
    }

    pub fn dtype(&self) -> Dtype {
        match self {
            Stored::Host(m) => m.dtype(),
            Stored::Device(d) => d.0.dtype(),
        }
    }

    /// Where the values live: `None` on the host.
    pub fn device(&self) -> Option<String> {
        match self {
            Stored::Device(d) => Some(d.0.device()),
            Stored::Host(_) => None,
        }
    }

    /// The matrix in f64 on the host: borrowed when it is stored so, else
    /// a copy (the download, for a device-held one).
    pub fn as_f64(&self) -> Result<Cow<'_, Mat>, LinalgError> {
        match self {
            Stored::Host(m) => Ok(m.as_f64()),
            Stored::Device(d) => Ok(Cow::Owned(d.0.to_host().map_err(device)?)),
        }
    }

    /// The matrix on the host in its precision: borrowed when it is there,
    /// else downloaded.
    pub fn host(&self) -> Result<Cow<'_, HostMatrix>, LinalgError> {
        match self {
            Stored::Host(m) => Ok(Cow::Borrowed(m)),
            Stored::Device(d) => Ok(Cow::Owned(HostMatrix::from_mat(
                d.0.to_host().map_err(device)?,
                d.0.dtype(),
            ))),
        }
    }

    /// The matrix on the host, to change in place (a device-held one is
    /// downloaded first and kept there from then on).
    pub fn host_mut(&mut self) -> Result<&mut HostMatrix, LinalgError> {
        if let Stored::Device(_) = self {
            *self = Stored::Host(self.host()?.into_owned());
        }
        match self {
            Stored::Host(m) => Ok(m),
            Stored::Device(_) => Err(LinalgError::Backend(
                "a device-held matrix did not come to the host".into(),
            )),
        }
    }

    /// Every value in f64, row-major (downloaded for a device-held one).
    pub fn values_f64(&self) -> Result<Cow<'_, [f64]>, LinalgError> {
        match self {
            Stored::Host(m) => Ok(m.values_f64()),
            Stored::Device(d) => Ok(Cow::Owned(d.0.to_host().map_err(device)?.data)),
        }
    }

    pub fn into_f64(self) -> Result<Mat, LinalgError> {
        match self {
            Stored::Host(m) => Ok(m.into_f64()),
            other => Ok(other.as_f64()?.into_owned()),
        }
    }

    pub fn trace(&self) -> Result<f64, LinalgError> {
        match self {
            Stored::Host(m) => Ok(m.trace()),
            Stored::Device(d) => d.0.trace().map_err(device),
        }
    }

    pub fn diag(&self) -> Result<Vec<f64>, LinalgError> {
        match self {
            Stored::Host(m) => Ok(m.diag()),
            Stored::Device(d) => d.0.diag().map_err(device),
        }
    }

    /// Accumulated in f64.
    pub fn frobenius(&self) -> Result<f64, LinalgError> {
        match self {
            Stored::Host(m) => Ok(m.frobenius()),
            Stored::Device(d) => d.0.frobenius().map_err(device),
        }
    }

    /// `‖M‖²_F`, accumulated in f64.
    pub fn frobenius2(&self) -> Result<f64, LinalgError> {
        match self {
            Stored::Host(m) => Ok(m.frobenius2()),
            Stored::Device(d) => d.0.frobenius2().map_err(device),
        }
    }

    /// `M v`, accumulated in f64.
    pub fn matvec(&self, v: &[f64]) -> Result<Vec<f64>, LinalgError> {
        match self {
            Stored::Host(m) => Ok(m.matvec(v)),
            Stored::Device(d) => d.0.matvec(v).map_err(device),
        }
    }

    /// Every eigenvalue, ascending: on the device for a device-held
    /// matrix, else from an f64 copy on the host.
    pub fn eigvalsh(&self) -> Result<Vec<f64>, LinalgError> {
        match self {
            Stored::Device(d) => d.0.eigvalsh().map_err(device),
            Stored::Host(m) => super::eigvalsh(&m.as_f64()),
        }
    }

    /// `op(self) x op(right)` in f64: on the device where both are held
    /// there, else from host copies.
    pub fn sandwich(
        &self,
        x: &Mat,
        right: &Stored,
        t_left: bool,
        t_right: bool,
    ) -> Result<Mat, LinalgError> {
        match (self, right) {
            (Stored::Device(l), Stored::Device(r)) => {
                l.0.sandwich(x, &*r.0, t_left, t_right).map_err(device)
            }
            _ => Ok(sandwich_host(
                &*self.as_f64()?,
                x,
                &*right.as_f64()?,
                t_left,
                t_right,
            )),
        }
    }

    /// `self ← ca·self + cb·other` in `self`'s precision (accumulated in
    /// f64): on the device where both are held there, else on the host (a
    /// device-held operand downloaded, `self` then kept on the host).
    pub fn combine_in_place(
        &mut self,
        other: &Stored,
        ca: f64,
        cb: f64,
    ) -> Result<(), LinalgError> {
        if let (Stored::Device(a), Stored::Device(b)) = (&*self, other) {
            *self = a.0.combine(&*b.0, ca, cb).map_err(device)?;
            return Ok(());
        }
        let x = other.host()?;
        self.host_mut()?.zip_in_place(&x, |a, b| ca * a + cb * b);
        Ok(())
    }

    /// Eigenvalues (ascending) and eigenvectors (columns, in f64, kept
    /// where the matrix lives) of a symmetric matrix; a host matrix is
    /// decomposed as [`super::eigh`] does.
    pub fn eigh(&self) -> Result<(Vec<f64>, Stored), LinalgError> {
        match self {
            Stored::Device(d) => d.0.eigh().map_err(device),
            Stored::Host(m) => {
                let (v, u) = super::eigh(&m.as_f64())?;
                Ok((v, Stored::from(u)))
            }
        }
    }

    /// `(self + λI)⁻¹ b` for a symmetric matrix, in f64: on the device for
    /// a device-held one, else where `la` solves.
    pub fn solve_many(
        &self,
        b: &Mat,
        damping: f64,
        la: &dyn super::Linalg,
    ) -> Result<Mat, LinalgError> {
        match self {
            Stored::Device(d) => d.0.solve_many(b, damping).map_err(device),
            Stored::Host(m) => {
                let mut m = m.as_f64().into_owned();
                m.add_diag(damping);
                la.solve_sym(&m, b)
            }
        }
    }

    /// `(self + λI)⁻¹` in f64, kept where the matrix lives (solved where
    /// `la` solves for a host one).
    pub fn damped_inverse(
        &self,
        damping: f64,
        la: &dyn super::Linalg,
    ) -> Result<Stored, LinalgError> {
        match self {
            Stored::Device(d) => d.0.damped_inverse(damping).map_err(device),
            Stored::Host(_) => Ok(Stored::from(self.solve_many(
                &Mat::identity(self.rows()),
                damping,
                la,
            )?)),
        }
    }

    /// Every eigenvalue, ascending: on the device for a device-held
    /// matrix, else where `la` decomposes an f64 copy.
    pub fn eigvalsh_in(&self, la: &dyn super::Linalg) -> Result<Vec<f64>, LinalgError> {
        match self {
            Stored::Device(d) => d.0.eigvalsh().map_err(device),
            Stored::Host(m) => la.eigvalsh(&m.as_f64()),
        }
    }

    /// The sum of the `c` diagonal `n × n` blocks of a `[c·n, c·n]`
    /// matrix, read in its own precision.
    pub fn diagonal_block_sum(&self, c: usize, n: usize) -> Result<Mat, LinalgError> {
        match self {
            Stored::Host(m) => Ok(m.diagonal_block_sum(c, n)),
            Stored::Device(d) => d.0.diagonal_block_sum(c, n).map_err(device),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_precisions_read_the_same_values() {
        let vals: Vec<f64> = (0..12).map(|x| (x as f64 - 5.5) * 0.25).collect();
        let m = Mat::from_vec(3, 4, vals.clone());
        let (a, b) = (
            Stored::from_mat(m.clone(), Dtype::F64),
            Stored::from_mat(m.clone(), Dtype::F32),
        );
        assert_eq!((a.bytes(), b.bytes()), (96, 48));
        assert_eq!(*b.as_f64().unwrap(), m, "quarter steps are exact in f32");
        assert_eq!(a.frobenius().unwrap(), b.frobenius().unwrap());
        assert_eq!(a.trace().unwrap(), b.trace().unwrap());
        assert_eq!(
            a.diag().unwrap(),
            vec![m.get(0, 0), m.get(1, 1), m.get(2, 2)]
        );
        let v = [1.0, -2.0, 0.5, 3.0];
        assert_eq!(a.matvec(&v).unwrap(), b.matvec(&v).unwrap());
        assert_eq!(b.into_f64().unwrap(), m);
        let z = Stored::zeros(2, 5, Dtype::F32);
        assert_eq!(
            (z.rows(), z.cols(), z.len(), z.dtype()),
            (2, 5, 10, Dtype::F32)
        );
    }

    #[test]
    fn diagonal_blocks_sum_in_either_precision() {
        // [c·n, c·n] with c = 2, n = 3: entry (r, k) = r·6 + k.
        let m = Mat::from_vec(6, 6, (0..36).map(|x| x as f64).collect());
        let want = Mat::from_vec(
            3,
            3,
            (0..9)
                .map(|ij| {
                    let (i, j) = (ij / 3, ij % 3);
                    m.get(i, j) + m.get(3 + i, 3 + j)
                })
                .collect(),
        );
        for dtype in [Dtype::F64, Dtype::F32] {
            let s = Stored::from_mat(m.clone(), dtype);
            assert_eq!(s.diagonal_block_sum(2, 3).unwrap(), want);
        }
    }
}
