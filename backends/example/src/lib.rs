//! # The smallest complete nngeo backend
//!
//! A backend author implements ONE trait, [`Ops`]: twenty short methods
//! (names, upload and download, shape changes, matmul, elementwise maps, a
//! reduction, gather and scatter-add). nngeo's generic [`Engine`] turns any
//! `Ops` into a full [`Backend`] — models, backward passes, every FIM and
//! NTK structure, training — and one `export_backend!` line turns that into
//! a plugin that `nngeo --backend example` loads at run time.
//!
//! This file does it from scratch on plain `Vec<f64>` with naive loops, to
//! show that nothing else is needed. Read it top to bottom:
//!
//! 1. [`Array`], the tensor type: a shape and row-major data;
//! 2. a few index helpers (strides, NumPy broadcasting);
//! 3. `impl Ops for HostOps`, one short function per operation;
//! 4. the plugin: [`Example`] and `nngeo::export_backend!(Example)`.
//!
//! Precision: data is always stored as `f64`. In a `dtype = f32` run every
//! result is rounded to the nearest `f32` (`x as f32 as f64`), so such runs
//! behave like single precision, though sums inside one operation (matmul,
//! reductions) are accumulated in `f64` before the rounding.
//!
//! The tests (`tests/agrees_with_candle.rs`) run whole experiments through
//! this backend and through the built-in candle backend and compare every
//! number.

// A plugin needs no `unsafe`: the C ABI is nngeo's business.
#![forbid(unsafe_code)]

use nngeo::backend::{Backend, BackendError};
use nngeo::engine::Engine;
use nngeo::geometry::ops::{Binary, Ops, OpsError, OpsResult, Reduce, Unary};
use nngeo::plan::Dtype;
use nngeo::plugin::BackendPlugin;
use std::f64::consts::FRAC_1_SQRT_2;
use std::sync::Arc;

// ---------------------------------------------------------------- tensors

/// A tensor: row-major `f64` data with its shape. Always contiguous, and
/// immutable once made: every operation returns a new array. The data sits
/// behind an `Arc` so that `clone` and `reshape` copy nothing.
///
/// (Not to be confused with `nngeo::backend::HostTensor`, the neutral
/// tensor that crosses the plugin boundary.)
#[derive(Clone, Debug, PartialEq)]
pub struct Array {
    pub shape: Vec<usize>,
    pub data: Arc<Vec<f64>>,
}

fn err(msg: impl Into<String>) -> OpsError {
    OpsError(format!("example: {}", msg.into()))
}

/// Row-major strides: how far apart consecutive entries of each dim are.
fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// The flat position, in an array with `strides`, of element `i` of an
/// array of shape `out`: `i` is split into its multi-index, which is dotted
/// with `strides`. With permuted strides this transposes; with zero strides
/// it broadcasts.
fn offset(mut i: usize, out: &[usize], strides: &[usize]) -> usize {
    let mut off = 0;
    for (d, s) in out.iter().zip(strides).rev() {
        off += (i % d) * s;
        i /= d;
    }
    off
}

/// NumPy broadcasting: shapes aligned on the right; each pair of dims must
/// be equal or one of them 1.
fn broadcast_shape(a: &[usize], b: &[usize]) -> OpsResult<Vec<usize>> {
    let r = a.len().max(b.len());
    let dim = |s: &[usize], i: usize| {
        if i < r - s.len() {
            1
        } else {
            s[i - (r - s.len())]
        }
    };
    (0..r)
        .map(|i| match (dim(a, i), dim(b, i)) {
            (x, y) if x == y || y == 1 => Ok(x),
            (1, y) => Ok(y),
            _ => Err(err(format!("cannot broadcast {a:?} with {b:?}"))),
        })
        .collect()
}

/// Strides of `shape` read as the (broadcast) shape `out`: dims that are
/// missing or of size 1 get stride 0, so every index along them reads the
/// same element.
fn broadcast_strides(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let mut s = vec![0; out.len()];
    let lead = out.len() - shape.len();
    for (i, (&d, st)) in shape.iter().zip(strides(shape)).enumerate() {
        if d != 1 {
            s[lead + i] = st;
        }
    }
    s
}

/// `shape` seen as `[outer, shape[dim], inner]`, the view every
/// per-dimension operation (narrow, cat, reduce, gather, scatter) uses.
fn split_at(shape: &[usize], dim: usize) -> OpsResult<(usize, usize, usize)> {
    if dim >= shape.len() {
        return Err(err(format!("dim {dim} out of range for shape {shape:?}")));
    }
    let outer = shape[..dim].iter().product();
    let inner = shape[dim + 1..].iter().product();
    Ok((outer, shape[dim], inner))
}

// ------------------------------------------------------------- operations

/// The operations, on the CPU, in one working dtype.
#[derive(Clone, Debug)]
pub struct HostOps {
    dtype: Dtype,
}

impl HostOps {
    /// The constructor the engine calls with the experiment's `device` and
    /// `dtype`, once per run.
    pub fn new(device: &str, dtype: Dtype) -> OpsResult<Self> {
        if device != "cpu" {
            return Err(err(format!(
                "the example backend runs on `cpu` only, not `{device}`"
            )));
        }
        Ok(HostOps { dtype })
    }

    /// Every result goes through here: checks the size, and rounds to the
    /// working precision.
    fn array(&self, shape: Vec<usize>, mut data: Vec<f64>) -> OpsResult<Array> {
        if data.len() != shape.iter().product::<usize>() {
            return Err(err(format!("{} numbers for shape {shape:?}", data.len())));
        }
        data.iter_mut().for_each(|x| *x = self.round(*x));
        Ok(Array {
            shape,
            data: Arc::new(data),
        })
    }

    /// `x` in the working precision.
    fn round(&self, x: f64) -> f64 {
        match self.dtype {
            Dtype::F32 => x as f32 as f64,
            Dtype::F64 => x,
        }
    }

    /// Reads an index array (see [`Ops::upload_index`]) back as indices,
    /// each checked against the size `n` of the dimension it indexes.
    fn indices(&self, idx: &Array, n: usize) -> OpsResult<Vec<usize>> {
        if idx.shape.len() != 1 {
            return Err(err(format!("an index must be 1-d, not {:?}", idx.shape)));
        }
        idx.data
            .iter()
            .map(|&i| match i as usize {
                i if i < n => Ok(i),
                i => Err(err(format!("index {i} out of range for a dim of {n}"))),
            })
            .collect()
    }
}

impl Ops for HostOps {
    type T = Array;

    fn name(&self) -> String {
        "example".into()
    }
    fn device(&self) -> String {
        "cpu".into()
    }
    fn dtype(&self) -> Dtype {
        self.dtype
    }

    // ---- moving data in and out

    fn upload(&self, shape: &[usize], data: &[f64]) -> OpsResult<Array> {
        self.array(shape.to_vec(), data.to_vec())
    }
    /// Indices are stored as ordinary numbers (exact in f64 up to 2⁵³).
    fn upload_index(&self, idx: &[u32]) -> OpsResult<Array> {
        let data = idx.iter().map(|&i| f64::from(i)).collect();
        Ok(Array {
            shape: vec![idx.len()],
            data: Arc::new(data),
        })
    }
    fn download(&self, t: &Array) -> OpsResult<Vec<f64>> {
        Ok(t.data.to_vec())
    }
    fn shape(&self, t: &Array) -> Vec<usize> {
        t.shape.clone()
    }
    fn zeros(&self, shape: &[usize]) -> OpsResult<Array> {
        self.array(shape.to_vec(), vec![0.0; shape.iter().product()])
    }

    // ---- shape changes

    /// Row-major data does not move: only the shape changes.
    fn reshape(&self, t: &Array, shape: &[usize]) -> OpsResult<Array> {
        if shape.iter().product::<usize>() != t.data.len() {
            return Err(err(format!("cannot reshape {:?} to {shape:?}", t.shape)));
        }
        Ok(Array {
            shape: shape.to_vec(),
            data: t.data.clone(),
        })
    }
    /// Element `i` of the result is read through the input's strides with
    /// the two dims swapped.
    fn transpose(&self, t: &Array, d0: usize, d1: usize) -> OpsResult<Array> {
        let (mut shape, mut st) = (t.shape.clone(), strides(&t.shape));
        if d0 >= shape.len() || d1 >= shape.len() {
            return Err(err(format!("cannot swap dims {d0}, {d1} of {shape:?}")));
        }
        shape.swap(d0, d1);
        st.swap(d0, d1);
        let data = (0..t.data.len())
            .map(|i| t.data[offset(i, &shape, &st)])
            .collect();
        self.array(shape, data)
    }
    fn narrow(&self, t: &Array, dim: usize, start: usize, len: usize) -> OpsResult<Array> {
        let (outer, n, inner) = split_at(&t.shape, dim)?;
        if start + len > n {
            return Err(err(format!("narrow {start}+{len} of a dim of {n}")));
        }
        let mut data = Vec::with_capacity(outer * len * inner);
        for o in 0..outer {
            let from = (o * n + start) * inner;
            data.extend_from_slice(&t.data[from..from + len * inner]);
        }
        let mut shape = t.shape.clone();
        shape[dim] = len;
        self.array(shape, data)
    }
    /// All shapes equal but along `dim`; for each outer index, the pieces
    /// one after the other.
    fn cat(&self, ts: &[Array], dim: usize) -> OpsResult<Array> {
        let first = ts.first().ok_or_else(|| err("cat of no arrays"))?;
        let rank = first.shape.len();
        split_at(&first.shape, dim)?;
        for t in ts {
            let same = |i: usize| i == dim || t.shape[i] == first.shape[i];
            if t.shape.len() != rank || !(0..rank).all(same) {
                return Err(err(format!("cat of {:?} and {:?}", first.shape, t.shape)));
            }
        }
        let mut shape = first.shape.clone();
        shape[dim] = ts.iter().map(|t| t.shape[dim]).sum();
        let (outer, _, inner) = split_at(&shape, dim)?;
        let mut data = Vec::with_capacity(shape.iter().product());
        for o in 0..outer {
            for t in ts {
                let chunk = t.shape[dim] * inner;
                data.extend_from_slice(&t.data[o * chunk..][..chunk]);
            }
        }
        self.array(shape, data)
    }

    // ---- arithmetic

    /// `[..., m, k] × [..., k, n]`, the batch dims (`...`) broadcast like
    /// NumPy. Each product is the textbook triple loop in i-k-j order, so
    /// the inner loop runs along rows of `b` and of the result.
    fn matmul(&self, a: &Array, b: &Array) -> OpsResult<Array> {
        let (ra, rb) = (a.shape.len(), b.shape.len());
        if ra < 2 || rb < 2 || a.shape[ra - 1] != b.shape[rb - 2] {
            return Err(err(format!("matmul of {:?} and {:?}", a.shape, b.shape)));
        }
        let (m, k, n) = (a.shape[ra - 2], a.shape[ra - 1], b.shape[rb - 1]);
        let (ba, bb) = (&a.shape[..ra - 2], &b.shape[..rb - 2]);
        let batch = broadcast_shape(ba, bb)?;
        let (sa, sb) = (broadcast_strides(ba, &batch), broadcast_strides(bb, &batch));
        let total: usize = batch.iter().product();
        let mut out = vec![0.0; total * m * n];
        for t in 0..total {
            let c = &mut out[t * m * n..][..m * n];
            let a = &a.data[offset(t, &batch, &sa) * m * k..][..m * k];
            let b = &b.data[offset(t, &batch, &sb) * k * n..][..k * n];
            for i in 0..m {
                let row = &mut c[i * n..(i + 1) * n];
                for p in 0..k {
                    let x = a[i * k + p];
                    for (r, y) in row.iter_mut().zip(&b[p * n..(p + 1) * n]) {
                        *r += x * y;
                    }
                }
            }
        }
        let mut shape = batch;
        shape.extend([m, n]);
        self.array(shape, out)
    }

    fn unary(&self, op: Unary, t: &Array) -> OpsResult<Array> {
        let f: fn(f64) -> f64 = match op {
            Unary::Relu => |x| x.max(0.0),
            Unary::Step => |x| if x > 0.0 { 1.0 } else { 0.0 },
            Unary::Tanh => f64::tanh,
            Unary::Sigmoid => |x| 1.0 / (1.0 + (-x).exp()),
            // x·Φ(x), Φ the standard normal CDF.
            Unary::GeluErf => |x| (libm::erf(x * FRAC_1_SQRT_2) + 1.0) * 0.5 * x,
            Unary::Erf => libm::erf,
            Unary::Exp => f64::exp,
            Unary::Log => f64::ln,
            Unary::Sqrt => f64::sqrt,
            Unary::Sqr => |x| x * x,
            Unary::Recip => |x| 1.0 / x,
            Unary::Neg => |x| -x,
        };
        self.array(t.shape.clone(), t.data.iter().map(|&x| f(x)).collect())
    }

    /// Elementwise, with NumPy broadcasting.
    fn binary(&self, op: Binary, a: &Array, b: &Array) -> OpsResult<Array> {
        let f: fn(f64, f64) -> f64 = match op {
            Binary::Add => |x, y| x + y,
            Binary::Sub => |x, y| x - y,
            Binary::Mul => |x, y| x * y,
            Binary::Div => |x, y| x / y,
            Binary::Max => |x, y| if x < y { y } else { x },
            Binary::Ge => |x, y| if x >= y { 1.0 } else { 0.0 },
        };
        if a.shape == b.shape {
            let data = a.data.iter().zip(b.data.iter()).map(|(&x, &y)| f(x, y));
            return self.array(a.shape.clone(), data.collect());
        }
        let shape = broadcast_shape(&a.shape, &b.shape)?;
        let sa = broadcast_strides(&a.shape, &shape);
        let sb = broadcast_strides(&b.shape, &shape);
        let at = |t: &Array, st: &[usize], i: usize| t.data[offset(i, &shape, st)];
        let data = (0..shape.iter().product())
            .map(|i| f(at(a, &sa, i), at(b, &sb, i)))
            .collect();
        self.array(shape, data)
    }

    fn affine(&self, t: &Array, mul: f64, add: f64) -> OpsResult<Array> {
        let data = t.data.iter().map(|&x| x * mul + add).collect();
        self.array(t.shape.clone(), data)
    }

    /// Sum or max along `dim`, which stays with size 1.
    fn reduce(&self, op: Reduce, t: &Array, dim: usize) -> OpsResult<Array> {
        let (outer, n, inner) = split_at(&t.shape, dim)?;
        let (init, f): (f64, fn(f64, f64) -> f64) = match op {
            Reduce::Sum => (0.0, |s, x| s + x),
            Reduce::Max if n == 0 => return Err(err("max over an empty dim")),
            Reduce::Max => (f64::NEG_INFINITY, |s, x| if s < x { x } else { s }),
        };
        let mut out = vec![init; outer * inner];
        for o in 0..outer {
            for j in 0..n {
                let src = &t.data[(o * n + j) * inner..][..inner];
                for (s, &x) in out[o * inner..][..inner].iter_mut().zip(src) {
                    *s = f(*s, x);
                }
            }
        }
        let mut shape = t.shape.clone();
        shape[dim] = 1;
        self.array(shape, out)
    }
    fn sum_all(&self, t: &Array) -> OpsResult<f64> {
        Ok(self.round(t.data.iter().sum()))
    }

    // ---- gather and scatter-add (convolutions are built on these)

    /// Result `[outer, idx.len(), inner]`: slice `idx[j]` of `t` at `j`.
    fn index_select(&self, t: &Array, idx: &Array, dim: usize) -> OpsResult<Array> {
        let (outer, n, inner) = split_at(&t.shape, dim)?;
        let idx = self.indices(idx, n)?;
        let mut data = Vec::with_capacity(outer * idx.len() * inner);
        for o in 0..outer {
            for &i in &idx {
                data.extend_from_slice(&t.data[(o * n + i) * inner..][..inner]);
            }
        }
        let mut shape = t.shape.clone();
        shape[dim] = idx.len();
        self.array(shape, data)
    }
    /// `base` plus slice `j` of `src` added at position `idx[j]` of `dim`;
    /// repeated indices accumulate.
    fn index_add(&self, base: &Array, idx: &Array, src: &Array, dim: usize) -> OpsResult<Array> {
        let (outer, n, inner) = split_at(&base.shape, dim)?;
        let idx = self.indices(idx, n)?;
        let mut expected = base.shape.clone();
        expected[dim] = idx.len();
        if src.shape != expected {
            let (s, b) = (&src.shape, &base.shape);
            return Err(err(format!("index_add of {s:?} into {b:?}")));
        }
        let mut out = base.data.to_vec();
        for o in 0..outer {
            for (j, &i) in idx.iter().enumerate() {
                let from = &src.data[(o * idx.len() + j) * inner..][..inner];
                let to = &mut out[(o * n + i) * inner..][..inner];
                to.iter_mut().zip(from).for_each(|(t, f)| *t += f);
            }
        }
        self.array(base.shape.clone(), out)
    }
}

// ----------------------------------------------------------------- plugin

/// The plugin: its name, what it computes with, and how to make it.
pub struct Example;

impl BackendPlugin for Example {
    /// What users select with `--backend example` or `backend = example`.
    const NAME: &'static str = "example";
    fn framework() -> String {
        "plain Rust loops on Vec<f64> (the tutorial backend)".into()
    }
    /// The generic engine does everything else; it calls `HostOps::new`
    /// with the experiment's device and dtype when a run starts.
    fn create() -> Result<Box<dyn Backend>, BackendError> {
        Ok(Box::new(Engine::new(
            Self::NAME,
            concat!("nngeo-backend-example ", env!("CARGO_PKG_VERSION")),
            HostOps::new,
        )))
    }
}

// The C entry points `nngeo` looks for in the shared library.
nngeo::export_backend!(Example);
