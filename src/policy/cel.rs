//! CEL expressions from the config: compiled once at load, evaluated per request.
//!
//! [`Expr::compile`] parses an expression, rejects syntax errors and references
//! to variables the config key does not provide, and looks for a *fast path*:
//! an expression made only of string literals, `+` and `source.address` /
//! `request.method` / `request.path` (the whois `path` and the `:authority`
//! header of the seed config) is rendered natively, without the interpreter.
//! Everything else runs on the `cel` crate's interpreter.
//!
//! Variables are never materialised up front: a `cel::context::VariableResolver`
//! answers the qualified names the interpreter asks for (`source.address`,
//! `response.body`, ...) with values that borrow from [`Vars`], so only what an
//! expression reads is built, and strings and bytes are not copied.
//!
//! `json(x)` parses a string or bytes into CEL values; integers stay exact
//! integers (whois IDs exceed 2^53), and strings without escapes borrow from
//! the input. `globMatch(pattern, name)` matches a name against a grant
//! written with `*` (any run) and `?` (one character).
//!
//! Files, in the order an expression meets them: `compile` (the [`Expr`],
//! syntax and reference checks), `fast` (the natively rendered concatenations),
//! `eval` (evaluation, fast path or interpreter), `vars` (the per-request
//! [`Vars`] and the resolver that serves them), `json` (`json(x)`), `glob`
//! (`globMatch`) and
//! `value` (the owned [`Value`] and its conversions); `error` holds
//! [`CompileError`] and [`EvalError`].

mod compile;
mod error;
mod eval;
mod fast;
mod glob;
mod json;
mod value;
mod vars;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use ::cel::common::types::{BYTES_TYPE, STRING_TYPE};
use ::cel::Env;

use glob::glob_fn;
use json::json_fn;

pub use glob::glob_match;

pub use compile::Expr;
pub use error::{CompileError, EvalError, Position, ReferenceError, SyntaxError};
pub use value::Value;
pub use vars::{McpKind, McpResource, McpVars, ResponseVars, Vars};

thread_local! {
    // One environment per worker thread: `Context` takes an `Arc<Env>`, and a
    // shared one would bounce its reference count between cores on every eval.
    static ENV: Arc<Env> = Arc::new(new_env());
}

fn new_env() -> Env {
    let mut env = Env::stdlib();
    env.add_overload("json", "json_string", vec![STRING_TYPE], json_fn)
        .expect("json(string) is declared once");
    env.add_overload("json", "json_bytes", vec![BYTES_TYPE], json_fn)
        .expect("json(bytes) is declared once");
    env.add_overload(
        "globMatch",
        "glob_match_string_string",
        vec![STRING_TYPE, STRING_TYPE],
        glob_fn,
    )
    .expect("globMatch(string, string) is declared once");
    env
}
