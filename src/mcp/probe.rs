//! The `prefixMode: never` probe: under `never`, calls are routed by looking
//! a tool or prompt name up in the targets' lists, so a name two targets
//! offer cannot be routed. The names are only known by running the servers,
//! so before a config is used (at start-up, before the listeners accept, and
//! on reload, before the new config replaces the old one) every target of a
//! backend with several targets under `never` is started once, through the
//! pool's spawning path: `initialize`, `notifications/initialized`, then
//! `tools/list` and `prompts/list` to their last page (`nextCursor`), then
//! it is stopped (stdin closed, then SIGTERM, then SIGKILL, and reaped).
//!
//! A clash, or a target that cannot be started or does not answer, refuses
//! the config like any other config error, named by the YAML path of the
//! backend's `targets` (or of the target). That holds under `failOpen` too:
//! `failOpen` is about a target failing while sessions run; one that fails
//! before anything is served is a config the operator must see.
//!
//! All targets are probed at once on a thread of their own (a monoio runtime
//! on the epoll driver, which every kernel has), all sharing one deadline:
//! `config.mcp.requestTimeout` after the probe starts. Stopping a child
//! takes at most about twice `config.mcp.stopGrace` more.
//!
//! Sessions still check for clashes when they initialize
//! (`multiplex_session`): a server may change its lists after the probe.

use std::rc::Rc;
use std::time::{Duration, Instant};

use tracing::{debug, info};

use super::job::DEFAULT_VERSION;
use super::multiplex::{self as mx, ListKind};
use crate::config::{Config, ConfigErrors, McpBackend, McpSettings, McpTarget, PrefixMode};
use crate::pool::{Child, ChildSpec, SpawnOptions};

/// Pages of one list the probe reads from a target before it calls the
/// list endless (a cursor that never runs out).
const MAX_PAGES: usize = 1000;

/// The names a target offers.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Offered {
    pub tools: Vec<String>,
    pub prompts: Vec<String>,
}

/// The backends the probe starts: several targets under `prefixMode: never`.
pub fn probed_backends(config: &Config) -> Vec<&McpBackend> {
    crate::mcp::backends(config)
        .filter(|m| m.prefix_mode == PrefixMode::Never && m.targets.len() > 1)
        .collect()
}

/// Probes every backend [`probed_backends`] finds; every clash and every
/// failed target as a config error. Blocks the calling thread (not a
/// worker: start-up, `--validate-only`, the signal thread's reload).
pub fn check(config: &Config) -> Result<(), ConfigErrors> {
    let backends = probed_backends(config);
    if backends.is_empty() {
        return Ok(());
    }
    let settings = &config.mcp;
    info!(
        targets = backends.iter().map(|b| b.targets.len()).sum::<usize>(),
        timeout_ms = settings.request_timeout.as_millis() as u64,
        "prefixMode never: starting each target once to check its tool and prompt names"
    );
    let ran = std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("ringgate-probe".into())
            .spawn_scoped(s, || probe_all(&backends, settings))
            .map(|h| h.join().expect("the probe thread panicked"))
    });
    let mut errs = ConfigErrors::default();
    let results = match ran.and_then(|r| r) {
        Ok(r) => r,
        Err(e) => {
            errs.push("", format!("cannot run the prefixMode never probe: {e}"));
            return Err(errs);
        }
    };
    for (b, results) in backends.iter().zip(results) {
        let mut offered = Vec::new();
        for (i, (t, r)) in b.targets.iter().zip(results).enumerate() {
            match r {
                Ok(o) => offered.push(o),
                Err(e) => errs.push(
                    &format!("{}[{i}]", b.targets_path),
                    format!(
                        "MCP target {:?} failed the prefixMode never probe (tools and prompts \
                         must be listed to check their names are unique): {e}",
                        t.name
                    ),
                ),
            }
        }
        if offered.len() == b.targets.len() {
            let names: Vec<&str> = b.targets.iter().map(|t| t.name.as_str()).collect();
            if let Some(problem) = clash_problem(&clashes(&names, &offered)) {
                errs.push(&b.targets_path, problem);
            }
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs)
    }
}

type Probed = Vec<Vec<Result<Offered, String>>>;

/// Every target of every backend at once, on a runtime of this thread.
fn probe_all(backends: &[&McpBackend], s: &McpSettings) -> std::io::Result<Probed> {
    let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()?;
    let deadline = Instant::now() + s.request_timeout;
    Ok(rt.block_on(async {
        let tasks: Vec<Vec<_>> = backends
            .iter()
            .map(|b| {
                b.targets
                    .iter()
                    .map(|t| {
                        let t = t.clone();
                        let limit = Limits {
                            max_line_bytes: s.max_line_bytes,
                            stop_grace: s.stop_grace,
                            deadline,
                            timeout: s.request_timeout,
                        };
                        monoio::spawn(async move { probe_target(&t, limit).await })
                    })
                    .collect()
            })
            .collect();
        let mut out = Vec::new();
        for ts in tasks {
            let mut v = Vec::new();
            for t in ts {
                v.push(t.await);
            }
            out.push(v);
        }
        out
    }))
}

#[derive(Debug, Clone, Copy)]
struct Limits {
    max_line_bytes: usize,
    stop_grace: Duration,
    deadline: Instant,
    /// What the deadline was set from, for the error.
    timeout: Duration,
}

/// Starts `t`, asks for its names, stops it.
async fn probe_target(t: &McpTarget, limit: Limits) -> Result<Offered, String> {
    let opts = SpawnOptions {
        max_line_bytes: limit.max_line_bytes,
        backend: Rc::from(format!("{}/probe", t.name)),
        live: None,
        exits: None,
    };
    let mut child = Child::spawn(&ChildSpec::of_target(t), opts)
        .await
        .map_err(|e| format!("cannot start {:?}: {e}", t.cmd))?;
    let left = limit.deadline.saturating_duration_since(Instant::now());
    let answer = match monoio::time::timeout(left, ask(&mut child)).await {
        Ok(a) => a,
        Err(_) => Err(format!(
            "no complete answer within {} ms (config.mcp.requestTimeout)",
            limit.timeout.as_millis()
        )),
    };
    let status = child.stop(limit.stop_grace).await;
    debug!(target = t.name, pid = child.pid(), %status, ok = answer.is_ok(), "probe child stopped");
    answer
}

/// The probe's requests carry string ids of their own.
fn id(n: usize) -> String {
    format!("\"ringgate-probe-{n}\"")
}

/// The MCP exchange: initialize, then both lists to their last page.
async fn ask(child: &mut Child) -> Result<Offered, String> {
    let init = format!(
        r#"{{"jsonrpc":"2.0","id":{},"method":"initialize","params":{{"protocolVersion":"{DEFAULT_VERSION}","capabilities":{{}},"clientInfo":{{"name":"ringgate-probe","version":"{}"}}}}}}"#,
        id(0),
        env!("CARGO_PKG_VERSION")
    );
    let line = request(child, &id(0), &init).await?;
    if mx::member(&line, "result").is_none() {
        return Err(format!("initialize failed: {}", short(&line)));
    }
    send(
        child,
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
    )
    .await?;
    let mut offered = Offered::default();
    let mut n = 0;
    for kind in [ListKind::Tools, ListKind::Prompts] {
        let method = match kind {
            ListKind::Tools => "tools/list",
            _ => "prompts/list",
        };
        let mut cursor: Option<String> = None;
        for pages in 0.. {
            if pages == MAX_PAGES {
                return Err(format!(
                    "{method} still had a nextCursor after {MAX_PAGES} pages"
                ));
            }
            n += 1;
            // The cursor goes back as the child wrote it.
            let params = cursor
                .as_ref()
                .map(|c| format!(r#","params":{{"cursor":{c}}}"#))
                .unwrap_or_default();
            let req = format!(
                r#"{{"jsonrpc":"2.0","id":{},"method":"{method}"{params}}}"#,
                id(n)
            );
            let line = request(child, &id(n), &req).await?;
            let Some(Page { names, next }) = page(kind, &line)? else {
                break;
            };
            match kind {
                ListKind::Tools => offered.tools.extend(names),
                _ => offered.prompts.extend(names),
            }
            match next {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
    }
    Ok(offered)
}

async fn send(child: &Child, line: &str) -> Result<(), String> {
    child
        .send(line.as_bytes())
        .await
        .map_err(|e| format!("cannot write to it: {e}"))
}

/// Sends `line` and reads until the answer whose id is `id` (raw). A request
/// from the server meanwhile (roots, sampling) is answered "method not
/// found"; notifications are skipped.
async fn request(child: &mut Child, id: &str, line: &str) -> Result<String, String> {
    send(child, line).await?;
    let want = mx::decode_str(id);
    loop {
        let got = match child.next_line().await {
            None => return Err("it closed its stdout (exited?) before answering".into()),
            Some(Err(e)) => return Err(e.to_string()),
            Some(Ok(l)) => l,
        };
        let Ok(got) = String::from_utf8(got) else {
            continue;
        };
        let Some(r) = mx::member(&got, "id") else {
            continue;
        };
        let raw = &got[r];
        if mx::member(&got, "method").is_some() {
            let refuse = super::jsonrpc::error_line(
                Some(raw),
                mx::METHOD_NOT_FOUND,
                "not offered while ringgate checks the server's names",
            );
            send(child, &refuse).await?;
            continue;
        }
        if mx::decode_str(raw) == want {
            return Ok(got);
        }
    }
}

/// A line cut for an error message.
fn short(line: &str) -> String {
    const MAX: usize = 300;
    match line.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}...", &line[..i]),
        None => line.to_string(),
    }
}

/// One page of a list answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub names: Vec<String>,
    /// `nextCursor` as the child wrote it (a JSON string literal).
    pub next: Option<String>,
}

/// One list answer: its names and its raw `nextCursor` (a JSON string
/// literal), or `None` when the target does not implement the list
/// (`-32601`, e.g. a server without prompts).
pub fn page(kind: ListKind, line: &str) -> Result<Option<Page>, String> {
    let method = match kind {
        ListKind::Tools => "tools/list",
        _ => "prompts/list",
    };
    if let Some(r) = mx::member(line, "result") {
        let result = &line[r];
        let Some(list) = mx::member(result, kind.key()) else {
            return Err(format!(
                "{method} answer has no {:?}: {}",
                kind.key(),
                short(line)
            ));
        };
        if !result[list].starts_with('[') {
            return Err(format!("{method} answer's {:?} is not a list", kind.key()));
        }
        let next = match mx::member(result, "nextCursor").map(|c| &result[c]) {
            None | Some("null") => None,
            Some(c) if c.starts_with('"') => Some(c.to_string()),
            Some(c) => return Err(format!("{method} answer's nextCursor {c} is not a string")),
        };
        return Ok(Some(Page {
            names: mx::names(kind, line),
            next,
        }));
    }
    let code = mx::nested(line, "error", "code").and_then(|c| line[c].parse::<i64>().ok());
    match code {
        Some(mx::METHOD_NOT_FOUND) => Ok(None),
        Some(_) => Err(format!("{method} failed: {}", short(line))),
        None => Err(format!("malformed {method} answer: {}", short(line))),
    }
}

/// Every tool or prompt name more than one target offers (`targets[i]`
/// offers `offered[i]`): the name (`tool "echo"`) and the targets offering
/// it (`"a" and "b"`).
pub fn clashes(targets: &[&str], offered: &[Offered]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (what, kind) in [("tool", ListKind::Tools), ("prompt", ListKind::Prompts)] {
        let per: Vec<(usize, Vec<String>)> = offered
            .iter()
            .enumerate()
            .map(|(i, o)| {
                let names = match kind {
                    ListKind::Tools => &o.tools,
                    _ => &o.prompts,
                };
                (i, names.clone())
            })
            .collect();
        for (name, ts) in mx::clashes(&per) {
            let who: Vec<String> = ts.iter().map(|t| format!("{:?}", targets[*t])).collect();
            let who = match who.split_last() {
                Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
                _ => who.join(""),
            };
            out.push((format!("{what} {name:?}"), who));
        }
    }
    out
}

/// Names listed in a clash error after the first one, at most.
const MORE_LISTED: usize = 20;

/// One error for a backend's clashes: the first in full, the others by name.
pub fn clash_problem(clashes: &[(String, String)]) -> Option<String> {
    let ((name, who), rest) = clashes.split_first()?;
    let mut s = format!("{name} is offered by targets {who}");
    if !rest.is_empty() {
        let more: Vec<&str> = rest
            .iter()
            .take(MORE_LISTED)
            .map(|(n, _)| n.as_str())
            .collect();
        let cut = if rest.len() > MORE_LISTED {
            ", ..."
        } else {
            ""
        };
        s.push_str(&format!(
            " (and {} more names clash: {}{cut})",
            rest.len(),
            more.join(", ")
        ));
    }
    s.push_str(
        ": prefixMode never routes calls by name, so names must be unique across targets \
         (use prefixMode conditional or always, or serve one of them on another route)",
    );
    Some(s)
}

#[cfg(test)]
#[path = "probe_tests.rs"]
mod tests;
