//! Building a [`Net`] from its spec: each layer's parameters uploaded in
//! the layout its kernels read, the unfold indices of its convolutions and
//! pools, and when each node's value can be released.

use super::*;

/// Unfold indices for a `kernel` window moved by `stride` over an `h × w`
/// image padded by `padding`, taps `dilation` apart. Out-of-image taps
/// point at index `h·w`, a zero appended to the image. Returns the map
/// (tap-major, `K·L` entries) and the output size `(oh, ow)`.
pub fn unfold_index(
    h: usize,
    w: usize,
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
    dilation: [usize; 2],
) -> (Vec<u32>, usize, usize) {
    let oh = crate::plan::conv_len(h, kernel[0], stride[0], padding[0], dilation[0]).unwrap_or(0);
    let ow = crate::plan::conv_len(w, kernel[1], stride[1], padding[1], dilation[1]).unwrap_or(0);
    (
        sized_unfold_index(h, w, kernel, stride, padding, dilation, [oh, ow]),
        oh,
        ow,
    )
}

/// Per-window weights of an average pooling, `[K, L]` tap-major, or
/// `None` when every window divides by `K`. PyTorch's divisor: the window
/// clipped to the padded image (`count_include_pad`), else its positions
/// inside the image.
pub fn avg_pool_weights(
    h: usize,
    w: usize,
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
    out: [usize; 2],
    count_include_pad: bool,
) -> Option<Vec<f64>> {
    let extent = |o: usize, a: usize, size: usize| {
        let start = (o * stride[a]) as isize - padding[a] as isize;
        let end = (start + kernel[a] as isize).min((size + padding[a]) as isize);
        if count_include_pad {
            (end - start) as usize
        } else {
            (end.min(size as isize) - start.max(0)) as usize
        }
    };
    let k = kernel[0] * kernel[1];
    let mut div = Vec::with_capacity(out[0] * out[1]);
    for oi in 0..out[0] {
        for oj in 0..out[1] {
            div.push(extent(oi, 0, h) * extent(oj, 1, w));
        }
    }
    if div.iter().all(|&d| d == k) {
        return None;
    }
    let per: Vec<f64> = div.iter().map(|&d| 1.0 / d.max(1) as f64).collect();
    Some((0..k).flat_map(|_| per.iter().copied()).collect())
}

/// [`unfold_index`] for a given output size (a ceil-mode pooling's last
/// windows reach past the padded image: those positions are padding).
#[allow(clippy::too_many_arguments)]
pub fn sized_unfold_index(
    h: usize,
    w: usize,
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
    dilation: [usize; 2],
    [oh, ow]: [usize; 2],
) -> Vec<u32> {
    let pad = (h * w) as u32;
    let mut idx = Vec::with_capacity(kernel[0] * kernel[1] * oh * ow);
    for ki in 0..kernel[0] {
        for kj in 0..kernel[1] {
            for oi in 0..oh {
                for oj in 0..ow {
                    let r = (oi * stride[0] + ki * dilation[0]) as isize - padding[0] as isize;
                    let c = (oj * stride[1] + kj * dilation[1]) as isize - padding[1] as isize;
                    if r >= 0 && c >= 0 && (r as usize) < h && (c as usize) < w {
                        idx.push((r as usize * w + c as usize) as u32);
                    } else {
                        idx.push(pad);
                    }
                }
            }
        }
    }
    idx
}

/// Unfold indices of a transposed convolution from an `h × w` image to
/// its `oh × ow` output: for each tap and output position, the input
/// position that reaches it through that tap (`h·w`, a zero, if none).
/// With them a transposed convolution is a convolution of its patches,
/// as NNGeometry's `unfold_transpose_conv2d` sees it.
#[allow(clippy::too_many_arguments)]
fn transposed_index(
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
    dilation: [usize; 2],
) -> Vec<u32> {
    let pad = (h * w) as u32;
    let src = |o: usize, k: usize, a: usize, size: usize| -> Option<usize> {
        let t = (o + padding[a]).checked_sub(k * dilation[a])?;
        (t % stride[a] == 0 && t / stride[a] < size).then_some(t / stride[a])
    };
    let mut idx = Vec::with_capacity(kernel[0] * kernel[1] * oh * ow);
    for ki in 0..kernel[0] {
        for kj in 0..kernel[1] {
            for oi in 0..oh {
                for oj in 0..ow {
                    idx.push(match (src(oi, ki, 0, h), src(oj, kj, 1, w)) {
                        (Some(r), Some(c)) => (r * w + c) as u32,
                        _ => pad,
                    });
                }
            }
        }
    }
    idx
}

/// PyTorch's adaptive average pooling of an `h × w` image to `oh × ow` as
/// a matrix `[h·w, oh·ow]`: output cell `(i, j)` averages rows
/// `[⌊i·h/oh⌋, ⌈(i+1)·h/oh⌉)` and the same for columns.
/// Unfold indices of adaptive max pooling: each output's window
/// `[floor(i·H/oh), ceil((i+1)·H/oh))` × the same across, in row-major
/// order, padded to the widest window with `h·w` (a value that never wins),
/// and the number of taps per window.
fn adaptive_unfold_index(h: usize, w: usize, oh: usize, ow: usize) -> (Vec<u32>, usize) {
    use crate::plan::{adaptive_taps, adaptive_window as span};
    let (kh, kw) = (adaptive_taps(h, oh), adaptive_taps(w, ow));
    let pad = (h * w) as u32;
    let mut idx = Vec::with_capacity(kh * kw * oh * ow);
    for ki in 0..kh {
        for kj in 0..kw {
            for oi in 0..oh {
                let (r0, r1) = span(oi, h, oh);
                for oj in 0..ow {
                    let (c0, c1) = span(oj, w, ow);
                    let (r, c) = (r0 + ki, c0 + kj);
                    idx.push(if r < r1 && c < c1 {
                        (r * w + c) as u32
                    } else {
                        pad
                    });
                }
            }
        }
    }
    (idx, kh * kw)
}

fn adaptive_pool_matrix(h: usize, w: usize, oh: usize, ow: usize) -> Vec<f64> {
    let mut p = vec![0.0; h * w * oh * ow];
    for i in 0..oh {
        let (r0, r1) = (i * h / oh, ((i + 1) * h).div_ceil(oh));
        for j in 0..ow {
            let (c0, c1) = (j * w / ow, ((j + 1) * w).div_ceil(ow));
            let share = 1.0 / ((r1 - r0) * (c1 - c0)) as f64;
            for r in r0..r1 {
                for c in c0..c1 {
                    p[(r * w + c) * oh * ow + i * ow + j] = share;
                }
            }
        }
    }
    p
}

/// A convolution's natural weight `[out, sa_w]` (row-major `data`) and
/// its transpose, per group `[groups, out/groups, sa_w]` when grouped.
fn conv_weights<O: Ops>(
    o: &O,
    layer: &mut NetLayer<O::T>,
    data: &[f64],
    cout: usize,
    sa_w: usize,
    groups: usize,
) -> OpsResult<()> {
    let (w, wt) = if groups == 1 {
        let w = o.upload(&[cout, sa_w], data)?;
        let wt = o.transpose(&w, 0, 1)?;
        (w, wt)
    } else {
        let w = o.upload(&[groups, cout / groups, sa_w], data)?;
        let wt = o.transpose(&w, 1, 2)?;
        (w, wt)
    };
    layer.w = Some(w);
    layer.wt = Some(wt);
    Ok(())
}

/// A norm layer's scale and shift (`shape` `[C, 1]` or `[1, d]`): its
/// parameters, or without `affine` the constants 1 and 0, so that the
/// passes need no second path (they add no slot and no capture).
fn norm_affine<'p, O: Ops>(
    o: &O,
    layer: &mut NetLayer<O::T>,
    get: impl Fn(&str) -> OpsResult<&'p HostParam>,
    shape: [usize; 2],
    affine: bool,
) -> OpsResult<Option<SlotKind>> {
    let d = shape[0] * shape[1];
    if affine {
        layer.w = Some(o.upload(&shape, &get("weight")?.data)?);
        layer.b = Some(o.upload(&shape, &get("bias")?.data)?);
        Ok(Some(SlotKind::Elementwise { d }))
    } else {
        layer.w = Some(o.upload(&shape, &vec![1.0; d])?);
        layer.b = Some(o.upload(&shape, &vec![0.0; d])?);
        Ok(None)
    }
}

/// A BatchNorm's running statistics as its evaluation pass reads them:
/// the mean and `1/sqrt(var + eps)`, per channel `[C, 1]`.
pub(super) fn running_tensors<O: Ops>(
    o: &O,
    mean: &[f64],
    var: &[f64],
    eps: f64,
) -> OpsResult<(O::T, O::T)> {
    let s: Vec<f64> = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
    Ok((
        o.upload(&[mean.len(), 1], mean)?,
        o.upload(&[s.len(), 1], &s)?,
    ))
}

/// `w [rows, cols]` (or per group `[G, rows/G, cols/G]`) applied to
/// `x [b, cols, L]`: `[b, rows, L]`.
pub(super) fn grouped_matmul<O: Ops>(o: &O, w: &O::T, x: &O::T) -> OpsResult<O::T> {
    let ws = o.shape(w);
    if ws.len() == 2 {
        return o.matmul(w, x);
    }
    let xs = o.shape(x);
    let (g, b, l) = (ws[0], xs[0], xs[2]);
    let x4 = o.reshape(x, &[b, g, xs[1] / g, l])?;
    o.reshape(&o.matmul(w, &x4)?, &[b, g * ws[1], l])
}

impl<O: Ops> Net<O> {
    /// Uploads `params` (as made by [`crate::geometry::init`] or read from a file).
    pub fn new(o: &O, spec: &ModelSpec, params: HostParams) -> OpsResult<Self> {
        spec.validate().map_err(OpsError)?;
        let mut layers = Vec::new();
        let mut kinds = Vec::new();
        for (index, l) in spec.layers.iter().enumerate() {
            let key = |k: &str| format!("{}.{k}", l.name);
            let get = |k: &str| -> OpsResult<&HostParam> {
                params
                    .get(&key(k))
                    .ok_or_else(|| OpsError(format!("missing parameter `{}`", key(k))))
            };
            let mut layer = NetLayer {
                spec: l.clone(),
                w: None,
                wt: None,
                b: None,
                running: None,
                unfold: None,
                pool: None,
                pool_weights: None,
                src: spec.sources(index),
            };
            let mut slot_kind = None;
            match &l.layer {
                Layer::Linear {
                    in_features,
                    out_features,
                    bias,
                } => {
                    let w = o.upload(&[*out_features, *in_features], &get("weight")?.data)?;
                    layer.wt = Some(o.transpose(&w, 0, 1)?);
                    layer.w = Some(w);
                    if *bias {
                        layer.b = Some(o.upload(&[*out_features], &get("bias")?.data)?);
                    }
                    slot_kind = Some(SlotKind::Affine {
                        sg: *out_features,
                        sa: in_features + *bias as usize,
                        bias: *bias,
                        conv: false,
                        groups: 1,
                        transposed: None,
                    });
                }
                Layer::ConvTranspose2d {
                    in_channels: cin,
                    out_channels: cout,
                    kernel,
                    stride,
                    padding,
                    dilation,
                    groups,
                    bias,
                    ..
                } => {
                    let (cin, cout, groups, bias) = (*cin, *cout, *groups, *bias);
                    let (h, w) = (l.input[1], l.input[2]);
                    let (oh, ow) = (l.output[1], l.output[2]);
                    let idx = transposed_index(h, w, oh, ow, *kernel, *stride, *padding, *dilation);
                    let k = kernel[0] * kernel[1];
                    layer.unfold = Some(Unfold {
                        idx: o.upload_index(&idx)?,
                        cin,
                        k,
                        l: oh * ow,
                        hw: h * w,
                        geom: None,
                    });
                    // PyTorch's `[in, out/groups, K]` in the natural layout
                    // `[out, in/groups · K]` of a convolution.
                    let pt = &get("weight")?.data;
                    let sa_w = cin / groups * k;
                    let ord = Some((groups, k));
                    let mut nat = vec![0.0; cout * sa_w];
                    for g in 0..cout {
                        for a in 0..sa_w {
                            nat[g * sa_w + a] =
                                pt[crate::geometry::stats::weight_pos(g, a, cout, sa_w, ord)];
                        }
                    }
                    conv_weights(o, &mut layer, &nat, cout, sa_w, groups)?;
                    if bias {
                        layer.b = Some(o.upload(&[cout, 1], &get("bias")?.data)?);
                    }
                    slot_kind = Some(SlotKind::Affine {
                        sg: cout,
                        sa: sa_w + bias as usize,
                        bias,
                        conv: true,
                        groups,
                        transposed: Some(k),
                    });
                }
                Layer::Embedding {
                    num_embeddings,
                    dim,
                } => {
                    layer.w = Some(o.upload(&[*num_embeddings, *dim], &get("weight")?.data)?);
                    slot_kind = Some(SlotKind::Embedding {
                        num: *num_embeddings,
                        dim: *dim,
                    });
                }
                Layer::Conv2d { .. } | Layer::Conv1d { .. } => {
                    // A Conv1d is a Conv2d over a 1-pixel-high image.
                    let crate::plan::Conv {
                        in_channels: cin,
                        out_channels: cout,
                        kernel,
                        stride,
                        padding,
                        dilation,
                        bias,
                        groups,
                    } = l.layer.conv().expect("a convolution");
                    let [_, h, w] = image_dims(&l.input);
                    let (idx, oh, ow) = unfold_index(h, w, kernel, stride, padding, dilation);
                    let k = kernel[0] * kernel[1];
                    layer.unfold = Some(Unfold {
                        idx: o.upload_index(&idx)?,
                        cin,
                        k,
                        l: oh * ow,
                        hw: h * w,
                        geom: Some(ConvGeom {
                            cin,
                            cout,
                            groups,
                            input: [h, w],
                            output: [oh, ow],
                            kernel,
                            stride,
                            padding,
                            dilation,
                        }),
                    });
                    let sa_w = cin / groups * k;
                    conv_weights(o, &mut layer, &get("weight")?.data, cout, sa_w, groups)?;
                    if bias {
                        layer.b = Some(o.upload(&[cout, 1], &get("bias")?.data)?);
                    }
                    slot_kind = Some(SlotKind::Affine {
                        sg: cout,
                        sa: sa_w + bias as usize,
                        bias,
                        conv: true,
                        groups,
                        transposed: None,
                    });
                }
                Layer::MaxPool2d { .. }
                | Layer::AvgPool2d { .. }
                | Layer::MaxPool1d { .. }
                | Layer::AvgPool1d { .. }
                | Layer::AdaptiveAvgPool2d { .. }
                | Layer::AdaptiveAvgPool1d { .. }
                | Layer::AdaptiveMaxPool2d { .. }
                | Layer::AdaptiveMaxPool1d { .. } => {
                    let (pooling, _) = l.layer.pooling().expect("a pooling layer");
                    let [c, h, w] = image_dims(&l.input);
                    let [_, oh, ow] = image_dims(&l.output);
                    let (idx, k) = match pooling {
                        Pooling::Adaptive { max: false, .. } => {
                            let p = adaptive_pool_matrix(h, w, oh, ow);
                            let m = o.upload(&[h * w, oh * ow], &p)?;
                            layer.pool = Some((m.clone(), o.transpose(&m, 0, 1)?));
                            (None, 0)
                        }
                        Pooling::Adaptive { max: true, .. } => {
                            let (idx, k) = adaptive_unfold_index(h, w, oh, ow);
                            (Some(idx), k)
                        }
                        Pooling::Window {
                            max,
                            kernel,
                            stride,
                            padding,
                            dilation,
                            count_include_pad,
                            ..
                        } => {
                            let k = kernel[0] * kernel[1];
                            if !max {
                                layer.pool_weights = avg_pool_weights(
                                    h,
                                    w,
                                    kernel,
                                    stride,
                                    padding,
                                    [oh, ow],
                                    count_include_pad,
                                )
                                .map(|wts| o.upload(&[1, 1, k, oh * ow], &wts))
                                .transpose()?;
                            }
                            let idx = sized_unfold_index(
                                h,
                                w,
                                kernel,
                                stride,
                                padding,
                                dilation,
                                [oh, ow],
                            );
                            (Some(idx), k)
                        }
                    };
                    if let Some(idx) = idx {
                        layer.unfold = Some(Unfold {
                            idx: o.upload_index(&idx)?,
                            cin: c,
                            k,
                            l: oh * ow,
                            hw: h * w,
                            geom: None,
                        });
                    }
                }
                Layer::BatchNorm1d {
                    features: c,
                    eps,
                    affine,
                }
                | Layer::BatchNorm2d {
                    channels: c,
                    eps,
                    affine,
                } => {
                    slot_kind = norm_affine(o, &mut layer, get, [*c, 1], *affine)?;
                    layer.running = Some(running_tensors(
                        o,
                        &get("running_mean")?.data,
                        &get("running_var")?.data,
                        *eps,
                    )?);
                }
                Layer::GroupNorm {
                    channels: c,
                    affine,
                    ..
                } => {
                    slot_kind = norm_affine(o, &mut layer, get, [*c, 1], *affine)?;
                }
                Layer::LayerNorm { shape, affine, .. } => {
                    let d: usize = shape.iter().product();
                    slot_kind = norm_affine(o, &mut layer, get, [1, d], *affine)?;
                }
                Layer::Dropout { .. }
                | Layer::Relu
                | Layer::Tanh
                | Layer::Sigmoid
                | Layer::Gelu
                | Layer::LeakyRelu { .. }
                | Layer::Elu { .. }
                | Layer::Silu
                | Layer::Hardtanh { .. }
                | Layer::Hardsigmoid
                | Layer::Hardswish
                | Layer::Flatten
                | Layer::Add
                | Layer::Concat => {}
            }
            kinds.push(slot_kind);
            layers.push(layer);
        }
        // Slots in parameter order, which fixes the flat layout.
        let mut slots = Vec::new();
        let mut slot_of = vec![None; layers.len()];
        let mut offset = 0;
        for index in spec.param_indices() {
            let l = &spec.layers[index];
            let kind = kinds[index].ok_or_else(|| {
                OpsError(format!("layer `{}` has parameters but no layout", l.name))
            })?;
            let numel = l.params as usize;
            slot_of[index] = Some(slots.len());
            slots.push(LayerSlot {
                index,
                name: l.name.clone(),
                offset,
                numel,
                kind,
            });
            offset += numel;
        }
        let mut needs_grad = vec![false; layers.len() + 1];
        let mut last_use = vec![0; layers.len() + 1];
        for (i, l) in layers.iter().enumerate() {
            needs_grad[i + 1] = l.spec.params > 0 || l.src.iter().any(|&s| needs_grad[s]);
            for &s in &l.src {
                last_use[s] = i;
            }
        }
        Ok(Net {
            spec: spec.clone(),
            layers,
            slots,
            params,
            mode: Reparam::Plain,
            needs_grad,
            last_use,
            slot_of,
        })
    }
}
