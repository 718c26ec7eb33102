//! Per-layer statistics from a backward pass, the NNGeometry vocabulary:
//! per-example gradients, diagonal, KFAC factors, the refitted EKFAC
//! diagonal, quasi-diagonal cross terms, NTK contributions and the
//! Jacobian–vector products behind the implicit representation.
//!
//! Every layer is seen through one "natural layout" `[sg, sa]`: for Linear
//! and convolutions rows are output units and columns the inputs (the bias
//! last); for norm layers rows are features and the two columns are scale
//! and shift. The flat NNGeometry order is then "columns `< sa−1` row-major,
//! then the last column" in both cases.

use super::net::{Capture, LayerSlot, SlotKind};
use super::ops::{Ops, OpsResult, Unary};

/// `(sg, sa, has_last_column_bias)` of a slot's natural layout.
pub fn layout(slot: &LayerSlot) -> (usize, usize, bool) {
    match slot.kind {
        SlotKind::Affine { sg, sa, bias, .. } => (sg, sa, bias),
        SlotKind::Elementwise { d } => (d, 2, true),
        SlotKind::Embedding { num, dim } => (num, dim, false),
    }
}

/// How a transposed convolution's weight columns map to PyTorch's order:
/// `(groups, K)`. The natural layout `[out, in/groups · K]` (rows are
/// output channels, as for every convolution) is PyTorch's weight
/// `[in, out/groups, K]` with, in each group, the channel axes swapped.
pub type Order = Option<(usize, usize)>;

/// The weight order of a slot (see [`Order`]).
pub fn order(slot: &LayerSlot) -> Order {
    match slot.kind {
        SlotKind::Affine {
            groups,
            transposed: Some(k),
            ..
        } => Some((groups, k)),
        _ => None,
    }
}

/// Flat position of natural weight entry `(g, a)` of a `[sg, sa_w]` weight.
pub fn weight_pos(g: usize, a: usize, sg: usize, sa_w: usize, ord: Order) -> usize {
    match ord {
        None => g * sa_w + a,
        Some((groups, k)) => {
            let (cog, cig) = (sg / groups, sa_w / k);
            let (grp, col) = (g / cog, g % cog);
            ((grp * cig + a / k) * cog + col) * k + a % k
        }
    }
}

/// Whether the capture's `a` has the natural layout's columns (Linear,
/// ungrouped convolutions): KFAC factors and the products below that
/// read `a` directly apply.
pub fn factored(slot: &LayerSlot) -> bool {
    matches!(slot.kind, SlotKind::Affine { groups: 1, .. })
}

/// Spatial positions per example, `L`.
fn positions<O: Ops>(o: &O, cap: &Capture<O::T>) -> usize {
    o.shape(&cap.g)[2]
}

/// Per-example gradients in the natural layout, `[m, n, sg, sa]`.
pub fn gw<O: Ops>(o: &O, slot: &LayerSlot, cap: &Capture<O::T>) -> OpsResult<O::T> {
    let gs = o.shape(&cap.g);
    let (m, n, l) = (gs[0], gs[1], gs[2]);
    match slot.kind {
        SlotKind::Affine { sg, groups, .. } if groups > 1 => grouped_gw(o, slot, cap, sg, groups),
        SlotKind::Embedding { num, dim } => {
            // Rows of the tokens: scatter-add of the output gradients,
            // `a` holding `i·num + token` per (example i, position).
            let z = o.zeros(&[m, n * num, dim])?;
            let src = o.reshape(&cap.g, &[m, n * l, dim])?;
            let s = o.index_add(&z, &cap.a, &src, 1)?;
            o.reshape(&s, &[m, n, num, dim])
        }
        SlotKind::Affine { sg, .. } => {
            if l == 1 {
                let g = o.reshape(&cap.g, &[m, n, sg, 1])?;
                o.mul(&g, &cap.a) // a: [n, 1, sa]
            } else {
                let gt = o.transpose(&o.reshape(&cap.g, &[m * n, l, sg])?, 1, 2)?; // [mn, sg, L]
                let gt = o.reshape(&gt, &[m, n, sg, l])?;
                o.matmul(&gt, &cap.a)
            }
        }
        SlotKind::Elementwise { d } => {
            let gamma = o.sum_dim(&o.mul(&cap.g, &cap.a)?, 2)?; // [m, n, 1, d]
            let beta = o.sum_dim(&cap.g, 2)?;
            let both = o.cat(&[gamma, beta], 2)?; // [m, n, 2, d]
            let both = o.reshape(&both, &[m * n, 2, d])?;
            let t = o.transpose(&both, 1, 2)?;
            o.reshape(&t, &[m, n, d, 2])
        }
    }
}

/// Grouped convolutions: `gw [m, n, out, in/groups · K (+1)]` from `a` over
/// all input columns, each output channel meeting its group's only.
fn grouped_gw<O: Ops>(
    o: &O,
    slot: &LayerSlot,
    cap: &Capture<O::T>,
    sg: usize,
    groups: usize,
) -> OpsResult<O::T> {
    let (_, sa, bias) = layout(slot);
    let gs = o.shape(&cap.g);
    let (m, n, l) = (gs[0], gs[1], gs[2]);
    let (cog, cig) = (sg / groups, sa - bias as usize);
    let a = o.narrow(&cap.a, 2, 0, groups * cig)?;
    let a = o.transpose(&o.reshape(&a, &[n, l, groups, cig])?, 1, 2)?; // [n, G, L, cig]
    let a = o.reshape(&a, &[1, n, groups, l, cig])?;
    let g = o.transpose(&o.reshape(&cap.g, &[m * n, l, groups, cog])?, 1, 2)?;
    let g = o.transpose(&g, 2, 3)?; // [mn, G, cog, L]
    let g = o.reshape(&g, &[m, n, groups, cog, l])?;
    let w = o.reshape(&o.matmul(&g, &a)?, &[m, n, sg, cig])?;
    if !bias {
        return Ok(w);
    }
    let b = o.reshape(&o.sum_dim(&cap.g, 2)?, &[m, n, sg, 1])?;
    o.cat(&[w, b], 3)
}

/// Natural layout `[..., sg, sa]` → flat order `[..., sg·sa]`.
pub fn to_flat<O: Ops>(
    o: &O,
    t: &O::T,
    sg: usize,
    sa: usize,
    bias: bool,
    ord: Order,
) -> OpsResult<O::T> {
    let shape = o.shape(t);
    let r = shape.len();
    let lead: Vec<usize> = shape[..r - 2].to_vec();
    let flat_shape = |k: usize| {
        let mut s = lead.clone();
        s.push(k);
        s
    };
    let sa_w = sa - bias as usize;
    let weights = |w: &O::T| -> OpsResult<O::T> {
        match ord {
            None => o.reshape(w, &flat_shape(sg * sa_w)),
            Some((groups, k)) => {
                let mut s = lead.clone();
                s.extend([groups, sg / groups, sa_w / k, k]);
                let w = o.transpose(&o.reshape(w, &s)?, r - 1, r)?;
                o.reshape(&w, &flat_shape(sg * sa_w))
            }
        }
    };
    if !bias {
        return weights(t);
    }
    let w = weights(&o.narrow(t, r - 1, 0, sa - 1)?)?;
    let b = o.narrow(t, r - 1, sa - 1, 1)?;
    let b = o.reshape(&b, &flat_shape(sg))?;
    o.cat(&[w, b], r - 2)
}

/// Flat order `[sg·sa]` (or `[sg·sa, 1]`) → natural layout `[sg, sa]` on
/// the device: the inverse of [`to_flat`] for one vector of a layer whose
/// weight order is the natural one (every layer but transposed
/// convolutions).
pub fn from_flat<O: Ops>(o: &O, t: &O::T, sg: usize, sa: usize, bias: bool) -> OpsResult<O::T> {
    let sa_w = sa - bias as usize;
    let t = o.reshape(t, &[sg * sa])?;
    if !bias {
        return o.reshape(&t, &[sg, sa]);
    }
    let w = o.reshape(&o.narrow(&t, 0, 0, sg * sa_w)?, &[sg, sa_w])?;
    let b = o.reshape(&o.narrow(&t, 0, sg * sa_w, sg)?, &[sg, 1])?;
    o.cat(&[w, b], 1)
}

/// Flat position of natural entry `(g, a)` of a `[sg, sa]` layout whose
/// last column is the bias if `bias`.
pub fn flat_pos(g: usize, a: usize, sg: usize, sa: usize, bias: bool, ord: Order) -> usize {
    let sa_w = sa - bias as usize;
    if bias && a == sa_w {
        sg * sa_w + g
    } else {
        weight_pos(g, a, sg, sa_w, ord)
    }
}

/// Host-side inverse of [`to_flat`] for one vector: flat → `[sg, sa]` row-major.
pub fn from_flat_host(v: &[f64], sg: usize, sa: usize, bias: bool, ord: Order) -> Vec<f64> {
    if !bias && ord.is_none() {
        return v.to_vec();
    }
    let mut out = vec![0.0; sg * sa];
    for g in 0..sg {
        for a in 0..sa {
            out[g * sa + a] = v[flat_pos(g, a, sg, sa, bias, ord)];
        }
    }
    out
}

/// Host-side [`to_flat`] for one `[sg, sa]` matrix.
pub fn to_flat_host(m: &[f64], sg: usize, sa: usize, bias: bool, ord: Order) -> Vec<f64> {
    if !bias && ord.is_none() {
        return m.to_vec();
    }
    let mut out = vec![0.0; sg * sa];
    for g in 0..sg {
        for a in 0..sa {
            out[flat_pos(g, a, sg, sa, bias, ord)] = m[g * sa + a];
        }
    }
    out
}

/// Per-example gradients in flat order, `[m·n, P_l]`.
pub fn jacobian<O: Ops>(o: &O, slot: &LayerSlot, cap: &Capture<O::T>) -> OpsResult<O::T> {
    let (sg, sa, bias) = layout(slot);
    let gs = o.shape(&cap.g);
    let j = to_flat(o, &gw(o, slot, cap)?, sg, sa, bias, order(slot))?;
    o.reshape(&j, &[gs[0] * gs[1], sg * sa])
}

/// `Σ_{o,i} gw²` in the natural layout `[sg, sa]` (unnormalised diagonal).
pub fn diag_sum<O: Ops>(o: &O, slot: &LayerSlot, cap: &Capture<O::T>) -> OpsResult<O::T> {
    if factored(slot) && positions(o, cap) == 1 {
        // Σ_i (Σ_o g²)ᵀ a²: two small products instead of m·n outer products.
        let (sg, sa, _) = layout(slot);
        let gs = o.shape(&cap.g);
        let g2 = o.sum_sqr(&cap.g, 0)?;
        let g2 = o.reshape(&g2, &[gs[1], sg])?;
        let a2 = o.reshape(&o.unary(Unary::Sqr, &cap.a)?, &[gs[1], sa])?;
        return o.t_matmul(&g2, &a2);
    }
    let w = gw(o, slot, cap)?;
    let s = o.shape(&w);
    let w = o.reshape(&w, &[s[0] * s[1], s[2] * s[3]])?;
    let d = o.sum_sqr(&w, 0)?;
    o.reshape(&d, &[s[2], s[3]])
}

/// `Σ_{o,i} gw[:, :sa−1] ⊙ gw[:, sa−1]`: the weight–bias cross terms of the
/// quasi-diagonal representation, `[sg, sa]` (last column = bias diagonal).
pub fn cross_sum<O: Ops>(o: &O, slot: &LayerSlot, cap: &Capture<O::T>) -> OpsResult<O::T> {
    let (sg, sa, _) = layout(slot);
    if factored(slot) && positions(o, cap) == 1 {
        let gs = o.shape(&cap.g);
        let g2 = o.sum_sqr(&cap.g, 0)?;
        let g2 = o.reshape(&g2, &[gs[1], sg])?;
        let a = o.reshape(&cap.a, &[gs[1], sa])?;
        return o.t_matmul(&g2, &a);
    }
    let w = gw(o, slot, cap)?;
    let s = o.shape(&w);
    let b = o.narrow(&w, 3, sa - 1, 1)?;
    let prod = o.mul(&w, &b)?;
    let prod = o.reshape(&prod, &[s[0] * s[1], sg * sa])?;
    o.reshape(&o.sum_dim(&prod, 0)?, &[sg, sa])
}

/// The rows whose Gram matrices are the unnormalised KFAC factors
/// (`Σ a aᵀ`, `Σ g gᵀ` over examples, outputs and positions): `a [·, sa]`
/// and `g [·, sg]`.
pub fn kfac_rows<O: Ops>(o: &O, slot: &LayerSlot, cap: &Capture<O::T>) -> OpsResult<(O::T, O::T)> {
    no_factors(slot)?;
    let (sg, sa, _) = layout(slot);
    let a = o.reshape(&cap.a, &[o.numel(&cap.a) / sa, sa])?;
    let g = o.reshape(&cap.g, &[o.numel(&cap.g) / sg, sg])?;
    Ok((a, g))
}

/// `Σ_{o,i} (U_Gᵀ gw U_A)²`: the EKFAC diagonal in the Kronecker-factored
/// eigenbasis, `[sg, sa]` (unnormalised). `ug [sg, sg]`, `ua [sa, sa]`.
pub fn kfe_sum<O: Ops>(
    o: &O,
    slot: &LayerSlot,
    cap: &Capture<O::T>,
    ug: &O::T,
    ua: &O::T,
) -> OpsResult<O::T> {
    no_factors(slot)?;
    let (sg, sa, _) = layout(slot);
    let gs = o.shape(&cap.g);
    let (m, n, l) = (gs[0], gs[1], gs[2]);
    let g = o.matmul(&o.reshape(&cap.g, &[m * n * l, sg])?, ug)?;
    let a = o.matmul(&o.reshape(&cap.a, &[n * l, sa])?, ua)?;
    if l == 1 {
        let g2 = o.sum_sqr(&o.reshape(&g, &[m, n, sg])?, 0)?;
        let g2 = o.reshape(&g2, &[n, sg])?;
        return o.t_matmul(&g2, &o.unary(Unary::Sqr, &a)?);
    }
    let gt = o.transpose(&o.reshape(&g, &[m * n, l, sg])?, 1, 2)?;
    let gt = o.reshape(&gt, &[m, n, sg, l])?;
    let rot = o.matmul(&gt, &o.reshape(&a, &[n, l, sa])?)?; // [m, n, sg, sa]
    let rot = o.reshape(&rot, &[m * n, sg * sa])?;
    o.reshape(&o.sum_sqr(&rot, 0)?, &[sg, sa])
}

/// Kronecker factors exist for Linear and ungrouped convolutions only.
fn no_factors(slot: &LayerSlot) -> OpsResult<()> {
    if factored(slot) {
        return Ok(());
    }
    Err(super::ops::OpsError(format!(
        "layer `{}` has no Kronecker factors (KFAC, EKFAC)",
        slot.name
    )))
}

/// Floating-point operations of the two ways to get a layer's NTK block.
pub fn ntk_costs(slot: &LayerSlot, m: usize, n: usize, l: usize) -> (f64, f64) {
    let (sg, sa, _) = layout(slot);
    let (mn, nl) = ((m * n) as f64, (n * l) as f64);
    let (sg, sa, l) = (sg as f64, sa as f64, l as f64);
    let structured = if factored(slot) {
        2.0 * (mn * l).powi(2) * sg + 2.0 * nl * nl * sa + mn * mn * l * l
    } else {
        f64::INFINITY
    };
    let per_example = 2.0 * mn * l * sg * sa + 2.0 * mn * mn * sg * sa;
    (structured, per_example)
}

/// `J v` for this layer: `[m, n]`, with `v` in the natural layout `[sg, sa]`.
pub fn jv<O: Ops>(o: &O, slot: &LayerSlot, cap: &Capture<O::T>, v: &O::T) -> OpsResult<O::T> {
    let gs = o.shape(&cap.g);
    let (m, n, l) = (gs[0], gs[1], gs[2]);
    let (sg, sa, _) = layout(slot);
    if !factored(slot) && !matches!(slot.kind, SlotKind::Elementwise { .. }) {
        // Through the per-example gradients.
        let w = o.reshape(&gw(o, slot, cap)?, &[m * n, sg * sa])?;
        let jv = o.matmul(&w, &o.reshape(v, &[sg * sa, 1])?)?;
        return o.reshape(&jv, &[m, n]);
    }
    let contrib = match slot.kind {
        SlotKind::Affine { .. } | SlotKind::Embedding { .. } => {
            let a = o.reshape(&cap.a, &[n * l, sa])?;
            let av = o.matmul(&a, &o.transpose(v, 0, 1)?)?; // [nL, sg]
            o.mul(&cap.g, &o.reshape(&av, &[n, l, sg])?)?
        }
        SlotKind::Elementwise { d } => {
            let gamma = o.reshape(&o.narrow(v, 1, 0, 1)?, &[1, d])?;
            let beta = o.reshape(&o.narrow(v, 1, 1, 1)?, &[1, d])?;
            let val = o.add(&o.mul(&cap.a, &gamma)?, &beta)?; // [n, L, d]
            o.mul(&cap.g, &val)?
        }
    };
    let c = o.reshape(&contrib, &[m, n, l * sg])?;
    o.reshape(&o.sum_dim(&c, 2)?, &[m, n])
}

/// `Jᵀ u` for this layer in the natural layout `[sg, sa]`, `u [m, n]`.
pub fn jtu<O: Ops>(o: &O, slot: &LayerSlot, cap: &Capture<O::T>, u: &O::T) -> OpsResult<O::T> {
    let gs = o.shape(&cap.g);
    let (m, n, l) = (gs[0], gs[1], gs[2]);
    let (sg, sa, _) = layout(slot);
    if !factored(slot) && !matches!(slot.kind, SlotKind::Elementwise { .. }) {
        let w = o.reshape(&gw(o, slot, cap)?, &[m * n, sg * sa])?;
        let jtu = o.matmul(&o.reshape(u, &[1, m * n])?, &w)?;
        return o.reshape(&jtu, &[sg, sa]);
    }
    let u4 = o.reshape(u, &[m, n, 1, 1])?;
    let w = o.mul(&cap.g, &u4)?;
    // One output function (a loss gradient) needs no sum over them: the
    // reduction would be a full copy of the largest tensor of the pass.
    let w = if m == 1 { w } else { o.sum_dim(&w, 0)? }; // [1, n, L, sg]
    match slot.kind {
        SlotKind::Affine { .. } | SlotKind::Embedding { .. } => {
            let w = o.reshape(&w, &[n * l, sg])?;
            let a = o.reshape(&cap.a, &[n * l, sa])?;
            o.t_matmul(&w, &a)
        }
        SlotKind::Elementwise { d } => {
            let w = o.reshape(&w, &[n * l, d])?;
            let xh = o.reshape(&cap.a, &[n * l, d])?;
            let gamma = o.sum_dim(&o.mul(&w, &xh)?, 0)?; // [1, d]
            let beta = o.sum_dim(&w, 0)?;
            let both = o.cat(&[gamma, beta], 0)?; // [2, d]
            o.transpose(&both, 0, 1)
        }
    }
}
