//! The geometry engine: layers, backward passes, per-layer statistics and
//! every Fisher/NTK representation, written once over [`ops::Ops`].

pub mod algebra;
pub mod blocks;
pub mod build;
pub mod fisher;
pub mod gram;
pub mod hessian;
pub mod hostcopy;
pub mod init;
pub mod inverse;
pub mod jacobian;
pub mod kernel;
pub mod net;
pub mod ntk;
pub mod ops;
pub mod parts;
pub mod repr;
pub mod repr_io;
pub mod stats;
