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
    /// `M v`.
    fn matvec(&self, v: &[f64]) -> Result<Vec<f64>, String>;
    /// Every eigenvalue of the (symmetric) matrix, ascending.
    fn eigvalsh(&self) -> Result<Vec<f64>, String>;
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

/// A row-major dense matrix in f64 or f32 on the host, or on a device.
#[derive(Clone, Debug, PartialEq)]
pub enum Stored {
    F64(Mat),
    F32 {
        rows: usize,
        cols: usize,
        data: Vec<f32>,
    },
    Device(Held),
}

impl Stored {
    /// Zeros in the precision a run of `dtype` stores.
    pub fn zeros(rows: usize, cols: usize, dtype: Dtype) -> Stored {
        match dtype {
            Dtype::F64 => Stored::F64(Mat::zeros(rows, cols)),
            Dtype::F32 => Stored::F32 {
                rows,
                cols,
                data: vec![0.0; rows * cols],
            },
        }
    }

    /// `m` in the precision of `dtype` (rounded to f32 for a float32 run).
    pub fn from_mat(m: Mat, dtype: Dtype) -> Stored {
        match dtype {
            Dtype::F64 => Stored::F64(m),
            Dtype::F32 => Stored::F32 {
                rows: m.rows,
                cols: m.cols,
                data: m.data.par_iter().map(|&x| x as f32).collect(),
            },
        }
    }

    pub fn rows(&self) -> usize {
        match self {
            Stored::F64(m) => m.rows,
            Stored::F32 { rows, .. } => *rows,
            Stored::Device(d) => d.0.rows(),
        }
    }

    pub fn cols(&self) -> usize {
        match self {
            Stored::F64(m) => m.cols,
            Stored::F32 { cols, .. } => *cols,
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
        let per = match self.dtype() {
            Dtype::F64 => 8,
            Dtype::F32 => 4,
        };
        self.len() * per
    }

    pub fn dtype(&self) -> Dtype {
        match self {
            Stored::F64(_) => Dtype::F64,
            Stored::F32 { .. } => Dtype::F32,
            Stored::Device(d) => d.0.dtype(),
        }
    }

    /// Where the values live: `None` on the host.
    pub fn device(&self) -> Option<String> {
        match self {
            Stored::Device(d) => Some(d.0.device()),
            _ => None,
        }
    }

    /// The matrix in f64 on the host: borrowed when it is stored so, else
    /// a copy (the download, for a device-held one).
    pub fn as_f64(&self) -> Result<Cow<'_, Mat>, LinalgError> {
        Ok(match self {
            Stored::F64(m) => Cow::Borrowed(m),
            Stored::F32 { rows, cols, data } => Cow::Owned(Mat::from_vec(
                *rows,
                *cols,
                data.par_iter().map(|&x| x as f64).collect(),
            )),
            Stored::Device(d) => Cow::Owned(d.0.to_host().map_err(device)?),
        })
    }

    pub fn into_f64(self) -> Result<Mat, LinalgError> {
        match self {
            Stored::F64(m) => Ok(m),
            other => Ok(other.as_f64()?.into_owned()),
        }
    }

    /// Reads the host values in their own precision.
    fn host<R>(
        &self,
        f64s: impl FnOnce(&[f64], usize) -> R,
        f32s: impl FnOnce(&[f32], usize) -> R,
    ) -> Option<R> {
        match self {
            Stored::F64(m) => Some(f64s(&m.data, m.cols)),
            Stored::F32 { cols, data, .. } => Some(f32s(data, *cols)),
            Stored::Device(_) => None,
        }
    }

    pub fn trace(&self) -> Result<f64, LinalgError> {
        match self {
            Stored::Device(d) => d.0.trace().map_err(device),
            _ => Ok(self.diag()?.iter().sum()),
        }
    }

    pub fn diag(&self) -> Result<Vec<f64>, LinalgError> {
        fn dg<T: HostElem>(d: &[T], cols: usize, k: usize) -> Vec<f64> {
            (0..k).map(|i| d[i * cols + i].to_f64()).collect()
        }
        let k = self.rows().min(self.cols());
        match self {
            Stored::Device(d) => d.0.diag().map_err(device),
            _ => Ok(self
                .host(|d, c| dg(d, c, k), |d, c| dg(d, c, k))
                .unwrap_or_default()),
        }
    }

    /// Accumulated in f64.
    pub fn frobenius(&self) -> Result<f64, LinalgError> {
        fn sq<T: HostElem>(d: &[T], _: usize) -> f64 {
            d.par_iter().map(|&x| x.to_f64() * x.to_f64()).sum()
        }
        match self {
            Stored::Device(d) => d.0.frobenius().map_err(device),
            _ => Ok(self.host(sq, sq).unwrap_or_default().sqrt()),
        }
    }

    /// `M v`, accumulated in f64.
    pub fn matvec(&self, v: &[f64]) -> Result<Vec<f64>, LinalgError> {
        fn mv<T: HostElem>(d: &[T], cols: usize, v: &[f64]) -> Vec<f64> {
            d.par_chunks(cols.max(1))
                .map(|row| row.iter().zip(v).map(|(a, b)| a.to_f64() * b).sum())
                .collect()
        }
        match self {
            Stored::Device(d) => d.0.matvec(v).map_err(device),
            Stored::F64(m) => Ok(m.matvec(v)),
            _ => Ok(self
                .host(|d, c| mv(d, c, v), |d, c| mv(d, c, v))
                .unwrap_or_default()),
        }
    }

    /// Every eigenvalue, ascending: on the device for a device-held
    /// matrix, else from an f64 copy on the host.
    pub fn eigvalsh(&self) -> Result<Vec<f64>, LinalgError> {
        match self {
            Stored::Device(d) => d.0.eigvalsh().map_err(device),
            _ => super::eigvalsh(&*self.as_f64()?),
        }
    }

    /// The sum of the `c` diagonal `n × n` blocks of a `[c·n, c·n]`
    /// matrix, read in its own precision.
    pub fn diagonal_block_sum(&self, c: usize, n: usize) -> Result<Mat, LinalgError> {
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
        match self {
            Stored::Device(d) => d.0.diagonal_block_sum(c, n).map_err(device),
            _ => Ok(self
                .host(|d, w| sum(d, w, c, n), |d, w| sum(d, w, c, n))
                .unwrap_or_else(|| Mat::zeros(n, n))),
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
