//! The fast path: string literals, `+` and the three string variables,
//! rendered without the interpreter.

use ::cel::common::ast::{Expr as Node, IdedExpr, LiteralValue};

use super::vars::Vars;

/// A piece of a fast-path string.
#[derive(Debug)]
pub(super) enum Part {
    Literal(String),
    SourceAddress,
    Method,
    Path,
}

/// Recognises literals, `+` and the three string variables; adjacent
/// literals are merged.
pub(super) fn fast_path(e: &IdedExpr) -> Option<Vec<Part>> {
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

pub(super) fn render(parts: &[Part], vars: &Vars) -> String {
    let mut out = String::new();
    render_into(parts, vars, &mut out);
    out
}

pub(super) fn render_into(parts: &[Part], vars: &Vars, out: &mut String) {
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
