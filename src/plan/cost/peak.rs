//! Working memory: what a step needs while it runs.
//!
//! `Cost::memory` is what a step's result holds once it has run; the
//! executor keeps every top-level result until the end, so they add up (a
//! training run's hook results are dropped when it ends: its `peak` holds
//! them). `Cost::peak`
//! is what the step needs while it runs, its result included: the device
//! buffers of a batch (activations, captures, per-example Jacobians), the
//! host copies (representations and vectors live on the host, dense
//! values in the run's precision where [`dense_dtype`] says, the rest in
//! f64), and the workspace of decompositions
//! and solves. The run's peak ([`crate::plan::Plan::peak_memory`]) is
//! [`BASE_BYTES`] plus, at the worst step, everything held before it plus
//! its `peak`. The constants below were measured against peak RSS
//! (tests/memory_peak.rs) and rounded up: the estimate is an upper bound.

use super::*;

/// The process itself, before any data or model: executable, candle,
/// thread stacks, allocator arenas. Measured: an `exec` of a 5-step plan
/// with a 4,874-parameter MLP on 64-feature digits peaks at 14 MiB; the
/// rest is margin for what differs between machines (allocator arenas per
/// thread, page sizes), so that the bound holds beyond the one it was
/// measured on.
pub const BASE_BYTES: u64 = 32 << 20;

/// Headroom over the sum of the buffers counted: the small buffers no
/// formula follows, and the allocator's fragmentation (×5/4). The `nngeo`
/// binary's allocator keeps the pages a step frees for reuse within the
/// step (see `crate::memory`), so a buffer that does not fit into what
/// was freed before it adds to the resident size; with the system
/// allocator ×11/10 sufficed.
pub fn with_headroom(bytes: u64) -> u64 {
    bytes.saturating_add(bytes / 4)
}

/// What the process of a backend holds beyond the buffers the steps count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Process {
    /// Before any data or model (see [`BASE_BYTES`]).
    pub base: u64,
    /// Whether the working memory takes the libtorch allocator's headroom
    /// ([`Process::headroom`]).
    libtorch: bool,
}

impl Process {
    /// The process that runs `backend` (a plan's `backend`, as `exec`
    /// resolves it: `tch`, `candle`, `plugin:NAME`...).
    ///
    /// The libtorch plugin's process also holds libtorch's own code and
    /// tables: an `exec` of a 50-example KFAC of a 20-16-10 MLP peaks at
    /// 500 MB resident on the CPU (19 MB on candle); its base here is
    /// 512 MiB more than candle's. Its tensors come from the C library's
    /// heap, which the plugin keeps within a step (`nngeo-backend-tch`'s
    /// `keep_freed_pages`), and blocks of many sizes fragment it: a
    /// ResNet18 (width 8, 1,000 CIFAR-size images) KFAC's step held twice
    /// its live buffers (233 MB against 115 MB with pages returned at
    /// once), Diag's and EKFAC's up to 2.45× what candle's plan counts, so
    /// its working memory takes ×3 where candle's takes ×5/4.
    pub fn of(backend: &str) -> Self {
        let libtorch = backend == "tch" || backend.starts_with("tch-");
        Process {
            base: BASE_BYTES + if libtorch { 512 << 20 } else { 0 },
            libtorch,
        }
    }

    /// `bytes` of working memory with the allocator's headroom.
    pub fn headroom(&self, bytes: u64) -> u64 {
        if self.libtorch {
            bytes.saturating_mul(3)
        } else {
            with_headroom(bytes)
        }
    }
}

/// Bytes of one host number (vectors, parameters and every copy a
/// decomposition reads are f64 on the host; a representation held in
/// f32 is counted at 8 bytes here, an upper bound).
pub(super) const HOST: u64 = 8;

/// Examples per batch so that per-example data (`m · nb · width`) stays
/// near 2²⁶ numbers (the executor batches with this too).
pub fn batch_examples(n: usize, m: usize, width: usize) -> usize {
    let per = (m * width).max(1);
    (((1usize << 26) / per).max(1)).min(n.max(1))
}

/// The width the executor batches by: the number of parameters, or the
/// largest layer output if larger.
pub(super) fn model_width(model: &ModelSpec) -> usize {
    (model.params as usize).max(
        model
            .layers
            .iter()
            .map(|l| l.output.iter().product::<usize>())
            .max()
            .unwrap_or(1),
    )
}

/// The width a Fisher of `structure` batches by. Structures built from
/// each layer's captures (KFAC, EKFAC, Diag, QuasiDiag, BlockDiag) hold per
/// example and output function the activations, one layer's unfolded
/// input and, for the last four, one layer's per-example gradient, which
/// the backward pass hands over layer by layer; batching them by the whole
/// parameter count, as the per-example Jacobian of Dense needs, cut a
/// 784-512-512-10 MLP's KFAC into batches of 11 examples and made it 16×
/// slower than one batch.
pub fn fim_batch_width(model: &ModelSpec, structure: &Structure) -> usize {
    let Some(per_layer) = streamed_layer_params(model, structure) else {
        return model_width(model);
    };
    (streamed_width(model) + per_layer).min(model_width(model) as u64) as usize
}

/// The width an NTK of `structure` batches by: the per-example Jacobian
/// of every parameter for a kernel built whole; for Diag and BlockDiag,
/// built from each layer's capture as the backward pass hands it over
/// (`Problem::ntk_example_blocks`), a streamed pass's numbers per example
/// and the largest per-example gradient a layer forms (none for a layer
/// with one position, whose products come from its factors).
pub fn ntk_batch_width(model: &ModelSpec, structure: &Structure) -> usize {
    match structure {
        Structure::Diag | Structure::BlockDiag => (streamed_width(model)
            + ntk_formed_params(model.param_layers()))
        .min(model_width(model) as u64) as usize,
        _ => model_width(model),
    }
}

/// The largest per-example gradient that building an NTK's Diag or
/// BlockDiag forms among `layers`: every layer's but one with a single
/// position (a Linear layer), whose gradient `g ⊗ a` it never forms.
fn ntk_formed_params<'a>(layers: impl Iterator<Item = &'a LayerSpec>) -> u64 {
    layers
        .filter(|l| !matches!(kfac_dims(l), Some((_, _, 1))))
        .map(|l| l.params)
        .max()
        .unwrap_or(0)
}

/// For a structure built from captures handed over layer by layer, the
/// largest per-example gradient a layer's block forms (none for KFAC;
/// Diag, QuasiDiag and EKFAC form none for a Linear layer either, whose
/// one position lets them work on the factors' squares); `None` for the
/// other structures.
fn streamed_layer_params(model: &ModelSpec, structure: &Structure) -> Option<u64> {
    let largest = |skip_linear: bool| {
        model
            .param_layers()
            .filter(|l| !(skip_linear && matches!(kfac_dims(l), Some((_, _, 1)))))
            .map(|l| l.params)
            .max()
            .unwrap_or(0)
    };
    match structure {
        Structure::Kfac => Some(0),
        Structure::Ekfac { .. } | Structure::Diag | Structure::QuasiDiag => Some(largest(true)),
        Structure::BlockDiag => Some(largest(false)),
        _ => None,
    }
}

/// Numbers per example of a streamed pass: every layer's activation
/// (the forward caches) and the largest unfolded input.
fn streamed_width(model: &ModelSpec) -> u64 {
    let unfolded = model
        .param_layers()
        .map(|l| kfac_dims(l).map_or(0, |(a, _, pos)| a * pos))
        .max()
        .unwrap_or(0);
    activations(model) + pool_width(model) + unfolded
}

/// Numbers per example that pooling layers add to a pass beyond their
/// outputs: a max pool keeps which tap of each window won (`[C, K, L]`,
/// K taps per window, L windows), and while a pool runs, forward or
/// backward (one output function at a time), its input spread over the
/// windows and its product with the gradient (two more of that size).
fn pool_width(model: &ModelSpec) -> u64 {
    let (mut kept, mut widest) = (0u64, 0u64);
    for l in &model.layers {
        let Some((taps, max)) = l.pool_taps() else {
            continue;
        };
        let c = l.input.first().copied().unwrap_or(1) as u64;
        let windows: u64 = l.output[1..].iter().map(|&d| d as u64).product();
        let spread = c * taps as u64 * windows;
        if max {
            kept += spread;
        }
        widest = widest.max(spread);
    }
    kept + 2 * widest
}

/// Numbers per example of every layer's output and the input.
fn activations(model: &ModelSpec) -> u64 {
    model
        .layers
        .iter()
        .map(|l| l.output.iter().map(|&d| d as u64).product::<u64>())
        .sum::<u64>()
        + model.input.iter().map(|&d| d as u64).product::<u64>()
}

/// Device bytes of a streamed pass of `nb` examples with `m` output
/// functions: the forward caches and one layer's unfolded input, plus,
/// at the layer the backward pass is in, the gradient of its output, its
/// capture and the statistic's copy of it (3 × `m` × the largest layer
/// output).
fn streamed_pass_bytes(model: &ModelSpec, nb: u64, m: u64, s: u64) -> u64 {
    let live = nb
        .saturating_mul(streamed_width(model) + 3 * m * widest_output(model))
        .saturating_mul(s);
    with_retention(model, live)
}

/// Numbers per example of the largest layer output.
fn widest_output(model: &ModelSpec) -> u64 {
    model
        .layers
        .iter()
        .map(|l| l.output.iter().map(|&d| d as u64).product::<u64>())
        .max()
        .unwrap_or(0)
}

/// `live` bytes of a pass and what the allocator keeps beside them (see
/// [`has_patches`]).
fn with_retention(model: &ModelSpec, live: u64) -> u64 {
    if has_patches(model) {
        live.saturating_add(live * 3 / 5)
    } else {
        live
    }
}

/// Device bytes of a forward pass of `nb` examples that keeps no caches
/// (an evaluation): the live layer outputs (a residual block's input waits
/// beside its branch) and one layer's patches, with a patch model's
/// allocator retention (see [`has_patches`]).
fn forward_bytes(model: &ModelSpec, nb: u64, s: u64) -> u64 {
    let unfolded = model
        .param_layers()
        .map(|l| kfac_dims(l).map_or(0, |(a, _, pos)| a * pos))
        .max()
        .unwrap_or(0);
    let live = nb
        .saturating_mul(3 * widest_output(model) + pool_width(model) + unfolded)
        .saturating_mul(s);
    with_retention(model, live)
}

/// Whether a layer unfolds its input into patches (a convolution over
/// more than one position). A streamed pass of such a model frees and
/// allocates tensors of a dozen sizes layer after layer (activations,
/// each layer's patches, gradients in two layouts), and the binary's
/// allocator keeps what was freed for reuse: in a ResNet18 (width 8, 32×32
/// images) KFAC, Diag and EKFAC build the pass's resident peak was 1.55×
/// its live peak (184 MB against 118 MB with pages returned at once),
/// where an MLP's stays within the plan's general ×5/4. Returning pages
/// after each batch cut the peak by only 5 % and cost 10 % of the time.
fn has_patches(model: &ModelSpec) -> bool {
    model
        .param_layers()
        .any(|l| kfac_dims(l).is_some_and(|(_, _, pos)| pos > 1))
}

/// Device bytes of one forward and backward pass of `nb` examples with `m`
/// backpropagated output functions: activations, their gradients and the
/// (unfolded) layer inputs each parameterised layer captures.
pub(super) fn pass_bytes(model: &ModelSpec, nb: u64, m: u64, s: u64) -> u64 {
    let act = activations(model);
    let unfolded: u64 = model
        .param_layers()
        .map(|l| kfac_dims(l).map_or(0, |(a, _, pos)| a * pos))
        .sum();
    nb.saturating_mul((1 + m).saturating_mul(act) + pool_width(model) + unfolded)
        .saturating_mul(s)
}

/// Examples per batch of a Hessian's products: each batch's forward and
/// backward passes are kept whole (values, caches, gradients) next to a
/// product's tangents.
pub fn hessian_batch(model: &ModelSpec, n: usize) -> usize {
    batch_examples(n, HESSIAN_KEPT, model_width(model))
}

/// Numbers a Hessian product holds per example and activation: measured
/// (peak RSS against the batch size, an MLP 64-256-256-10) at about 60,
/// far above the dozen tensors the passes keep, so the batches are kept
/// small and the estimate takes the measurement.
const HESSIAN_KEPT: usize = 64;

/// Device and host bytes of a Hessian's products on one batch: the kept
/// passes and a product's tangents (about eight numbers per activation and
/// two unfolded inputs per example), the direction's network (its
/// weights on the device, its host parameters twice) and the product.
pub(super) fn hessian_pass_bytes(model: &ModelSpec, n: usize, s: u64) -> u64 {
    let nb = hessian_batch(model, n) as u64;
    let unfolded: u64 = model
        .param_layers()
        .map(|l| kfac_dims(l).map_or(0, |(a, _, pos)| a * pos))
        .sum();
    pass_bytes(model, nb, HESSIAN_KEPT as u64 - 1, s)
        + nb.saturating_mul(unfolded).saturating_mul(2 * s)
        + model.params.saturating_mul(2 * s + 4 * HOST)
}

/// Bytes (result included) and FLOPs of `jvp(J, v)` or `vjp(J, u)` on `n`
/// examples: per batch the backward pass of the C outputs (each layer's
/// capture), the layer products, and on the host the function-space
/// vector `[n, C]` and parameter vectors.
pub fn jacobian_product_cost(model: &ModelSpec, n: usize, dtype: Dtype) -> (u64, u64) {
    let c = model.outputs();
    let nb = batch_examples(n, c, model_width(model)) as u64;
    let (n, c64) = (n as u64, c as u64);
    let peak = pass_bytes(model, nb, c64, dtype.size())
        + 3 * n * c64 * HOST
        + model.params.saturating_mul(4 * HOST + 2 * dtype.size());
    let flops = n * c64 * 3 * forward_flops(model) + 2 * n * c64 * model.params;
    (peak, flops)
}

/// Lanczos steps to converge the top `k` eigenpairs of a `p`-dimensional
/// operator (all `p` below the dense cutoff, where it is built densely).
pub(super) fn lanczos_steps(p: u64, k: u64) -> u64 {
    if p <= 128 {
        p
    } else {
        p.min(10 * k + 64)
    }
}

/// Bytes a model holds: its parameters on the device, on the host and its
/// initial weights (f64), plus the network's own copies.
pub fn model_bytes(model: &ModelSpec, dtype: Dtype) -> u64 {
    model.params.saturating_mul(2 * dtype.size() + 2 * HOST)
}

/// Bytes a dataset holds: its inputs on the host (f64) and on the device,
/// its targets on the host twice.
pub fn data_bytes(info: &DataInfo, dtype: Dtype) -> u64 {
    let x: u64 = info.shape.iter().map(|&d| d as u64).product::<u64>() * info.n as u64;
    let y = info.target_dim.max(1) as u64 * info.n as u64;
    x.saturating_mul(HOST + dtype.size())
        .saturating_add(y.saturating_mul(2 * HOST))
}

/// Bytes the result of a representation holds (each value in the
/// precision [`dense_dtype`] says).
pub fn repr_held(
    object: Object,
    structure: &Structure,
    model: &ModelSpec,
    options: &ReprOptions,
    dtype: Dtype,
) -> u64 {
    match (object, structure) {
        // Nothing but the layer layout: it is recomputed from model and data.
        (Object::Fim | Object::Hessian, Structure::Implicit) => 1 << 10,
        _ => repr_memory(object, structure, model, options, dtype),
    }
}

/// Bytes a representation needs while it is built, its result included.
pub fn repr_peak(
    object: Object,
    structure: &Structure,
    model: &ModelSpec,
    options: &ReprOptions,
    dtype: Dtype,
) -> u64 {
    let s = dtype.size();
    let held = repr_held(object, structure, model, options, dtype);
    let layers = covered_layers(model, options);
    let p: u64 = layers.iter().map(|l| l.params).sum();
    let n = options.examples as u64;
    match object {
        Object::Hessian => {
            let pass = hessian_pass_bytes(model, options.examples, s);
            // A product's share and its flat copy on the host.
            let share = 2 * p * HOST;
            match structure {
                Structure::Implicit => held,
                // Built in place, then symmetrised.
                Structure::Dense | Structure::BlockDiag | Structure::Diag => held + pass + share,
                Structure::LowRank { rank } => {
                    let k = rank.unwrap_or(1) as u64;
                    let basis = if p <= 128 {
                        3 * sq(p)
                    } else {
                        2 * lanczos_steps(p, k) * p
                    };
                    held + pass + share + basis * HOST
                }
                _ => held + pass + share,
            }
        }
        Object::Fim => {
            let m = fisher_outputs(options);
            let width = fim_batch_width(model, structure);
            let nb = batch_examples(options.examples, m as usize, width) as u64;
            let pass = match streamed_layer_params(model, structure) {
                Some(_) => streamed_pass_bytes(model, nb, m, s),
                None => pass_bytes(model, nb, m, s),
            };
            // One batch's per-example Jacobian, per layer and concatenated.
            let jac = (m * nb).saturating_mul(p).saturating_mul(2 * s);
            match structure {
                Structure::Dense => {
                    let w = p.min(2048);
                    held + jac + pass + sq(w) * (s + HOST) + m * nb * w * s
                }
                Structure::LowRank { rank } => {
                    let rows = n * m;
                    let all = rows.saturating_mul(p).saturating_mul(HOST);
                    let truncate = match rank {
                        Some(k) if (*k as u64) < rows => {
                            3 * sq(rows) * HOST + (*k as u64) * p * HOST
                        }
                        _ => 0,
                    };
                    // A batch's rows also pass through a host copy (f64)
                    // on their way into the stacked matrix.
                    let download = (m * nb).saturating_mul(p).saturating_mul(HOST);
                    all + jac + download + pass + truncate
                }
                Structure::Implicit => held,
                s_ => {
                    let entries: Vec<u64> = layers
                        .iter()
                        .map(|l| fim_layer_count(s_, l, n, m))
                        .collect();
                    let total: u64 = entries.iter().sum();
                    let largest = entries.iter().copied().max().unwrap_or(0);
                    // Accumulating on the device (sum, batch term, new sum),
                    // then bringing each block to the host.
                    let batches = n.div_ceil(nb.max(1));
                    let build = (total + if batches > 1 { 2 * largest } else { 0 }) * s;
                    let download = total * HOST + largest * s;
                    // The structure of each layer's block (a mix picks one).
                    let kind = |l: &LayerSpec| match s_ {
                        Structure::Mix { .. } => s_
                            .for_layer(&l.name, l.layer.family())
                            .unwrap_or(&Structure::BlockDiag),
                        other => other,
                    };
                    // A dense block forms the layer's per-example Jacobian,
                    // and so does a diagonal of a convolution (its square
                    // summed over positions is not a product of captures).
                    let conv = |l: &LayerSpec| kfac_dims(l).is_some_and(|(_, _, pos)| pos > 1);
                    let per_layer_jac = layers
                        .iter()
                        .map(|l| match kind(l) {
                            Structure::BlockDiag => 2,
                            Structure::Diag | Structure::QuasiDiag if conv(l) => 1,
                            _ => 0,
                        } * (m * nb).saturating_mul(l.params) * s)
                        .max()
                        .unwrap_or(0);
                    let mut peak = build.max(download) + per_layer_jac + pass;
                    let ekfac: Vec<&&LayerSpec> = layers
                        .iter()
                        .filter(|l| matches!(kind(l), Structure::Ekfac { .. }))
                        .collect();
                    if !ekfac.is_empty() {
                        // Every factor's eigendecomposition at once (in
                        // parallel), then the refit's projected gradients
                        // (per example for a convolution) and the kept
                        // captures.
                        let factors: u64 = ekfac
                            .iter()
                            .filter_map(|l| kfac_dims(l).map(|(a, g, _)| sq(a) + sq(g)))
                            .sum();
                        let refit = ekfac
                            .iter()
                            .filter_map(|l| {
                                kfac_dims(l).map(|(a, g, pos)| {
                                    if pos == 1 {
                                        (m * nb * g + nb * a) * 2 + 2 * a * g
                                    } else {
                                        2 * m * nb * a * g
                                    }
                                })
                            })
                            .max()
                            .unwrap_or(0);
                        // The captures kept for the refit when the
                        // examples fit one batch, at most 256 MiB
                        // (`geometry::build`'s KEEP_BYTES).
                        let kept = if nb >= n {
                            let per_example: u64 = ekfac
                                .iter()
                                .filter_map(|l| kfac_dims(l).map(|(a, g, pos)| (a + m * g) * pos))
                                .sum();
                            (nb * per_example * s).min(256 << 20)
                        } else {
                            0
                        };
                        // A refit whose captures were not kept runs the
                        // passes again, next to the bases it projects on.
                        let again = nb < n
                            && ekfac
                                .iter()
                                .any(|l| matches!(kind(l), Structure::Ekfac { refit: true, .. }));
                        // The pass (with the captures kept so far) and
                        // the decompositions and refit come one after the
                        // other.
                        let after = build.max(download)
                            + 3 * factors * HOST
                            + refit * s
                            + if again { pass } else { 0 };
                        peak = peak.max(after) + kept;
                    }
                    peak
                }
            }
        }
        Object::Ntk => {
            let c = options.outputs as u64;
            let dim = n * c;
            let pass = pass_bytes(model, n, c, s);
            let factors: u64 = layers
                .iter()
                .map(|l| {
                    let k = match (&l.layer, kfac_dims(l)) {
                        (Layer::Linear { .. }, Some((_, g, _))) => g,
                        _ => l.params,
                    };
                    3 * c * n * k * s
                })
                .sum::<u64>()
                + layers.len() as u64 * sq(n) * s;
            let blocks = 4 * sq(n) * s.max(HOST);
            let mut peak = match structure {
                Structure::BlockDiag | Structure::Diag => {
                    // Built layer by layer from a streamed pass's captures
                    // (`Problem::ntk_example_blocks`), batch by batch.
                    let width = ntk_batch_width(model, structure) as u64;
                    let nb = batch_examples(options.examples, c as usize, width as usize) as u64;
                    // A streamed pass of every output and its seeds
                    // `[C, nb, C]`, on the host and the device.
                    let pass = streamed_pass_bytes(model, nb, c, s) + nb * sq(c) * (HOST + s);
                    // A layer that forms its per-example Jacobian `[C·nb,
                    // p_l]`: its gradient in the natural layout, the flat
                    // copy (weights and bias concatenated) and the
                    // Jacobian; BlockDiag's products read two contiguous
                    // copies of its transpose in place of the first two.
                    let formed = 3 * c * nb * ntk_formed_params(layers.iter().copied());
                    // A Linear layer: BlockDiag's two transposed copies of
                    // its output gradients and the products `[nb, C, C]`;
                    // Diag's squared norms, `[C, nb]`.
                    let factored = match structure {
                        Structure::BlockDiag => 2 * c * nb * widest_output(model) + nb * sq(c),
                        _ => c * nb,
                    };
                    // On the host: one layer's products and |a_i|² per
                    // batch, the kernel's sums, and BlockDiag's blocks
                    // made from them (the sums and the blocks at once).
                    let host = (nb * sq(c) + nb) * HOST + 2 * held;
                    pass + formed.max(factored).saturating_mul(s) + host
                }
                Structure::LowRank { rank: Some(k) } => {
                    // Built whole in f64 (`held`), then given up to its
                    // eigendecomposition (`linalg::eigh_top`), which holds
                    // it beside its own copy, the eigenvectors and the
                    // divide-and-conquer workspace (two more `dim²`);
                    // the top `k` eigenvectors are copied out before the
                    // rank-k kernel is summed from them.
                    let k = (*k as u64).min(dim);
                    let build = held + pass + factors + blocks;
                    let decompose = 5 * held + 2 * k * dim * HOST;
                    let low = held + k * dim * HOST;
                    build.max(decompose).max(low)
                }
                _ => held + pass + factors + blocks,
            };
            if options.centered {
                peak += 2 * sq(dim) * HOST;
            }
            peak
        }
    }
}

/// Host copies of the parameter vector a training step makes (gradients,
/// optimiser state, new weights, the net rebuilt with them), measured;
/// four more than are live at once, for the copies of earlier steps that
/// the allocator keeps (see `crate::memory`): how many it keeps depends on
/// which thread freed them, so the peak moves from run to run. Ten SGD
/// steps of a 1.1M-parameter MLP (f64) peaked between 235.6 and 265.5 MiB
/// in six runs on one machine (198 MiB with freed pages returned at
/// once), against 276.4 MiB planned with two spare copies.
fn train_copies(config: &TrainConfig) -> u64 {
    let base = match &config.optimizer {
        Optimizer::Sgd { .. } => 14,
        Optimizer::Adam { .. } => 16,
        Optimizer::Ngd { .. } => 12,
    };
    base + match config.mode {
        TrainMode::Plain => 0,
        TrainMode::Scaled { .. } => 4,
        // The offset `w − w₀` is a network of its own, rebuilt with the
        // network at every step while the old pair is still alive: 12 was
        // measured on an idle machine and exceeded by 15 MiB (six copies of
        // a 301k-parameter MLP) on a busy one, where the allocator returned
        // the earlier steps' copies later.
        TrainMode::Linearized { .. } => 18,
    }
}

/// Bytes a training run needs while it runs (its hooks apart), the trained
/// model included: the parameter copies, a mini-batch's pass, evaluation
/// passes, and the natural gradient's own Fisher (running average, fresh
/// estimate, EKFAC's factors and their eigendecompositions).
pub fn train_peak(
    model: &ModelSpec,
    data: Option<&DataInfo>,
    config: &TrainConfig,
    dtype: Dtype,
) -> u64 {
    let s = dtype.size();
    let batch = config.batch.max(1) as u64;
    let per_example_input: u64 = data
        .map(|d| d.shape.iter().map(|&x| x as u64).product::<u64>())
        .unwrap_or(0);
    let n = data.map_or(0, |d| d.n as u64);
    let eval_nb = batch_examples(n as usize, 1, model_width(model)) as u64;
    // A step's gradient is reduced layer by layer as the backward pass
    // makes it (`Problem::loss_gradient_in`), so a convolution's patches
    // exist one layer at a time: counting every layer's at once put a
    // width-8 ResNet18's SGD run at 2.0 GiB against 344 MiB measured.
    // Evaluations (losses, accuracies, per-example tracking) run forward
    // passes that keep no caches: a few live layer outputs and one layer's
    // patches.
    let (step, eval) = if has_patches(model) {
        (
            streamed_pass_bytes(model, batch, 1, s),
            forward_bytes(model, eval_nb, s),
        )
    } else {
        (
            pass_bytes(model, batch, 1, s),
            pass_bytes(model, eval_nb, 1, s),
        )
    };
    let mut peak = model_bytes(model, dtype)
        + model.params.saturating_mul(train_copies(config) * HOST)
        + batch * per_example_input * (s + HOST)
        // Per-example losses and tracking.
        + n * 64;
    let mut passes = step.max(eval);
    if let Optimizer::Ngd { fim, fisher, .. } = &config.optimizer {
        let options = ReprOptions {
            fisher: Some(fisher.clone()),
            task: match config.loss {
                LossKind::CrossEntropy => Task::Classification,
                LossKind::Mse => Task::Regression { sigma2: 1.0 },
            },
            layers: Vec::new(),
            centered: false,
            examples: config.batch,
            outputs: model.output.iter().product(),
            shards: None,
            part: None,
            file: None,
            hessian: None,
        };
        let held = repr_held(Object::Fim, fim, model, &options, Dtype::F64);
        let fresh = repr_peak(Object::Fim, fim, model, &options, dtype);
        // EKFAC's blocks keep their KFAC factors (a mix's other blocks
        // nothing more).
        let kfac = match fim {
            Structure::Ekfac { .. } => {
                repr_held(Object::Fim, &Structure::Kfac, model, &options, Dtype::F64)
            }
            Structure::Mix { families, layers } if fim.has_ekfac() => {
                let as_kfac = Structure::Mix {
                    families: ekfac_as_kfac(families),
                    layers: ekfac_as_kfac(layers),
                };
                repr_held(Object::Fim, &as_kfac, model, &options, Dtype::F64)
            }
            _ => 0,
        };
        // The running statistics, EKFAC's running KFAC factors and the
        // prepared inverse of the running ones (in the run's dtype, at most
        // the f64 `held`; kept until a refresh ends) stay; a fresh batch's
        // statistics are built after the step's gradient pass has freed its
        // buffers (the two never coexist: counting both put a CNN's EKFAC
        // natural gradient at 2.9× its measured peak).
        // The step's solve with the preconditioner: a block's damped f64
        // copy and its factorisation (a mix with dense norm blocks moved
        // by 30 MiB between runs without it).
        let m = fisher_outputs(&options);
        let largest = largest_fim_block(fim, &covered_layers(model, &options), batch, m);
        peak += 2 * held + kfac + 2 * largest * HOST;
        passes = passes.max(fresh + held);
    }
    peak + passes
}

/// A mix's parts with EKFAC's replaced by the KFAC factors it keeps.
fn ekfac_as_kfac<K: Clone + Ord>(
    parts: &std::collections::BTreeMap<K, Structure>,
) -> std::collections::BTreeMap<K, Structure> {
    parts
        .iter()
        .map(|(k, s)| {
            let s = match s {
                Structure::Ekfac { .. } => Structure::Kfac,
                s => s.clone(),
            };
            (k.clone(), s)
        })
        .collect()
}
