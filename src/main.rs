//! `ringgate -f config.yaml`: load and compile the config, bind, run workers.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use tracing::{error, info, warn};

use ringgate::admin::{self, AdminState};
use ringgate::config::{Config, ConfigErrors, IoDriver};
use ringgate::lifecycle;
use ringgate::mcp::probe;
use ringgate::worker::{self, Plumbing, RunOptions};

/// Edge proxy that puts stdio MCP servers on a tailnet, identifying every
/// caller through the local Tailscale daemon. Reads agentgateway's YAML.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Configuration file (agentgateway YAML subset; see README).
    #[arg(short = 'f', long = "file", value_name = "CONFIG")]
    file: PathBuf,
    /// Check the configuration, print every problem with its YAML path, and exit.
    #[arg(long)]
    validate_only: bool,
    /// Worker threads (default: config.workerThreads, else one per core).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    threads: Option<u16>,
    /// I/O driver: auto (io_uring if the kernel allows it), io_uring, or epoll.
    #[arg(long, value_name = "DRIVER")]
    io_driver: Option<IoDriver>,
    /// Metrics listener, overriding config.statsAddr (IP:port, or off).
    #[arg(long, value_name = "ADDR")]
    stats_addr: Option<String>,
    /// Readiness listener, overriding config.readinessAddr (IP:port, or off).
    #[arg(long, value_name = "ADDR")]
    readiness_addr: Option<String>,
}

/// `IP:port` or `off`.
fn admin_addr(flag: &str, v: &str) -> Result<Option<SocketAddr>, String> {
    match v {
        "off" => Ok(None),
        _ => v
            .parse()
            .map(Some)
            .map_err(|_| format!("--{flag}: {v:?} is not IP:port (or off)")),
    }
}

/// Exit code after a panic on any thread (EX_SOFTWARE).
const PANIC_EXIT: i32 = 70;

fn main() -> ExitCode {
    exit_on_panic();
    let cli = Cli::parse();
    let mut config = match Config::from_file(&cli.file) {
        Ok(c) => c,
        Err(errs) => return refuse(&cli.file, &errs),
    };
    if cli.validate_only {
        // The same names check as at start-up, or a config that validates
        // could still be refused when started.
        if let Err(errs) = probe::check(&config) {
            return refuse(&cli.file, &errs);
        }
        println!("{}: configuration is valid", cli.file.display());
        return ExitCode::SUCCESS;
    }
    for (flag, value, slot) in [
        ("stats-addr", &cli.stats_addr, &mut config.stats_addr),
        (
            "readiness-addr",
            &cli.readiness_addr,
            &mut config.readiness_addr,
        ),
    ] {
        if let Some(v) = value {
            match admin_addr(flag, v) {
                Ok(a) => *slot = a,
                Err(e) => {
                    eprintln!("ringgate: {e}");
                    return ExitCode::from(2);
                }
            }
        }
    }
    let _log = ringgate::logging::init(&config);
    warn_about_config(&config);
    raise_fd_limit();
    start_memory_trim();

    let threads = cli
        .threads
        .map(usize::from)
        .or(config.worker_threads)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if let Err(e) = config.check_capacity(threads) {
        error!(problem = %e, "configuration refused");
        eprintln!("ringgate: {e}");
        return ExitCode::from(2);
    }
    // Before anything is bound: a clash refuses the config (see mcp/probe.rs).
    if let Err(errs) = probe::check(&config) {
        for e in &errs.0 {
            error!(problem = %e, "configuration refused");
        }
        return refuse(&cli.file, &errs);
    }
    let opts = RunOptions {
        threads,
        driver: cli.io_driver.unwrap_or(config.io_driver),
    };
    let bound = match worker::bind_all(&config, threads) {
        Ok(b) => b,
        Err(e) => {
            error!(error = %e, "cannot bind");
            eprintln!("ringgate: {e}");
            return ExitCode::FAILURE;
        }
    };
    for (i, addr) in bound.addrs.iter().enumerate() {
        let names: Vec<&str> = config.binds[i]
            .listeners
            .iter()
            .map(|l| l.name.as_str())
            .collect();
        info!(bind.addr = %addr, listeners = ?names, workers = threads, "listening");
    }
    let config = Arc::new(config);
    let plumbing = Plumbing::new(threads);
    if let Err(e) = start_admin(&config, &plumbing) {
        error!(error = %e, "cannot start the admin listeners");
        eprintln!("ringgate: {e}");
        return ExitCode::FAILURE;
    }
    if let Err(e) =
        lifecycle::spawn_signal_thread(plumbing.controls.clone(), cli.file.clone(), config.clone())
    {
        eprintln!("ringgate: cannot handle signals: {e}");
        return ExitCode::FAILURE;
    }
    match worker::run(config, opts, bound, plumbing) {
        Ok(()) => {
            info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            error!(error = %e, "stopped");
            ExitCode::FAILURE
        }
    }
}

/// Prints every problem of a refused config; the config-error exit code.
fn refuse(file: &std::path::Path, errs: &ConfigErrors) -> ExitCode {
    eprintln!(
        "ringgate: {} problem(s) in {}:",
        errs.0.len(),
        file.display()
    );
    for e in &errs.0 {
        eprintln!("  {e}");
    }
    ExitCode::from(2)
}

/// A panic on any thread ends the process at once with [`PANIC_EXIT`]: a
/// worker that died would otherwise leave the process serving on with fewer
/// workers (its sessions lost, its share of connections refused by the
/// kernel) until shutdown. The panic is logged with the thread's name and the
/// log flushed first; children die with the process (parent-death signal).
fn exit_on_panic() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("unnamed").to_string();
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(not a string)");
        let location = info.location().map_or_else(String::new, |l| l.to_string());
        // With RUST_BACKTRACE set.
        let bt = std::backtrace::Backtrace::capture();
        let captured = bt.status() == std::backtrace::BacktraceStatus::Captured;
        // The log writer cannot write its own last words, and before the
        // logger is set up nothing would.
        if name == "ringgate-log" || !tracing::dispatcher::has_been_set() {
            eprintln!("ringgate: thread '{name}' panicked at {location}: {message}; exiting");
            if captured {
                eprintln!("{bt}");
            }
        } else {
            error!(
                thread = name,
                location,
                panic = message,
                "thread panicked; exiting"
            );
            if captured {
                error!(thread = name, "panic backtrace:\n{bt}");
            }
            ringgate::logging::sink::flush();
        }
        std::process::exit(PANIC_EXIT);
    }));
}

fn start_admin(config: &Config, plumbing: &Plumbing) -> std::io::Result<()> {
    let state = AdminState {
        controls: plumbing.controls.clone(),
        live_children: plumbing.shared.live_children.clone(),
    };
    if let Some(addr) = config.stats_addr {
        admin::serve_stats(addr, state.clone())
            .map_err(|e| std::io::Error::new(e.kind(), format!("statsAddr {addr}: {e}")))?;
    }
    if let Some(addr) = config.readiness_addr {
        admin::serve_readiness(addr, state)
            .map_err(|e| std::io::Error::new(e.kind(), format!("readinessAddr {addr}: {e}")))?;
    }
    Ok(())
}

/// Legal but risky settings, said once at start-up.
fn warn_about_config(config: &Config) {
    let routes = config
        .binds
        .iter()
        .flat_map(|b| &b.listeners)
        .flat_map(|l| &l.routes);
    for r in routes {
        let any_origin = r
            .policies
            .cors
            .as_ref()
            .is_some_and(|c| c.allow_origins.iter().any(|o| o == "*"));
        if any_origin && r.policies.ext_authz.is_some() {
            warn!(
                route = r.name,
                "cors.allowOrigins contains \"*\" on a route that authenticates by network \
                 identity: any web page a tailnet user opens can call it with their identity"
            );
        }
    }
}

/// How often freed heap memory is handed back to the kernel.
const TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(30);
/// Allocations at least this large are mmapped, so freeing them frees memory.
#[cfg(target_env = "gnu")]
const MMAP_THRESHOLD_BYTES: i32 = 256 * 1024;

/// glibc keeps memory freed by the workers' arenas (after a burst of
/// thousands of connections, tens of MiB) until something trims it; a thread
/// of its own does that every [`TRIM_EVERY`], off the workers.
fn start_memory_trim() {
    #[cfg(target_env = "gnu")]
    {
        // A fixed mmap threshold: glibc otherwise raises it to the size of
        // each large block freed (up to 32 MiB), so after one 12 MiB request
        // the next ones come from the heap and stay there. Blocks above it
        // (large bodies, answers, buffers) go back to the kernel when freed.
        // SAFETY: mallopt only sets an allocator parameter.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES);
        }
        let spawned = std::thread::Builder::new()
            .name("ringgate-trim".into())
            .spawn(|| loop {
                std::thread::sleep(TRIM_EVERY);
                // SAFETY: malloc_trim takes no pointers; it only returns free
                // pages of the allocator's own arenas to the kernel.
                unsafe {
                    libc::malloc_trim(0);
                }
            });
        if let Err(e) = spawned {
            warn!(error = %e, "no memory trim thread; freed memory stays with the process");
        }
    }
}

/// Each connection and child pipe is a descriptor; the soft limit (often
/// 1024) is far below what one worker's connection limit allows.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
