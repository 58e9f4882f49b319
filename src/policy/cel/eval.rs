//! Evaluating a compiled expression: the fast path, or the interpreter with
//! variables resolved from [`Vars`].

use std::sync::Arc;

use ::cel::common::types::CelBool;
use ::cel::common::value::CowVal;
use ::cel::Context;

use super::compile::Expr;
use super::error::EvalError;
use super::fast::{render, render_into};
use super::value::{owned_to_value, to_value, Value};
use super::vars::{Resolver, Vars};
use super::ENV;

impl Expr {
    pub fn eval(&self, vars: &Vars) -> Result<Value, EvalError> {
        if let Some(parts) = &self.inner.fast {
            return Ok(Value::String(render(parts, vars)));
        }
        self.interpret(vars, |v| match v {
            CowVal::Owned(b) => owned_to_value(b),
            CowVal::Borrowed(b) => to_value(b),
        })
    }

    /// Evaluate and require a string; integers are formatted.
    pub fn eval_string(&self, vars: &Vars) -> Result<String, EvalError> {
        match self.eval(vars)? {
            Value::String(s) => Ok(s),
            Value::Int(i) => Ok(i.to_string()),
            Value::UInt(u) => Ok(u.to_string()),
            other => Err(EvalError::WrongType {
                expected: "string",
                got: other.type_name().to_owned(),
            }),
        }
    }

    /// Like [`eval_string`](Self::eval_string), appending to `out`: a caller
    /// that keeps a buffer (a cache-key lookup) renders the fast path without
    /// allocating.
    pub fn eval_string_into(&self, vars: &Vars, out: &mut String) -> Result<(), EvalError> {
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

    pub fn eval_bool(&self, vars: &Vars) -> Result<bool, EvalError> {
        if self.inner.fast.is_some() {
            return Err(EvalError::WrongType {
                expected: "bool",
                got: "string".to_owned(),
            });
        }
        self.interpret(vars, |v| match v.downcast_ref::<CelBool>() {
            Some(b) => Ok(*b.inner()),
            None => Err(EvalError::WrongType {
                expected: "bool",
                got: v.get_type().name().to_owned(),
            }),
        })
    }

    /// Runs the interpreter; `finish` converts the result while it may still
    /// borrow from `vars` and the program.
    fn interpret<T>(
        &self,
        vars: &Vars,
        finish: impl FnOnce(CowVal<'_, '_>) -> Result<T, EvalError>,
    ) -> Result<T, EvalError> {
        let resolver = Resolver { vars };
        ENV.with(|env| {
            let mut ctx = Context::with_env(Arc::clone(env));
            ctx.set_variable_resolver(&resolver);
            let val = ::cel::Value::resolve_val(self.inner.program.expression(), &ctx)?;
            finish(val)
        })
    }

    /// The interpreter, even where the fast path applies: for tests and
    /// benchmarks that compare the two.
    #[doc(hidden)]
    pub fn eval_interpreted(&self, vars: &Vars) -> Result<Value, EvalError> {
        self.interpret(vars, |v| to_value(&*v))
    }
}
