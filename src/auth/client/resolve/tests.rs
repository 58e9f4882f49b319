use super::*;

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .build()
        .unwrap();
    rt.block_on(f)
}

#[test]
fn a_literal_needs_no_lookup() {
    let r = Resolver::new("::1", 8080);
    assert!(r.state.borrow().pending.is_none());
    let addrs = block_on(r.addrs()).unwrap();
    assert_eq!(&addrs[..], &["[::1]:8080".parse::<SocketAddr>().unwrap()]);
}

/// The lookup starts with the resolver and runs on its own thread; the
/// worker's task is woken by its answer, which is then kept.
#[test]
fn a_name_is_looked_up_on_a_helper_thread_and_kept() {
    let r = Resolver::new("localhost", 8080);
    assert!(r.state.borrow().pending.is_some(), "started at creation");
    let addrs = block_on(r.addrs()).expect("localhost resolves");
    assert!(!addrs.is_empty());
    assert!(addrs
        .iter()
        .all(|a| a.ip().is_loopback() && a.port() == 8080));
    let st = r.state.borrow();
    assert!(st.pending.is_none());
    assert!(st.addrs.as_ref().is_some_and(|(at, _)| at.is_some()));
}
