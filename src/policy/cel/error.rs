//! What compiling or evaluating an expression can fail with.
//!
//! The messages are those of the config errors and logs: a config error reads
//! `invalid CEL expression: {CompileError}` at its YAML path.

use std::fmt;

use ::cel::ExecutionError;

/// Why an expression was refused at load.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum CompileError {
    #[error("empty expression")]
    Empty,
    /// The parser's errors, in order, in `expression` (trimmed).
    #[error("{} (in `{expression}`)", SyntaxList(.errors))]
    Syntax {
        errors: Vec<SyntaxError>,
        expression: String,
    },
    /// Every reference the key does not provide, in the order written.
    #[error("{}", References(.0))]
    References(Vec<ReferenceError>),
}

/// One parse error.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("syntax error at line {line}, column {column}: {message}")]
pub struct SyntaxError {
    pub line: isize,
    pub column: isize,
    pub message: String,
}

/// A name the expression reads that the config key does not provide, or a
/// function this build leaves out.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ReferenceError {
    /// `allowed` lists the variables the key provides.
    #[error("unknown variable `{name}`{} (variables here: {})", At(.at), Names(.allowed))]
    UnknownVariable {
        name: String,
        at: Option<Position>,
        allowed: Vec<String>,
    },
    /// `fields` lists the fields `root` has.
    #[error("unknown field `{root}.{field}`{} (fields of `{root}`: {})", At(.at), .fields.join(", "))]
    UnknownField {
        root: String,
        field: String,
        at: Option<Position>,
        fields: &'static [&'static str],
    },
    /// `lacking` says what the build has no support for.
    #[error("function `{name}` is not supported{} (ringgate's CEL has no {lacking})", At(.at))]
    UnsupportedFunction {
        name: &'static str,
        at: Option<Position>,
        lacking: &'static str,
    },
}

/// Where in the expression, counted in characters from 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

/// Why evaluating an expression failed.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum EvalError {
    /// The interpreter's error (a missing key, no such overload, `json()` of
    /// input that is not JSON, ...).
    #[error(transparent)]
    Execution(#[from] ExecutionError),
    /// The result is not of the type the caller asked for.
    #[error("expected a {expected}, got {got}")]
    WrongType { expected: &'static str, got: String },
    /// The result has no [`Value`](super::Value) form.
    #[error("cannot convert a value of type {0}")]
    Unconvertible(String),
}

struct SyntaxList<'a>(&'a [SyntaxError]);

impl fmt::Display for SyntaxList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("syntax error");
        }
        joined(f, self.0)
    }
}

struct References<'a>(&'a [ReferenceError]);

impl fmt::Display for References<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        joined(f, self.0)
    }
}

fn joined(f: &mut fmt::Formatter<'_>, items: &[impl fmt::Display]) -> fmt::Result {
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            f.write_str("; ")?;
        }
        write!(f, "{item}")?;
    }
    Ok(())
}

/// ` at line L, column C`, or nothing where the position is unknown.
struct At<'a>(&'a Option<Position>);

impl fmt::Display for At<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(p) => write!(f, " at line {}, column {}", p.line, p.column),
            None => Ok(()),
        }
    }
}

/// A list of names, or `none`.
struct Names<'a>(&'a [String]);

impl fmt::Display for Names<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&self.0.join(", "))
        }
    }
}
