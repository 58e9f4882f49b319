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
//! the input.

use std::borrow::Cow;
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use ::cel::common::ast::{EntryExpr, Expr as Node, IdedExpr, LiteralValue};
use ::cel::common::types::{
    CelBool, CelBytes, CelDouble, CelInt, CelList, CelMap, CelMapKey, CelNull, CelOptional,
    CelString, CelType, CelUInt, Kind, BYTES_TYPE, STRING_TYPE,
};
use ::cel::common::value::{CowVal, Val};
use ::cel::context::VariableResolver;
use ::cel::{Context, Env, ExecutionError, Program};
use serde_json::de::Deserializer;

/// A compiled expression. Cheap to clone; `Send + Sync`.
///
/// `cel::Program` is itself `Send + Sync` (a plain AST), so it is shared as is
/// behind an `Arc`: it is not `Clone`, and config structures are.
#[derive(Clone)]
pub struct Expr {
    inner: Arc<Compiled>,
}

struct Compiled {
    source: String,
    program: Program,
    fast: Option<Vec<Part>>,
    /// `K` when the expression is exactly `extauthz.K`.
    extauthz_key: Option<String>,
}

/// Per-request inputs, borrowed from the request being served.
#[derive(Clone, Copy, Debug, Default)]
pub struct Vars<'a> {
    /// IP only, IPv4-mapped IPv6 already unmapped.
    pub source_address: &'a str,
    pub source_port: u16,
    pub method: &'a str,
    /// Request target (path and query) as received.
    pub path: &'a str,
    /// Request headers, names as received.
    pub headers: &'a [(&'a str, &'a [u8])],
    /// The authz answer, for `metadata` expressions only.
    pub response: Option<ResponseVars<'a>>,
    /// Metadata values of the authz answer, for access-log expressions.
    pub extauthz: Option<&'a [(String, Value)]>,
}

#[derive(Clone, Copy, Debug)]
pub struct ResponseVars<'a> {
    pub code: u16,
    pub body: &'a [u8],
    pub headers: &'a [(&'a str, &'a [u8])],
}

/// An owned evaluation result.
///
/// `Display` is for logs: strings and bytes (lossy UTF-8) are written bare,
/// lists and maps as JSON. `Map` entries are sorted by key so output is stable.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    String(String),
    Int(i64),
    UInt(u64),
    Bool(bool),
    Float(f64),
    Null,
    Bytes(Vec<u8>),
    List(Vec<Value>),
    /// Keys are `String`, `Int`, `UInt` or `Bool`, as CEL allows.
    Map(Vec<(Value, Value)>),
}

/// Fields each structured variable has. `extauthz` is absent: its keys are the
/// metadata keys of the config, checked where those are known.
const FIELDS: &[(&str, &[&str])] = &[
    ("source", &["address", "port"]),
    ("request", &["method", "path", "headers"]),
    ("response", &["code", "body", "headers"]),
];

/// The function namespaces of the standard library: `optional.of(x)` parses
/// as a call on the identifier `optional`, which is not a variable.
const FUNCTION_NAMESPACES: &[&str] = &["optional"];

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
    env
}

impl Expr {
    /// Compile once. `allowed` lists the top-level variables the expression
    /// may read (e.g. `["source", "request"]`).
    pub fn compile(src: &str, allowed: &[&str]) -> Result<Expr, String> {
        if src.trim().is_empty() {
            return Err("empty expression".to_owned());
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
        };
        check.walk(program.expression());
        if !check.errors.is_empty() {
            return Err(check.errors.join("; "));
        }
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

    /// Whether evaluation bypasses the interpreter.
    pub fn is_fast_path(&self) -> bool {
        self.inner.fast.is_some()
    }

    pub fn eval(&self, vars: &Vars) -> Result<Value, String> {
        if let Some(parts) = &self.inner.fast {
            return Ok(Value::String(render(parts, vars)));
        }
        self.interpret(vars, |v| match v {
            CowVal::Owned(b) => owned_to_value(b),
            CowVal::Borrowed(b) => to_value(b),
        })
    }

    /// Evaluate and require a string; integers are formatted.
    pub fn eval_string(&self, vars: &Vars) -> Result<String, String> {
        match self.eval(vars)? {
            Value::String(s) => Ok(s),
            Value::Int(i) => Ok(i.to_string()),
            Value::UInt(u) => Ok(u.to_string()),
            other => Err(format!("expected a string, got {}", other.type_name())),
        }
    }

    /// Like [`eval_string`](Self::eval_string), appending to `out`: a caller
    /// that keeps a buffer (a cache-key lookup) renders the fast path without
    /// allocating.
    pub fn eval_string_into(&self, vars: &Vars, out: &mut String) -> Result<(), String> {
        match &self.inner.fast {
            Some(parts) => {
                render_into(parts, vars, out);
                Ok(())
            }
            None => {
                out.push_str(&self.eval_string(vars)?);
                Ok(())
            }
        }
    }

    pub fn eval_bool(&self, vars: &Vars) -> Result<bool, String> {
        if self.inner.fast.is_some() {
            return Err("expected a bool, got string".to_owned());
        }
        self.interpret(vars, |v| match v.downcast_ref::<CelBool>() {
            Some(b) => Ok(*b.inner()),
            None => Err(format!("expected a bool, got {}", v.get_type().name())),
        })
    }

    /// Runs the interpreter; `finish` converts the result while it may still
    /// borrow from `vars` and the program.
    fn interpret<T>(
        &self,
        vars: &Vars,
        finish: impl FnOnce(CowVal<'_, '_>) -> Result<T, String>,
    ) -> Result<T, String> {
        let resolver = Resolver { vars };
        ENV.with(|env| {
            let mut ctx = Context::with_env(Arc::clone(env));
            ctx.set_variable_resolver(&resolver);
            let val = ::cel::Value::resolve_val(self.inner.program.expression(), &ctx)
                .map_err(|e| e.to_string())?;
            finish(val)
        })
    }

    /// The interpreter, even where the fast path applies: for tests and
    /// benchmarks that compare the two.
    #[doc(hidden)]
    pub fn eval_interpreted(&self, vars: &Vars) -> Result<Value, String> {
        self.interpret(vars, |v| to_value(&*v))
    }
}

impl fmt::Debug for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Expr").field(&self.inner.source).finish()
    }
}

fn syntax_error(src: &str, errors: &::cel::ParseErrors) -> String {
    let mut msg = String::new();
    for (i, e) in errors.errors.iter().enumerate() {
        if i > 0 {
            msg.push_str("; ");
        }
        let (line, col) = e.pos;
        let detail = e.msg.strip_prefix("Syntax error: ").unwrap_or(&e.msg);
        msg.push_str(&format!(
            "syntax error at line {line}, column {col}: {detail}"
        ));
    }
    if msg.is_empty() {
        msg = "syntax error".to_owned();
    }
    format!("{msg} (in `{}`)", src.trim())
}

/// Checks identifiers against the variables a key provides, at load, so a
/// typo is a config error rather than a per-request failure.
struct RefCheck<'c> {
    allowed: &'c [&'c str],
    /// Comprehension variables in scope (`x` in `list.exists(x, ...)`).
    bound: Vec<&'c str>,
    src: &'c str,
    program: &'c Program,
    errors: Vec<String>,
}

impl<'c> RefCheck<'c> {
    fn walk(&mut self, e: &'c IdedExpr) {
        match &e.expr {
            Node::Ident(name) => self.ident(e.id, name),
            Node::Select(sel) => {
                if let Node::Ident(root) = &sel.operand.expr {
                    if !sel.test && self.is_variable(root) {
                        self.field(sel.operand.id, root, &sel.field);
                    }
                }
                if qualified_name(e).is_some_and(|n| ENV.with(|env| is_type(env, &n))) {
                    return;
                }
                self.walk(&sel.operand);
            }
            Node::Call(call) => {
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
        if name.starts_with('@') || self.is_variable(name) || ENV.with(|env| is_type(env, name)) {
            return;
        }
        let known = if self.allowed.is_empty() {
            "none".to_owned()
        } else {
            self.allowed.join(", ")
        };
        self.errors.push(format!(
            "unknown variable `{name}`{} (variables here: {known})",
            self.position(id)
        ));
    }

    fn field(&mut self, id: u64, root: &str, field: &str) {
        if self.bound.contains(&root) {
            return;
        }
        let Some((_, fields)) = FIELDS.iter().find(|(r, _)| *r == root) else {
            return;
        };
        if !fields.contains(&field) {
            self.errors.push(format!(
                "unknown field `{root}.{field}`{} (fields of `{root}`: {})",
                self.position(id),
                fields.join(", ")
            ));
        }
    }

    fn position(&self, id: u64) -> String {
        let Some((start, _)) = self.program.source_info().offset_for(id) else {
            return String::new();
        };
        let before: String = self.src.chars().take(start as usize).collect();
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        format!(" at line {line}, column {col}")
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

/// A piece of a fast-path string.
#[derive(Debug)]
enum Part {
    Literal(String),
    SourceAddress,
    Method,
    Path,
}

/// Recognises literals, `+` and the three string variables; adjacent
/// literals are merged.
fn fast_path(e: &IdedExpr) -> Option<Vec<Part>> {
    fn collect(e: &IdedExpr, out: &mut Vec<Part>) -> bool {
        match &e.expr {
            Node::Literal(LiteralValue::String(s)) => {
                match out.last_mut() {
                    Some(Part::Literal(prev)) => prev.push_str(s.inner()),
                    _ => out.push(Part::Literal(s.inner().to_owned())),
                }
                true
            }
            Node::Call(c) if c.func_name == "_+_" && c.target.is_none() && c.args.len() == 2 => {
                collect(&c.args[0], out) && collect(&c.args[1], out)
            }
            Node::Select(s) if !s.test => {
                let part = match (&s.operand.expr, s.field.as_str()) {
                    (Node::Ident(v), "address") if v == "source" => Part::SourceAddress,
                    (Node::Ident(v), "method") if v == "request" => Part::Method,
                    (Node::Ident(v), "path") if v == "request" => Part::Path,
                    _ => return false,
                };
                out.push(part);
                true
            }
            _ => false,
        }
    }
    let mut parts = Vec::new();
    collect(e, &mut parts).then_some(parts)
}

fn render(parts: &[Part], vars: &Vars) -> String {
    let mut out = String::new();
    render_into(parts, vars, &mut out);
    out
}

fn render_into(parts: &[Part], vars: &Vars, out: &mut String) {
    fn piece<'a>(p: &'a Part, vars: &Vars<'a>) -> &'a str {
        match p {
            Part::Literal(s) => s,
            Part::SourceAddress => vars.source_address,
            Part::Method => vars.method,
            Part::Path => vars.path,
        }
    }
    out.reserve(parts.iter().map(|p| piece(p, vars).len()).sum());
    for p in parts {
        out.push_str(piece(p, vars));
    }
}

/// Answers the interpreter's variable lookups from [`Vars`]. The interpreter
/// asks for the longest qualified name first (`source.address`, then
/// `source`), so a field read never builds the enclosing map.
struct Resolver<'r, 'a> {
    vars: &'r Vars<'a>,
}

impl VariableResolver for Resolver<'_, '_> {
    fn resolve<'b>(&'b self, name: &str) -> Option<CowVal<'b, 'b>> {
        let v = self.vars;
        let val: Box<dyn Val + 'b> = match name {
            "source.address" => Box::new(CelString::from(v.source_address)),
            "source.port" => Box::new(CelInt::from(i64::from(v.source_port))),
            "request.method" => Box::new(CelString::from(v.method)),
            "request.path" => Box::new(CelString::from(v.path)),
            "request.headers" => Box::new(headers_map(v.headers)),
            "response.code" => Box::new(CelInt::from(i64::from(v.response?.code))),
            "response.body" => Box::new(CelBytes::from(v.response?.body)),
            "response.headers" => Box::new(headers_map(v.response?.headers)),
            "source" => Box::new(map([
                ("address", str_val(v.source_address)),
                ("port", Box::new(CelInt::from(i64::from(v.source_port)))),
            ])),
            "request" => Box::new(map([
                ("method", str_val(v.method)),
                ("path", str_val(v.path)),
                ("headers", Box::new(headers_map(v.headers)) as Box<dyn Val>),
            ])),
            "response" => {
                let r = v.response?;
                Box::new(map([
                    (
                        "code",
                        Box::new(CelInt::from(i64::from(r.code))) as Box<dyn Val>,
                    ),
                    ("body", Box::new(CelBytes::from(r.body))),
                    ("headers", Box::new(headers_map(r.headers))),
                ]))
            }
            // Without authz metadata, `extauthz` is an empty map: a read is a
            // missing key and `has()` is false, rather than an unknown name.
            "extauthz" => Box::new(CelMap::from(
                v.extauthz
                    .unwrap_or_default()
                    .iter()
                    .map(|(k, val)| (CelMapKey::from(k.as_str()), value_to_val(val)))
                    .collect::<HashMap<_, _>>(),
            )),
            _ => {
                let key = name.strip_prefix("extauthz.")?;
                let (_, val) = v.extauthz?.iter().find(|(k, _)| k == key)?;
                value_to_val(val)
            }
        };
        Some(CowVal::Owned(val))
    }
}

fn str_val(s: &str) -> Box<dyn Val + '_> {
    Box::new(CelString::from(s))
}

fn map<'a, const N: usize>(entries: [(&'static str, Box<dyn Val + 'a>); N]) -> CelMap<'a> {
    CelMap::from(
        entries
            .into_iter()
            .map(|(k, v)| (CelMapKey::from(k), v))
            .collect::<HashMap<_, _>>(),
    )
}

/// Header names lower-cased; repeated headers joined with ", " as RFC 9110
/// allows; values that are not UTF-8 are decoded lossily.
fn headers_map<'a>(headers: &'a [(&'a str, &'a [u8])]) -> CelMap<'a> {
    let mut out: HashMap<CelMapKey<'a>, Box<dyn Val + 'a>> = HashMap::with_capacity(headers.len());
    for (name, value) in headers {
        let key = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            CelMapKey::from(name.to_ascii_lowercase())
        } else {
            CelMapKey::from(*name)
        };
        let value = match std::str::from_utf8(value) {
            Ok(s) => Cow::Borrowed(s),
            Err(_) => String::from_utf8_lossy(value),
        };
        match out.entry(key) {
            Entry::Vacant(e) => {
                e.insert(Box::new(CelString::from(value)));
            }
            Entry::Occupied(mut e) => {
                let prev = e
                    .get()
                    .downcast_ref::<CelString>()
                    .map_or("", |s| s.inner());
                let joined = format!("{prev}, {value}");
                e.insert(Box::new(CelString::from(joined)));
            }
        }
    }
    CelMap::from(out)
}

/// A [`Value`] as a CEL value that borrows its strings and bytes.
fn value_to_val(v: &Value) -> Box<dyn Val + '_> {
    match v {
        Value::String(s) => Box::new(CelString::from(s.as_str())),
        Value::Int(i) => Box::new(CelInt::from(*i)),
        Value::UInt(u) => Box::new(CelUInt::from(*u)),
        Value::Bool(b) => Box::new(CelBool::from(*b)),
        Value::Float(f) => Box::new(CelDouble::from(*f)),
        Value::Null => Box::new(CelNull),
        Value::Bytes(b) => Box::new(CelBytes::from(b.as_slice())),
        Value::List(items) => Box::new(CelList::from(
            items.iter().map(value_to_val).collect::<Vec<_>>(),
        )),
        Value::Map(entries) => Box::new(CelMap::from(
            entries
                .iter()
                .filter_map(|(k, v)| Some((value_to_key(k)?, value_to_val(v))))
                .collect::<HashMap<_, _>>(),
        )),
    }
}

fn value_to_key(v: &Value) -> Option<CelMapKey<'_>> {
    Some(match v {
        Value::String(s) => CelMapKey::from(s.as_str()),
        Value::Int(i) => CelMapKey::from(*i),
        Value::UInt(u) => CelMapKey::from(*u),
        Value::Bool(b) => CelMapKey::from(*b),
        _ => return None,
    })
}

/// Converts an owned result, moving a top-level string out rather than
/// copying it (the common case: a concatenation's result).
fn owned_to_value(b: Box<dyn Val + '_>) -> Result<Value, String> {
    match String::try_from(b) {
        Ok(s) => Ok(Value::String(s)),
        Err(b) => to_value(b.as_ref()),
    }
}

fn to_value(v: &dyn Val) -> Result<Value, String> {
    let unexpected = || format!("cannot convert a value of type {}", v.get_type().name());
    Ok(match v.get_type().kind() {
        Kind::String => Value::String(
            v.downcast_ref::<CelString>()
                .ok_or_else(unexpected)?
                .inner()
                .to_owned(),
        ),
        Kind::Int => Value::Int(*v.downcast_ref::<CelInt>().ok_or_else(unexpected)?.inner()),
        Kind::UInt => Value::UInt(*v.downcast_ref::<CelUInt>().ok_or_else(unexpected)?.inner()),
        Kind::Double => Value::Float(
            *v.downcast_ref::<CelDouble>()
                .ok_or_else(unexpected)?
                .inner(),
        ),
        Kind::Boolean => Value::Bool(*v.downcast_ref::<CelBool>().ok_or_else(unexpected)?.inner()),
        Kind::NullType => Value::Null,
        Kind::Bytes => Value::Bytes(
            v.downcast_ref::<CelBytes>()
                .ok_or_else(unexpected)?
                .inner()
                .to_vec(),
        ),
        Kind::List => Value::List(
            v.downcast_ref::<CelList>()
                .ok_or_else(unexpected)?
                .inner()
                .iter()
                .map(|x| to_value(x.as_ref()))
                .collect::<Result<_, _>>()?,
        ),
        Kind::Map => {
            let m = v.downcast_ref::<CelMap>().ok_or_else(unexpected)?;
            let mut entries = m
                .inner()
                .iter()
                .map(|(k, x)| Ok((to_value(k.inner())?, to_value(x.as_ref())?)))
                .collect::<Result<Vec<_>, String>>()?;
            entries.sort_by(|a, b| key_order(&a.0, &b.0));
            Value::Map(entries)
        }
        Kind::Type => Value::String(
            v.downcast_ref::<CelType>()
                .map_or_else(|| v.get_type().name(), |t| t.name())
                .to_owned(),
        ),
        _ => {
            // An optional result reads as its value, or null when absent.
            if let Some(opt) = v.downcast_ref::<CelOptional>() {
                return opt.option().map_or(Ok(Value::Null), to_value);
            }
            match ::cel::Value::try_from(v).map_err(|e| e.to_string())? {
                ::cel::Value::Duration(d) => Value::String(d.to_string()),
                ::cel::Value::Timestamp(t) => Value::String(t.to_rfc3339()),
                _ => return Err(unexpected()),
            }
        }
    })
}

fn key_order(a: &Value, b: &Value) -> std::cmp::Ordering {
    fn rank(v: &Value) -> u8 {
        match v {
            Value::Bool(_) => 0,
            Value::Int(_) | Value::UInt(_) => 1,
            Value::String(_) => 2,
            _ => 3,
        }
    }
    match (a, b) {
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        (Value::Int(x), Value::Int(y)) => x.cmp(y),
        (Value::UInt(x), Value::UInt(y)) => x.cmp(y),
        (Value::Int(x), Value::UInt(y)) => i128::from(*x).cmp(&i128::from(*y)),
        (Value::UInt(x), Value::Int(y)) => i128::from(*x).cmp(&i128::from(*y)),
        (Value::String(x), Value::String(y)) => x.cmp(y),
        _ => rank(a).cmp(&rank(b)),
    }
}

/// `json(string)` and `json(bytes)`.
fn json_fn<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let err = |e: serde_json::Error| ExecutionError::function_error("json", e);
    let arg = args
        .first()
        .ok_or_else(|| ExecutionError::invalid_argument_count(1, 0))?;
    // Input that borrows from the request outlives the call: strings without
    // escapes can then point into it instead of being copied.
    let borrowed: Option<&'v [u8]> = if let Some(b) = arg.downcast_ref::<CelBytes>() {
        b.as_borrowed()
    } else if let Some(s) = arg.downcast_ref::<CelString>() {
        s.as_borrowed().map(str::as_bytes)
    } else {
        return Err(ExecutionError::function_error(
            "json",
            format!("expected string or bytes, got {}", arg.get_type().name()),
        ));
    };
    let val = match borrowed {
        Some(input) => parse_json(input, BorrowInput).map_err(err)?,
        None => {
            let input = match arg.downcast_ref::<CelBytes>() {
                Some(b) => b.inner(),
                None => arg
                    .downcast_ref::<CelString>()
                    .map_or(&[][..], |s| s.inner().as_bytes()),
            };
            parse_json(input, CopyInput).map_err(err)?
        }
    };
    Ok(CowVal::Owned(val))
}

fn parse_json<'de, 'v, S: Strings<'de, 'v>>(
    input: &'de [u8],
    strings: S,
) -> Result<Box<dyn Val + 'v>, serde_json::Error> {
    let mut de = Deserializer::from_slice(input);
    let val = serde::de::DeserializeSeed::deserialize(JsonSeed(strings, PhantomData), &mut de)?;
    de.end()?;
    Ok(val)
}

/// How a string the parser hands out unescaped, borrowed from the input, is
/// kept: borrowed when the input outlives the result, else copied.
trait Strings<'de, 'v>: Copy {
    fn keep(self, s: &'de str) -> CelString<'v>;
}

#[derive(Clone, Copy)]
struct BorrowInput;
impl<'v> Strings<'v, 'v> for BorrowInput {
    fn keep(self, s: &'v str) -> CelString<'v> {
        CelString::from(s)
    }
}

#[derive(Clone, Copy)]
struct CopyInput;
impl<'de, 'v> Strings<'de, 'v> for CopyInput {
    fn keep(self, s: &'de str) -> CelString<'v> {
        CelString::from(s.to_owned())
    }
}

struct JsonSeed<'v, S>(S, PhantomData<&'v ()>);

impl<'de, 'v, S: Strings<'de, 'v>> serde::de::DeserializeSeed<'de> for JsonSeed<'v, S> {
    type Value = Box<dyn Val + 'v>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

struct KeySeed<'v, S>(S, PhantomData<&'v ()>);

impl<'de, 'v, S: Strings<'de, 'v>> serde::de::DeserializeSeed<'de> for KeySeed<'v, S> {
    type Value = CelString<'v>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de, 'v, S: Strings<'de, 'v>> serde::de::Visitor<'de> for KeySeed<'v, S> {
    type Value = CelString<'v>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string key")
    }
    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
        Ok(self.0.keep(s))
    }
    fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
        Ok(CelString::from(s.to_owned()))
    }
    fn visit_string<E>(self, s: String) -> Result<Self::Value, E> {
        Ok(CelString::from(s))
    }
}

impl<'de, 'v, S: Strings<'de, 'v>> serde::de::Visitor<'de> for JsonSeed<'v, S> {
    type Value = Box<dyn Val + 'v>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, b: bool) -> Result<Self::Value, E> {
        Ok(Box::new(CelBool::from(b)))
    }
    fn visit_i64<E>(self, i: i64) -> Result<Self::Value, E> {
        Ok(Box::new(CelInt::from(i)))
    }
    // JSON integers are CEL ints; only those past i64::MAX become uints.
    fn visit_u64<E>(self, u: u64) -> Result<Self::Value, E> {
        Ok(match i64::try_from(u) {
            Ok(i) => Box::new(CelInt::from(i)),
            Err(_) => Box::new(CelUInt::from(u)),
        })
    }
    fn visit_f64<E>(self, f: f64) -> Result<Self::Value, E> {
        Ok(Box::new(CelDouble::from(f)))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Box::new(CelNull))
    }
    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
        Ok(Box::new(self.0.keep(s)))
    }
    fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
        Ok(Box::new(CelString::from(s.to_owned())))
    }
    fn visit_string<E>(self, s: String) -> Result<Self::Value, E> {
        Ok(Box::new(CelString::from(s)))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element_seed(JsonSeed(self.0, PhantomData))? {
            items.push(item);
        }
        Ok(Box::new(CelList::from(items)))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
        let mut entries = HashMap::with_capacity(m.size_hint().unwrap_or(0));
        while let Some(k) = m.next_key_seed(KeySeed(self.0, PhantomData))? {
            let v = m.next_value_seed(JsonSeed(self.0, PhantomData))?;
            entries.insert(CelMapKey::String(k), v);
        }
        Ok(Box::new(CelMap::from(entries)))
    }
}

impl Value {
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::String(_) => "string",
            Value::Int(_) => "int",
            Value::UInt(_) => "uint",
            Value::Bool(_) => "bool",
            Value::Float(_) => "double",
            Value::Null => "null",
            Value::Bytes(_) => "bytes",
            Value::List(_) => "list",
            Value::Map(_) => "map",
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value at a string key of a map.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// JSON as CEL maps it: bytes as base64, non-finite doubles as strings,
    /// map keys as strings.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Value::String(s) => J::String(s.clone()),
            Value::Int(i) => J::from(*i),
            Value::UInt(u) => J::from(*u),
            Value::Bool(b) => J::Bool(*b),
            Value::Float(f) => serde_json::Number::from_f64(*f).map_or_else(
                || {
                    J::String(
                        match f {
                            f if f.is_nan() => "NaN",
                            f if *f > 0.0 => "Infinity",
                            _ => "-Infinity",
                        }
                        .to_owned(),
                    )
                },
                J::Number,
            ),
            Value::Null => J::Null,
            Value::Bytes(b) => J::String(base64(b)),
            Value::List(items) => J::Array(items.iter().map(Value::to_json).collect()),
            Value::Map(entries) => J::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_json()))
                    .collect(),
            ),
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::String(s) => f.write_str(s),
            Value::Int(i) => write!(f, "{i}"),
            Value::UInt(u) => write!(f, "{u}"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Float(x) => write!(f, "{x}"),
            Value::Null => f.write_str("null"),
            Value::Bytes(b) => f.write_str(&String::from_utf8_lossy(b)),
            Value::List(_) | Value::Map(_) => write!(f, "{}", self.to_json()),
        }
    }
}

fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `reference/whois-alice.json`: tailscaled's answer for a user's node.
    const WHOIS_ALICE: &str = r#"{
	"Node": {
		"ID": 7100000000000002,
		"StableID": "nAl1ceL4pt0p1CNTRL",
		"Name": "alice-laptop.tail1234.ts.net.",
		"User": 6478194012345601,
		"Key": "nodekey:ce8d3ad1ccb633ec7b70c17814a5c76ecd029685050d344745ba05870e587d59",
		"KeyExpiry": "2027-05-27T09:00:00Z",
		"Machine": "mkey:219e4d800da968d2a5fcb009c784f4746c7138edb9ee4844b739e830b05cf424",
		"DiscoKey": "discokey:fcfc49fc7f0aa4fb5dcea0e27d5814c989c73256443c60e5dee676e3e953850c",
		"Addresses": [
			"100.84.21.7/32",
			"fd7a:115c:a1e0::b901:2c4d/128"
		],
		"AllowedIPs": [
			"100.84.21.7/32",
			"fd7a:115c:a1e0::b901:2c4d/128"
		],
		"HomeDERP": 1,
		"Hostinfo": {
			"OS": "macOS",
			"Hostname": "Alices-MacBook-Pro"
		},
		"Created": "2026-05-27T09:00:00Z",
		"Cap": 133,
		"Online": true,
		"MachineAuthorized": true,
		"ComputedName": "alice-laptop",
		"ComputedNameWithHost": "alice-laptop (alices-macbook-pro)"
	},
	"UserProfile": {
		"ID": 6478194012345601,
		"LoginName": "alice@example.com",
		"DisplayName": "Alice Example",
		"ProfilePicURL": "https://avatars.example.com/u/alice.png"
	},
	"CapMap": {
		"example.com/cap/proxy": [
			{
				"role": "admin",
				"routes": [
					"/admin/*"
				]
			}
		]
	}
}"#;

    /// `reference/whois-tagged.json`: a tagged node, `CapMap: null`.
    const WHOIS_TAGGED: &str = r#"{
	"Node": {
		"ID": 7100000000000003,
		"StableID": "nC1Runn3r0001CNTRL",
		"Name": "ci-runner.tail1234.ts.net.",
		"User": 31234567890123456,
		"Key": "nodekey:5dfedd3b6bd47f6fa28ee15d969d5bb0ea53774d488bdaf9df1c6e0124b3ef22",
		"Machine": "mkey:6ca3bf39d976ab36a808531bd7ec2e4b4f8aae3a90134534d50f411d377a2c05",
		"DiscoKey": "discokey:5040b413b9dbc9cbd5ac0de04abb8877f09e4dcf57e415ea3f7f6bdacd5e7571",
		"Addresses": [
			"100.88.7.6/32",
			"fd7a:115c:a1e0::5801:706/128"
		],
		"AllowedIPs": [
			"100.88.7.6/32",
			"fd7a:115c:a1e0::5801:706/128"
		],
		"HomeDERP": 1,
		"Hostinfo": {
			"OS": "linux",
			"Hostname": "ci-runner-01"
		},
		"Created": "2026-05-27T09:00:00Z",
		"Cap": 133,
		"Tags": [
			"tag:ci",
			"tag:builder"
		],
		"Online": true,
		"MachineAuthorized": true,
		"ComputedName": "ci-runner",
		"ComputedNameWithHost": "ci-runner (ci-runner-01)"
	},
	"UserProfile": {
		"ID": 31234567890123456,
		"LoginName": "tagged-devices",
		"DisplayName": "Tagged Devices"
	},
	"CapMap": null
}"#;

    /// The seed's `path`, as YAML's `|` block delivers it (trailing newline).
    const SEED_PATH: &str = "\"/localapi/v0/whois?addr=\" + source.address\n";
    /// The seed's `:authority`: YAML `'"local-tailscaled.sock"'`.
    const SEED_AUTHORITY: &str = "\"local-tailscaled.sock\"";
    const REQUEST: &[&str] = &["source", "request"];
    const METADATA: &[&str] = &["source", "request", "response"];
    const ACCESS_LOG: &[&str] = &["source", "request", "extauthz"];

    const HEADERS: &[(&str, &[u8])] = &[
        ("Host", b"mcp.example"),
        ("Content-Type", b"application/json"),
        ("Accept", b"application/json"),
        ("accept", b"text/event-stream"),
        ("Mcp-Session-Id", b"abc123"),
    ];

    fn request<'a>(addr: &'a str) -> Vars<'a> {
        Vars {
            source_address: addr,
            source_port: 51234,
            method: "POST",
            path: "/mcp?x=1",
            headers: HEADERS,
            response: None,
            extauthz: None,
        }
    }

    fn answer<'a>(body: &'a str) -> Vars<'a> {
        Vars {
            response: Some(ResponseVars {
                code: 200,
                body: body.as_bytes(),
                headers: &[("Content-Type", b"application/json")],
            }),
            ..request("100.84.21.7")
        }
    }

    fn eval(src: &str, allowed: &[&str], vars: &Vars) -> Result<Value, String> {
        Expr::compile(src, allowed)?.eval(vars)
    }

    #[test]
    fn expr_is_send_sync_and_clone() {
        fn check<T: Send + Sync + Clone + 'static>() {}
        check::<Expr>();
        check::<Value>();
    }

    #[test]
    fn seed_path_and_authority() {
        let path = Expr::compile(SEED_PATH, REQUEST).unwrap();
        assert!(path.is_fast_path());
        assert_eq!(path.source(), SEED_PATH);
        assert_eq!(
            path.eval_string(&request("100.84.21.7")).unwrap(),
            "/localapi/v0/whois?addr=100.84.21.7"
        );
        let mut buf = String::from("key:");
        path.eval_string_into(&request("::1"), &mut buf).unwrap();
        assert_eq!(buf, "key:/localapi/v0/whois?addr=::1");
        let authority = Expr::compile(SEED_AUTHORITY, REQUEST).unwrap();
        assert!(authority.is_fast_path());
        assert_eq!(
            authority.eval_string(&request("100.84.21.7")).unwrap(),
            "local-tailscaled.sock"
        );
    }

    #[test]
    fn ipv6_source_address() {
        let path = Expr::compile(SEED_PATH, REQUEST).unwrap();
        let vars = request("fd7a:115c:a1e0::b901:2c4d");
        let want = "/localapi/v0/whois?addr=fd7a:115c:a1e0::b901:2c4d";
        assert_eq!(path.eval_string(&vars).unwrap(), want);
        assert_eq!(
            path.eval_interpreted(&vars).unwrap(),
            Value::String(want.into())
        );
    }

    #[test]
    fn seed_metadata_from_reference_answers() {
        let node = Expr::compile("json(response.body).Node.Name", METADATA).unwrap();
        let email = Expr::compile("json(response.body).UserProfile.LoginName", METADATA).unwrap();
        assert!(!node.is_fast_path());
        let alice = answer(WHOIS_ALICE);
        assert_eq!(
            node.eval_string(&alice).unwrap(),
            "alice-laptop.tail1234.ts.net."
        );
        assert_eq!(email.eval_string(&alice).unwrap(), "alice@example.com");
        let tagged = answer(WHOIS_TAGGED);
        assert_eq!(
            node.eval_string(&tagged).unwrap(),
            "ci-runner.tail1234.ts.net."
        );
        assert_eq!(email.eval_string(&tagged).unwrap(), "tagged-devices");
        let tags = eval("json(response.body).Node.Tags", METADATA, &tagged).unwrap();
        assert_eq!(
            tags,
            Value::List(vec![
                Value::String("tag:ci".into()),
                Value::String("tag:builder".into())
            ])
        );
    }

    #[test]
    fn big_ids_stay_exact_integers() {
        let alice = answer(WHOIS_ALICE);
        let tagged = answer(WHOIS_TAGGED);
        let id = Expr::compile("json(response.body).Node.ID", METADATA).unwrap();
        assert_eq!(id.eval(&alice).unwrap(), Value::Int(7_100_000_000_000_002));
        assert_eq!(id.eval_string(&alice).unwrap(), "7100000000000002");
        let user = eval("json(response.body).UserProfile.ID", METADATA, &tagged).unwrap();
        assert_eq!(user, Value::Int(31_234_567_890_123_456));
        // 2^53 + 1 would round to 2^53 as a double.
        let cmp = Expr::compile(
            "json(response.body).Node.ID == 7100000000000002 && json('9007199254740993') == 9007199254740993",
            METADATA,
        )
        .unwrap();
        assert!(cmp.eval_bool(&alice).unwrap());
        assert_eq!(
            eval("json('18446744073709551615')", REQUEST, &alice).unwrap(),
            Value::UInt(u64::MAX)
        );
        assert_eq!(
            eval("json('[-3, 1.5, 2e3]')", REQUEST, &alice).unwrap(),
            Value::List(vec![
                Value::Int(-3),
                Value::Float(1.5),
                Value::Float(2000.0)
            ])
        );
    }

    #[test]
    fn null_cap_map() {
        let tagged = answer(WHOIS_TAGGED);
        let cap = Expr::compile("json(response.body).CapMap", METADATA).unwrap();
        assert_eq!(cap.eval(&tagged).unwrap(), Value::Null);
        let is_null = Expr::compile("json(response.body).CapMap == null", METADATA).unwrap();
        assert!(is_null.eval_bool(&tagged).unwrap());
        assert!(!is_null.eval_bool(&answer(WHOIS_ALICE)).unwrap());
        let role = "json(response.body).CapMap['example.com/cap/proxy'][0].role";
        assert_eq!(
            eval(role, METADATA, &answer(WHOIS_ALICE)).unwrap(),
            Value::String("admin".into())
        );
        assert!(cap.eval_string(&tagged).unwrap_err().contains("null"));
    }

    #[test]
    fn syntax_error_is_a_compile_error() {
        assert_eq!(
            Expr::compile(" \n", REQUEST).unwrap_err(),
            "empty expression"
        );
        for src in [
            "\"/a\" +",
            "source.address +* 1",
            "json(response.body",
            "a b",
        ] {
            let err = Expr::compile(src, METADATA).unwrap_err();
            assert!(err.contains("syntax error"), "{src}: {err}");
        }
    }

    #[test]
    fn unknown_variable_is_a_compile_error() {
        let err = Expr::compile("\"/w?addr=\" + sauce.address", REQUEST).unwrap_err();
        assert!(err.contains("`sauce`"), "{err}");
        assert!(err.contains("line 1, column 14"), "{err}");
        // `response` exists only for metadata, `extauthz` only for access logs.
        let err = Expr::compile("json(response.body).Node.Name", REQUEST).unwrap_err();
        assert!(err.contains("`response`"), "{err}");
        let err = Expr::compile("extauthz.tailscaleNode", METADATA).unwrap_err();
        assert!(err.contains("`extauthz`"), "{err}");
        let err = Expr::compile("source.adress", REQUEST).unwrap_err();
        assert!(err.contains("`source.adress`"), "{err}");
        let err = Expr::compile("a + b", &[]).unwrap_err();
        assert!(err.contains("`a`") && err.contains("`b`"), "{err}");
    }

    #[test]
    fn bound_names_and_types_are_not_variables() {
        let vars = request("100.84.21.7");
        let cases: &[(&str, Value)] = &[
            (
                "request.headers.exists(k, k == 'accept')",
                Value::Bool(true),
            ),
            (
                "[1, 2].map(x, x * 2)",
                Value::List(vec![Value::Int(2), Value::Int(4)]),
            ),
            ("type(source.port) == int", Value::Bool(true)),
            (
                "optional.of(source.address).value()",
                Value::String("100.84.21.7".into()),
            ),
            ("has(request.headers.origin)", Value::Bool(false)),
            ("source.port", Value::Int(51234)),
        ];
        for (src, want) in cases {
            assert_eq!(&eval(src, REQUEST, &vars).unwrap(), want, "{src}");
        }
    }

    #[test]
    fn json_of_garbage_is_an_eval_error() {
        let name = Expr::compile("json(response.body).Node.Name", METADATA).unwrap();
        for body in ["not json", "{\"Node\": ", "{} trailing", "", "\u{0}"] {
            let err = name.eval(&answer(body)).unwrap_err();
            assert!(err.contains("json"), "{body:?}: {err}");
        }
        let bytes = [b'"', 0xff, b'"'];
        let vars = Vars {
            response: Some(ResponseVars {
                code: 200,
                body: &bytes,
                headers: &[],
            }),
            ..request("100.84.21.7")
        };
        assert!(Expr::compile("json(response.body)", METADATA)
            .unwrap()
            .eval(&vars)
            .is_err());
        assert!(eval("json(1)", REQUEST, &vars).is_err());
    }

    #[test]
    fn json_of_strings_copied_or_borrowed() {
        let vars = request("100.84.21.7");
        // A literal is not borrowed from the request, a concatenation is owned.
        assert_eq!(
            eval(r#"json('{"a": "x\\ty"}').a"#, REQUEST, &vars).unwrap(),
            Value::String("x\ty".into())
        );
        assert_eq!(
            eval(r#"json('{"a": ' + '"b"}').a"#, REQUEST, &vars).unwrap(),
            Value::String("b".into())
        );
        assert_eq!(
            eval(
                "json(request.headers['mcp-session-id'] + '')",
                REQUEST,
                &vars
            )
            .unwrap_err(),
            "Error executing function 'json': expected value at line 1 column 1"
        );
    }

    #[test]
    fn eval_bool_on_method() {
        let post = Expr::compile("request.method == \"POST\"", REQUEST).unwrap();
        assert!(post.eval_bool(&request("100.84.21.7")).unwrap());
        let get = Vars {
            method: "GET",
            ..request("100.84.21.7")
        };
        assert!(!post.eval_bool(&get).unwrap());
        let not_bool = Expr::compile("request.method", REQUEST).unwrap();
        assert!(not_bool.eval_bool(&get).is_err());
        let not_bool = Expr::compile("source.port", REQUEST).unwrap();
        assert!(not_bool.eval_bool(&get).is_err());
    }

    #[test]
    fn request_headers_map() {
        let vars = request("100.84.21.7");
        let cases: &[(&str, &str)] = &[
            ("request.headers['content-type']", "application/json"),
            ("request.headers.host", "mcp.example"),
            // Repeated headers are joined in order.
            (
                "request.headers.accept",
                "application/json, text/event-stream",
            ),
            ("request.headers['mcp-session-id']", "abc123"),
            ("request['headers']['host']", "mcp.example"),
        ];
        for (src, want) in cases {
            assert_eq!(
                eval(src, REQUEST, &vars).unwrap().to_string(),
                *want,
                "{src}"
            );
        }
        assert!(eval("request.headers['Host']", REQUEST, &vars).is_err());
        assert_eq!(
            eval("size(request.headers)", REQUEST, &vars).unwrap(),
            Value::Int(4)
        );
        let answer = answer(WHOIS_ALICE);
        assert_eq!(
            eval("response.headers['content-type']", METADATA, &answer).unwrap(),
            Value::String("application/json".into())
        );
        assert_eq!(
            eval("response.code", METADATA, &answer).unwrap(),
            Value::Int(200)
        );
        assert_eq!(
            eval(
                "response.code == 200 && size(response.body) > 0",
                METADATA,
                &answer
            )
            .unwrap(),
            Value::Bool(true)
        );
    }

    #[test]
    fn extauthz_values_for_access_log() {
        let meta = vec![
            (
                "tailscaleNode".to_owned(),
                Value::String("alice-laptop.tail1234.ts.net.".into()),
            ),
            ("id".to_owned(), Value::Int(7_100_000_000_000_002)),
        ];
        let vars = Vars {
            extauthz: Some(&meta),
            ..request("100.84.21.7")
        };
        let node = Expr::compile("extauthz.tailscaleNode", ACCESS_LOG).unwrap();
        assert_eq!(
            node.eval_string(&vars).unwrap(),
            "alice-laptop.tail1234.ts.net."
        );
        assert_eq!(
            eval("extauthz.id + 1", ACCESS_LOG, &vars).unwrap(),
            Value::Int(7_100_000_000_000_003)
        );
        assert_eq!(
            eval("extauthz", ACCESS_LOG, &vars).unwrap().get("id"),
            Some(&Value::Int(7_100_000_000_000_002))
        );
        // Denied or no authz: the access log leaves the field out.
        let denied = request("100.84.21.7");
        assert!(node.eval(&denied).is_err());
        let has = Expr::compile("has(extauthz.tailscaleNode)", ACCESS_LOG).unwrap();
        assert!(!has.eval_bool(&denied).unwrap());
        assert!(has.eval_bool(&vars).unwrap());
    }

    #[test]
    fn value_display_and_json() {
        let v = eval(
            "{'b': [1, 2.5, true, null], 'a': b'\\x00\\xff', 'c': 'x'}",
            REQUEST,
            &request("100.84.21.7"),
        )
        .unwrap();
        assert_eq!(v.get("c").unwrap().to_string(), "x");
        assert_eq!(
            v.to_json().to_string(),
            r#"{"a":"AP8=","b":[1,2.5,true,null],"c":"x"}"#
        );
        assert_eq!(v.to_string(), v.to_json().to_string());
        assert_eq!(
            Value::UInt(u64::MAX).to_json().to_string(),
            "18446744073709551615"
        );
        assert_eq!(Value::Float(f64::NAN).to_json(), serde_json::json!("NaN"));
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"abc"), "YWJj");
        assert_eq!(base64(b"a"), "YQ==");
    }

    /// `extauthz.K` is read from the metadata directly; the interpreter
    /// gives the same value, and an error where the key or metadata is absent.
    #[test]
    fn extauthz_key_agrees_with_interpreter() {
        let meta = vec![
            (
                "node".to_string(),
                Value::String("laptop.tail.ts.net.".into()),
            ),
            ("id".to_string(), Value::Int(7)),
        ];
        for (src, key) in [
            ("extauthz.node", Some("node")),
            ("extauthz.id", Some("id")),
            ("extauthz.missing", Some("missing")),
            ("extauthz.node + ''", None),
            ("extauthz['node']", None),
            ("has(extauthz.node)", None),
            ("source.address", None),
        ] {
            let e = Expr::compile(src, &["extauthz", "source"]).unwrap();
            assert_eq!(e.extauthz_key(), key, "{src}");
            let Some(key) = key else { continue };
            for extauthz in [Some(meta.as_slice()), None] {
                let vars = Vars {
                    extauthz,
                    ..Vars::default()
                };
                let direct = extauthz.and_then(|m| m.iter().find(|(k, _)| k == key));
                match (e.eval(&vars), direct) {
                    (Ok(v), Some((_, want))) => assert_eq!(&v, want, "{src}"),
                    (Err(_), None) => {}
                    (got, want) => panic!("{src}: interpreter {got:?}, direct {want:?}"),
                }
            }
        }
    }

    /// The fast path must agree with the interpreter on every input.
    #[test]
    fn fast_path_agrees_with_interpreter() {
        let fast = [
            SEED_PATH,
            SEED_AUTHORITY,
            "source.address",
            "request.method + ' ' + request.path",
            "'a' + 'b' + source.address + 'c' + 'd'",
            "('/w?addr=' + source.address) + ('&m=' + request.method)",
            r#""tab\there \u00e9 \x41 \101 \"q\"" + request.path"#,
            r#"r"raw\n" + '''triple 'quoted' ''' + """x""""#,
            "''",
            "'' + ''",
            "'\u{1F600}' + request.path + source.address",
        ];
        let slow = [
            "source.address + source.port",
            "source['address']",
            "request.headers.host",
            "string(source.port)",
            "1 + 2",
            "b'x'",
            "'a' + b'x'",
            "has(source.address)",
        ];
        let headers: &[(&str, &[u8])] = &[];
        let inputs = [
            request("100.84.21.7"),
            request("fd7a:115c:a1e0::b901:2c4d"),
            Vars {
                method: "",
                path: "",
                headers,
                ..request("")
            },
            Vars {
                method: "DELETE",
                path: "/mcp/é?q=\"%20",
                ..request("::1")
            },
        ];
        for src in fast {
            let expr = Expr::compile(src, REQUEST).unwrap();
            assert!(expr.is_fast_path(), "{src}");
            for vars in &inputs {
                let interpreted = expr.eval_interpreted(vars);
                assert!(interpreted.is_ok(), "{src}: {interpreted:?}");
                assert_eq!(expr.eval(vars), interpreted, "{src}");
                let mut buf = String::new();
                expr.eval_string_into(vars, &mut buf).unwrap();
                assert_eq!(Ok(Value::String(buf)), interpreted, "{src}");
            }
        }
        for src in slow {
            let expr = Expr::compile(src, REQUEST).unwrap();
            assert!(!expr.is_fast_path(), "{src}");
        }
    }

    /// `cargo test --release -- --ignored --nocapture timing`
    #[test]
    #[ignore]
    fn timing() {
        use std::hint::black_box;
        use std::time::Instant;

        // Best of several batches: the machine is shared.
        fn ns_per(iters: u32, mut f: impl FnMut()) -> f64 {
            (0..5)
                .map(|_| {
                    let start = Instant::now();
                    for _ in 0..iters {
                        f();
                    }
                    start.elapsed().as_nanos() as f64 / f64::from(iters)
                })
                .fold(f64::INFINITY, f64::min)
        }

        let path = Expr::compile(SEED_PATH, REQUEST).unwrap();
        let vars = request("100.84.21.7");
        let want = "/localapi/v0/whois?addr=100.84.21.7";
        assert_eq!(path.eval_string(&vars).unwrap(), want);
        let fast = ns_per(400_000, || {
            black_box(path.eval_string(black_box(&vars)).unwrap());
        });
        let mut buf = String::new();
        let reused = ns_per(400_000, || {
            buf.clear();
            path.eval_string_into(black_box(&vars), &mut buf).unwrap();
            black_box(&buf);
        });
        assert_eq!(buf, want);
        let slow = ns_per(100_000, || {
            black_box(path.eval_interpreted(black_box(&vars)).unwrap());
        });

        let name = Expr::compile("json(response.body).Node.Name", METADATA).unwrap();
        let alice = answer(WHOIS_ALICE);
        assert_eq!(
            name.eval_string(&alice).unwrap(),
            "alice-laptop.tail1234.ts.net."
        );
        let json = ns_per(20_000, || {
            black_box(name.eval_string(black_box(&alice)).unwrap());
        });
        // For scale: serde_json's own tree, without any CEL.
        let tree = ns_per(20_000, || {
            let v: serde_json::Value =
                serde_json::from_slice(black_box(WHOIS_ALICE.as_bytes())).unwrap();
            black_box(v["Node"]["Name"].as_str().unwrap().to_owned());
        });
        let method = Expr::compile("request.method == 'POST'", REQUEST).unwrap();
        let filter = ns_per(100_000, || {
            black_box(method.eval_bool(black_box(&vars)).unwrap());
        });
        println!("seed path, fast path:            {fast:8.1} ns/eval");
        println!("seed path, fast path into buffer:{reused:8.1} ns/eval");
        println!("seed path, interpreter:          {slow:8.1} ns/eval");
        println!("json(response.body).Node.Name:   {json:8.1} ns/eval (alice)");
        println!("serde_json::Value parse + index: {tree:8.1} ns (reference)");
        println!("request.method == 'POST':        {filter:8.1} ns/eval");
    }
}
