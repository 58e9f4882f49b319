//! MRTR `requestState`: the token ringgate gives a 2026-07-28 client when a
//! shared child asked for input (elicitation, sampling) while serving its
//! request, and the process-wide table of the calls parked on it.
//!
//! The token is `rg1.<process>.<payload>.<mac>` (base64url, no padding):
//! the payload names the parked call, its expiry, a SHA-256 digest of the
//! caller's identity and one of the request it answers (method, tool or
//! URI, target); the MAC is HMAC-SHA256 over all of it with a key drawn
//! from `/dev/urandom` when the process starts. So a token is refused when
//! it was altered, issued by another ringgate process (another host, or
//! before a restart: the parked call does not move), presented by another
//! caller or on another request, or expired. A token is good once: the
//! retry takes its call out of the table.

use std::collections::HashMap;
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

const PREFIX: &str = "rg1";
const PAYLOAD_LEN: usize = 8 + 8 + 32 + 32;

struct Secret {
    key: [u8; 32],
    process: String,
}

fn secret() -> &'static Secret {
    static S: OnceLock<Secret> = OnceLock::new();
    S.get_or_init(|| {
        let mut b = [0u8; 40];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut b))
            .expect("read /dev/urandom for the requestState key");
        let mut key = [0u8; 32];
        key.copy_from_slice(&b[..32]);
        Secret {
            key,
            process: B64.encode(&b[32..]),
        }
    })
}

pub fn digest(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    h.finalize().into()
}

/// What a request binds a token to: its method and the tool (or prompt,
/// URI) it names, on which target.
pub fn binding(method: &str, name: &str, target: &str) -> [u8; 32] {
    digest(&[method.as_bytes(), name.as_bytes(), target.as_bytes()])
}

fn mac(signed: &str) -> [u8; 32] {
    let mut m = <Hmac<Sha256>>::new_from_slice(&secret().key).expect("any key length");
    m.update(signed.as_bytes());
    m.finalize().into_bytes().into()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A fresh id for a parked call (unique in this process).
pub fn next_id() -> u64 {
    static N: AtomicU64 = AtomicU64::new(1);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Issues the token for parked call `id`, good for `ttl`.
pub fn issue(id: u64, ttl: Duration, identity: &[u8; 32], binding: &[u8; 32]) -> String {
    let mut p = Vec::with_capacity(PAYLOAD_LEN);
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&(now_ms() + ttl.as_millis() as u64).to_be_bytes());
    p.extend_from_slice(identity);
    p.extend_from_slice(binding);
    let signed = format!("{PREFIX}.{}.{}", secret().process, B64.encode(&p));
    let tag = B64.encode(mac(&signed));
    format!("{signed}.{tag}")
}

/// Why a `requestState` was refused.
#[derive(Debug, PartialEq)]
pub enum Refused {
    Malformed,
    OtherProcess,
    Tampered,
    Expired,
    OtherCaller,
    OtherRequest,
    /// Valid, but its call is gone (already resumed, timed out, child ended).
    Gone,
}

impl Refused {
    pub fn message(&self) -> &'static str {
        match self {
            Refused::Malformed => "requestState is not one ringgate issued",
            Refused::OtherProcess => "requestState was issued by another ringgate process (a waiting call does not move between hosts or restarts)",
            Refused::Tampered => "requestState failed its integrity check",
            Refused::Expired => "requestState expired",
            Refused::OtherCaller => "requestState was issued to another caller",
            Refused::OtherRequest => "requestState belongs to another request",
            Refused::Gone => "requestState was already used, or its call ended",
        }
    }
}

/// Checks a token; the parked call's id when it holds.
pub fn verify(token: &str, identity: &[u8; 32], binding: &[u8; 32]) -> Result<u64, Refused> {
    verify_at(token, identity, binding, now_ms())
}

fn verify_at(
    token: &str,
    identity: &[u8; 32],
    binding: &[u8; 32],
    now: u64,
) -> Result<u64, Refused> {
    let mut it = token.splitn(4, '.');
    let (Some(PREFIX), Some(process), Some(payload), Some(tag)) =
        (it.next(), it.next(), it.next(), it.next())
    else {
        return Err(Refused::Malformed);
    };
    if process != secret().process {
        return Err(Refused::OtherProcess);
    }
    let signed = &token[..token.len() - tag.len() - 1];
    let given = B64.decode(tag).map_err(|_| Refused::Tampered)?;
    let mut m = <Hmac<Sha256>>::new_from_slice(&secret().key).expect("any key length");
    m.update(signed.as_bytes());
    m.verify_slice(&given).map_err(|_| Refused::Tampered)?;
    let p = B64.decode(payload).map_err(|_| Refused::Tampered)?;
    if p.len() != PAYLOAD_LEN {
        return Err(Refused::Tampered);
    }
    let id = u64::from_be_bytes(p[..8].try_into().expect("8 bytes"));
    let expires = u64::from_be_bytes(p[8..16].try_into().expect("8 bytes"));
    if now > expires {
        return Err(Refused::Expired);
    }
    if p[16..48] != identity[..] {
        return Err(Refused::OtherCaller);
    }
    if p[48..80] != binding[..] {
        return Err(Refused::OtherRequest);
    }
    Ok(id)
}

/// A retry carrying the client's input, sent to the worker whose child
/// holds the parked call.
pub struct Resume {
    /// The child-local id of the parked call.
    pub call: u64,
    /// The retry's id bytes, and progress token bytes if any.
    pub client_id: String,
    pub token: Option<String>,
    /// The client's answer to the child's request (raw JSON), if it gave one.
    pub response: Option<String>,
    pub tx: flume::Sender<Vec<u8>>,
}

/// Where a parked call waits: its child's resume inbox and local id.
pub struct Parked {
    pub inbox: flume::Sender<Resume>,
    pub call: u64,
}

fn table() -> &'static Mutex<HashMap<u64, Parked>> {
    static T: OnceLock<Mutex<HashMap<u64, Parked>>> = OnceLock::new();
    T.get_or_init(Default::default)
}

pub fn park(id: u64, p: Parked) {
    table().lock().expect("parked table").insert(id, p);
}

/// Takes a parked call out of the table (a token is good once).
pub fn take(id: u64) -> Option<Parked> {
    table().lock().expect("parked table").remove(&id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_hold_only_for_their_caller_request_and_time() {
        let alice = digest(&[b"alice"]);
        let bob = digest(&[b"bob"]);
        let call = binding("tools/call", "x", "t");
        let t = issue(7, Duration::from_secs(60), &alice, &call);
        assert_eq!(verify(&t, &alice, &call), Ok(7));
        assert_eq!(verify(&t, &bob, &call), Err(Refused::OtherCaller));
        let other = binding("tools/call", "y", "t");
        assert_eq!(verify(&t, &alice, &other), Err(Refused::OtherRequest));
        // Any changed character of the payload or the MAC is refused.
        let parts: Vec<&str> = t.split('.').collect();
        let mut p = parts[2].as_bytes().to_vec();
        p[3] = if p[3] == b'A' { b'B' } else { b'A' };
        let bad = format!(
            "{}.{}.{}.{}",
            parts[0],
            parts[1],
            String::from_utf8(p).unwrap(),
            parts[3]
        );
        assert_eq!(verify(&bad, &alice, &call), Err(Refused::Tampered));
        let other_proc = format!("{}.AAAAAAAAAAA.{}.{}", parts[0], parts[2], parts[3]);
        assert_eq!(
            verify(&other_proc, &alice, &call),
            Err(Refused::OtherProcess)
        );
        assert_eq!(verify("nonsense", &alice, &call), Err(Refused::Malformed));
        let old = issue(8, Duration::ZERO, &alice, &call);
        assert_eq!(
            verify_at(&old, &alice, &call, now_ms() + 1),
            Err(Refused::Expired)
        );
    }
}
