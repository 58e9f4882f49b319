//! `Config::from_yaml` on arbitrary text.
//!
//! Invariants: no panic (a config is operator input, but it is also what
//! `--validate-only` is pointed at); a refusal names at least one problem,
//! each with a message; an accepted config's limits are within the ranges the
//! README documents.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringgate::config::{Config, MAX_HEADERS_CAP};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::from_yaml(text) {
        Ok(c) => {
            let l = &c.limits;
            assert!(l.max_headers >= 1 && l.max_headers <= MAX_HEADERS_CAP);
            assert!(l.max_head_bytes >= 256);
            assert!(l.max_uri_bytes >= 16);
        }
        Err(errs) => {
            assert!(!errs.is_empty(), "an error without a problem");
            for e in &errs.0 {
                assert!(
                    !e.message.trim().is_empty(),
                    "empty message at {:?}",
                    e.path
                );
            }
            assert!(!errs.to_string().trim().is_empty());
        }
    }
});
