//! Per-request variables, and how the interpreter reads them.

use std::borrow::Cow;
use std::collections::hash_map::Entry;
use std::collections::HashMap;

use ::cel::common::types::{CelBytes, CelInt, CelMap, CelMapKey, CelString};
use ::cel::common::value::{CowVal, Val};
use ::cel::context::VariableResolver;

use super::value::{value_to_val, Value};

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

/// Answers the interpreter's variable lookups from [`Vars`]. The interpreter
/// asks for the longest qualified name first (`source.address`, then
/// `source`), so a field read never builds the enclosing map.
pub(super) struct Resolver<'r, 'a> {
    pub(super) vars: &'r Vars<'a>,
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
