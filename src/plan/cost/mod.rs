//! Memory and compute estimates, made before anything runs.
//!
//! Sizes follow the storage of each representation (NNGeometry's layout):
//! Dense p², BlockDiag Σ p_l², KFAC Σ (s_A² + s_G²), NTK (n·C)², ...; FLOPs
//! are order-of-magnitude estimates (a forward pass of the network is the
//! unit) meant to rank steps and flag the expensive ones, not to predict.

mod measure;
mod peak;

pub use measure::*;
pub use peak::*;

use super::ops::*;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cost {
    /// Bytes the step's result holds once it has run (the executor keeps
    /// every top-level result to the end of the run; a training run's hook
    /// results only while it runs).
    pub memory: u64,
    /// Bytes the step needs while it runs, its result included (hooks
    /// included for a training run); see [`BASE_BYTES`].
    #[serde(default)]
    pub peak: u64,
    /// Floating-point operations, for one execution of the step.
    pub flops: u64,
}

/// Nominal throughput used to turn FLOPs into a rough time.
pub fn nominal_flops_per_second(device: &str) -> f64 {
    if device.starts_with("cuda") {
        2e13
    } else {
        2e10
    }
}

/// Forward-pass FLOPs for one example.
pub fn forward_flops(model: &ModelSpec) -> u64 {
    model
        .layers
        .iter()
        .map(|l| {
            let out: u64 = l.output.iter().map(|&d| d as u64).product();
            match &l.layer {
                Layer::Linear {
                    in_features,
                    out_features,
                    ..
                } => 2 * (*in_features as u64) * (*out_features as u64),
                Layer::Conv2d { .. } | Layer::Conv1d { .. } => {
                    let c = l.layer.conv().expect("a convolution");
                    2 * out * (c.in_channels / c.groups) as u64 * c.taps() as u64
                }
                // Each input value meets every tap of its group's outputs.
                Layer::ConvTranspose2d {
                    out_channels,
                    kernel,
                    groups,
                    ..
                } => {
                    let inp: u64 = l.input.iter().map(|&d| d as u64).product();
                    2 * inp * (out_channels / groups) as u64 * (kernel[0] * kernel[1]) as u64
                }
                // A gather: one copy per output value.
                Layer::Embedding { .. } => out,
                _ => 4 * out,
            }
        })
        .sum::<u64>()
        .max(1)
}

/// Kronecker-factor sizes (s_A, s_G, spatial positions L) of a layer that
/// KFAC supports.
pub fn kfac_dims(layer: &LayerSpec) -> Option<(u64, u64, u64)> {
    // Output positions of a convolution (`[C, L]` or `[C, H, W]`).
    let positions = layer.output[1..].iter().product::<usize>() as u64;
    match &layer.layer {
        Layer::Linear {
            in_features,
            out_features,
            bias,
        } => Some((*in_features as u64 + *bias as u64, *out_features as u64, 1)),
        // NNGeometry's factors of a transposed convolution: its patches
        // per output position (`unfold_transpose_conv2d`).
        Layer::ConvTranspose2d {
            in_channels,
            out_channels,
            kernel,
            bias,
            groups: 1,
            ..
        } => Some((
            (*in_channels * kernel[0] * kernel[1]) as u64 + *bias as u64,
            *out_channels as u64,
            positions,
        )),
        l => l.conv().filter(|c| c.groups == 1).map(|c| {
            (
                (c.in_channels * c.taps()) as u64 + c.bias as u64,
                c.out_channels as u64,
                positions,
            )
        }),
    }
}

/// Number of backpropagated outputs per example for a Fisher variant:
/// the exact classification Fisher uses C−1 pseudo-outputs (a factor of
/// diag(p) − ppᵀ), MC one per sample, empirical one.
pub fn fisher_outputs(options: &ReprOptions) -> u64 {
    let c = options.outputs as u64;
    match (&options.fisher, &options.task) {
        (Some(FisherVariant::Empirical), _) => 1,
        (Some(FisherVariant::Mc { samples, .. }), _) => *samples as u64,
        (_, Task::Classification) => c.saturating_sub(1).max(1),
        _ => c,
    }
}

fn sq(x: u64) -> u64 {
    x.saturating_mul(x)
}

/// The layers a representation covers.
pub fn covered_layers<'a>(model: &'a ModelSpec, options: &'a ReprOptions) -> Vec<&'a LayerSpec> {
    model
        .param_layers()
        .filter(|l| options.layers.is_empty() || options.layers.contains(&l.name))
        .collect()
}

/// Number of stored values of one layer's block under `structure`: those
/// of a dense block (kept in the run's precision) and the others (f64).
fn fim_layer_entries(structure: &Structure, layer: &LayerSpec, n: u64, m: u64) -> (u64, u64) {
    let p = layer.params;
    let dense = (sq(p), 0);
    match structure {
        Structure::Dense | Structure::BlockDiag => dense,
        Structure::Diag => (0, p),
        Structure::Kfac => kfac_dims(layer).map_or(dense, |(a, g, _)| (0, sq(a) + sq(g))),
        Structure::Ekfac { .. } => {
            kfac_dims(layer).map_or(dense, |(a, g, _)| (0, sq(a) + sq(g) + a * g))
        }
        Structure::QuasiDiag => (0, kfac_dims(layer).map_or(2 * p, |(a, g, _)| p + g * a)),
        Structure::LowRank { rank } => (0, rank.map_or(n * m, |k| k as u64) * p),
        Structure::Implicit => (0, 0),
        Structure::Mix { .. } => match structure.for_layer(&layer.name, layer.layer.family()) {
            Some(s) => fim_layer_entries(s, layer, n, m),
            None => dense,
        },
    }
}

/// Number of stored values of one layer's block under `structure`.
/// Numbers in the largest block a block-diagonal structure's solve or
/// eigendecomposition works on: what each layer's block stores (a KFAC
/// block's factors, a diagonal), at most its dense square.
fn largest_fim_block(structure: &Structure, layers: &[&LayerSpec], n: u64, m: u64) -> u64 {
    layers
        .iter()
        .map(|l| fim_layer_count(structure, l, n, m).min(sq(l.params)))
        .max()
        .unwrap_or(0)
}

fn fim_layer_count(structure: &Structure, layer: &LayerSpec, n: u64, m: u64) -> u64 {
    let (dense, other) = fim_layer_entries(structure, layer, n, m);
    dense + other
}

/// The precision a representation's dense values are held in, for a run
/// of `dtype`: the run's for a dense NTK built whole and for a Fisher's
/// Dense body and dense (BlockDiag) blocks built whole
/// (`linalg::HostMatrix`); f64 for a centred or sharded result (new sums,
/// which f32 would round, or parts read back in f64), a Hessian, and every
/// factored value (KFAC's and EKFAC's factors and bases, diagonals,
/// low-rank factors).
pub fn dense_dtype(
    object: Object,
    structure: &Structure,
    options: &ReprOptions,
    dtype: Dtype,
) -> Dtype {
    let run = options.shards.is_none()
        && match object {
            Object::Ntk => matches!(structure, Structure::Dense) && !options.centered,
            Object::Fim => !matches!(structure, Structure::LowRank { .. } | Structure::Implicit),
            Object::Hessian => false,
        };
    if run {
        dtype
    } else {
        Dtype::F64
    }
}

/// Bytes a representation holds in a run of `dtype` (each value in the
/// precision [`dense_dtype`] says; `Dtype::F64` gives every value 8 bytes).
pub fn repr_memory(
    object: Object,
    structure: &Structure,
    model: &ModelSpec,
    options: &ReprOptions,
    dtype: Dtype,
) -> u64 {
    let layers = covered_layers(model, options);
    let n = options.examples as u64;
    let c = options.outputs as u64;
    let dense = dense_dtype(object, structure, options, dtype);
    let bytes = |(d, other): (u64, u64)| {
        d.saturating_mul(dense.size())
            .saturating_add(other.saturating_mul(Dtype::F64.size()))
    };
    let per_layer = |m: u64| {
        bytes(layers.iter().fold((0, 0), |(d, o), l| {
            let (ld, lo) = fim_layer_entries(structure, l, n, m);
            (d + ld, o + lo)
        }))
    };
    match object {
        Object::Fim | Object::Hessian => {
            let all: u64 = layers.iter().map(|l| l.params).sum();
            match structure {
                Structure::Dense => bytes((sq(all), 0)),
                Structure::Implicit => bytes((0, all)),
                _ if object == Object::Fim => per_layer(fisher_outputs(options)),
                _ => per_layer(1),
            }
        }
        Object::Ntk => match structure {
            Structure::Dense => sq(n * c),
            Structure::BlockDiag => n * sq(c),
            Structure::Diag | Structure::Implicit => n * c,
            // The best rank-k kernel is kept whole (`C·n` square).
            Structure::LowRank { .. } => sq(n * c),
            _ => sq(n * c),
        }
        .saturating_mul(dense.size()),
    }
}

/// FLOPs to build a representation.
pub fn repr_flops(
    object: Object,
    structure: &Structure,
    model: &ModelSpec,
    options: &ReprOptions,
) -> u64 {
    let fwd = forward_flops(model);
    let n = options.examples as u64;
    let layers = covered_layers(model, options);
    let p: u64 = layers.iter().map(|l| l.params).sum();
    match object {
        Object::Fim => {
            let m = fisher_outputs(options);
            let grads = n * m * 3 * fwd;
            let extra = match structure {
                Structure::Dense => 2 * n * m * sq(p),
                Structure::BlockDiag => {
                    2 * n * m * layers.iter().map(|l| sq(l.params)).sum::<u64>()
                }
                Structure::Kfac | Structure::Ekfac { .. } => layers
                    .iter()
                    .map(|l| {
                        kfac_dims(l).map_or(2 * n * m * sq(l.params), |(a, g, pos)| {
                            2 * n * pos * (sq(a) + m * sq(g)) + 10 * (a * sq(a) + g * sq(g))
                        })
                    })
                    .sum(),
                Structure::LowRank { .. } => sq(n * m) * p,
                _ => 2 * n * m * p,
            };
            grads.saturating_add(extra)
        }
        Object::Hessian => {
            // One kept pass, then per product a tangent forward and a
            // tangent backward pass (about three forward passes each way).
            let products = match structure {
                Structure::Implicit => 0,
                Structure::LowRank { rank } => lanczos_steps(p, rank.unwrap_or(1) as u64),
                _ => p,
            };
            let per = n * 3 * fwd;
            per.saturating_add(products.saturating_mul(2 * per + 2 * p))
        }
        Object::Ntk => {
            let c = options.outputs as u64;
            let grads = n * c * 3 * fwd;
            let kernel = match structure {
                // Per example, each layer's `C × C` products (at most
                // those of its per-example Jacobian) or their diagonal.
                Structure::BlockDiag => 2 * n * sq(c) * p,
                Structure::Diag => 2 * n * c * p,
                _ => 2 * sq(n * c) * p,
            };
            grads.saturating_add(kernel)
        }
    }
}

/// FLOPs of one measurement on a representation with `dim` rows.
pub fn measure_flops(measurement: &Measurement, dim: u64, stored: u64) -> u64 {
    match measurement {
        Measurement::Eigenvalues { .. }
        | Measurement::Eigenvectors { .. }
        | Measurement::SpectralNorm { .. }
        | Measurement::EffectiveRank { .. } => 10 * dim.saturating_mul(sq(dim)).min(u64::MAX / 20),
        Measurement::Solve { .. } => dim.saturating_mul(sq(dim)) / 3 + 2 * stored,
        Measurement::RelError { .. } | Measurement::Alignment { .. } => 4 * stored,
        _ => 2 * stored,
    }
}

/// [`measure_flops`] knowing the representation: a block-diagonal one
/// solves and decomposes block by block (a KFAC block its two factors, a
/// diagonal nothing), not as one `dim × dim` matrix.
pub fn measure_flops_on(
    measurement: &Measurement,
    on: Option<&MeasuredRepr<'_>>,
    dim: u64,
    stored: u64,
) -> u64 {
    let whole = measure_flops(measurement, dim, stored);
    let Some(r) = on.filter(|r| r.object.param_space()) else {
        return whole;
    };
    let per_block = matches!(
        measurement,
        Measurement::Solve { .. }
            | Measurement::Eigenvalues { .. }
            | Measurement::EffectiveRank { .. }
            | Measurement::SpectralNorm { .. }
    );
    if !per_block
        || matches!(
            &*r.structure,
            Structure::Dense | Structure::LowRank { .. } | Structure::Implicit
        )
    {
        return whole;
    }
    let n = r.options.examples as u64;
    let m = fisher_outputs(r.options);
    let blocks: u64 = covered_layers(r.model, r.options)
        .iter()
        .map(|l| {
            let s = match &*r.structure {
                Structure::Mix { .. } => r
                    .structure
                    .for_layer(&l.name, l.layer.family())
                    .unwrap_or(&Structure::BlockDiag),
                s => s,
            };
            let p = l.params;
            match (s, kfac_dims(l)) {
                (Structure::Diag, _) => 2 * p,
                (Structure::Kfac | Structure::Ekfac { .. }, Some((a, g, _))) => {
                    10 * (a * sq(a) + g * sq(g)) + 4 * p * (a + g)
                }
                _ => 10 * p * sq(p).min(fim_layer_count(s, l, n, m).max(p)),
            }
        })
        .sum();
    blocks.saturating_add(2 * stored).min(whole)
}

/// Human-readable bytes: `1.5 GiB`.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Human-readable FLOPs: `3.2 GFLOP`.
pub fn format_flops(flops: u64) -> String {
    const UNITS: [&str; 6] = ["", "k", "M", "G", "T", "P"];
    let mut v = flops as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    format!("{v:.1} {}FLOP", UNITS[u])
}

/// Human-readable duration in seconds.
pub fn format_seconds(s: f64) -> String {
    if s < 1e-3 {
        "<1 ms".into()
    } else if s < 1.0 {
        format!("{:.0} ms", s * 1e3)
    } else if s < 120.0 {
        format!("{s:.1} s")
    } else if s < 7200.0 {
        format!("{:.1} min", s / 60.0)
    } else {
        format!("{:.1} h", s / 3600.0)
    }
}
