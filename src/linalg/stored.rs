//! A large dense result (the dense NTK) held in the run's precision: a
//! float32 run keeps float32 values, half the memory of f64. Its values
//! are exactly what the backend computed (f32 → f64 is exact), so storing
//! them as they came changes no result; every reduction over them
//! accumulates in f64, and the decompositions read an f64 copy.

use super::Mat;
use crate::plan::Dtype;
use rayon::prelude::*;
use std::borrow::Cow;

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

/// A row-major dense matrix in f64 or f32.
#[derive(Clone, Debug, PartialEq)]
pub enum Stored {
    F64(Mat),
    F32 {
        rows: usize,
        cols: usize,
        data: Vec<f32>,
    },
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
        }
    }

    pub fn cols(&self) -> usize {
        match self {
            Stored::F64(m) => m.cols,
            Stored::F32 { cols, .. } => *cols,
        }
    }

    /// Number of stored values.
    pub fn len(&self) -> usize {
        self.rows() * self.cols()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the values take.
    pub fn bytes(&self) -> usize {
        match self {
            Stored::F64(m) => m.data.len() * 8,
            Stored::F32 { data, .. } => data.len() * 4,
        }
    }

    pub fn dtype(&self) -> Dtype {
        match self {
            Stored::F64(_) => Dtype::F64,
            Stored::F32 { .. } => Dtype::F32,
        }
    }

    pub fn get(&self, i: usize, j: usize) -> f64 {
        match self {
            Stored::F64(m) => m.get(i, j),
            Stored::F32 { cols, data, .. } => data[i * cols + j] as f64,
        }
    }

    /// The matrix in f64: borrowed when it is stored so, else a copy.
    pub fn as_f64(&self) -> Cow<'_, Mat> {
        match self {
            Stored::F64(m) => Cow::Borrowed(m),
            Stored::F32 { rows, cols, data } => Cow::Owned(Mat::from_vec(
                *rows,
                *cols,
                data.par_iter().map(|&x| x as f64).collect(),
            )),
        }
    }

    pub fn into_f64(self) -> Mat {
        match self {
            Stored::F64(m) => m,
            other => other.as_f64().into_owned(),
        }
    }

    pub fn trace(&self) -> f64 {
        (0..self.rows().min(self.cols()))
            .map(|i| self.get(i, i))
            .sum()
    }

    pub fn diag(&self) -> Vec<f64> {
        (0..self.rows().min(self.cols()))
            .map(|i| self.get(i, i))
            .collect()
    }

    /// Accumulated in f64.
    pub fn frobenius(&self) -> f64 {
        fn sq<T: HostElem>(d: &[T]) -> f64 {
            d.par_iter().map(|&x| x.to_f64() * x.to_f64()).sum()
        }
        match self {
            Stored::F64(m) => sq(&m.data),
            Stored::F32 { data, .. } => sq(data),
        }
        .sqrt()
    }

    /// `M v`, accumulated in f64.
    pub fn matvec(&self, v: &[f64]) -> Vec<f64> {
        fn mv<T: HostElem>(d: &[T], cols: usize, v: &[f64]) -> Vec<f64> {
            d.par_chunks(cols.max(1))
                .map(|row| row.iter().zip(v).map(|(a, b)| a.to_f64() * b).sum())
                .collect()
        }
        match self {
            Stored::F64(m) => m.matvec(v),
            Stored::F32 { cols, data, .. } => mv(data, *cols, v),
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
        assert_eq!(*b.as_f64(), m, "quarter steps are exact in f32");
        assert_eq!(a.frobenius(), b.frobenius());
        assert_eq!(a.trace(), b.trace());
        assert_eq!(a.diag(), vec![m.get(0, 0), m.get(1, 1), m.get(2, 2)]);
        let v = [1.0, -2.0, 0.5, 3.0];
        assert_eq!(a.matvec(&v), b.matvec(&v));
        assert_eq!(b.into_f64(), m);
        let z = Stored::zeros(2, 5, Dtype::F32);
        assert_eq!(
            (z.rows(), z.cols(), z.len(), z.dtype()),
            (2, 5, 10, Dtype::F32)
        );
    }
}
