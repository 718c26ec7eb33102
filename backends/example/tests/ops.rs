//! The tricky operations of `HostOps` against hand-computed values.

use nngeo::geometry::ops::{Binary, Ops, Reduce, Unary};
use nngeo::plan::Dtype;
use nngeo_backend_example::{Array, HostOps};

fn ops() -> HostOps {
    HostOps::new("cpu", Dtype::F64).unwrap()
}

fn up(shape: &[usize], data: &[f64]) -> Array {
    ops().upload(shape, data).unwrap()
}

fn check(t: &Array, shape: &[usize], data: &[f64]) {
    assert_eq!(t.shape, shape);
    assert_eq!(t.data.as_slice(), data);
}

#[test]
fn binary_ops_broadcast_like_numpy() {
    let o = ops();
    // [2, 1, 3] + [2, 1]: dims aligned on the right → [2, 2, 3].
    let a = up(&[2, 1, 3], &[1., 2., 3., 4., 5., 6.]);
    let b = up(&[2, 1], &[10., 20.]);
    let r = o.add(&a, &b).unwrap();
    check(
        &r,
        &[2, 2, 3],
        &[11., 12., 13., 21., 22., 23., 14., 15., 16., 24., 25., 26.],
    );
    // Broadcasting is symmetric, and a scalar-like [1] broadcasts anywhere.
    check(&o.add(&b, &a).unwrap(), &r.shape, &r.data);
    let s = up(&[1], &[2.]);
    check(
        &o.binary(Binary::Div, &a, &s).unwrap(),
        &[2, 1, 3],
        &[0.5, 1., 1.5, 2., 2.5, 3.],
    );
    // Ge and Max, broadcasting a row against a column.
    let row = up(&[1, 3], &[1., 2., 3.]);
    let col = up(&[2, 1], &[2., 0.]);
    check(
        &o.binary(Binary::Ge, &row, &col).unwrap(),
        &[2, 3],
        &[0., 1., 1., 1., 1., 1.],
    );
    check(
        &o.binary(Binary::Max, &row, &col).unwrap(),
        &[2, 3],
        &[2., 2., 3., 1., 2., 3.],
    );
    check(
        &o.sub(&col, &row).unwrap(),
        &[2, 3],
        &[1., 0., -1., -1., -2., -3.],
    );
    // Incompatible shapes are an error, not a panic.
    assert!(o
        .add(&up(&[2], &[1., 2.]), &up(&[3], &[1., 2., 3.]))
        .is_err());
}

#[test]
fn matmul_broadcasts_batch_dims() {
    let o = ops();
    // a: [2, 1, 2, 2] (two batches); b: [3, 2, 1] (three batches) → [2, 3, 2, 1].
    let a = up(&[2, 1, 2, 2], &[1., 2., 3., 4., 0., 1., 1., 0.]);
    let b = up(&[3, 2, 1], &[1., 1., 1., 0., 0., 2.]);
    let r = o.matmul(&a, &b).unwrap();
    #[rustfmt::skip]
    let want = [
        3., 7.,   1., 3.,   4., 8.,   // [[1,2],[3,4]] × [1,1]ᵀ, [1,0]ᵀ, [0,2]ᵀ
        1., 1.,   0., 1.,   2., 0.,   // [[0,1],[1,0]] × the same three
    ];
    check(&r, &[2, 3, 2, 1], &want);
    // A 2-d right operand is shared by every batch of the left one.
    let w = up(&[2, 3], &[1., 0., 2., 0., 1., 3.]);
    let r = o.matmul(&a, &w).unwrap();
    check(
        &r,
        &[2, 1, 2, 3],
        &[1., 2., 8., 3., 4., 18., 0., 1., 3., 1., 0., 2.],
    );
    // And a 2-d left operand by every batch of the right one.
    let l = up(&[1, 2], &[1., -1.]);
    check(&o.matmul(&l, &b).unwrap(), &[3, 1, 1], &[0., 1., -2.]);
    // k = 0: a sum of nothing.
    check(
        &o.matmul(&up(&[2, 0], &[]), &up(&[0, 2], &[])).unwrap(),
        &[2, 2],
        &[0.; 4],
    );
    assert!(o.matmul(&a, &a.clone()).is_ok());
    assert!(o.matmul(&w, &w).is_err());
    assert!(o.matmul(&up(&[3], &[1., 2., 3.]), &w).is_err());
}

#[test]
fn index_select_and_index_add() {
    let o = ops();
    let t = up(&[2, 3], &[1., 2., 3., 4., 5., 6.]);
    let idx = o.upload_index(&[2, 0, 2]).unwrap();
    check(
        &o.index_select(&t, &idx, 1).unwrap(),
        &[2, 3],
        &[3., 1., 3., 6., 4., 6.],
    );
    check(
        &o.index_select(&t, &o.upload_index(&[1]).unwrap(), 0)
            .unwrap(),
        &[1, 3],
        &[4., 5., 6.],
    );
    // index_add: repeated indices accumulate; untouched positions keep base.
    let base = up(&[2, 3], &[100., 200., 300., 400., 500., 600.]);
    let src = up(&[2, 3], &[1., 2., 3., 4., 5., 6.]);
    check(
        &o.index_add(&base, &idx, &src, 1).unwrap(),
        &[2, 3],
        &[102., 200., 304., 405., 500., 610.],
    );
    // Along dim 0 of a 3-d array: whole [2, 2] slices.
    let base = o.zeros(&[3, 2, 2]).unwrap();
    let src = up(&[2, 2, 2], &[1., 2., 3., 4., 5., 6., 7., 8.]);
    let r = o
        .index_add(&base, &o.upload_index(&[2, 2]).unwrap(), &src, 0)
        .unwrap();
    check(
        &r,
        &[3, 2, 2],
        &[0., 0., 0., 0., 0., 0., 0., 0., 6., 8., 10., 12.],
    );
    // Out-of-range indices and mismatched sources are errors.
    assert!(o
        .index_select(&t, &o.upload_index(&[3]).unwrap(), 1)
        .is_err());
    assert!(o.index_add(&base, &idx, &src, 0).is_err());
}

#[test]
fn reduce_keeps_the_dim() {
    let o = ops();
    let t = up(
        &[2, 3, 2],
        &[1., -2., 7., 4., -5., 6., 0., 9., -1., -8., 3., 2.],
    );
    check(
        &o.reduce(Reduce::Max, &t, 1).unwrap(),
        &[2, 1, 2],
        &[7., 6., 3., 9.],
    );
    check(
        &o.reduce(Reduce::Sum, &t, 1).unwrap(),
        &[2, 1, 2],
        &[3., 8., 2., 3.],
    );
    check(
        &o.reduce(Reduce::Max, &t, 2).unwrap(),
        &[2, 3, 1],
        &[1., 7., 6., 9., -1., 3.],
    );
    check(
        &o.reduce(Reduce::Max, &t, 0).unwrap(),
        &[1, 3, 2],
        &[1., 9., 7., 4., 3., 6.],
    );
    // All negative: the max is not 0.
    let neg = up(&[1, 2], &[-3., -2.]);
    check(&o.reduce(Reduce::Max, &neg, 1).unwrap(), &[1, 1], &[-2.]);
    assert_eq!(o.sum_all(&t).unwrap(), 16.);
    assert!(o.reduce(Reduce::Sum, &t, 3).is_err());
}

#[test]
fn shape_operations() {
    let o = ops();
    let t = up(&[2, 3, 2], &(0..12).map(f64::from).collect::<Vec<_>>());
    // transpose(0, 2): r[i, j, k] = t[k, j, i].
    let r = o.transpose(&t, 0, 2).unwrap();
    check(
        &r,
        &[2, 3, 2],
        &[0., 6., 2., 8., 4., 10., 1., 7., 3., 9., 5., 11.],
    );
    check(
        &o.narrow(&t, 1, 1, 2).unwrap(),
        &[2, 2, 2],
        &[2., 3., 4., 5., 8., 9., 10., 11.],
    );
    let a = up(&[2, 1], &[1., 2.]);
    let b = up(&[2, 2], &[3., 4., 5., 6.]);
    check(
        &o.cat(&[a.clone(), b.clone()], 1).unwrap(),
        &[2, 3],
        &[1., 3., 4., 2., 5., 6.],
    );
    check(
        &o.cat(&[b.clone(), b.clone()], 0).unwrap(),
        &[4, 2],
        &[3., 4., 5., 6., 3., 4., 5., 6.],
    );
    assert!(o.cat(&[a, b], 0).is_err());
    check(&o.reshape(&t, &[4, 3]).unwrap(), &[4, 3], &t.data);
    assert!(o.reshape(&t, &[5]).is_err());
}

#[test]
fn elementwise_functions() {
    let o = ops();
    let t = up(&[4], &[-1., 0., 0.5, 2.]);
    check(&o.unary(Unary::Step, &t).unwrap(), &[4], &[0., 0., 1., 1.]);
    check(&o.unary(Unary::Relu, &t).unwrap(), &[4], &[0., 0., 0.5, 2.]);
    check(&o.affine(&t, 2., 1.).unwrap(), &[4], &[-1., 1., 2., 5.]);
    // GELU(x) = x Φ(x); Φ(1) = 0.8413447460685429 (to 16 digits).
    let g = o.unary(Unary::GeluErf, &up(&[2], &[1., -1.])).unwrap();
    let phi1 = 0.841_344_746_068_542_9;
    assert!((g.data[0] - phi1).abs() < 1e-15);
    assert!((g.data[1] + (1. - phi1)).abs() < 1e-15);
    let s = o.unary(Unary::Sigmoid, &up(&[1], &[0.])).unwrap();
    assert_eq!(s.data[0], 0.5);
}

#[test]
fn float32_rounds_every_result() {
    let o = HostOps::new("cpu", Dtype::F32).unwrap();
    let t = o.upload(&[1], &[0.1]).unwrap();
    assert_eq!(t.data[0], 0.1f32 as f64);
    let third = o
        .affine(&o.upload(&[1], &[1.]).unwrap(), 1. / 3., 0.)
        .unwrap();
    assert_eq!(third.data[0], (1f32 / 3.) as f64);
}

#[test]
fn only_the_cpu() {
    let e = HostOps::new("cuda:0", Dtype::F64).unwrap_err();
    assert!(e.to_string().contains("`cpu` only"), "{e}");
}
