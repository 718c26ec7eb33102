//! `... on DATA sharded(k)`: the number of example ranges a representation
//! is computed over, and which representations can be sharded.

use super::Checker;
use crate::diag::{Diagnostic, ErrorKind};
use crate::plan::{FisherVariant, Object, ReprOptions, Structure};
use crate::syntax::{Expr, ExprKind};

/// Fisher structures that are sums over examples (or EKFAC, whose
/// factors and refitted diagonal are).
fn fim_shardable(s: &Structure) -> bool {
    match s {
        Structure::Dense
        | Structure::BlockDiag
        | Structure::Diag
        | Structure::Kfac
        | Structure::QuasiDiag
        | Structure::Implicit => true,
        Structure::Ekfac { initial_basis, .. } => !initial_basis,
        Structure::Mix { families, layers } => {
            families.values().chain(layers.values()).all(fim_shardable)
        }
        Structure::LowRank { .. } => false,
    }
}

impl<'a> Checker<'a> {
    /// `k` of `sharded(k)`: 1 ≤ k ≤ the number of examples, for a
    /// representation that is a sum over examples.
    pub(super) fn shard_count(
        &mut self,
        e: &'a Expr,
        object: Object,
        structure: &Structure,
        options: &ReprOptions,
    ) -> Option<usize> {
        let k = self.shard_k(e, options.examples)?;
        self.shardable(e, object, structure, options)?;
        Some(k)
    }

    /// `k` of `sharded(k)` over `n` examples: 1 ≤ k ≤ n (E034).
    pub(super) fn shard_k(&mut self, e: &'a Expr, n: usize) -> Option<usize> {
        let d = self.deref(e);
        let bad = |why: String| {
            Diagnostic::new(
                ErrorKind::BadShards {
                    shards: match &d.kind {
                        ExprKind::Int(i) => i.to_string(),
                        _ => "k".into(),
                    },
                    why: why.clone(),
                },
                e.span,
                why,
            )
        };
        let k = match &d.kind {
            ExprKind::Int(k) if *k < 1 || *k as u64 > n as u64 => {
                self.error(
                    bad(format!("between 1 and {n}, the number of examples"))
                        .hint("each part is a range of at least one example; `sharded(1)` is the unsharded computation"),
                );
                return None;
            }
            _ => self.int(e, "sharded", 1, n.max(1) as i64)? as usize,
        };
        Some(k)
    }

    /// Whether the representation is a sum over examples (E035).
    fn shardable(
        &mut self,
        e: &'a Expr,
        object: Object,
        structure: &Structure,
        options: &ReprOptions,
    ) -> Option<()> {
        let why = match (object, structure) {
            (Object::Ntk, Structure::Dense | Structure::LowRank { .. }) => None::<String>,
            (Object::Hessian, _) => Some(
                "its products keep whole passes per batch; it is not computed in parts yet".into(),
            ),
            (Object::Ntk, _) => Some(
                "it holds per-example blocks only; sharding applies to the dense kernel".into(),
            ),
            (
                Object::Fim,
                Structure::Ekfac {
                    initial_basis: true,
                    ..
                },
            ) => Some(
                "its bases come from the model at initialisation, which parts do not recompute yet"
                    .into(),
            ),
            (Object::Fim, s) if !fim_shardable(s) => {
                Some("it is not a sum over examples (its truncation needs them all at once)".into())
            }
            (Object::Fim, _) => match &options.fisher {
                Some(FisherVariant::Mc { .. }) => Some(
                    "a Monte-Carlo Fisher draws its samples from one stream over all examples"
                        .into(),
                ),
                _ => None,
            },
        };
        if let Some(why) = why {
            self.error(
                Diagnostic::new(
                    ErrorKind::NotShardable {
                        what: format!("{object:?}({})", structure.name()),
                        why: why.clone(),
                    },
                    e.span,
                    why,
                )
                .hint("sums over examples shard: Fim(Dense, BlockDiag, Diag, KFAC, EKFAC, QuasiDiag, Implicit, mix of these) with the true or empirical Fisher, and Ntk(Dense)"),
            );
            return None;
        }
        Some(())
    }
}
