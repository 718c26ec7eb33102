//! The small tensor-operations trait every backend implements.
//!
//! The geometry engine (layers, backward passes, per-layer statistics, every
//! representation) is written once against this trait. A backend supplies
//! storage and these primitive operations; it gets every FIM and NTK
//! structure for free, and may still override a hot path natively.
//!
//! Conventions: shapes are row-major; elementwise binary operations
//! broadcast like NumPy; `matmul` broadcasts its batch dimensions.

use super::hostcopy::{self, BlockAt};
use crate::linalg::Mat;
use crate::plan::Dtype;

/// Why a tensor operation failed (shape mismatch, device error…).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct OpsError(pub String);

pub type OpsResult<T> = Result<T, OpsError>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unary {
    Relu,
    /// 1 where x > 0, else 0: the derivative of ReLU.
    Step,
    Tanh,
    Sigmoid,
    /// GELU with the exact erf form (PyTorch's default).
    GeluErf,
    Erf,
    Exp,
    Log,
    Sqrt,
    Sqr,
    Recip,
    Neg,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binary {
    Add,
    Sub,
    Mul,
    Div,
    Max,
    /// 1.0 where a ≥ b, else 0.0.
    Ge,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reduce {
    Sum,
    Max,
}

/// One term `(l, r, h)` of [`Ops::sum_products`]: the product `l r`,
/// multiplied elementwise by `h` where given.
pub type Term<'a, T> = (&'a T, &'a T, Option<&'a T>);

/// The shape of an untransposed 2-d convolution (a Conv1d is one over a
/// 1-pixel-high image), for backends with native convolution kernels.
/// The weight is the natural `[cout, cin/groups · K]` (per group
/// `[groups, cout/groups, cin/groups · K]`), whose row-major order is
/// PyTorch's `[cout, cin/groups, kh, kw]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeom {
    pub cin: usize,
    pub cout: usize,
    pub groups: usize,
    /// Input and output image sizes `[h, w]`.
    pub input: [usize; 2],
    pub output: [usize; 2],
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub dilation: [usize; 2],
}

impl ConvGeom {
    /// The `output_padding` of the transposed convolution that maps the
    /// output back onto the input's exact size (the input gradient).
    pub fn adjoint_output_padding(&self) -> [usize; 2] {
        std::array::from_fn(|d| {
            let reach =
                (self.output[d] - 1) * self.stride[d] + self.dilation[d] * (self.kernel[d] - 1) + 1;
            (self.input[d] + 2 * self.padding[d]).saturating_sub(reach)
        })
    }
}

/// Tensor operations on one device in one dtype.
pub trait Ops: Clone {
    type T: Clone;

    /// e.g. `candle`, used in messages.
    fn name(&self) -> String;
    /// e.g. `cpu`, `cuda:0`.
    fn device(&self) -> String;
    fn dtype(&self) -> Dtype;

    /// A tensor of the working dtype from row-major f64 data.
    fn upload(&self, shape: &[usize], data: &[f64]) -> OpsResult<Self::T>;
    /// An index tensor for `index_select` / `index_add`.
    fn upload_index(&self, idx: &[u32]) -> OpsResult<Self::T>;
    /// Row-major f64 copy of a tensor.
    fn download(&self, t: &Self::T) -> OpsResult<Vec<f64>>;
    fn shape(&self, t: &Self::T) -> Vec<usize>;

    fn zeros(&self, shape: &[usize]) -> OpsResult<Self::T>;
    fn reshape(&self, t: &Self::T, shape: &[usize]) -> OpsResult<Self::T>;
    /// Swaps two dimensions. The result behaves as a contiguous tensor in
    /// every operation here; a backend whose kernels read strided tensors
    /// may return a view.
    fn transpose(&self, t: &Self::T, d0: usize, d1: usize) -> OpsResult<Self::T>;
    fn narrow(&self, t: &Self::T, dim: usize, start: usize, len: usize) -> OpsResult<Self::T>;
    fn cat(&self, ts: &[Self::T], dim: usize) -> OpsResult<Self::T>;
    /// `[..., m, k] × [..., k, n]`, batch dimensions broadcast.
    fn matmul(&self, a: &Self::T, b: &Self::T) -> OpsResult<Self::T>;
    fn unary(&self, op: Unary, t: &Self::T) -> OpsResult<Self::T>;
    fn binary(&self, op: Binary, a: &Self::T, b: &Self::T) -> OpsResult<Self::T>;
    /// `t * mul + add`.
    fn affine(&self, t: &Self::T, mul: f64, add: f64) -> OpsResult<Self::T>;
    /// Reduction over `dim`, which is kept with size 1.
    fn reduce(&self, op: Reduce, t: &Self::T, dim: usize) -> OpsResult<Self::T>;
    /// Sum of every element, as a host number (default: on the host).
    fn sum_all(&self, t: &Self::T) -> OpsResult<f64> {
        Ok(self.download(t)?.iter().sum())
    }
    /// `t.index_select(dim, idx)`.
    fn index_select(&self, t: &Self::T, idx: &Self::T, dim: usize) -> OpsResult<Self::T>;
    /// `base` with `src` slices added at positions `idx` along `dim`.
    fn index_add(
        &self,
        base: &Self::T,
        idx: &Self::T,
        src: &Self::T,
        dim: usize,
    ) -> OpsResult<Self::T>;

    /// Image patches (im2col). `x [b, c, s]` holds `c` channels of `s`
    /// pixels; `idx` (from [`Ops::upload_index`], `K·L` entries, tap-major)
    /// says which pixel tap `k` reads for output position `l`, the value
    /// `s` standing for the padding `fill`. The result is `[b, c·K, L]`
    /// (`lk = false`) or its transpose `[b, L, c·K]` (`lk = true`, the
    /// layout of a convolution's capture), column `ci·K + k`.
    ///
    /// The default ([`unfold_patches_default`]) gathers with
    /// `index_select`; a backend may do it in one pass.
    fn unfold_patches(
        &self,
        x: &Self::T,
        idx: &Self::T,
        c: usize,
        k: usize,
        fill: f64,
        lk: bool,
    ) -> OpsResult<Self::T> {
        unfold_patches_default(self, x, idx, c, k, fill, lk)
    }

    /// The adjoint of [`Ops::unfold_patches`] (col2im): patches `p` in
    /// the layout `lk` says (`[b, c·K, L]` or `[b, L, c·K]`) summed back
    /// onto the `s` pixels they were read from, `[b, c, s]`; what fell on
    /// the padding is dropped. The default ([`fold_patches_default`]) uses
    /// `index_add`.
    fn fold_patches(
        &self,
        p: &Self::T,
        idx: &Self::T,
        c: usize,
        k: usize,
        s: usize,
        lk: bool,
    ) -> OpsResult<Self::T> {
        fold_patches_default(self, p, idx, c, k, s, lk)
    }

    /// The input gradient of an ungrouped convolution: its output
    /// gradient `g [b, cout, L]` through the weight `w [cout, c·K]`, the
    /// patches' gradient `gᵀ w` folded back onto the `s` input pixels,
    /// `[b, c, s]` (see [`Ops::fold_patches`]). The default
    /// ([`conv_input_grad_default`]) forms `gᵀ w` a few examples at a time;
    /// a backend may fuse the product and the fold per example.
    #[allow(clippy::too_many_arguments)]
    fn conv_input_grad(
        &self,
        g: &Self::T,
        w: &Self::T,
        idx: &Self::T,
        c: usize,
        k: usize,
        s: usize,
    ) -> OpsResult<Self::T> {
        conv_input_grad_default(self, g, w, idx, c, k, s)
    }

    /// A convolution by a native kernel: `x [b, cin, h, w]` and the natural
    /// weight `w` (see [`ConvGeom`]) give `[b, cout, oh, ow]`, without the
    /// bias. `None` (the default) means the backend has none: the engine
    /// then multiplies unfolded patches ([`Ops::unfold_patches`]).
    fn conv2d(&self, x: &Self::T, w: &Self::T, geom: &ConvGeom) -> OpsResult<Option<Self::T>> {
        let _ = (x, w, geom);
        Ok(None)
    }

    /// The input gradient of [`Ops::conv2d`] by a native kernel:
    /// `g [b, cout, oh, ow]` → `[b, cin, h, w]`. `None` (the default): the
    /// engine uses [`Ops::conv_input_grad`].
    fn conv2d_input_grad(
        &self,
        g: &Self::T,
        w: &Self::T,
        geom: &ConvGeom,
    ) -> OpsResult<Option<Self::T>> {
        let _ = (g, w, geom);
        Ok(None)
    }

    /// The weight gradient of [`Ops::conv2d`] by a native kernel, summed
    /// over the batch: `x [b, cin, h, w]` and the output gradient
    /// `g [b, cout, oh, ow]` give `Σ_b ∂⟨g, conv2d(x, w)⟩/∂w` in the
    /// natural layout of the weight, without the bias. `None` (the
    /// default): the engine multiplies `g` by the unfolded patches. Only
    /// a training step asks for it, where no per-example data is needed.
    fn conv2d_weight_grad(
        &self,
        x: &Self::T,
        g: &Self::T,
        geom: &ConvGeom,
    ) -> OpsResult<Option<Self::T>> {
        let _ = (x, g, geom);
        Ok(None)
    }

    /// `g` where `x > 0`, else 0 (`g` broadcasting against `x`): ReLU's
    /// backward pass. The default multiplies by [`Unary::Step`]; a backend
    /// may do it in one pass.
    fn relu_grad(&self, g: &Self::T, x: &Self::T) -> OpsResult<Self::T> {
        self.mul(g, &self.unary(Unary::Step, x)?)
    }

    /// A symmetric eigendecomposition (ascending eigenvalues, orthonormal
    /// eigenvectors as columns) in f64 whatever the working dtype: EKFAC's
    /// bases. A single-precision one (faer's f32 `self_adjoint_eigen`)
    /// lost 1.3·10⁻³ of an f32 EKFAC's trace on a 513-wide MLP, where the
    /// products of the eigenvalues must reproduce KFAC's trace exactly.
    /// The default runs on the host (faer); a backend with a solver on its
    /// device overrides it and [`Ops::device_linalg`].
    fn eigh(&self, m: &Mat) -> OpsResult<(Vec<f64>, Mat)> {
        crate::linalg::eigh(m).map_err(|e| OpsError(e.to_string()))
    }

    /// `A X = B` for symmetric positive (semi)definite `A` in f64, as
    /// [`crate::linalg::solve_sym`] (Cholesky, LU where it breaks down): a
    /// Fisher's solve for natural gradients, `solve(M, v)` and influence.
    /// The default runs on the host.
    fn solve_sym(&self, a: &Mat, b: &Mat) -> OpsResult<Mat> {
        crate::linalg::solve_sym(a, b).map_err(|e| OpsError(e.to_string()))
    }

    /// A symmetric matrix's eigenvalues (ascending) in f64, as
    /// [`crate::linalg::eigvalsh`]. The default runs on the host.
    fn eigvalsh(&self, a: &Mat) -> OpsResult<Vec<f64>> {
        crate::linalg::eigvalsh(a).map_err(|e| OpsError(e.to_string()))
    }

    /// Whether [`Ops::eigh`], [`Ops::solve_sym`] and [`Ops::eigvalsh`]
    /// run on the backend's device (the engine then hands it one matrix
    /// at a time, rather than several to the host's threads at once).
    fn device_linalg(&self) -> bool {
        false
    }

    /// Whether a dense result the engine would otherwise copy to the host
    /// (the NTK built whole, a dense Fisher or block) stays on the device,
    /// assembled there with [`Ops::write_device_block`] and handed over
    /// with [`Ops::hold`], and KFAC's factors and EKFAC's bases with
    /// [`Ops::hold_f64`] (a loaded Fisher's with [`Ops::hold_host`]); their
    /// reductions, products and spectra then run where they live
    /// ([`crate::linalg::DeviceMatrix`]). A backend that says so implements
    /// those four, and [`Ops::held_tensor`] to compute with them.
    fn holds_on_device(&self) -> bool {
        false
    }

    /// Whether training steps the weights where they live (the backend's
    /// tensors, in its dtype) instead of in an f64 copy on the host
    /// re-uploaded every step; see `engine::device_update`. By default
    /// wherever results stay on the device.
    fn trains_on_device(&self) -> bool {
        self.holds_on_device()
    }

    /// Writes the 2-d tensor `t` into the device matrix `dst` (made by
    /// [`Ops::zeros`]) in place, where `at` says (its mirror too, or added).
    fn write_device_block(&self, t: &Self::T, dst: &Self::T, at: BlockAt) -> OpsResult<()> {
        let _ = (t, dst, at);
        Err(OpsError(format!(
            "{}: this backend keeps no results on its device",
            self.name()
        )))
    }

    /// Hands a finished 2-d tensor over as a device-held matrix.
    fn hold(&self, t: Self::T) -> OpsResult<crate::linalg::Held> {
        let _ = t;
        Err(OpsError(format!(
            "{}: this backend keeps no results on its device",
            self.name()
        )))
    }

    /// Hands a finished 2-d tensor over as a device-held matrix in f64,
    /// times `scale` (widened first, so that the values are the host's
    /// `f64(t) · scale`): KFAC's factors and EKFAC's bases, which stay in
    /// f64 whatever the run's precision.
    fn hold_f64(&self, t: Self::T, scale: f64) -> OpsResult<crate::linalg::Held> {
        let _ = (t, scale);
        Err(OpsError(format!(
            "{}: this backend keeps no results on its device",
            self.name()
        )))
    }

    /// An f64 host matrix held on the device in f64 (a loaded Fisher's
    /// KFAC factors and EKFAC bases joining the run's).
    fn hold_host(&self, m: &Mat) -> OpsResult<crate::linalg::Held> {
        let _ = m;
        Err(OpsError(format!(
            "{}: this backend keeps no results on its device",
            self.name()
        )))
    }

    /// The tensor behind a matrix this backend holds ([`Ops::hold`],
    /// [`Ops::hold_f64`]) in the run's precision, to compute with: `None`
    /// for a matrix it did not make.
    fn held_tensor(&self, m: &crate::linalg::Held) -> OpsResult<Option<Self::T>> {
        let _ = m;
        Ok(None)
    }

    /// `Σ_k (l_k r_k) ⊙ h_k` for 2-d `l_k [m, k_k]`, `r_k [k_k, n]` and,
    /// where given, `h_k [m, n]` (a term without `h_k` is the plain
    /// product): the NTK's block of an output pair, summed over layers.
    /// The default ([`sum_products_default`]) is a matmul, a multiply and
    /// an add per term; a backend may accumulate in place in one pass.
    fn sum_products(&self, terms: &[Term<'_, Self::T>]) -> OpsResult<Self::T> {
        sum_products_default(self, terms)
    }

    /// Writes the 2-d tensor `t` into a host f64 matrix where `at` says
    /// (its mirror too, or added to what is there). The default downloads
    /// it and writes it with [`hostcopy::write_block`]; a backend whose
    /// storage is on the host may convert straight from it.
    fn write_host_block(&self, t: &Self::T, dst: &mut [f64], at: BlockAt) -> OpsResult<()> {
        let v = self.download(t)?;
        hostcopy::write_block(&v, dst, at);
        Ok(())
    }

    /// [`Ops::write_host_block`] into a host f32 matrix (a float32 run's
    /// stored NTK: its values as computed, half the memory).
    fn write_host_block_f32(&self, t: &Self::T, dst: &mut [f32], at: BlockAt) -> OpsResult<()> {
        let v = self.download(t)?;
        hostcopy::write_block(&v, dst, at);
        Ok(())
    }

    /// `Σ_d t²` over dimension `dim` (kept, size 1). The default squares
    /// then sums; a backend may do both in one pass.
    fn sum_sqr(&self, t: &Self::T, dim: usize) -> OpsResult<Self::T> {
        self.sum_dim(&self.unary(Unary::Sqr, t)?, dim)
    }

    // ---- conveniences with default implementations

    fn add(&self, a: &Self::T, b: &Self::T) -> OpsResult<Self::T> {
        self.binary(Binary::Add, a, b)
    }
    fn sub(&self, a: &Self::T, b: &Self::T) -> OpsResult<Self::T> {
        self.binary(Binary::Sub, a, b)
    }
    fn mul(&self, a: &Self::T, b: &Self::T) -> OpsResult<Self::T> {
        self.binary(Binary::Mul, a, b)
    }
    fn scale(&self, t: &Self::T, f: f64) -> OpsResult<Self::T> {
        self.affine(t, f, 0.0)
    }
    fn sum_dim(&self, t: &Self::T, dim: usize) -> OpsResult<Self::T> {
        self.reduce(Reduce::Sum, t, dim)
    }
    /// `aᵀ b` for 2-d `a [k, m]`, `b [k, n]`.
    fn t_matmul(&self, a: &Self::T, b: &Self::T) -> OpsResult<Self::T> {
        let at = self.transpose(a, 0, 1)?;
        self.matmul(&at, b)
    }
    /// `a[:, ca]ᵀ b[:, cb]` for 2-d `a [r, ·]`, `b [r, ·]` and column
    /// ranges `(start, width)`: the panel products of a symmetric sum
    /// ([`crate::geometry::gram`]). A backend whose `narrow` copies can
    /// read the columns in place instead.
    fn t_matmul_cols(
        &self,
        a: &Self::T,
        ca: (usize, usize),
        b: &Self::T,
        cb: (usize, usize),
    ) -> OpsResult<Self::T> {
        self.t_matmul(
            &self.narrow(a, 1, ca.0, ca.1)?,
            &self.narrow(b, 1, cb.0, cb.1)?,
        )
    }
    fn numel(&self, t: &Self::T) -> usize {
        self.shape(t).iter().product()
    }
}

/// [`Ops::sum_products`] from `matmul`, `mul` and `add`.
pub fn sum_products_default<O: Ops>(o: &O, terms: &[Term<'_, O::T>]) -> OpsResult<O::T> {
    let mut acc: Option<O::T> = None;
    for (l, r, h) in terms {
        let mut t = o.matmul(l, r)?;
        if let Some(h) = h {
            t = o.mul(&t, h)?;
        }
        acc = Some(match acc.take() {
            Some(a) => o.add(&a, &t)?,
            None => t,
        });
    }
    acc.ok_or_else(|| OpsError("a sum of no products".into()))
}

/// [`Ops::unfold_patches`] from `cat`, `index_select` and `transpose`.
pub fn unfold_patches_default<O: Ops>(
    o: &O,
    x: &O::T,
    idx: &O::T,
    c: usize,
    k: usize,
    fill: f64,
    lk: bool,
) -> OpsResult<O::T> {
    let xs = o.shape(x);
    let b = xs[0];
    let s = xs.iter().product::<usize>() / (b * c).max(1);
    let l = o.numel(idx) / k.max(1);
    let x = o.reshape(x, &[b, c, s])?;
    let pad = o.zeros(&[b, c, 1])?;
    let pad = if fill == 0.0 {
        pad
    } else {
        o.affine(&pad, 0.0, fill)?
    };
    let x = o.cat(&[x, pad], 2)?;
    let p = o.index_select(&x, idx, 2)?; // [b, c, K·L]
    let p = o.reshape(&p, &[b, c * k, l])?;
    if lk {
        o.transpose(&p, 1, 2)
    } else {
        Ok(p)
    }
}

/// [`Ops::fold_patches`] from `transpose`, `index_add` and `narrow`.
pub fn fold_patches_default<O: Ops>(
    o: &O,
    p: &O::T,
    idx: &O::T,
    c: usize,
    k: usize,
    s: usize,
    lk: bool,
) -> OpsResult<O::T> {
    let b = o.shape(p)[0];
    let l = o.numel(idx) / k.max(1);
    let p = if lk {
        o.transpose(&o.reshape(p, &[b, l, c * k])?, 1, 2)?
    } else {
        p.clone()
    };
    let p = o.reshape(&p, &[b, c, k * l])?;
    let z = o.zeros(&[b, c, s + 1])?;
    let x = o.index_add(&z, idx, &p, 2)?;
    o.narrow(&x, 2, 0, s)
}

/// How many values of a convolution's patch gradient
/// [`conv_input_grad_default`] forms at once (1 M values: 4 MB in f32)
/// before folding them onto the input.
const PATCH_CHUNK: usize = 1 << 20;

/// [`Ops::conv_input_grad`] from `narrow`, `transpose`, `matmul`,
/// [`Ops::fold_patches`] and `cat`, a few examples at a time so that the
/// patches' gradient (K times the input's) stays small.
pub fn conv_input_grad_default<O: Ops>(
    o: &O,
    g: &O::T,
    w: &O::T,
    idx: &O::T,
    c: usize,
    k: usize,
    s: usize,
) -> OpsResult<O::T> {
    let b = o.shape(g)[0];
    let l = o.numel(idx) / k.max(1);
    let step = (PATCH_CHUNK / (l * c * k).max(1)).clamp(1, b.max(1));
    let mut parts = Vec::with_capacity(b.div_ceil(step));
    for at in (0..b).step_by(step) {
        let len = step.min(b - at);
        let gc = if len == b {
            g.clone()
        } else {
            o.narrow(g, 0, at, len)?
        };
        let dp = o.matmul(&o.transpose(&gc, 1, 2)?, w)?; // [len, L, c·K]
        parts.push(o.fold_patches(&dp, idx, c, k, s, true)?);
    }
    if parts.len() == 1 {
        Ok(parts.pop().unwrap())
    } else {
        o.cat(&parts, 0)
    }
}

/// The backend's dense solvers as the representations'
/// [`crate::linalg::Linalg`].
pub struct OnDevice<'a, O>(pub &'a O);

impl<O: Ops> crate::linalg::Linalg for OnDevice<'_, O> {
    fn solve_sym(&self, a: &Mat, b: &Mat) -> Result<Mat, crate::linalg::LinalgError> {
        self.0
            .solve_sym(a, b)
            .map_err(|e| crate::linalg::LinalgError::Backend(e.0))
    }
    fn eigvalsh(&self, a: &Mat) -> Result<Vec<f64>, crate::linalg::LinalgError> {
        self.0
            .eigvalsh(a)
            .map_err(|e| crate::linalg::LinalgError::Backend(e.0))
    }
}

/// Where a representation's dense solves run for this backend: its
/// device where [`Ops::device_linalg`] says so, else the host.
pub fn linalg_of<O: Ops>(o: &O) -> Box<dyn crate::linalg::Linalg + '_> {
    if o.device_linalg() {
        Box::new(OnDevice(o))
    } else {
        Box::new(crate::linalg::Host)
    }
}

/// A stored matrix as a tensor of the run on `o`'s device, in its
/// precision: the tensor itself where `o` holds it, else uploaded.
pub fn stored_tensor<O: Ops>(o: &O, m: &crate::linalg::Stored) -> OpsResult<O::T> {
    if let crate::linalg::Stored::Device(h) = m {
        if let Some(t) = o.held_tensor(h)? {
            return Ok(t);
        }
    }
    let host = m.as_f64().map_err(|e| OpsError(e.to_string()))?;
    o.upload(&[host.rows, host.cols], &host.data)
}

/// Where this backend keeps a dense result it builds whole: on its device
/// where it holds results there, else on the host in the run's precision.
pub fn keep_of<O: Ops>(o: &O) -> crate::linalg::Keep {
    if o.holds_on_device() {
        crate::linalg::Keep::Device
    } else {
        crate::linalg::Keep::Host(o.dtype())
    }
}

/// Writes the 2-d tensor `t` into a stored host matrix, in its precision.
pub fn write_stored<O: Ops>(
    o: &O,
    t: &O::T,
    dst: &mut crate::linalg::Stored,
    at: BlockAt,
) -> OpsResult<()> {
    match dst {
        crate::linalg::Stored::Host(m) => write_host(o, t, m, at),
        crate::linalg::Stored::Device(_) => Err(OpsError(
            "a device-held matrix is written before it is held (Ops::write_device_block)".into(),
        )),
    }
}

/// Writes the 2-d tensor `t` into a host matrix, in its precision.
pub fn write_host<O: Ops>(
    o: &O,
    t: &O::T,
    dst: &mut crate::linalg::HostMatrix,
    at: BlockAt,
) -> OpsResult<()> {
    match dst {
        crate::linalg::HostMatrix::F64(m) => o.write_host_block(t, &mut m.data, at),
        crate::linalg::HostMatrix::F32 { data, .. } => o.write_host_block_f32(t, data, at),
    }
}
