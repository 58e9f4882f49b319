//! Compiling an expression: syntax, references to variables the config key
//! provides, and the fast path.

use std::fmt;
use std::sync::Arc;

use ::cel::common::ast::{EntryExpr, Expr as Node, IdedExpr};
use ::cel::{Env, Program};

use super::error::{CompileError, Position, ReferenceError, SyntaxError};
use super::fast::{fast_path, Part};
use super::ENV;

/// A compiled expression. Cheap to clone; `Send + Sync`.
///
/// `cel::Program` is itself `Send + Sync` (a plain AST), so it is shared as is
/// behind an `Arc`: it is not `Clone`, and config structures are.
#[derive(Clone)]
pub struct Expr {
    pub(super) inner: Arc<Compiled>,
}

pub(super) struct Compiled {
    source: String,
    pub(super) program: Program,
    pub(super) fast: Option<Vec<Part>>,
    /// `K` when the expression is exactly `extauthz.K`.
    extauthz_key: Option<String>,
    /// Every `K` the expression reads as `extauthz.K` (not under `has()`).
    extauthz_reads: Vec<String>,
    /// The top-level variables the expression reads (`source`, `request`...).
    variables: Vec<String>,
}

/// Fields each structured variable has. `extauthz` is absent: its keys are the
/// metadata keys of the config, checked where those are known.
const FIELDS: &[(&str, &[&str])] = &[
    ("source", &["address", "port"]),
    ("request", &["method", "path", "headers"]),
    ("response", &["code", "body", "headers"]),
    ("mcp", &["methodName", "tool", "prompt", "resource"]),
];

/// The function namespaces of the standard library: `optional.of(x)` parses
/// as a call on the identifier `optional`, which is not a variable.
const FUNCTION_NAMESPACES: &[&str] = &["optional"];

/// Standard functions this build leaves out, with what they work on: the
/// `cel` crate's `regex` and `chrono` features are off (they pull in regex,
/// chrono and chrono-tz, and no documented expression needs them). A call is
/// a load error, as an unknown variable is, rather than a failure on every
/// request.
const UNSUPPORTED_FUNCTIONS: &[(&str, &str)] = &[
    ("matches", "regular expressions"),
    ("timestamp", "timestamps"),
    ("duration", "durations"),
];

impl Expr {
    /// Compile once. `allowed` lists the top-level variables the expression
    /// may read (e.g. `["source", "request"]`).
    pub fn compile(src: &str, allowed: &[&str]) -> Result<Expr, CompileError> {
        if src.trim().is_empty() {
            return Err(CompileError::Empty);
        }
        let program = ENV
            .with(|env| env.compile(src))
            .map_err(|errors| syntax_error(src, &errors))?;
        let mut check = RefCheck {
            allowed,
            bound: Vec::new(),
            src,
            program: &program,
            errors: Vec::new(),
            extauthz_reads: Vec::new(),
            variables: Vec::new(),
        };
        check.walk(program.expression());
        if !check.errors.is_empty() {
            return Err(CompileError::References(check.errors));
        }
        let extauthz_reads = check.extauthz_reads;
        let variables = check.variables;
        let fast = fast_path(program.expression());
        let extauthz_key = match &program.expression().expr {
            Node::Select(s) if !s.test => match &s.operand.expr {
                Node::Ident(v) if v == "extauthz" => Some(s.field.clone()),
                _ => None,
            },
            _ => None,
        };
        Ok(Expr {
            inner: Arc::new(Compiled {
                source: src.to_owned(),
                program,
                fast,
                extauthz_key,
                extauthz_reads,
                variables,
            }),
        })
    }

    pub fn source(&self) -> &str {
        &self.inner.source
    }

    /// `K` when the expression is exactly `extauthz.K`: the access log reads
    /// such a field from the metadata without the interpreter (with the same
    /// result: the value, or nothing when absent).
    pub fn extauthz_key(&self) -> Option<&str> {
        self.inner.extauthz_key.as_deref()
    }

    /// The metadata keys the expression reads as `extauthz.K`, so that a
    /// config can check them against the keys its extAuthz policy defines.
    pub fn extauthz_reads(&self) -> &[String] {
        &self.inner.extauthz_reads
    }

    /// Whether every variable the expression reads is one of `vars`: with
    /// `["source"]`, its value cannot change on a connection.
    pub fn reads_only(&self, vars: &[&str]) -> bool {
        self.inner
            .variables
            .iter()
            .all(|v| vars.contains(&v.as_str()))
    }

    /// Whether evaluation bypasses the interpreter.
    pub fn is_fast_path(&self) -> bool {
        self.inner.fast.is_some()
    }
}

impl fmt::Debug for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Expr").field(&self.inner.source).finish()
    }
}

fn syntax_error(src: &str, errors: &::cel::ParseErrors) -> CompileError {
    let errors = errors
        .errors
        .iter()
        .map(|e| {
            let (line, column) = e.pos;
            let message = e.msg.strip_prefix("Syntax error: ").unwrap_or(&e.msg);
            SyntaxError {
                line,
                column,
                message: message.to_owned(),
            }
        })
        .collect();
    CompileError::Syntax {
        errors,
        expression: src.trim().to_owned(),
    }
}

/// Checks identifiers against the variables a key provides, at load, so a
/// typo is a config error rather than a per-request failure.
struct RefCheck<'c> {
    allowed: &'c [&'c str],
    /// Comprehension variables in scope (`x` in `list.exists(x, ...)`).
    bound: Vec<&'c str>,
    src: &'c str,
    program: &'c Program,
    errors: Vec<ReferenceError>,
    extauthz_reads: Vec<String>,
    variables: Vec<String>,
}

impl<'c> RefCheck<'c> {
    fn walk(&mut self, e: &'c IdedExpr) {
        match &e.expr {
            Node::Ident(name) => self.ident(e.id, name),
            Node::Select(sel) => {
                if let Node::Ident(root) = &sel.operand.expr {
                    if !sel.test && self.is_variable(root) {
                        self.field(sel.operand.id, root, &sel.field);
                        if root == "extauthz" && !self.bound.contains(&"extauthz") {
                            self.extauthz_reads.push(sel.field.clone());
                        }
                    }
                }
                if qualified_name(e).is_some_and(|n| ENV.with(|env| is_type(env, &n))) {
                    return;
                }
                self.walk(&sel.operand);
            }
            Node::Call(call) => {
                self.function(e.id, &call.func_name);
                if let Some(target) = &call.target {
                    let namespace = matches!(&target.expr, Node::Ident(n)
                        if FUNCTION_NAMESPACES.contains(&n.as_str()) && !self.is_variable(n));
                    if !namespace {
                        self.walk(target);
                    }
                }
                call.args.iter().for_each(|a| self.walk(a));
            }
            Node::Comprehension(c) => {
                self.walk(&c.iter_range);
                self.walk(&c.accu_init);
                let depth = self.bound.len();
                self.bound.push(&c.iter_var);
                self.bound.extend(c.iter_var2.as_deref());
                self.bound.push(&c.accu_var);
                self.walk(&c.loop_cond);
                self.walk(&c.loop_step);
                self.walk(&c.result);
                self.bound.truncate(depth);
            }
            Node::List(list) => list.elements.iter().for_each(|x| self.walk(x)),
            Node::Map(map) => map.entries.iter().for_each(|x| self.entry(&x.expr)),
            Node::Struct(s) => s.entries.iter().for_each(|x| self.entry(&x.expr)),
            Node::Literal(_) | Node::Unspecified => {}
        }
    }

    fn entry(&mut self, entry: &'c EntryExpr) {
        match entry {
            EntryExpr::StructField(f) => self.walk(&f.value),
            EntryExpr::MapEntry(m) => {
                self.walk(&m.key);
                self.walk(&m.value);
            }
        }
    }

    fn is_variable(&self, name: &str) -> bool {
        self.bound.contains(&name) || self.allowed.contains(&name)
    }

    fn ident(&mut self, id: u64, name: &str) {
        // `@`-names are the accumulators the macros generate.
        if !self.bound.contains(&name)
            && self.allowed.contains(&name)
            && !self.variables.iter().any(|v| v == name)
        {
            self.variables.push(name.to_owned());
        }
        if name.starts_with('@') || self.is_variable(name) || ENV.with(|env| is_type(env, name)) {
            return;
        }
        self.errors.push(ReferenceError::UnknownVariable {
            name: name.to_owned(),
            at: self.position(id),
            allowed: self.allowed.iter().map(|&a| a.to_owned()).collect(),
        });
    }

    fn function(&mut self, id: u64, name: &str) {
        if let Some(&(name, lacking)) = UNSUPPORTED_FUNCTIONS.iter().find(|(f, _)| *f == name) {
            self.errors.push(ReferenceError::UnsupportedFunction {
                name,
                at: self.position(id),
                lacking,
            });
        }
    }

    fn field(&mut self, id: u64, root: &str, field: &str) {
        if self.bound.contains(&root) {
            return;
        }
        let Some((_, fields)) = FIELDS.iter().find(|(r, _)| *r == root) else {
            return;
        };
        if !fields.contains(&field) {
            self.errors.push(ReferenceError::UnknownField {
                root: root.to_owned(),
                field: field.to_owned(),
                at: self.position(id),
                fields,
            });
        }
    }

    fn position(&self, id: u64) -> Option<Position> {
        let (start, _) = self.program.source_info().offset_for(id)?;
        let before: String = self.src.chars().take(start as usize).collect();
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        Some(Position { line, column })
    }
}

fn is_type(env: &Env, name: &str) -> bool {
    env.types().find_type(name).is_some()
}

/// `a.b.c` as a string, if `e` spells a qualified name.
fn qualified_name(e: &IdedExpr) -> Option<String> {
    match &e.expr {
        Node::Ident(n) => Some(n.clone()),
        Node::Select(s) if !s.test => Some(format!("{}.{}", qualified_name(&s.operand)?, s.field)),
        _ => None,
    }
}
