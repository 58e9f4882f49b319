//! The owned evaluation result, and its conversions to and from the
//! interpreter's values.

use std::collections::HashMap;
use std::fmt;

use ::cel::common::types::{
    CelBool, CelBytes, CelDouble, CelInt, CelList, CelMap, CelMapKey, CelNull, CelOptional,
    CelString, CelType, CelUInt, Kind,
};
use ::cel::common::value::Val;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use super::error::EvalError;

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
            Value::Bytes(b) => J::String(STANDARD.encode(b)),
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

/// A [`Value`] as a CEL value that borrows its strings and bytes.
pub(super) fn value_to_val(v: &Value) -> Box<dyn Val + '_> {
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
pub(super) fn owned_to_value(b: Box<dyn Val + '_>) -> Result<Value, EvalError> {
    match String::try_from(b) {
        Ok(s) => Ok(Value::String(s)),
        Err(b) => to_value(b.as_ref()),
    }
}

pub(super) fn to_value(v: &dyn Val) -> Result<Value, EvalError> {
    let unexpected = || EvalError::Unconvertible(v.get_type().name().to_owned());
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
                .collect::<Result<Vec<_>, EvalError>>()?;
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
            // Without the `cel` crate's `chrono` feature there are no
            // durations or timestamps; the rest (opaque values, structs)
            // has no `Value`.
            return Err(unexpected());
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
