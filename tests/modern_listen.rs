//! `subscriptions/listen` through ringgate with real peers:
//! server-everything's `list_changed` and resource updates, the
//! subscriptions ringgate makes on its shared children for the streams,
//! and what `mcpAuthorization` lets a caller subscribe to.

#[path = "modern_common/mod.rs"]
mod common;
mod support;

use std::io::BufReader;
use std::net::TcpStream;

use common::*;
use serde_json::{json, Value};
use support::fake_tailscaled::FakeTailscaled;
use support::mcp::server_js;
use support::*;

#[test]
fn listen_acknowledges_then_delivers_list_changed() {
    let (_fake, p, _url) = start(1, "sharedChildren: 1");
    // The target's first modern request: the listen stream exists before
    // its child starts, and the child says list_changed once initialized.
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":"L1","method":"subscriptions/listen","params":{{"notifications":{{"toolsListChanged":true,"promptsListChanged":true}},"_meta":{{"io.modelcontextprotocol/protocolVersion":"{V}","io.modelcontextprotocol/clientCapabilities":{{}}}}}}}}"#
    );
    let mut r = raw_post(&p, &hdrs("subscriptions/listen", None), &body);
    assert_eq!(head(&mut r).0, 200);
    let ack = next_event(&mut r).expect("the acknowledgement");
    assert_eq!(
        ack["method"], "notifications/subscriptions/acknowledged",
        "{ack}"
    );
    assert_eq!(
        ack["params"]["notifications"],
        json!({"toolsListChanged": true, "promptsListChanged": true}),
        "{ack}"
    );
    assert_eq!(
        ack["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"],
        "L1"
    );
    let ev = next_event(&mut r).expect("a list_changed");
    assert_eq!(ev["method"], "notifications/tools/list_changed", "{ev}");
    assert_eq!(
        ev["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"], "L1",
        "{ev}"
    );

    // The Python SDK's listen() gets its acknowledgement too.
    let url = format!("http://{}/mcp", p.addr());
    let v = modern_client(
        &url,
        ALICE,
        &["--scenario", "listen", "--mode", V, "--timeout", "5"],
    );
    assert_eq!(v["ok"], true, "{v:#}");
    assert!(
        v["honored"]
            .as_str()
            .unwrap()
            .contains("tools_list_changed=True"),
        "{v:#}"
    );
}

fn listen_body(id: &str, uris: &[&str]) -> String {
    let uris = serde_json::to_string(uris).unwrap();
    format!(
        r#"{{"jsonrpc":"2.0","id":"{id}","method":"subscriptions/listen","params":{{"notifications":{{"resourceSubscriptions":{uris}}},"_meta":{{"io.modelcontextprotocol/protocolVersion":"{V}","io.modelcontextprotocol/clientCapabilities":{{}}}}}}}}"#
    )
}

/// The lines the tapped child was sent with `method` for `uri`.
fn child_got(tap: &std::path::Path, method: &str, uri: &str) -> usize {
    let text = std::fs::read_to_string(tap.join("child.in")).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["method"] == method && v["params"]["uri"] == uri)
        .count()
}

const A: &str = "demo://resource/dynamic/text/1";
const B: &str = "demo://resource/dynamic/text/2";

/// The seed config on one worker with one shared child behind the stdio
/// tap (what it is sent: `<tap>/child.in`), and `policies` added to the
/// route's.
fn tapped(fake: &FakeTailscaled, tap: &std::path::Path, policies: &str) -> String {
    let js = server_js();
    let args = format!(
        "[\"{PEERS}/stdio_tap.py\", \"{}\", \"node\", \"{js}\"]",
        tap.join("child").display()
    );
    let out = seed_config(fake, 1, "sharedChildren: 1")
        .replace("cmd: node", "cmd: python3")
        .replace(&format!("[\"{js}\"]"), &args)
        .replace("      policies:\n", &format!("      policies:\n{policies}"));
    assert!(
        out.contains(&args) && out.contains(policies),
        "seed changed shape"
    );
    out
}

/// Opens a listen stream for `uris`; returns it after the acknowledgement.
fn listen(p: &Proxy, src: &str, id: &str, uris: &[&str]) -> (BufReader<TcpStream>, Value) {
    let h = hdrs("subscriptions/listen", None);
    let mut r = raw_post_from(src, p, &h, &listen_body(id, uris));
    assert_eq!(head(&mut r).0, 200);
    let ack = next_event(&mut r).expect("the acknowledgement");
    assert_eq!(
        ack["method"], "notifications/subscriptions/acknowledged",
        "{ack}"
    );
    assert_eq!(
        ack["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"],
        id
    );
    (r, ack)
}

/// Toggles server-everything's updates of what it is subscribed to (sent
/// at once, then every 5 s).
fn toggle_updates(p: &Proxy, src: &str, id: &str) {
    let th = hdrs("tools/call", Some("toggle-subscriber-updates"));
    let body = call_body(
        &format!("\"{id}\""),
        "toggle-subscriber-updates",
        "{}",
        None,
    );
    let mut r = raw_post_from(src, p, &th, &body);
    assert_eq!(head(&mut r).0, 200);
    let done = next_event(&mut r).expect("the toggle's answer");
    assert!(done["result"]["content"][0]["text"].is_string(), "{done}");
}

/// The next event is an update of `uri` for stream `id`.
fn assert_update(r: &mut BufReader<TcpStream>, id: &str, uri: &str) {
    let ev = next_event(r).expect("an update");
    assert_eq!(ev["method"], "notifications/resources/updated", "{ev}");
    assert_eq!(ev["params"]["uri"], uri, "{id}: {ev}");
    assert_eq!(
        ev["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"], id,
        "{ev}"
    );
}

#[test]
fn listen_delivers_updates_of_its_resources_and_unsubscribes_when_closed() {
    let tap = tempfile::tempdir().unwrap();
    let (_fake, p, _url) = start_with(|fake| tapped(fake, tap.path(), ""));
    // Subscribed in this order, server-everything sends B's update before
    // A's in each round: an update of B leaked to A's streams would come
    // before the A they wait for.
    let mut streams = Vec::new();
    for (id, uri) in [("Lb", B), ("La1", A), ("La2", A)] {
        let (r, ack) = listen(&p, ALICE, id, &[uri]);
        let want = json!({ "resourceSubscriptions": [uri] });
        assert_eq!(ack["params"]["notifications"], want, "{ack}");
        streams.push((r, id, uri));
    }
    // Two streams of A: the child was asked once.
    assert_eq!(child_got(tap.path(), "resources/subscribe", A), 1);
    assert_eq!(child_got(tap.path(), "resources/subscribe", B), 1);

    toggle_updates(&p, ALICE, "t1");
    for (r, id, uri) in &mut streams {
        assert_update(r, id, uri);
    }

    // The last stream of A gone, the child is unsubscribed from A only.
    let (mut lb, _, _) = streams.remove(0);
    drop(streams);
    p.wait_log(|l| l.contains("unsubscribed from a resource") && l.contains(A))
        .expect("the child is unsubscribed once no stream wants A");
    assert_eq!(child_got(tap.path(), "resources/unsubscribe", A), 1);
    assert_eq!(child_got(tap.path(), "resources/unsubscribe", B), 0);
    // B's stream still gets B's updates (the next round), and never A's.
    assert_update(&mut lb, "Lb", B);
    drop(lb);
    p.wait_log(|l| l.contains("unsubscribed from a resource") && l.contains(B))
        .expect("the child is unsubscribed from B in turn");
}

#[test]
fn a_caller_subscribes_only_to_what_it_may_read() {
    // Alice may read A (and toggle the updates); nobody may read B.
    let rules = format!(
        "        mcpAuthorization:\n          rules:\n          - 'mcp.tool.name == \"toggle-subscriber-updates\"'\n          - 'extauthz.tailscaleEmail == \"alice@example.com\" && mcp.resource.name == \"{A}\"'\n"
    );
    let tap = tempfile::tempdir().unwrap();
    let (_fake, p, _url) = start_with(|fake| tapped(fake, tap.path(), &rules));
    let (mut la, ack) = listen(&p, ALICE, "La", &[A, B]);
    let want = json!({ "resourceSubscriptions": [A] });
    assert_eq!(ack["params"]["notifications"], want, "{ack}");
    let (mut lb, ack) = listen(&p, BOB, "Lb", &[A]);
    assert_eq!(ack["params"]["notifications"], json!({}), "{ack}");
    assert_eq!(child_got(tap.path(), "resources/subscribe", A), 1);
    assert_eq!(child_got(tap.path(), "resources/subscribe", B), 0);

    toggle_updates(&p, ALICE, "t1");
    assert_update(&mut la, "La", A);
    // Bob's stream gets nothing of A: the next event on it would be A's
    // update, sent to Alice's stream in the same step. Closing Alice's
    // stream ends A's subscription; Bob's stream must still be silent.
    drop(la);
    p.wait_log(|l| l.contains("unsubscribed from a resource") && l.contains(A))
        .expect("the child is unsubscribed from A");
    // What reached Bob's socket by now (keep-alive comments at most).
    lb.get_ref().set_nonblocking(true).unwrap();
    let mut got = Vec::new();
    let end = std::io::Read::read_to_end(&mut lb, &mut got);
    assert!(
        matches!(&end, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "{end:?}"
    );
    let got = String::from_utf8_lossy(&got);
    assert!(!got.contains("data:"), "Bob's stream got events: {got}");
}

#[test]
fn a_replaced_child_is_subscribed_again_for_the_live_streams() {
    let tap = tempfile::tempdir().unwrap();
    let (_fake, p, _url) = start_with(|fake| tapped(fake, tap.path(), ""));
    let (mut r, _) = listen(&p, ALICE, "L", &[A]);
    assert_eq!(child_got(tap.path(), "resources/subscribe", A), 1);
    let pid: i32 = p
        .wait_log(|l| l.contains("shared MCP child ready"))
        .and_then(|l| field(&l, "pid"))
        .unwrap()
        .parse()
        .unwrap();
    // The first child never sends an update: it dies before any toggle.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    // The replacement subscribes before it is ready (and serves).
    p.wait_log_nth(1, |l| l.contains("shared MCP child ready"))
        .expect("the child is replaced");
    assert_eq!(child_got(tap.path(), "resources/subscribe", A), 2);
    toggle_updates(&p, ALICE, "t1");
    // The stream stayed open, and the new child's update comes on it.
    assert_update(&mut r, "L", A);
}
