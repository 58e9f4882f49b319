//! Route policies that run before the backend: CORS and the CEL machinery the
//! authorization and access-log stages use.

pub mod cel;
pub mod cors;
