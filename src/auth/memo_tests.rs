//! A connection's memo of its policy's cached answer ([`ConnMemo`]).

use super::*;
use std::time::Duration;

fn policy(http: &str, extra: &str) -> ExtAuthz {
    super::tests::policy(&format!(
        "          protocol:\n            http:\n{http}\n{extra}"
    ))
}

const SEED_HTTP: &str = r#"              path: '"/localapi/v0/whois?addr=" + source.address'
              addRequestHeaders:
                :authority: '"local-tailscaled.sock"'"#;

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
        .unwrap();
    rt.block_on(f)
}

fn vars(ip: &str) -> Vars<'_> {
    Vars {
        source_address: ip,
        method: "GET",
        path: "/",
        ..Vars::default()
    }
}

fn allowed() -> Rc<Decision> {
    Rc::new(Decision {
        allowed: true,
        status: 200,
        metadata: Vec::new(),
        identity: String::new(),
    })
}

/// Puts an answer for `ip` in the state's cache, as a lookup would.
fn cache_answer(state: &AuthzState, cfg: &ExtAuthz, ip: &str, ttl: Duration) {
    let mut key = String::new();
    render_key(cfg, &vars(ip), &mut key).unwrap();
    let Lookup::Lead(l) = state.cache.lookup(&key, Instant::now()) else {
        panic!("nothing cached yet for {key}");
    };
    l.finish(Ok(allowed()), Some(ttl), Instant::now());
}

#[test]
fn only_keys_that_read_source_alone_are_per_connection() {
    assert!(policy(SEED_HTTP, "").per_connection);
    let by_method = r#"              path: '"/w?m=" + request.method'"#;
    assert!(!policy(by_method, "").per_connection);
    let by_header = r#"              path: '"/w"'
              addRequestHeaders:
                x-user: 'request.headers["x-user"]'"#;
    assert!(!policy(by_header, "").per_connection);
    // A configured key decides, whatever the check request reads.
    let by_path = r#"              path: '"/w?a=" + source.address + "&p=" + request.path'"#;
    assert!(!policy(by_path, "").per_connection);
    assert!(policy(by_path, "          cache: {key: source.address}").per_connection);
}

/// The answer is kept until the cache's copy expires, and not a moment longer.
#[test]
fn the_memo_holds_its_answer_until_the_cache_copy_expires() {
    let cfg = policy(SEED_HTTP, "");
    let t0 = Instant::now();
    let memo = ConnMemo {
        slot: Some((cfg.id, t0 + Duration::from_secs(30), allowed())),
    };
    assert!(memo.get(&cfg, t0 + Duration::from_secs(29)).is_some());
    assert!(memo.get(&cfg, t0 + Duration::from_secs(30)).is_none());
    let mut other = cfg.clone();
    other.id += 1;
    assert!(memo.get(&other, t0).is_none(), "another policy's answer");
}

/// A cached answer is remembered by the connection: it goes on answering
/// after the shared cache lost its copy (a full LRU), without a lookup.
#[test]
fn a_connection_keeps_its_cached_answer_when_the_lru_drops_it() {
    let cfg = policy(SEED_HTTP, "          cache: {maxEntries: 1}");
    let state = AuthzState::new(&cfg).unwrap();
    let stats = Stats::default();
    let mut memo = ConnMemo::default();
    cache_answer(&state, &cfg, "100.64.0.1", Duration::from_secs(60));
    block_on(async {
        let v = check(&state, &cfg, &vars("100.64.0.1"), &stats, &mut memo).await;
        assert!(matches!(v, Verdict::Allow(Some(_), Source::Cache)));
        // Another peer's answer pushes this one out of the one-entry LRU.
        cache_answer(&state, &cfg, "100.64.0.2", Duration::from_secs(60));
        // Still allowed from the memo: the service (127.0.0.1:1) is never
        // asked, which would fail and deny.
        let v = check(&state, &cfg, &vars("100.64.0.1"), &stats, &mut memo).await;
        assert!(matches!(v, Verdict::Allow(Some(_), Source::Cache)));
    });
}

/// Nothing is remembered for a key that can change on a connection, nor
/// when the cache is off.
#[test]
fn no_memo_without_a_per_connection_key_or_a_cache() {
    let by_method = r#"              path: '"/w?a=" + source.address + "&m=" + request.method'"#;
    for cfg in [
        policy(by_method, "          cache: {maxEntries: 1}"),
        policy(SEED_HTTP, "          cache: {maxEntries: 0}"),
    ] {
        let state = AuthzState::new(&cfg).unwrap();
        let stats = Stats::default();
        let mut memo = ConnMemo::default();
        if state.cache.enabled() {
            cache_answer(&state, &cfg, "100.64.0.1", Duration::from_secs(60));
        }
        block_on(async {
            let _ = check(&state, &cfg, &vars("100.64.0.1"), &stats, &mut memo).await;
        });
        assert!(memo.slot.is_none(), "{}", cfg.path.source());
    }
}
