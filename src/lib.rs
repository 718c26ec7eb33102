//! nngeo: a declarative experiment language for the geometry of neural
//! network training (Fisher information, neural tangent kernel).
//!
//! ```text
//! .ngx text ──syntax::parse──▶ AST ──check::check──▶ Program
//!           ──plan::compile──▶ Plan ──exec::run──▶ Backend ──▶ results
//! ```
//! A backend is chosen by [`select`]; the built-in one runs the plan
//! executor of [`engine`] over a backend's tensor operations
//! ([`geometry::ops::Ops`]).
//! Each arrow is a public function; each stage's output serialises, and the
//! AST and plan of every example file are snapshot-tested.

// Index loops read like the matrix formulas they implement.
#![allow(clippy::needless_range_loop)]

pub mod backend;
pub mod bench;
pub mod check;
pub mod cluster;
pub mod config;
pub mod data;
pub mod diag;
pub mod engine;
pub mod exec;
pub mod geometry;
pub mod linalg;
pub mod memory;
pub mod onnx;
pub mod plan;
pub mod plugin;
pub mod report;
pub mod rng;
pub mod select;
pub mod syntax;

use check::CheckOptions;
use diag::Diagnostic;
use plan::Plan;

/// Text → plan: parse, check and compile, or every error found.
pub fn compile_source(src: &str, opts: &CheckOptions) -> Result<Plan, Vec<Diagnostic>> {
    compile_source_with_warnings(src, opts).map(|(plan, _)| plan)
}

/// Like [`compile_source`], also returning the checker's warnings.
pub fn compile_source_with_warnings(
    src: &str,
    opts: &CheckOptions,
) -> Result<(Plan, Vec<Diagnostic>), Vec<Diagnostic>> {
    let ast = syntax::parse(src)?;
    let program = check::check(&ast, src, opts)?;
    Ok((plan::compile(&program, src), program.warnings))
}
