//! Working memory of a measurement: what it reads ([`MeasuredRepr`]), the
//! result it streams, and the decompositions and copies it makes on top
//! (see `peak.rs` for how a step's peak is counted).

use super::peak::{hessian_pass_bytes, model_width, pass_bytes, HOST};
use super::*;

/// What a measurement works on: the representation it reads, if any.
#[derive(Clone)]
pub struct MeasuredRepr<'a> {
    pub object: Object,
    /// Owned for a matrix-algebra result (the structure it computes to).
    pub structure: std::borrow::Cow<'a, Structure>,
    pub model: &'a ModelSpec,
    pub options: &'a ReprOptions,
}

/// Bytes that streaming a tensor result of `bytes` (f64 entries) into
/// `results.jsonl` takes on top of the result itself: its JSON text and
/// value tree, and the copy the report reads back (80 to 90 bytes per
/// entry measured on a 3.4M-entry result; 96 counted). A scalar costs nothing extra.
pub fn streamed_bytes(bytes: u64) -> u64 {
    if bytes <= 8 {
        0
    } else {
        bytes / 8 * 96
    }
}

/// Bytes (beyond what it reads) and FLOPs of the top `k` eigenvectors of
/// a Fisher as the engine finds them: each layer block's own decomposition
/// (the KFAC/EKFAC factors, a BlockDiag/QuasiDiag block, nothing for
/// Diag), LowRank's r × r problem, and Lanczos on the product for Implicit
/// and for a Dense Fisher over 2,000 parameters; plus the k vectors and
/// the ranking of every eigenvalue.
pub fn eigenvectors_cost(r: &MeasuredRepr<'_>, k: u64, dtype: Dtype) -> (u64, u64) {
    let layers = covered_layers(r.model, r.options);
    let dim: u64 = layers.iter().map(|l| l.params).sum();
    // The vectors, every eigenvalue (a Kronecker block holds its products)
    // and their ranking (value, block, index).
    let out = k * dim * HOST + 32 * dim;
    let lanczos = || {
        let eig = Measurement::Eigenvalues {
            m: crate::plan::Operand {
                repr: crate::plan::StepId(0),
                layer: None,
            },
            top: k as usize,
        };
        let stored = repr_memory(r.object, &r.structure, r.model, r.options, Dtype::F64) / 8;
        (
            measure_peak(&eig, Some(r.clone()), dtype) + out,
            measure_flops(&eig, dim, stored),
        )
    };
    let block = |s: &Structure, l: &LayerSpec| -> (u64, u64) {
        let p = l.params;
        match s {
            Structure::Diag => (0, p),
            Structure::Kfac | Structure::Ekfac { .. } => match kfac_dims(l) {
                Some((a, g, _)) => (
                    3 * (sq(a) + sq(g)) * HOST,
                    10 * (a * sq(a) + g * sq(g)) + 2 * k * p,
                ),
                None => (3 * sq(p) * HOST, 10 * p * sq(p)),
            },
            _ => (3 * sq(p) * HOST, 10 * p * sq(p)),
        }
    };
    match &*r.structure {
        Structure::Implicit => lanczos(),
        Structure::Dense if dim > 2000 && k <= 64 => lanczos(),
        Structure::Dense => (3 * sq(dim) * HOST + out, 10 * dim * sq(dim)),
        Structure::LowRank { rank } => {
            let n = r.options.examples as u64 * fisher_outputs(r.options);
            let q = rank.map_or(n, |x| x as u64).min(n);
            (
                3 * sq(q) * HOST + out,
                10 * q * sq(q) + 2 * sq(q) * dim + 2 * k * q * dim,
            )
        }
        s => {
            let per: Vec<(u64, u64)> = layers
                .iter()
                .map(|l| match s {
                    Structure::Mix { .. } => {
                        block(s.for_layer(&l.name, l.layer.family()).unwrap_or(s), l)
                    }
                    _ => block(s, l),
                })
                .collect();
            (
                per.iter().map(|x| x.0).max().unwrap_or(0) + out,
                per.iter().map(|x| x.1).sum(),
            )
        }
    }
}

/// Bytes a measurement needs while it runs, beyond what it reads.
pub fn measure_peak(measurement: &Measurement, on: Option<MeasuredRepr<'_>>, dtype: Dtype) -> u64 {
    let Some(r) = on else {
        return 1 << 20;
    };
    let layers = covered_layers(r.model, r.options);
    let dim = match r.object {
        Object::Fim | Object::Hessian => layers.iter().map(|l| l.params).sum::<u64>(),
        Object::Ntk => (r.options.examples * r.options.outputs) as u64,
    };
    let n = r.options.examples as u64;
    let m = fisher_outputs(r.options);
    // The largest block a block-diagonal structure decomposes or solves.
    let largest_block = match (r.object, &*r.structure) {
        (
            Object::Fim | Object::Hessian,
            Structure::Dense | Structure::Implicit | Structure::LowRank { .. },
        ) => sq(dim),
        // What each layer's block stores (a KFAC block's factors, a
        // diagonal), which is what its solve or eigendecomposition works on.
        (Object::Fim | Object::Hessian, s) => largest_fim_block(s, &layers, n, m),
        // Per example a `C × C` block (every eigenvalue collected), or
        // the diagonal itself.
        (Object::Ntk, Structure::BlockDiag) => dim.max(sq(r.options.outputs as u64)),
        (Object::Ntk, Structure::Diag) => 1,
        (Object::Ntk, _) => sq(dim),
    };
    let implicit = matches!(
        (r.object, &*r.structure),
        (Object::Fim | Object::Hessian, Structure::Implicit)
    );
    // A matrix-free product recomputes per-example quantities batch by batch.
    let mv = if implicit && r.object == Object::Hessian {
        6 * dim * HOST + hessian_pass_bytes(r.model, r.options.examples, dtype.size())
    } else if implicit {
        // Six host vectors, and `v` and the product once more as the
        // per-layer pieces the batches read and sum (measured: six alone
        // left a 1.1 M-parameter MLP's vTMv 1.7 MiB above its estimate).
        let nb = batch_examples(r.options.examples, m as usize, model_width(r.model)) as u64;
        8 * dim * HOST + pass_bytes(r.model, nb, m, dtype.size())
    } else {
        2 * dim * HOST
    };
    // What an implicit Fisher answers by building a structure batch by
    // batch, as a representation step would: its diagonal (trace, diag)
    // and its dense matrix (Frobenius norm, a relative error). Counted as
    // the matrix-free product was, a max-pool CNN's trace ran 40 % over.
    let built = |s: Structure| {
        if implicit {
            super::peak::repr_peak(r.object, &s, r.model, r.options, dtype)
        } else {
            0
        }
    };
    let ntk_dense = matches!((r.object, &*r.structure), (Object::Ntk, Structure::Dense));
    // A kernel held in f32 is read through an f64 copy by the measurements
    // that need a whole matrix (the others read it in place). A Fisher's
    // f32 block is too, but that copy is the one its decomposition makes of
    // an f64 block (counted in `3 · largest_block`: the copy, the
    // factorisation or eigenvectors, the workspace).
    let view = if ntk_dense && dense_dtype(r.object, &r.structure, r.options, dtype) != Dtype::F64 {
        sq(dim) * HOST
    } else {
        0
    };
    let dense_copy = |k: u64| k * sq(dim) * HOST + view;
    match measurement {
        Measurement::Eigenvalues { top, .. } | Measurement::Eigenvectors { top, .. }
            if *top <= 64 && dim > 2000 && r.object.param_space() =>
        {
            // Lanczos on products: a Krylov basis, no dense copy.
            3 * 64 * dim * HOST + mv
        }
        Measurement::Eigenvalues { .. }
        | Measurement::Eigenvectors { .. }
        | Measurement::EffectiveRank { .. }
        | Measurement::SpectralNorm { .. } => {
            if implicit {
                mv + 3 * 64 * dim * HOST
            } else {
                3 * largest_block * HOST + mv + view
            }
        }
        Measurement::Solve { damping, .. } => {
            if implicit {
                mv + 4 * dim * HOST
            } else {
                // A block's damped f64 copy and the factorisation's own;
                // undamped, the singularity check's spectrum (a copy and
                // its workspace) comes first.
                let copies = if *damping == 0.0 { 3 } else { 2 };
                copies * largest_block * HOST + mv
            }
        }
        Measurement::RelError { .. } => {
            mv + dense_copy(2).max(dense_copy(1) + built(Structure::Dense))
        }
        // A dense kernel is read in place (a few vectors and means);
        // another one is made dense first.
        // (The trace kernel's variant: `[n, n]` matrices, centred copies.)
        Measurement::Alignment { .. } if ntk_dense => 8 * dim * HOST + 6 * sq(n) * HOST,
        Measurement::Alignment { .. } => sq(dim) * HOST + 8 * dim * HOST + 6 * sq(n) * HOST,
        Measurement::Frobenius { .. } if implicit => {
            mv + dense_copy(2).max(built(Structure::Dense))
        }
        Measurement::Trace { .. } | Measurement::Diagonal { .. } if implicit => {
            mv.max(built(Structure::Diag) + dim * HOST)
        }
        // An NTK's trace and diagonal read its blocks or its dense body
        // in place (no dense copy): a few vectors, counted in `mv`.
        _ => mv,
    }
}

/// Bytes `rel_error(a, b)` needs beyond its operands when both are whole
/// Fishers stored block by block (every structure but Dense, LowRank and
/// Implicit) over the same layers: the executor compares them one layer at
/// a time, with a dense copy of each operand's block, so the largest
/// layer's p_l² numbers twice (on the host, f64) bound it, not p². `None`
/// where it densifies the whole matrices ([`measure_peak`] then).
pub fn blockwise_rel_error_peak(a: &MeasuredRepr<'_>, b: &MeasuredRepr<'_>) -> Option<u64> {
    let blocks = |r: &MeasuredRepr<'_>| {
        let stored_in_blocks = r.object == Object::Fim
            && !matches!(
                &*r.structure,
                Structure::Dense | Structure::LowRank { .. } | Structure::Implicit
            );
        stored_in_blocks.then(|| {
            covered_layers(r.model, r.options)
                .iter()
                .map(|l| (l.name.clone(), l.params))
                .collect::<Vec<_>>()
        })
    };
    let (la, lb) = (blocks(a)?, blocks(b)?);
    if la != lb || la.is_empty() {
        return None;
    }
    let largest = la.iter().map(|(_, p)| sq(*p)).max().unwrap_or(0);
    // Two dense blocks, and the difference's running sums.
    Some(2 * largest * HOST + (1 << 20))
}
