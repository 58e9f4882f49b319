//! Checks that need the worker count, known only once the command line is
//! read (`--threads`, `config.workerThreads`, or one per core).

use std::collections::HashSet;

use super::{Backend, Config};

impl Config {
    /// MCP targets (distinct child commands): each worker keeps a pool per
    /// target.
    pub fn mcp_target_count(&self) -> usize {
        self.binds
            .iter()
            .flat_map(|b| &b.listeners)
            .flat_map(|l| &l.routes)
            .filter_map(|r| r.backend.as_ref())
            .map(|Backend::Mcp(m)| m.key())
            .collect::<HashSet<_>>()
            .len()
    }

    /// Refuses a pool that could never hold its idle children: `minIdle` is
    /// per target for the whole process (the workers split it), and all of
    /// them count against `maxLive`. The worker count no longer matters; it
    /// is still taken so the message can say how `minIdle` is split.
    pub fn check_capacity(&self, workers: usize) -> Result<(), String> {
        let targets = self.mcp_target_count();
        let idle = targets.saturating_mul(self.mcp.min_idle);
        if idle > self.mcp.max_live {
            return Err(format!(
                "config.mcp.minIdle ({}) x {targets} MCP target(s) = {idle} idle children, \
                 more than config.mcp.maxLive ({}): lower minIdle or raise maxLive \
                 (minIdle is per target for the whole process, split among the \
                 {workers} worker(s))",
                self.mcp.min_idle, self.mcp.max_live
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(mcp: &str, targets: usize) -> Config {
        let routes: String = (0..targets)
            .map(|i| {
                format!(
                    "    - name: r{i}\n      matches: [{{path: {{exact: /m{i}}}}}]\n      backends: [{{mcp: {{targets: [{{name: t{i}, stdio: {{cmd: cat{i}}}}}]}}}}]\n"
                )
            })
            .collect();
        Config::from_yaml(&format!(
            "config:\n  mcp: {{{mcp}}}\nbinds:\n- port: 0\n  listeners:\n  - routes:\n{routes}"
        ))
        .unwrap()
    }

    #[test]
    fn idle_children_of_all_targets_must_fit_in_max_live() {
        let c = config("minIdle: 4, maxLive: 8", 2);
        assert_eq!(c.mcp_target_count(), 2);
        // The workers split minIdle: their number does not matter.
        for workers in [1, 2, 3, 64] {
            assert!(c.check_capacity(workers).is_ok(), "{workers} workers");
        }
        let e = config("minIdle: 3, maxLive: 8", 3)
            .check_capacity(2)
            .unwrap_err();
        assert!(
            e.contains("config.mcp.minIdle")
                && e.contains("config.mcp.maxLive")
                && e.contains("= 9 idle"),
            "{e}"
        );
        assert!(config("minIdle: 0, maxLive: 1", 3)
            .check_capacity(64)
            .is_ok());
    }
}
