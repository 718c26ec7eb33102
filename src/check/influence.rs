//! `influence(M, model, data, test, damping = λ, example = i, mean)`: how
//! much each example of `data` moves the loss on `test`, through the
//! preconditioner `M` (a Fisher or a Hessian of any structure).

use super::Checker;
use crate::diag::{Diagnostic, ErrorKind};
use crate::plan::{Measurement, Operand};
use crate::syntax::{Arg, Ident, Span};

impl<'a> Checker<'a> {
    pub(super) fn influence(
        &mut self,
        callee: &Ident,
        args: &'a [Arg],
        span: Span,
    ) -> Option<Measurement> {
        let c = self.bind(
            callee,
            span,
            args,
            &["m", "model", "data", "test", "damping", "example", "mean"],
        )?;
        let me = self.req(&c, "m");
        let mo = self.req(&c, "model");
        let de = self.req(&c, "data");
        let te = self.req(&c, "test");
        let (r, layer) = self.operand(me?)?;
        if !r.object.param_space() {
            self.error(Diagnostic::new(
                ErrorKind::Invalid {
                    message: "`influence` is preconditioned by a Fisher or a Hessian".into(),
                },
                c.get("m").map_or(span, |x| x.span),
                "an NTK lives on examples, not on the weights",
            ));
            return None;
        }
        let m = self.model_expr(mo?, "")?;
        let (de, te) = (de?, te?);
        let dv = self.data_expr(de, "")?;
        let tv = self.data_expr(te, "")?;
        if !self.compatible(&m, &dv, de.span) || !self.compatible(&m, &tv, te.span) {
            return None;
        }
        if m.spec.params != r.model.spec.params {
            self.error(Diagnostic::new(
                ErrorKind::Invalid {
                    message: format!(
                        "the preconditioner is of a model with {} parameters, {} has {}",
                        r.model.spec.params,
                        m.shown(),
                        m.spec.params
                    ),
                },
                c.get("model").map_or(span, |x| x.span),
                "another network",
            ));
            return None;
        }
        if dv.info.classes.is_some() != tv.info.classes.is_some() {
            self.error(Diagnostic::new(
                ErrorKind::Invalid {
                    message: "the examples and the test set have different kinds of targets".into(),
                },
                te.span,
                "one has class labels, the other regression targets",
            ));
            return None;
        }
        let damping = match c.get("damping") {
            Some(d) => self.number(d, "damping")?,
            None => 0.0,
        };
        let example = match c.get("example") {
            Some(e) => Some(self.int(e, "example", 0, dv.info.n as i64 - 1)? as usize),
            None => None,
        };
        let mean = match c.get("mean") {
            Some(b) => self.boolean(b, "mean")?,
            None => false,
        };
        Some(Measurement::Influence {
            m: Operand {
                repr: r.step,
                layer,
            },
            model: m.step,
            data: dv.step,
            test: tv.step,
            damping,
            example,
            mean,
        })
    }
}
