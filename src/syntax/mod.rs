//! Syntax: the grammar (`grammar/ngx.pest`) and the AST. Nothing here knows
//! what a Fisher matrix is.

pub mod ast;
mod parser;

pub use ast::*;
pub use parser::parse;
