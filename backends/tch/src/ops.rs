//! [`Ops`] on libtorch through `tch`: the primitive tensor operations the
//! geometry engine needs, with the semantics of the built-in candle backend
//! (see each method's documentation in `nngeo::geometry::ops`).
//!
//! Only tch's fallible `f_*` functions are used, so every libtorch error
//! (shape mismatch, device error, out of memory) becomes an [`OpsError`].
//! nngeo computes every backward pass itself: no tensor made here requires
//! a gradient, so libtorch's autograd never records anything.

pub use crate::cuda::cuda_device_count;
use crate::cuda::{first_line, load_libtorch_cuda, nvidia_driver};
use nngeo::geometry::ops::{
    conv_input_grad_default, fold_patches_default, unfold_patches_default, Binary, ConvGeom, Ops,
    OpsError, OpsResult, Reduce, Unary,
};
use nngeo::linalg::Mat;
use nngeo::plan::Dtype;
use tch::{Device, Kind, TchError, Tensor};

/// A libtorch tensor. `tch::Tensor` is not `Clone`; cloning this one makes
/// a shallow copy sharing the storage, which is safe because the only
/// operation that writes into an existing tensor
/// ([`Ops::write_device_block`]) writes into one the engine made for it.
pub struct TT(pub Tensor);

impl Clone for TT {
    fn clone(&self) -> Self {
        TT(self.0.shallow_clone())
    }
}

impl std::fmt::Debug for TT {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "TT({:?}, {:?}, {:?})",
            self.0.size(),
            self.0.kind(),
            self.0.device()
        )
    }
}

impl std::ops::Deref for TT {
    type Target = Tensor;
    fn deref(&self) -> &Tensor {
        &self.0
    }
}

/// Tensor operations on one libtorch device in one dtype.
#[derive(Clone, Debug)]
pub struct TchOps {
    device: Device,
    dtype: Dtype,
    /// Whether the dense decompositions (EKFAC's bases, spectra, solves)
    /// run in libtorch (see [`TchOps::with_device_linalg`]).
    device_linalg: bool,
    /// Whether dense results (the NTK, a dense Fisher, BlockDiag's dense
    /// blocks) stay in libtorch (see [`TchOps::with_device_storage`]).
    device_storage: bool,
}

/// libtorch's messages end with a C++ backtrace ("Exception raised from
/// …"); keep the message itself.
fn e(err: TchError) -> OpsError {
    let msg = match err {
        TchError::Torch(msg) => msg,
        other => other.to_string(),
    };
    let msg = match msg.find("\nException raised from") {
        Some(i) => &msg[..i],
        None => &msg,
    };
    OpsError(format!("tch: {}", msg.trim_end()))
}

fn ok(t: Result<Tensor, TchError>) -> OpsResult<TT> {
    t.map(TT).map_err(e)
}

fn dims(shape: &[usize]) -> Vec<i64> {
    shape.iter().map(|&d| d as i64).collect()
}

fn i(x: usize) -> i64 {
    x as i64
}

/// Whether a run on `device` takes the GPU's paths (results held and
/// decomposed on the device, the optimiser's update there): on CUDA by
/// default. `NNGEO_TCH_DEVICE_PATHS=on` takes them on the CPU too (a dry
/// run of every GPU-only code path, which the CLI cross-backend tests
/// run), `off` keeps CUDA on the host's paths (to compare the two on a
/// GPU).
fn device_paths(device: Device) -> OpsResult<bool> {
    match std::env::var("NNGEO_TCH_DEVICE_PATHS").as_deref() {
        Err(_) | Ok("") => Ok(device != Device::Cpu),
        Ok("on") => Ok(true),
        Ok("off") => Ok(false),
        Ok(other) => Err(OpsError(format!(
            "NNGEO_TCH_DEVICE_PATHS is `{other}`: expected `on` or `off`"
        ))),
    }
}

impl TchOps {
    /// `device`: `cpu`, `cuda` (= `cuda:0`) or `cuda:N`.
    pub fn new(device: &str, dtype: Dtype) -> OpsResult<Self> {
        // Before any tensor exists: libtorch looks its CUDA hooks up once,
        // on first use, and a process that used them before
        // libtorch_cuda.so was loaded can never use CUDA (without the
        // driver it never could).
        if nvidia_driver().is_ok() {
            let _ = load_libtorch_cuda();
        }
        let device = match device {
            "cpu" => Device::Cpu,
            "cuda" => Device::Cuda(0),
            other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Device::Cuda(n),
                _ => {
                    return Err(OpsError(format!(
                        "the tch backend does not know device `{other}` (expected `cpu`, `cuda` or `cuda:N`)"
                    )))
                }
            },
        };
        if let Device::Cuda(n) = device {
            let count = cuda_device_count().map_err(OpsError)?;
            if n >= count {
                return Err(OpsError(format!(
                    "device `cuda:{n}` does not exist: libtorch sees {count} CUDA device(s)"
                )));
            }
        }
        let gpu_paths = device_paths(device)?;
        Ok(TchOps {
            device,
            dtype,
            // On the CPU, faer decomposing several factors at once on the
            // host's threads beat LAPACK's one at a time (MLP EKFAC: 0.23 s
            // against 0.26 s); on CUDA the factors stay off the host's cores.
            device_linalg: gpu_paths,
            // On the CPU the host's f32 storage is the same memory, read
            // by rayon's threads; on CUDA it saves the download (and the
            // optimiser's update runs there).
            device_storage: gpu_paths,
        })
    }

    /// Sets whether dense results built whole (the NTK, a dense Fisher,
    /// BlockDiag's dense blocks) stay libtorch tensors on this device
    /// ([`Ops::holds_on_device`]), their trace, norms, products,
    /// alignments, spectra and damped solves computed there: by default
    /// on CUDA only.
    pub fn with_device_storage(mut self, on: bool) -> Self {
        self.device_storage = on;
        self
    }

    /// Sets whether [`Ops::eigh`], [`Ops::eigvalsh`] and
    /// [`Ops::solve_sym`] (EKFAC's bases, dense spectra, a Fisher's
    /// solves) run in libtorch on this device, one matrix at a time, or on
    /// the host: by default on CUDA only (on the CPU faer, several
    /// matrices at once on the host's threads, was the faster). A matrix
    /// held on the device ([`TchOps::with_device_storage`]) is solved and
    /// decomposed there either way.
    pub fn with_device_linalg(mut self, on: bool) -> Self {
        self.device_linalg = on;
        self
    }

    /// A row-major f64 host matrix `[r, c]` on the run's device, in f64
    /// whatever the run's dtype (the decompositions' precision).
    fn upload_f64(&self, data: &[f64], r: usize, c: usize) -> OpsResult<Tensor> {
        Tensor::f_from_slice(data)
            .and_then(|t| t.f_reshape([i(r), i(c)]))
            .and_then(|t| t.f_to_device(self.device))
            .map_err(e)
    }

    fn kind(&self) -> Kind {
        match self.dtype {
            Dtype::F32 => Kind::Float,
            Dtype::F64 => Kind::Double,
        }
    }

    /// The libtorch device this runs on.
    pub fn torch_device(&self) -> Device {
        self.device
    }
}

impl Ops for TchOps {
    type T = TT;

    fn name(&self) -> String {
        "tch".into()
    }
    fn device(&self) -> String {
        match self.device {
            Device::Cuda(n) => format!("cuda:{n}"),
            _ => "cpu".into(),
        }
    }
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn upload(&self, shape: &[usize], data: &[f64]) -> OpsResult<TT> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(OpsError(format!(
                "tch: {} numbers for a tensor of shape {shape:?}",
                data.len()
            )));
        }
        let t = match self.dtype {
            Dtype::F64 => Tensor::f_from_slice(data),
            Dtype::F32 => {
                let v: Vec<f32> = data.iter().map(|&x| x as f32).collect();
                Tensor::f_from_slice(&v)
            }
        };
        ok(t.and_then(|t| t.f_reshape(dims(shape)))
            .and_then(|t| t.f_to_device(self.device)))
    }
    fn upload_index(&self, idx: &[u32]) -> OpsResult<TT> {
        let v: Vec<i64> = idx.iter().map(|&x| i64::from(x)).collect();
        ok(Tensor::f_from_slice(&v).and_then(|t| t.f_to_device(self.device)))
    }
    fn download(&self, t: &TT) -> OpsResult<Vec<f64>> {
        let t = t
            .f_to_device(Device::Cpu)
            .and_then(|t| t.f_to_kind(Kind::Double))
            .map_err(e)?;
        let n = t.numel();
        let mut out = vec![0.0f64; n];
        // Copies row-major whatever the strides.
        t.f_copy_data(&mut out, n).map_err(e)?;
        Ok(out)
    }
    fn shape(&self, t: &TT) -> Vec<usize> {
        t.size().into_iter().map(|d| d as usize).collect()
    }
    fn zeros(&self, shape: &[usize]) -> OpsResult<TT> {
        ok(Tensor::f_zeros(dims(shape), (self.kind(), self.device)))
    }
    fn reshape(&self, t: &TT, shape: &[usize]) -> OpsResult<TT> {
        ok(t.f_reshape(dims(shape)))
    }
    /// A strided view: libtorch's kernels (GEMM included) read it where it
    /// lies, and `reshape` copies only when the strides require it. The
    /// copy that made every transpose contiguous was a sixth of a ResNet's
    /// KFAC build.
    fn transpose(&self, t: &TT, d0: usize, d1: usize) -> OpsResult<TT> {
        ok(t.f_transpose(i(d0), i(d1)))
    }
    fn narrow(&self, t: &TT, dim: usize, start: usize, len: usize) -> OpsResult<TT> {
        ok(t.f_narrow(i(dim), i(start), i(len))
            .and_then(|t| t.f_contiguous()))
    }
    fn cat(&self, ts: &[TT], dim: usize) -> OpsResult<TT> {
        let ts: Vec<&Tensor> = ts.iter().map(|t| &t.0).collect();
        ok(Tensor::f_cat(&ts, i(dim)))
    }
    fn matmul(&self, a: &TT, b: &TT) -> OpsResult<TT> {
        // candle's contract: both operands at least 2-d (torch would also
        // accept vectors, with another meaning).
        if a.dim() < 2 || b.dim() < 2 {
            return Err(OpsError(format!(
                "tch: matmul of shapes {:?} and {:?}: both need at least 2 dimensions",
                a.size(),
                b.size()
            )));
        }
        ok(a.f_matmul(b))
    }
    /// `aᵀ b` without the transposed copy of the default: libtorch's GEMM
    /// reads `a` transposed where it lies (KFAC's factors and every
    /// summed gradient are such products over all positions).
    fn t_matmul(&self, a: &TT, b: &TT) -> OpsResult<TT> {
        if a.dim() != 2 || b.dim() != 2 {
            return Err(OpsError(format!(
                "tch: t_matmul of shapes {:?} and {:?}: both need 2 dimensions",
                a.size(),
                b.size()
            )));
        }
        ok(a.f_transpose(0, 1).and_then(|at| at.f_matmul(b)))
    }
    /// Column panels as strided views: BLAS reads a panel of a row-major
    /// matrix in place (its leading dimension is the full width), where
    /// `narrow` would make each contiguous first.
    fn t_matmul_cols(
        &self,
        a: &TT,
        ca: (usize, usize),
        b: &TT,
        cb: (usize, usize),
    ) -> OpsResult<TT> {
        if a.dim() != 2 || b.dim() != 2 {
            return Err(OpsError(format!(
                "tch: t_matmul_cols of shapes {:?} and {:?}: both need 2 dimensions",
                a.size(),
                b.size()
            )));
        }
        ok(a.f_narrow(1, i(ca.0), i(ca.1))
            .and_then(|a| a.f_transpose(0, 1))
            .and_then(|at| at.f_matmul(&b.f_narrow(1, i(cb.0), i(cb.1))?)))
    }
    fn unary(&self, op: Unary, t: &TT) -> OpsResult<TT> {
        ok(match op {
            Unary::Relu => t.f_relu(),
            Unary::Step => t.f_gt(0.0).and_then(|m| m.f_to_kind(self.kind())),
            Unary::Tanh => t.f_tanh(),
            Unary::Sigmoid => t.f_sigmoid(),
            Unary::GeluErf => t.f_gelu("none"),
            Unary::Erf => t.f_erf(),
            Unary::Exp => t.f_exp(),
            Unary::Log => t.f_log(),
            Unary::Sqrt => t.f_sqrt(),
            Unary::Sqr => t.f_square(),
            Unary::Recip => t.f_reciprocal(),
            Unary::Neg => t.f_neg(),
        })
    }
    fn binary(&self, op: Binary, a: &TT, b: &TT) -> OpsResult<TT> {
        ok(match op {
            Binary::Add => a.f_add(b),
            Binary::Sub => a.f_sub(b),
            Binary::Mul => a.f_mul(b),
            Binary::Div => a.f_div(b),
            Binary::Max => a.f_maximum(b),
            Binary::Ge => a.f_ge_tensor(b).and_then(|m| m.f_to_kind(self.kind())),
        })
    }
    fn affine(&self, t: &TT, mul: f64, add: f64) -> OpsResult<TT> {
        ok(t.f_mul_scalar(mul).and_then(|t| t.f_add_scalar(add)))
    }
    fn reduce(&self, op: Reduce, t: &TT, dim: usize) -> OpsResult<TT> {
        let d = [i(dim)];
        ok(match op {
            Reduce::Sum => t.f_sum_dim_intlist(&d[..], true, self.kind()),
            Reduce::Max => t.f_amax(&d[..], true),
        })
    }
    fn sum_all(&self, t: &TT) -> OpsResult<f64> {
        // Summed in the working dtype, as candle does.
        t.f_sum(self.kind())
            .and_then(|s| s.f_double_value(&[]))
            .map_err(e)
    }
    fn index_select(&self, t: &TT, idx: &TT, dim: usize) -> OpsResult<TT> {
        ok(t.f_index_select(i(dim), idx))
    }
    fn index_add(&self, base: &TT, idx: &TT, src: &TT, dim: usize) -> OpsResult<TT> {
        ok(base.f_index_add(i(dim), idx, src))
    }

    // The three convolution paths below work on each example's values as
    // one flat row: the input padded with one slot, `[b, c·(s+1)]`, and
    // the patches `[b, c·K·L]` in the layout `lk` says. One index of the
    // patches' length (see `patch_index`) then maps every patch value to
    // its pixel, so that the gather (unfold) and its adjoint, the
    // scatter-add (fold), are each one libtorch kernel, parallel over the
    // batch on the CPU and over everything on CUDA, with no transposed
    // copy of the patches (the defaults' `index_select` along the last
    // dimension, transposes, `cat`s and `index_add` cost several passes).

    fn unfold_patches(
        &self,
        x: &TT,
        idx: &TT,
        c: usize,
        k: usize,
        fill: f64,
        lk: bool,
    ) -> OpsResult<TT> {
        let Some((b, s, l)) = patch_dims(x, idx, c, k) else {
            return unfold_patches_default(self, x, idx, c, k, fill, lk);
        };
        let full = patch_index(idx, c, k, l, s, lk)?;
        // [b, c, s+1], the last slot of each channel the padding.
        let xp = x
            .f_reshape([i(b), i(c), i(s)])
            .and_then(|x| x.f_pad([0, 1], "constant", fill))
            .map_err(e)?;
        let shape = if lk {
            [i(b), i(l), i(c * k)]
        } else {
            [i(b), i(c * k), i(l)]
        };
        ok(xp
            .f_reshape([i(b), i(c * (s + 1))])
            .and_then(|x| x.f_index_select(1, &full))
            .and_then(|p| p.f_reshape(shape)))
    }

    fn fold_patches(
        &self,
        p: &TT,
        idx: &TT,
        c: usize,
        k: usize,
        s: usize,
        lk: bool,
    ) -> OpsResult<TT> {
        let b = p.size().first().map_or(0, |&b| b as usize);
        let l = idx.numel() / k.max(1);
        if b == 0 || c == 0 || k == 0 || s == 0 || l == 0 || p.numel() != b * c * k * l {
            return fold_patches_default(self, p, idx, c, k, s, lk);
        }
        let full = patch_index(idx, c, k, l, s, lk)?;
        let out = self.zeros(&[b, c * (s + 1)])?;
        let src = p.f_reshape([i(b), i(c * k * l)]).map_err(e)?;
        scatter_rows(&out, &full, &src)?;
        unpad(&out, b, c, s)
    }

    /// libtorch's own convolution (oneDNN on the CPU, cuDNN on CUDA).
    fn conv2d(&self, x: &TT, w: &TT, geom: &ConvGeom) -> OpsResult<Option<TT>> {
        let w4 = conv_weight(w, geom)?;
        let y = x.f_conv2d::<Tensor>(
            &w4,
            None,
            dims(&geom.stride),
            dims(&geom.padding),
            dims(&geom.dilation),
            i(geom.groups),
        );
        ok(y).map(Some)
    }

    /// The adjoint of [`Ops::conv2d`]: the transposed convolution by the
    /// same weight, its output padding fixing the input's size.
    fn conv2d_input_grad(&self, g: &TT, w: &TT, geom: &ConvGeom) -> OpsResult<Option<TT>> {
        let w4 = conv_weight(w, geom)?;
        let dx = g.f_conv_transpose2d::<Tensor>(
            &w4,
            None,
            dims(&geom.stride),
            dims(&geom.padding),
            dims(&geom.adjoint_output_padding()),
            i(geom.groups),
            dims(&geom.dilation),
        );
        ok(dx).map(Some)
    }

    /// libtorch's own weight gradient (oneDNN's backward-weights on the
    /// CPU, cuDNN's on CUDA): `aten::convolution_backward` asked for the
    /// weight's output only, through `cpp/shim.cpp` (tch binds no
    /// `convolution_backward`). Going through autograd instead (a zero
    /// leaf, the forward convolution again and `Σ y ⊙ g`) took 5.3 ms
    /// against 1.1 ms on a 128 × 8 × 32 × 32 input.
    fn conv2d_weight_grad(&self, x: &TT, g: &TT, geom: &ConvGeom) -> OpsResult<Option<TT>> {
        let shape = [
            i(geom.cout),
            i(geom.cin / geom.groups),
            i(geom.kernel[0]),
            i(geom.kernel[1]),
        ];
        let (stride, padding, dilation) = (
            dims(&geom.stride),
            dims(&geom.padding),
            dims(&geom.dilation),
        );
        let mut err: *mut std::ffi::c_char = std::ptr::null_mut();
        // SAFETY: both handles are live tensors for the call; the result is
        // a new tensor handle owned by the returned `Tensor`, or null with
        // a malloc'd message.
        let dw = unsafe {
            let out = nngeo_conv2d_weight_grad(
                g.0.as_ptr(),
                x.0.as_ptr(),
                shape.as_ptr(),
                stride.as_ptr(),
                padding.as_ptr(),
                dilation.as_ptr(),
                i(geom.groups),
                &mut err,
            );
            if out.is_null() {
                let msg = if err.is_null() {
                    "convolution_backward failed".to_string()
                } else {
                    let m = std::ffi::CStr::from_ptr(err).to_string_lossy().into_owned();
                    libc::free(err as *mut libc::c_void);
                    first_line(&m).to_string()
                };
                return Err(OpsError(format!("tch: {msg}")));
            }
            Tensor::from_ptr(out)
        };
        ok(dw.f_reshape([i(geom.cout), -1])).map(Some)
    }

    /// libtorch's `threshold_backward`: one pass.
    fn relu_grad(&self, g: &TT, x: &TT) -> OpsResult<TT> {
        ok(x.f_threshold_backward(&g.0, 0.0))
    }

    /// `torch.linalg.eigh` in f64 on the run's device: cuSOLVER on CUDA,
    /// LAPACK's divide and conquer on the CPU.
    fn eigh(&self, m: &Mat) -> OpsResult<(Vec<f64>, Mat)> {
        let s = nngeo::linalg::eigh_input(m).map_err(|err| OpsError(err.to_string()))?;
        let n = s.rows;
        if n == 0 {
            return Ok((Vec::new(), Mat::zeros(0, 0)));
        }
        let (vals, vecs) = self
            .upload_f64(&s.data, n, n)?
            .f_linalg_eigh("L")
            .map_err(e)?;
        Ok((
            to_host_f64(&vals, n)?,
            Mat::from_vec(n, n, to_host_f64(&vecs, n * n)?),
        ))
    }

    /// `torch.linalg.eigvalsh` in f64 on the run's device.
    fn eigvalsh(&self, m: &Mat) -> OpsResult<Vec<f64>> {
        let s = nngeo::linalg::eigh_input(m).map_err(|err| OpsError(err.to_string()))?;
        let n = s.rows;
        if n == 0 {
            return Ok(Vec::new());
        }
        let vals = self
            .upload_f64(&s.data, n, n)?
            .f_linalg_eigvalsh("L")
            .map_err(e)?;
        to_host_f64(&vals, n)
    }

    /// Cholesky (`linalg.cholesky_ex`, `cholesky_solve`) in f64 on the
    /// run's device, LU (`linalg.solve`) where Cholesky meets a
    /// non-positive pivot or gives a non-finite answer: the host solver's
    /// fallback, so that both accept the same matrices.
    fn solve_sym(&self, a: &Mat, b: &Mat) -> OpsResult<Mat> {
        nngeo::linalg::check_system("solve_sym", a, b).map_err(|err| OpsError(err.to_string()))?;
        let (n, k) = (a.rows, b.cols);
        if n == 0 || k == 0 {
            return Ok(Mat::zeros(n, k));
        }
        let at = self.upload_f64(&a.data, n, n)?;
        let bt = self.upload_f64(&b.data, n, k)?;
        let x = solve_sym_tensor(&at, &bt)?;
        Ok(Mat::from_vec(n, k, to_host_f64(&x, n * k)?))
    }

    fn device_linalg(&self) -> bool {
        self.device_linalg
    }

    fn holds_on_device(&self) -> bool {
        self.device_storage
    }

    fn write_device_block(
        &self,
        t: &TT,
        dst: &TT,
        at: nngeo::geometry::hostcopy::BlockAt,
    ) -> OpsResult<()> {
        crate::held::write_block(t, dst, at)
    }

    fn hold(&self, t: TT) -> OpsResult<nngeo::linalg::Held> {
        crate::held::hold(t.0, self)
    }

    fn hold_f64(&self, t: TT, scale: f64) -> OpsResult<nngeo::linalg::Held> {
        let t = t.0.f_to_kind(Kind::Double).map_err(e)?;
        let t = if scale == 1.0 {
            t
        } else {
            t.f_mul_scalar(scale).map_err(e)?
        };
        crate::held::hold(t, self)
    }

    fn hold_host(&self, m: &Mat) -> OpsResult<nngeo::linalg::Held> {
        crate::held::hold(self.upload_f64(&m.data, m.rows, m.cols)?, self)
    }

    /// A shared view of the held tensor in the run's precision, on its
    /// device (a copy only where the precision differs).
    fn held_tensor(&self, m: &nngeo::linalg::Held) -> OpsResult<Option<TT>> {
        let Some(h) = m.0.as_any().downcast_ref::<crate::held::HeldTensor>() else {
            return Ok(None);
        };
        let t = h
            .tensor()
            .f_to_device(self.device)
            .and_then(|t| t.f_to_kind(self.kind()))
            .map_err(e)?;
        Ok(Some(TT(t)))
    }

    fn conv_input_grad(
        &self,
        g: &TT,
        w: &TT,
        idx: &TT,
        c: usize,
        k: usize,
        s: usize,
    ) -> OpsResult<TT> {
        let (gs, ws) = (g.size(), w.size());
        let l = idx.numel() / k.max(1);
        let ck = c * k;
        if gs.len() != 3
            || ws.len() != 2
            || gs[1] != ws[0]
            || ws[1] != i(ck)
            || gs[2] != i(l)
            || gs[0] == 0
            || ck == 0
            || s == 0
            || l == 0
        {
            return conv_input_grad_default(self, g, w, idx, c, k, s);
        }
        let b = gs[0] as usize;
        let full = patch_index(idx, c, k, l, s, true)?;
        let out = self.zeros(&[b, c * (s + 1)])?;
        // The patches' gradient `gᵀ w` [len, L, c·K] a few examples at a
        // time (as the default, so that it stays small); the transpose of
        // `g` is a view the matmul reads as it is.
        let step = (PATCH_CHUNK / (l * ck)).clamp(1, b);
        for at in (0..b).step_by(step) {
            let len = step.min(b - at);
            let dp = g
                .f_narrow(0, i(at), i(len))
                .and_then(|g| g.f_transpose(1, 2))
                .and_then(|gt| gt.f_matmul(w))
                .and_then(|dp| dp.f_reshape([i(len), i(l * ck)]))
                .map_err(e)?;
            let part = out.f_narrow(0, i(at), i(len)).map_err(e)?;
            scatter_rows(&TT(part), &full, &dp)?;
        }
        unpad(&out, b, c, s)
    }
}

/// How many values of a convolution's patch gradient
/// [`Ops::conv_input_grad`] forms at once (as nngeo's default: 1 M).
const PATCH_CHUNK: usize = 1 << 20;

/// `(b, s, L)` of an unfold of `x [b, c, s]` (or `[b, c, h, w]`) through
/// `idx` (`K·L` entries); `None` for the degenerate cases the default
/// handles.
/// The natural weight (see [`ConvGeom`]) as PyTorch's
/// `[cout, cin/groups, kh, kw]`: the same row-major order.
fn conv_weight(w: &TT, geom: &ConvGeom) -> OpsResult<Tensor> {
    w.f_reshape([
        i(geom.cout),
        i(geom.cin / geom.groups),
        i(geom.kernel[0]),
        i(geom.kernel[1]),
    ])
    .map_err(e)
}

fn patch_dims(x: &TT, idx: &TT, c: usize, k: usize) -> Option<(usize, usize, usize)> {
    let b = *x.size().first()? as usize;
    let total = x.numel();
    let kl = idx.numel();
    if b == 0
        || c == 0
        || k == 0
        || total == 0
        || !total.is_multiple_of(b * c)
        || !kl.is_multiple_of(k)
    {
        return None;
    }
    let l = kl / k;
    (l > 0).then_some((b, total / (b * c), l))
}

/// The index map `idx [K, L]` (pixels `0..=s`, `s` the padding) spread
/// over the channels of a padded row `[c, s+1]`, in the patches' order:
/// `[L, c, K]` (`lk`) or `[c, K, L]`, entry `ci·(s+1) + idx[k, l]`.
fn patch_index(idx: &TT, c: usize, k: usize, l: usize, s: usize, lk: bool) -> OpsResult<TT> {
    let offs =
        Tensor::f_arange_start_step(0, i(c * (s + 1)), i(s + 1), (Kind::Int64, idx.device()))
            .map_err(e)?;
    let idx = idx.f_reshape([i(k), i(l)]).map_err(e)?;
    let full = if lk {
        // [L, 1, K] + [1, c, 1]
        idx.f_transpose(0, 1)
            .and_then(|t| t.f_unsqueeze(1))
            .and_then(|t| t.f_add(&offs.f_reshape([1, i(c), 1])?))
    } else {
        // [1, K, L] + [c, 1, 1]
        idx.f_unsqueeze(0)
            .and_then(|t| t.f_add(&offs.f_reshape([i(c), 1, 1])?))
    };
    ok(full.and_then(|t| t.f_reshape([-1])))
}

/// `out [b, n] += src [b, m]` scattered along each row through the same
/// `index [m]`, in place (`out` is a tensor this module just made).
fn scatter_rows(out: &TT, index: &TT, src: &Tensor) -> OpsResult<()> {
    let rows = out.size()[0];
    let index = index
        .f_unsqueeze(0)
        .and_then(|t| t.f_expand([rows, index.numel() as i64], false))
        .map_err(e)?;
    let mut out = out.shallow_clone();
    // The result is `out` itself again.
    let _same = out.f_scatter_add_(1, &index, src).map_err(e)?;
    Ok(())
}

/// `[b, c·(s+1)]` → `[b, c, s]`, the padding slots dropped.
fn unpad(out: &TT, b: usize, c: usize, s: usize) -> OpsResult<TT> {
    ok(out
        .f_reshape([i(b), i(c), i(s + 1)])
        .and_then(|t| t.f_narrow(2, 0, i(s)))
        .and_then(|t| t.f_contiguous()))
}

extern "C" {
    /// `cpp/shim.cpp`.
    #[allow(clippy::too_many_arguments)]
    fn nngeo_conv2d_weight_grad(
        grad_output: *const torch_sys::C_tensor,
        input: *const torch_sys::C_tensor,
        weight_shape: *const i64,
        stride: *const i64,
        padding: *const i64,
        dilation: *const i64,
        groups: i64,
        err: *mut *mut std::ffi::c_char,
    ) -> *mut torch_sys::C_tensor;
}

/// `A⁻¹ B` for a symmetric f64 `A` on its device: Cholesky
/// (`linalg.cholesky_ex`, `cholesky_solve`), LU (`linalg.solve`) where
/// Cholesky meets a non-positive pivot or gives a non-finite answer, as
/// the host's `solve_sym` does; an error where the solution is not finite.
pub(crate) fn solve_sym_tensor(a: &Tensor, b: &Tensor) -> OpsResult<Tensor> {
    let finite = |x: &Tensor| -> OpsResult<bool> {
        x.f_isfinite()
            .and_then(|f| f.f_all())
            .and_then(|f| f.f_int64_value(&[]))
            .map(|v| v != 0)
            .map_err(e)
    };
    let (l, info) = a.f_linalg_cholesky_ex(false, false).map_err(e)?;
    if info.f_int64_value(&[]).map_err(e)? == 0 {
        let x = b.f_cholesky_solve(&l, false).map_err(e)?;
        if finite(&x)? {
            return Ok(x);
        }
    }
    let x = Tensor::f_linalg_solve(a, b, true).map_err(e)?;
    if !finite(&x)? {
        return Err(OpsError(
            "solve_sym: matrix is singular to working precision (solution is not finite)".into(),
        ));
    }
    Ok(x)
}

/// The first `len` values of a device tensor as host f64.
fn to_host_f64(t: &Tensor, len: usize) -> OpsResult<Vec<f64>> {
    let t = t
        .f_to_device(Device::Cpu)
        .and_then(|t| t.f_to_kind(tch::Kind::Double))
        .and_then(|t| t.f_contiguous())
        .map_err(e)?;
    let mut out = vec![0.0f64; len];
    t.f_copy_data(&mut out, len).map_err(e)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backtraces_are_cut_from_messages() {
        let err = e(TchError::Torch(
            "shape mismatch\nException raised from foo at bar.cpp:1\nframe #0: x".into(),
        ));
        assert_eq!(err.0, "tch: shape mismatch");
    }
}
