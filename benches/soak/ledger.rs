//! Accounting: every request the soak sends is counted once when it goes
//! out ([`Ledger::sent`]) and classified once when its fate is known
//! ([`Ledger::record`]). At the end the two totals must agree, and the
//! requests that ringgate saw whole are compared with its own
//! `ringgate_requests_total` counters.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// How a request ended, from the soak's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// The answer the scenario expects.
    Expected,
    /// An injected fault, and it ended the way that fault should.
    Fault,
    /// Anything else: a wrong status or body, a transport error, a timeout.
    Unexpected,
    /// A request that should have been denied was allowed.
    Breach,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Expected => "expected",
            Kind::Fault => "fault",
            Kind::Unexpected => "UNEXPECTED",
            Kind::Breach => "BREACH",
        }
    }
}

/// Whether ringgate counts the request in `ringgate_requests_total`, and
/// under which route and status.
#[derive(Debug, Clone, Copy)]
pub enum Counted {
    /// Seen whole and answered (or its answer cut by the client), or
    /// refused before routing (route `""`).
    Yes(&'static str, u16),
    /// Abandoned before the request was whole, or never sent: ringgate does
    /// not count these.
    No,
    /// A transport error: ringgate may or may not have counted it.
    Unknown,
}

/// Counters the sampler thread reads while the soak runs.
#[derive(Default)]
pub struct Progress {
    pub sent: AtomicU64,
    pub bad: AtomicU64,
    pub faults: AtomicU64,
}

#[derive(Default)]
pub struct Ledger {
    sent: Cell<u64>,
    /// (class, kind, outcome) -> count.
    rows: RefCell<BTreeMap<(&'static str, Kind, String), u64>>,
    /// (route, status) -> requests ringgate should have counted.
    counted: RefCell<BTreeMap<(&'static str, u16), u64>>,
    uncertain: Cell<u64>,
    /// Faults injected, by kind (one per fault, whatever it took).
    faults: RefCell<BTreeMap<&'static str, u64>>,
    /// Children this soak SIGKILLed.
    pub kills: Cell<u64>,
    /// The first few unexpected outcomes, with details.
    problems: RefCell<Vec<String>>,
    pub progress: Arc<Progress>,
}

const KEPT_PROBLEMS: usize = 30;

impl Ledger {
    pub fn new(progress: Arc<Progress>) -> Ledger {
        Ledger {
            progress,
            ..Ledger::default()
        }
    }

    /// A request is about to go out.
    pub fn sent(&self) {
        self.sent.set(self.sent.get() + 1);
        self.progress.sent.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record(
        &self,
        class: &'static str,
        kind: Kind,
        outcome: impl Into<String>,
        counted: Counted,
    ) {
        let outcome = outcome.into();
        if matches!(kind, Kind::Unexpected | Kind::Breach) {
            self.progress.bad.fetch_add(1, Ordering::Relaxed);
            let mut p = self.problems.borrow_mut();
            if p.len() < KEPT_PROBLEMS {
                p.push(format!("{class}: {outcome}"));
            }
        }
        // The row keeps the outcome short: details (bodies) only in problems.
        let short: String = outcome.chars().take(80).collect();
        *self
            .rows
            .borrow_mut()
            .entry((class, kind, short))
            .or_default() += 1;
        match counted {
            Counted::Yes(route, status) => {
                *self
                    .counted
                    .borrow_mut()
                    .entry((route, status))
                    .or_default() += 1
            }
            Counted::No => {}
            Counted::Unknown => self.uncertain.set(self.uncertain.get() + 1),
        }
    }

    /// One fault injected (its requests are recorded separately).
    pub fn fault(&self, kind: &'static str) {
        *self.faults.borrow_mut().entry(kind).or_default() += 1;
        self.progress.faults.fetch_add(1, Ordering::Relaxed);
    }

    pub fn summary(&self) -> Summary {
        let rows: Vec<_> = self
            .rows
            .borrow()
            .iter()
            .map(|((c, k, o), n)| (c.to_string(), *k, o.clone(), *n))
            .collect();
        let count = |k: Kind| -> u64 { rows.iter().filter(|r| r.1 == k).map(|r| r.3).sum::<u64>() };
        Summary {
            sent: self.sent.get(),
            recorded: rows.iter().map(|r| r.3).sum(),
            expected: count(Kind::Expected),
            fault: count(Kind::Fault),
            unexpected: count(Kind::Unexpected),
            breaches: count(Kind::Breach),
            rows,
            counted: self
                .counted
                .borrow()
                .iter()
                .map(|((r, s), n)| ((r.to_string(), *s), *n))
                .collect(),
            uncertain: self.uncertain.get(),
            faults: self
                .faults
                .borrow()
                .iter()
                .map(|(k, n)| (k.to_string(), *n))
                .collect(),
            kills: self.kills.get(),
            problems: self.problems.borrow().clone(),
        }
    }
}

/// A ledger's figures, `Send`, for the report.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    pub sent: u64,
    pub recorded: u64,
    pub expected: u64,
    pub fault: u64,
    pub unexpected: u64,
    pub breaches: u64,
    /// (class, kind, outcome, count).
    pub rows: Vec<(String, Kind, String, u64)>,
    pub counted: BTreeMap<(String, u16), u64>,
    pub uncertain: u64,
    pub faults: BTreeMap<String, u64>,
    pub kills: u64,
    pub problems: Vec<String>,
}

impl Summary {
    pub fn faults_total(&self) -> u64 {
        self.faults.values().sum()
    }
}
