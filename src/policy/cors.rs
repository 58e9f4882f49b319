//! CORS with agentgateway's semantics, plus the MCP Origin check.
//!
//! Runs before authorization: a preflight from an allowed origin is answered
//! here, and allowed origins are echoed (never a literal `*`) with
//! `Vary: Origin`. An MCP request whose `Origin` is present and not allowed is
//! refused (403) before anything else happens, as the MCP transport spec asks
//! of servers to defeat DNS rebinding.

use std::time::Duration;

use crate::http::response::Response;

/// `policies.cors` of a route, compiled.
#[derive(Debug, Clone, Default)]
pub struct Cors {
    pub allow_origins: Vec<String>,
    pub allow_headers: Vec<String>,
    pub allow_methods: Vec<String>,
    pub expose_headers: Vec<String>,
    pub allow_credentials: bool,
    pub max_age: Option<Duration>,
}

/// What the CORS stage decided for one request.
pub enum Verdict {
    /// Answer now (preflight, or a refused origin).
    Respond(Response),
    /// Go on; add these headers to whatever the request gets.
    Continue(Vec<(&'static str, Vec<u8>)>),
}

impl Cors {
    pub fn allows_origin(&self, origin: &[u8]) -> bool {
        self.allow_origins.iter().any(|o| origin_matches(o, origin))
    }
}

/// `*` matches any origin; `https://*.example.com` any subdomain of it;
/// otherwise an exact, ASCII case-insensitive match.
fn origin_matches(pattern: &str, origin: &[u8]) -> bool {
    if pattern == "*" {
        return true;
    }
    if let Some((scheme, rest)) = pattern.split_once("://*.") {
        let prefix = format!("{scheme}://");
        return origin.len() > prefix.len() + rest.len() + 1
            && origin[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
            && origin[origin.len() - rest.len()..].eq_ignore_ascii_case(rest.as_bytes())
            && origin[origin.len() - rest.len() - 1] == b'.';
    }
    pattern.as_bytes().eq_ignore_ascii_case(origin)
}

/// The CORS stage. `mcp` says the route bridges MCP, where an origin that is
/// not allowed (or any origin on a route without a CORS policy) is refused.
pub fn check(
    cors: Option<&Cors>,
    mcp: bool,
    method: &str,
    origin: Option<&[u8]>,
    request_method: Option<&[u8]>,
    request_headers: Option<&[u8]>,
) -> Verdict {
    let Some(origin) = origin else {
        return Verdict::Continue(Vec::new());
    };
    let allowed = cors.is_some_and(|c| c.allows_origin(origin));
    let preflight = method == "OPTIONS" && request_method.is_some();
    let Some(cors) = cors.filter(|_| allowed) else {
        if mcp || (preflight && cors.is_some()) {
            return Verdict::Respond(Response::text(403, "origin not allowed"));
        }
        return Verdict::Continue(Vec::new());
    };
    let mut headers: Vec<(&'static str, Vec<u8>)> = vec![
        ("access-control-allow-origin", origin.to_vec()),
        ("vary", b"Origin".to_vec()),
    ];
    if cors.allow_credentials {
        headers.push(("access-control-allow-credentials", b"true".to_vec()));
    }
    if preflight {
        let methods = list_or_echo(&cors.allow_methods, request_method);
        if !methods.is_empty() {
            headers.push(("access-control-allow-methods", methods));
        }
        let allow = list_or_echo(&cors.allow_headers, request_headers);
        if !allow.is_empty() {
            headers.push(("access-control-allow-headers", allow));
        }
        if let Some(age) = cors.max_age {
            headers.push((
                "access-control-max-age",
                age.as_secs().to_string().into_bytes(),
            ));
        }
        let mut resp = Response::new(200);
        for (n, v) in headers {
            resp = resp.header(n, v);
        }
        return Verdict::Respond(resp);
    }
    if !cors.expose_headers.is_empty() {
        headers.push((
            "access-control-expose-headers",
            cors.expose_headers.join(", ").into_bytes(),
        ));
    }
    Verdict::Continue(headers)
}

/// A configured list, or what the client asked for when the list is `*`
/// (a literal `*` is not honoured by browsers on credentialed requests).
fn list_or_echo(list: &[String], requested: Option<&[u8]>) -> Vec<u8> {
    if list.iter().any(|s| s == "*") {
        return requested.unwrap_or_default().to_vec();
    }
    list.join(", ").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors(origins: &[&str]) -> Cors {
        Cors {
            allow_origins: origins.iter().map(|s| s.to_string()).collect(),
            allow_headers: vec!["*".into()],
            allow_methods: vec!["*".into()],
            expose_headers: vec!["Mcp-Session-Id".into()],
            ..Cors::default()
        }
    }

    fn header<'a>(r: &'a Response, name: &str) -> Option<&'a [u8]> {
        r.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_ref())
    }

    #[test]
    fn origin_patterns() {
        assert!(origin_matches("*", b"http://x"));
        assert!(origin_matches(
            "https://app.example.com",
            b"HTTPS://APP.example.com"
        ));
        assert!(origin_matches(
            "https://*.example.com",
            b"https://a.example.com"
        ));
        assert!(!origin_matches(
            "https://*.example.com",
            b"https://example.com"
        ));
        assert!(!origin_matches(
            "https://*.example.com",
            b"https://aexample.com"
        ));
        assert!(!origin_matches(
            "https://*.example.com",
            b"http://a.example.com"
        ));
    }

    #[test]
    fn preflight_is_answered_with_echoed_origin() {
        let c = cors(&["*"]);
        let v = check(
            Some(&c),
            true,
            "OPTIONS",
            Some(b"https://app.test"),
            Some(b"POST"),
            Some(b"content-type, mcp-session-id"),
        );
        let Verdict::Respond(r) = v else {
            panic!("preflight answered")
        };
        assert_eq!(r.status, 200);
        assert_eq!(
            header(&r, "access-control-allow-origin"),
            Some(&b"https://app.test"[..])
        );
        assert_eq!(header(&r, "vary"), Some(&b"Origin"[..]));
        assert_eq!(
            header(&r, "access-control-allow-headers"),
            Some(&b"content-type, mcp-session-id"[..])
        );
        assert_eq!(
            header(&r, "access-control-allow-methods"),
            Some(&b"POST"[..])
        );
    }

    #[test]
    fn disallowed_origin_on_mcp_is_refused() {
        let c = cors(&["https://good.test"]);
        let v = check(
            Some(&c),
            true,
            "POST",
            Some(b"https://evil.test"),
            None,
            None,
        );
        assert!(matches!(v, Verdict::Respond(r) if r.status == 403));
        let v = check(None, true, "POST", Some(b"https://evil.test"), None, None);
        assert!(matches!(v, Verdict::Respond(r) if r.status == 403));
        // A plain route without CORS just gets no CORS headers.
        let v = check(None, false, "GET", Some(b"https://evil.test"), None, None);
        assert!(matches!(v, Verdict::Continue(h) if h.is_empty()));
    }

    #[test]
    fn allowed_request_gets_exposed_headers() {
        let c = cors(&["https://good.test"]);
        let Verdict::Continue(h) = check(
            Some(&c),
            true,
            "POST",
            Some(b"https://good.test"),
            None,
            None,
        ) else {
            panic!("allowed")
        };
        assert!(h.contains(&("access-control-expose-headers", b"Mcp-Session-Id".to_vec())));
        assert!(h.contains(&("access-control-allow-origin", b"https://good.test".to_vec())));
        assert!(
            matches!(check(Some(&c), true, "POST", None, None, None), Verdict::Continue(h) if h.is_empty())
        );
    }
}
