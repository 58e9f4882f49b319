//! `json(x)`: parses a string or bytes into CEL values.

use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;

use ::cel::common::types::{
    CelBool, CelBytes, CelDouble, CelInt, CelList, CelMap, CelMapKey, CelNull, CelString, CelUInt,
};
use ::cel::common::value::{CowVal, Val};
use ::cel::ExecutionError;
use serde_json::de::Deserializer;

/// `json(string)` and `json(bytes)`.
pub(super) fn json_fn<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
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
