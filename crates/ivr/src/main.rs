//! `ivr`: one binary for every protocol tool, simulator and service.

mod cmds;

/// mimalloc: the cloud spends a sixth of its time in glibc malloc under load
/// (arena locks between worker threads); see docs/BENCHMARKS.md.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (the same number in its v2 and v3).
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

extern "C" {
    /// From the mimalloc linked in as the global allocator.
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "ivr",
    version,
    about = "ivr: an open internet video recorder — cloud, edge agent, DVRIP and CVIP tools and device simulators"
)]
struct Cli {
    /// Log filter (also RUST_LOG), e.g. `info` or `dvrip=debug`.
    #[arg(long, global = true, default_value = "warn")]
    log: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Talk to a DVRIP/Sofia device (Xiongmai, XMeye cameras, DVRs, NVRs).
    Dvrip(cmds::dvrip::Args),
    /// Talk to a CVIPv2 unit (camera, encoder, NVR, master server).
    Cvip(cmds::cvip::Args),
    /// Everything at once: the cloud with simulated sites connected to it.
    Demo(cmds::demo::Args),
    /// The video cloud (IVC): device gateway, state, HTTP API.
    Cloud(Box<cmds::cloud::Args>),
    /// The on-site agent (IVT): connects out to the cloud and drives local channels.
    Edge(cmds::edge::Args),
    /// Media files: remux without re-encoding.
    #[command(subcommand)]
    Media(cmds::media::MediaCmd),
    /// Run a simulated device.
    #[command(subcommand)]
    Sim(cmds::sim::SimCmd),
    /// Measure ivr against the tools people use today, side by side.
    #[command(subcommand)]
    Bench(cmds::bench::BenchCmd),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| cli.log.clone());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    // A device tool is one client: a single-threaded runtime hands packets
    // between its tasks without cross-thread wake-ups; so does the edge
    // unless told otherwise (`--threads`). Servers use all cores.
    let rt = match &cli.cmd {
        Cmd::Dvrip(_) | Cmd::Cvip(_) | Cmd::Media(_) | Cmd::Bench(_) => {
            tokio::runtime::Builder::new_current_thread().enable_all().build()
        }
        Cmd::Edge(a) if a.threads == 1 => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        Cmd::Edge(a) => {
            tokio::runtime::Builder::new_multi_thread().worker_threads(a.threads.into()).enable_all().build()
        }
        // Blocking threads (file writes, fsync) idle for a minute before
        // they exit, not tokio's 10 s: cameras finish a segment every 10 s,
        // and a thread started again each time costs a fresh stack and heap
        // (the kernel zeroing a 2 MiB page for it).
        Cmd::Sim(_) | Cmd::Cloud(_) | Cmd::Demo(_) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            if let Some(n) = worker_threads(&cli.cmd) {
                b.worker_threads(n.into());
            }
            b.thread_keep_alive(std::time::Duration::from_secs(60)).enable_all().build()
        }
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    if matches!(cli.cmd, Cmd::Edge(_)) && std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // The edge frees a camera's frames seconds after they arrive (a
        // segment at a time); mimalloc keeps freed memory for 1 s before
        // giving it back, which at 16 cameras was 0.5-1.2 MiB a camera of
        // RSS. Given back at once, the same CPU (docs/BENCHMARKS.md).
        // SAFETY: sets one of mimalloc's options, which it reads atomically.
        unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    }
    if matches!(cli.cmd, Cmd::Dvrip(_) | Cmd::Cvip(_) | Cmd::Media(_)) {
        // A one-shot command piped into `head` ends quietly when the pipe
        // closes, as Unix tools do, instead of failing to print.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let r = rt.block_on(async {
        match cli.cmd {
            Cmd::Dvrip(a) => cmds::dvrip::run(a).await,
            Cmd::Cvip(a) => cmds::cvip::run(a).await,
            Cmd::Media(m) => cmds::media::run(m).await,
            Cmd::Sim(s) => cmds::sim::run(s).await,
            Cmd::Edge(a) => cmds::edge::run(a).await,
            Cmd::Cloud(a) => cmds::cloud::run(*a).await,
            Cmd::Demo(a) => cmds::demo::run(a).await,
            Cmd::Bench(b) => cmds::bench::run(b).await,
        }
    });
    match r {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `--threads` of a server command that takes it (`None`: one a core).
fn worker_threads(cmd: &Cmd) -> Option<u16> {
    match cmd {
        Cmd::Cloud(a) => a.threads,
        Cmd::Sim(cmds::sim::SimCmd::Ivt(a)) => a.threads,
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every command and every option says what it is in `--help`.
    #[test]
    fn every_command_and_option_has_help() {
        fn walk(c: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let path = format!("{path} {}", c.get_name());
            if c.get_about().is_none() && path != " ivr" {
                missing.push(format!("{path}: the command"));
            }
            for a in c.get_arguments() {
                let id = a.get_id().as_str();
                if id == "help" || id == "version" || a.is_hide_set() {
                    continue;
                }
                if a.get_help().is_none() && a.get_long_help().is_none() {
                    missing.push(format!("{path}: --{id}"));
                }
            }
            for s in c.get_subcommands() {
                if s.get_name() != "help" {
                    walk(s, &path, missing);
                }
            }
        }
        let mut missing = Vec::new();
        walk(&super::Cli::command(), "", &mut missing);
        assert!(missing.is_empty(), "{} without help:\n{}", missing.len(), missing.join("\n"));
    }

    /// `--threads` reaches the runtime of a cloud node and of a fleet; 0
    /// is refused by name.
    #[test]
    fn threads_are_taken_by_a_node_and_a_fleet() {
        use clap::Parser;
        let threads = |args: &[&str]| super::Cli::try_parse_from(args).map(|c| super::worker_threads(&c.cmd));
        assert_eq!(threads(&["ivr", "cloud", "--threads", "1"]).unwrap(), Some(1));
        assert_eq!(threads(&["ivr", "cloud"]).unwrap(), None);
        assert_eq!(
            threads(&["ivr", "sim", "ivt", "--cloud", "ws://127.0.0.1:1/ivc", "--threads", "3"]).unwrap(),
            Some(3)
        );
        let e = threads(&["ivr", "cloud", "--threads", "0"]).unwrap_err().to_string();
        assert!(e.contains("--threads") && e.contains("'0'"), "{e}");
    }
}
