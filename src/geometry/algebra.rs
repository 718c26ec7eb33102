//! Matrix algebra on stored Fisher representations: `a·A + b·B`, `c·A`,
//! `A + λI`, `A^p` (so `inverse(A) = A⁻¹`), each exact and, where the
//! structure allows it, in the operands' own structure:
//!
//! - Dense, Diag, QuasiDiag (sums, scaling, damping) and per-layer Dense
//!   blocks stay what they are; a power of a QuasiDiag block is a Dense block.
//! - KFAC `G ⊗ A`: `c·(G ⊗ A) = (c·G) ⊗ A` and `(G ⊗ A)^p = G^p ⊗ A^p` are
//!   KFAC. `G ⊗ A + λI` has no Kronecker form: it is kept exactly in the
//!   factors' eigenbasis, EKFAC-like (`U_G ⊗ U_A` with the diagonal
//!   `λ_G λ_A + λ`), and so is every power of it.
//! - EKFAC: scaling, damping and powers act on the diagonal; two EKFAC
//!   blocks on the same eigenbases add as EKFAC.
//! - A sum of Kronecker blocks that do not share a basis has no factored
//!   form: it is a Dense block (exact).
//! - LowRank `LᵀL`: a non-negative combination stacks the scaled rows;
//!   anything else is Dense.

use super::repr::{Block, Fim, FimBody, LayerInfo, ReprError};
use crate::linalg::{sym_fn, wider, HostMatrix, LinalgError, Mat, Stored};

type R<T> = Result<T, ReprError>;

fn scaled(m: &Mat, c: f64) -> Mat {
    Mat::from_vec(m.rows, m.cols, m.data.iter().map(|x| x * c).collect())
}

fn lin(a: &[f64], b: &[f64], ca: f64, cb: f64) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| ca * x + cb * y).collect()
}

fn lin_mat(a: &Mat, b: &Mat, ca: f64, cb: f64) -> Mat {
    Mat::from_vec(a.rows, a.cols, lin(&a.data, &b.data, ca, cb))
}

/// `x^p` for an eigenvalue: exact for integer `p` (so an inverse keeps
/// the sign of a negative eigenvalue); a fractional power of a tiny
/// negative round-off eigenvalue of a PSD matrix is taken at zero.
fn pow(x: f64, p: f64) -> f64 {
    if p.fract() == 0.0 && p.abs() <= i32::MAX as f64 {
        x.powi(p as i32)
    } else {
        x.max(0.0).powf(p)
    }
}

impl Block {
    /// `ca·self + cb·other` on the same layer (a derived matrix: on the
    /// host, a device-held operand downloaded).
    pub fn combine(&self, l: &LayerInfo, other: &Block, ca: f64, cb: f64) -> R<Block> {
        Ok(match (self, other) {
            (Block::Dense(a), Block::Dense(b)) => {
                Block::Dense(HostMatrix::combine(&*a.host()?, &*b.host()?, ca, cb).into())
            }
            (Block::Diag(a), Block::Diag(b)) => Block::Diag(lin(a, b, ca, cb)),
            (Block::QuasiDiag { diag: a, cross: x }, Block::QuasiDiag { diag: b, cross: y }) => {
                Block::QuasiDiag {
                    diag: lin(a, b, ca, cb),
                    cross: lin_mat(x, y, ca, cb),
                }
            }
            (
                Block::Ekfac { ua, ug, d },
                Block::Ekfac {
                    ua: ub,
                    ug: uh,
                    d: e,
                },
            ) if ua == ub && ug == uh => Block::Ekfac {
                ua: ua.clone(),
                ug: ug.clone(),
                d: lin_mat(d, e, ca, cb),
            },
            _ => Block::Dense(Stored::from(lin_mat(
                &self.to_dense(l)?,
                &other.to_dense(l)?,
                ca,
                cb,
            ))),
        })
    }

    /// `c·self`.
    pub fn scale(&self, c: f64) -> R<Block> {
        Ok(match self {
            Block::Dense(m) => {
                let mut m = m.host()?.into_owned();
                m.map_in_place(|x| x * c);
                Block::Dense(m.into())
            }
            Block::Diag(d) => Block::Diag(d.iter().map(|x| x * c).collect()),
            Block::QuasiDiag { diag, cross } => Block::QuasiDiag {
                diag: diag.iter().map(|x| x * c).collect(),
                cross: scaled(cross, c),
            },
            // A derived matrix: on the host (both factors, so that its
            // products do not mix a device and a host operand).
            Block::Kfac { a, g } => Block::Kfac {
                a: Stored::from(a.as_f64()?.into_owned()),
                g: Stored::from(scaled(&*g.as_f64()?, c)),
            },
            Block::Ekfac { ua, ug, d } => Block::Ekfac {
                ua: ua.clone(),
                ug: ug.clone(),
                d: scaled(d, c),
            },
        })
    }

    /// `self + λI`.
    pub fn damp(&self, l: &LayerInfo, lambda: f64) -> R<Block> {
        Ok(match self {
            Block::Dense(m) => {
                let mut m = m.host()?.into_owned();
                m.add_diag(lambda);
                Block::Dense(m.into())
            }
            Block::Diag(d) => Block::Diag(d.iter().map(|x| x + lambda).collect()),
            Block::QuasiDiag { diag, cross } => Block::QuasiDiag {
                diag: diag.iter().map(|x| x + lambda).collect(),
                cross: cross.clone(),
            },
            Block::Kfac { .. } => match self.eigenbasis(l)? {
                Block::Ekfac { ua, ug, d } => Block::Ekfac {
                    ua,
                    ug,
                    d: Mat::from_vec(d.rows, d.cols, d.data.iter().map(|x| x + lambda).collect()),
                },
                other => other,
            },
            Block::Ekfac { ua, ug, d } => Block::Ekfac {
                ua: ua.clone(),
                ug: ug.clone(),
                d: Mat::from_vec(d.rows, d.cols, d.data.iter().map(|x| x + lambda).collect()),
            },
        })
    }

    /// KFAC in its factors' eigenbasis: `U_G ⊗ U_A` with `λ_G λ_A`
    /// (exact), the bases where the factors are.
    fn eigenbasis(&self, l: &LayerInfo) -> R<Block> {
        let Block::Kfac { a, g } = self else {
            return Ok(self.clone());
        };
        let (ea, ua) = a.eigh()?;
        let (eg, ug) = g.eigh()?;
        let mut d = Mat::zeros(l.sg, l.sa);
        for (k, x) in eg.iter().enumerate() {
            for (j, y) in ea.iter().enumerate() {
                d.set(k, j, x * y);
            }
        }
        Ok(Block::Ekfac { ua, ug, d })
    }

    /// `self^p` (exact; `p = −1` is the inverse). A negative power of a
    /// block with an exactly zero eigenvalue is refused, naming the layer,
    /// rather than stored as infinities.
    pub fn pow(&self, l: &LayerInfo, p: f64) -> R<Block> {
        let singular = || {
            ReprError::Unsupported(format!(
                "the power {p} of a singular matrix is undefined: layer `{}` has an eigenvalue 0; add damping first, e.g. `inverse(F + 1e-3)`",
                l.name
            ))
        };
        let finite = |v: &[f64]| v.iter().all(|x| x.is_finite());
        match self.pow_unchecked(l, p) {
            Err(ReprError::Linalg(LinalgError::NonFiniteFn { .. })) if p < 0.0 => Err(singular()),
            Ok(Block::Diag(d)) if p < 0.0 && !finite(&d) => Err(singular()),
            Ok(Block::Ekfac { d, .. }) if p < 0.0 && !finite(&d.data) => Err(singular()),
            other => other,
        }
    }

    fn pow_unchecked(&self, l: &LayerInfo, p: f64) -> R<Block> {
        Ok(match self {
            Block::Dense(m) => Block::Dense(Stored::from_mat(
                sym_fn(&*m.as_f64()?, |x| pow(x, p))?,
                m.dtype(),
            )),
            Block::Diag(d) => Block::Diag(d.iter().map(|x| pow(*x, p)).collect()),
            Block::Kfac { a, g } => Block::Kfac {
                a: Stored::from(sym_fn(&*a.as_f64()?, |x| pow(x, p))?),
                g: Stored::from(sym_fn(&*g.as_f64()?, |x| pow(x, p))?),
            },
            Block::Ekfac { ua, ug, d } => Block::Ekfac {
                ua: ua.clone(),
                ug: ug.clone(),
                d: Mat::from_vec(d.rows, d.cols, d.data.iter().map(|x| pow(*x, p)).collect()),
            },
            Block::QuasiDiag { .. } => {
                Block::Dense(Stored::from(sym_fn(&self.to_dense(l)?, |x| pow(x, p))?))
            }
        })
    }
}

impl Fim {
    fn with_body(&self, body: FimBody) -> Fim {
        Fim {
            layers: self.layers.clone(),
            body,
            n: self.n,
            refit: self.refit,
        }
    }

    fn each_block(&self, f: impl Fn(&Block, &LayerInfo) -> R<Block>) -> R<Option<Fim>> {
        let FimBody::Blocks(blocks) = &self.body else {
            return Ok(None);
        };
        let blocks = blocks
            .iter()
            .zip(&self.layers)
            .map(|(b, l)| f(b, l))
            .collect::<R<Vec<_>>>()?;
        Ok(Some(self.with_body(FimBody::Blocks(blocks))))
    }

    /// `ca·self + cb·other`, both over the same layers.
    pub fn combine(&self, other: &Fim, ca: f64, cb: f64) -> R<Fim> {
        if self.layers != other.layers {
            let names = |f: &Fim| {
                f.layers
                    .iter()
                    .map(|l| l.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return Err(ReprError::Unsupported(format!(
                "cannot add representations over different layers ({} and {})",
                names(self),
                names(other)
            )));
        }
        let body = match (&self.body, &other.body) {
            // On the host (a device-held operand is downloaded).
            (FimBody::Dense(a), FimBody::Dense(b)) => {
                FimBody::Dense(HostMatrix::combine(&*a.host()?, &*b.host()?, ca, cb).into())
            }
            (FimBody::Blocks(a), FimBody::Blocks(b)) => FimBody::Blocks(
                a.iter()
                    .zip(b)
                    .zip(&self.layers)
                    .map(|((x, y), l)| x.combine(l, y, ca, cb))
                    .collect::<R<_>>()?,
            ),
            (FimBody::LowRank(a), FimBody::LowRank(b)) if ca >= 0.0 && cb >= 0.0 => {
                let mut data = scaled(a, ca.sqrt()).data;
                data.extend(scaled(b, cb.sqrt()).data);
                FimBody::LowRank(Mat::from_vec(a.rows + b.rows, a.cols, data))
            }
            _ => FimBody::Dense(Stored::from_mat(
                lin_mat(&self.to_dense()?, &other.to_dense()?, ca, cb),
                wider(self.dense_dtype(), other.dense_dtype()),
            )),
        };
        Ok(self.with_body(body))
    }

    /// `c·self`.
    pub fn scale(&self, c: f64) -> R<Fim> {
        if let Some(f) = self.each_block(|b, _| b.scale(c))? {
            return Ok(f);
        }
        Ok(self.with_body(match &self.body {
            FimBody::LowRank(m) if c >= 0.0 => FimBody::LowRank(scaled(m, c.sqrt())),
            _ => FimBody::Dense(Stored::from_mat(
                scaled(&self.to_dense()?, c),
                self.dense_dtype(),
            )),
        }))
    }

    /// `self + λI`.
    pub fn damp(&self, lambda: f64) -> R<Fim> {
        if let Some(f) = self.each_block(|b, l| b.damp(l, lambda))? {
            return Ok(f);
        }
        let mut m = self.to_dense()?;
        m.add_diag(lambda);
        Ok(self.with_body(FimBody::Dense(Stored::from_mat(m, self.dense_dtype()))))
    }

    /// `self^p`; `p = −1` is the inverse.
    pub fn pow(&self, p: f64) -> R<Fim> {
        if let Some(f) = self.each_block(|b, l| b.pow(l, p))? {
            return Ok(f);
        }
        Ok(self.with_body(FimBody::Dense(Stored::from_mat(
            sym_fn(&self.to_dense()?, |x| pow(x, p))?,
            self.dense_dtype(),
        ))))
    }

    /// The same matrix as one Dense body.
    pub fn densified(&self) -> R<Fim> {
        Ok(self.with_body(FimBody::Dense(Stored::from_mat(
            self.to_dense()?,
            self.dense_dtype(),
        ))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry::stats::Order;

    fn rng_mat(rows: usize, cols: usize, seed: u64) -> Mat {
        let mut r = crate::rng::Rng::new(seed);
        Mat::from_vec(rows, cols, (0..rows * cols).map(|_| r.normal()).collect())
    }

    /// A random symmetric positive definite `k × k` matrix.
    fn spd(k: usize, seed: u64) -> Mat {
        let x = rng_mat(k, k + 2, seed);
        let mut m = x.matmul(&x.transpose());
        m.add_diag(0.1);
        m
    }

    fn layer(sg: usize, sa: usize) -> LayerInfo {
        LayerInfo {
            name: "fc".into(),
            offset: 0,
            full_offset: 0,
            numel: sg * sa,
            sg,
            sa,
            bias: true,
            order: Order::default(),
        }
    }

    fn blocks(l: &LayerInfo, seed: u64) -> Vec<Block> {
        let (sg, sa, p) = (l.sg, l.sa, l.numel);
        let kfac = Block::Kfac {
            a: Stored::from(spd(sa, seed)),
            g: Stored::from(spd(sg, seed + 1)),
        };
        let mut d = rng_mat(sg, sa, seed + 2);
        d.data.iter_mut().for_each(|x| *x = x.abs() + 0.1);
        let ekfac = match kfac.eigenbasis(l).unwrap() {
            Block::Ekfac { ua, ug, .. } => Block::Ekfac { ua, ug, d },
            _ => unreachable!(),
        };
        let t = |i: usize| (i as u64 + seed) as f64;
        let diag = (0..p).map(|i| 1.0 + (t(i) * 0.37).sin().abs()).collect();
        let quasi: Vec<f64> = (0..p).map(|i| 6.0 + t(i).cos()).collect();
        vec![
            Block::Dense(Stored::from(spd(p, seed + 3))),
            Block::Diag(diag),
            kfac,
            ekfac,
            Block::QuasiDiag {
                diag: quasi,
                cross: scaled(&rng_mat(sg, sa - 1, seed + 4), 0.1),
            },
        ]
    }

    fn rel(a: &Mat, b: &Mat) -> f64 {
        let d: f64 = a
            .data
            .iter()
            .zip(&b.data)
            .map(|(x, y)| (x - y).powi(2))
            .sum();
        d.sqrt() / b.frobenius()
    }

    #[test]
    fn every_block_operation_matches_the_dense_one() {
        let l = layer(3, 4);
        let mut worst = 0.0f64;
        for (b, c) in blocks(&l, 1).iter().zip(blocks(&l, 7)) {
            let (db, dc) = (b.to_dense(&l).unwrap(), c.to_dense(&l).unwrap());
            let mut cases = vec![
                (
                    b.combine(&l, &c, 1.0, 1.0).unwrap(),
                    lin_mat(&db, &dc, 1.0, 1.0),
                ),
                (
                    b.combine(&l, &c, 1.0, -1.0).unwrap(),
                    lin_mat(&db, &dc, 1.0, -1.0),
                ),
                (b.scale(-2.5).unwrap(), scaled(&db, -2.5)),
            ];
            let mut damped = db.clone();
            damped.add_diag(0.3);
            cases.push((b.damp(&l, 0.3).unwrap(), damped.clone()));
            cases.push((b.pow(&l, -1.0).unwrap(), sym_fn(&db, |x| 1.0 / x).unwrap()));
            cases.push((b.pow(&l, 0.5).unwrap(), sym_fn(&db, f64::sqrt).unwrap()));
            let dd = b.damp(&l, 0.3).unwrap();
            cases.push((
                dd.pow(&l, -1.0).unwrap(),
                sym_fn(&damped, |x| 1.0 / x).unwrap(),
            ));
            for (got, want) in cases {
                let e = rel(&got.to_dense(&l).unwrap(), &want);
                worst = worst.max(e);
                assert!(e < 1e-10, "{b:?}: {e:e}");
            }
        }
        // Structures kept: KFAC powers are KFAC, KFAC + λ is EKFAC.
        let k = &blocks(&l, 1)[2];
        assert!(matches!(k.pow(&l, -1.0).unwrap(), Block::Kfac { .. }));
        assert!(matches!(k.damp(&l, 0.1).unwrap(), Block::Ekfac { .. }));
        assert!(matches!(k.scale(2.0).unwrap(), Block::Kfac { .. }));
        println!("worst relative error: {worst:e}");
    }

    /// Undamped, every structure's solve with a singular block is refused
    /// (as the dense solve is) instead of dividing through; damped, it
    /// solves `(B + λI) x = v` (KFAC: its π-damped factors'). Diag, KFAC,
    /// EKFAC, and QuasiDiag singular through its bias pivot or a weight.
    #[test]
    fn an_undamped_singular_block_is_refused() {
        use crate::geometry::repr::kfac_pi;
        use crate::linalg::Host;
        let l = layer(3, 4);
        let mut bs = blocks(&l, 3);
        // A zero direction in each: a diagonal entry, a factor's rank, an
        // EKFAC eigenvalue.
        if let Block::Diag(d) = &mut bs[1] {
            d[5] = 0.0;
        }
        let x = rng_mat(4, 2, 9);
        bs[2] = Block::Kfac {
            a: Stored::from(x.matmul(&x.transpose())),
            g: Stored::from(spd(3, 4)),
        };
        if let Block::Ekfac { d, .. } = &mut bs[3] {
            d.set(1, 2, 0.0);
        }
        // QuasiDiag: output unit 1's bias pivot eliminated to zero; a
        // weight with a zero diagonal (and no cross term).
        let pos = |g, a| crate::geometry::stats::flat_pos(g, a, l.sg, l.sa, l.bias, l.order);
        let mut zero_weight = bs[4].clone();
        if let Block::QuasiDiag { diag, cross } = &mut bs[4] {
            let schur: f64 = (0..l.sa - 1)
                .map(|a| cross.get(1, a).powi(2) / diag[pos(1, a)])
                .sum();
            diag[pos(1, l.sa - 1)] = schur;
        }
        if let Block::QuasiDiag { diag, cross } = &mut zero_weight {
            diag[pos(2, 1)] = 0.0;
            cross.set(2, 1, 0.0);
        }
        bs.push(zero_weight);
        let v: Vec<f64> = (0..l.numel).map(|i| (i as f64 * 0.7).sin()).collect();
        for b in &bs[1..] {
            let e = b.solve(&l, &v, 0.0, &Host).unwrap_err().to_string();
            assert!(e.contains("singular") && e.contains("damping > 0"), "{e}");
            let x = b.solve(&l, &v, 0.2, &Host).unwrap();
            let bx = match b {
                Block::Kfac { a, g } => {
                    let pi = kfac_pi(a, g).unwrap();
                    let (mut a, mut g) =
                        (a.clone().into_f64().unwrap(), g.clone().into_f64().unwrap());
                    a.add_diag(pi * 0.2f64.sqrt());
                    g.add_diag(0.2f64.sqrt() / pi);
                    let damped = Block::Kfac {
                        a: a.into(),
                        g: g.into(),
                    };
                    damped.mv(&l, &x).unwrap()
                }
                _ => {
                    let mut m = b.to_dense(&l).unwrap();
                    m.add_diag(0.2);
                    m.matvec(&x)
                }
            };
            let r: f64 = bx.iter().zip(&v).map(|(a, b)| (a - b).abs()).sum();
            assert!(r < 1e-10, "{b:?}: residual {r:e}");
        }
        // A negative power of an exact zero is refused, naming the layer
        // (it was stored as infinities); positive powers are not affected.
        for b in [&bs[1], &bs[3]] {
            let e = b.pow(&l, -1.0).unwrap_err().to_string();
            assert!(e.contains("singular") && e.contains(&l.name), "{e}");
            assert!(b.pow(&l, 2.0).is_ok());
        }
    }
}
