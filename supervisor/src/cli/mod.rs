//! The `oxbus` command line: every subcommand, one file per subcommand or group. `main.rs`
//! only parses ([`args`]) and calls [`run`]. The admin subcommands talk to a running server
//! only through its admin API ([`client`]); `server` and `quickstart` start one
//! ([`server::serve`], the one call into the server's run); `quickstart`, `proxy` and
//! `systemd install` also write the files a server or proxy reads. Nothing here reaches
//! into a running server's state. Errors are [`CliError`], printed once, here.
//!
//! `println!` and `print!` in every module here are this file's two macros, not std's: the
//! same output, but a client command whose reader has gone (`oxbus services | head -3`)
//! ends quietly ([`print_out`]).

/// std's `println!`, through [`print_out`]. Defined before the `mod` lines below, so that
/// it is the `println!` of every module of `cli` (textual scope shadows std's).
macro_rules! println {
    () => {
        $crate::cli::print_out(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::cli::print_out(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// std's `print!`, through [`print_out`] (as `println!` above).
macro_rules! print {
    ($($arg:tt)*) => {
        $crate::cli::print_out(format_args!($($arg)*))
    };
}

pub mod args;
pub mod audit;
pub mod cache;
pub mod client;
pub mod cluster;
pub mod config_cmd;
pub mod dashboard_cmd;
pub mod deploy_watch;
pub mod error;
pub mod format;
pub mod inbound;
pub mod jobs;
pub mod logging;
pub mod modules;
pub mod out;
pub mod proxy_cmd;
pub mod pubsub;
pub mod quickstart;
pub mod quickstart_dashboard;
pub mod reload;
pub mod secret;
pub mod server;
pub mod stats;
pub mod systemd_units;
pub mod token;
pub mod user_config;
pub mod websocket;
pub mod zato_import;

use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use args::{ClusterAction, Command, Output};
pub use error::CliError;

/// Runs one subcommand; returns the process's exit code.
pub fn run(command: Command) -> ExitCode {
    match command {
        Command::Server { config, debug } => server::command(&config, debug),
        Command::Quickstart {
            dir,
            port,
            workers,
            no_proxy,
            no_dashboard,
            debug,
        } => quickstart::command(
            &dir,
            quickstart::Options {
                port,
                workers,
                no_proxy,
                no_dashboard,
                debug,
            },
        ),
        Command::Proxy {
            config,
            upgrade,
            exit_with_parent,
        } => exit(proxy_cmd::command(&config, upgrade, exit_with_parent)),
        Command::Dashboard {
            action: Some(args::DashboardAction::User { action }),
            ..
        } => admin(|rt| dashboard_cmd::user(rt, &action)),
        Command::Dashboard {
            action: None,
            config,
            exit_with_parent,
        } => exit(match config {
            Some(c) => dashboard_cmd::run(&c, exit_with_parent),
            None => Err(CliError::Dashboard(
                "--config FILE (or OXBUS_DASHBOARD_CONFIG) names the dashboard.toml to run with"
                    .into(),
            )),
        }),
        Command::Reload { pid, timeout } => exit(reload::command(pid, timeout)),
        Command::Systemd { action } => exit(systemd_units::command(&action)),
        Command::Deploy {
            to,
            watch: Some(dir),
            output,
            ..
        } => admin(|rt| {
            let target = client::target(&to)?;
            let json = matches!(output, Output::Json);
            rt.block_on(deploy_watch::deploy_watch(target, &dir, json))
        }),
        Command::Deploy {
            to,
            files,
            output,
            watch: None,
            force,
        } => admin(|rt| modules::deploy(rt, &to, &files, force, output)),
        Command::Invoke { to, name, payload } => {
            admin(|rt| modules::invoke(rt, &to, &name, payload.as_deref()))
        }
        Command::Services {
            to,
            output,
            stats: true,
            json,
            name,
        } => admin(|rt| {
            let output = if json { Output::Json } else { output };
            stats::services(rt, &to, name.as_deref(), output)
        }),
        Command::Services { to, output, .. } => admin(|rt| modules::services(rt, &to, output)),
        Command::Openapi { to } => admin(|rt| modules::openapi(rt, &to)),
        Command::Rollback { to, module, output } => {
            admin(|rt| modules::rollback(rt, &to, &module, output))
        }
        Command::Undeploy { to, module, output } => {
            admin(|rt| modules::undeploy(rt, &to, &module, output))
        }
        Command::Config { action } => admin(|rt| config_cmd::command(rt, &action)),
        Command::Zato {
            action: args::ZatoAction::Import(a),
        } => {
            quiet_on_closed_pipe();
            match runtime() {
                // Its own exit code: 2 when objects were left out (docs/ZATO_IMPORT.md).
                Ok(rt) => zato_import::command(&rt, &a).unwrap_or_else(|e| fail(&e)),
                Err(e) => fail(&e),
            }
        }
        Command::Cluster {
            action: ClusterAction::Status { to, output },
        } => admin(|rt| cluster::status(rt, &to, output)),
        Command::Websocket { action } => admin(|rt| websocket::command(rt, &action)),
        Command::Secret { action } => admin(|rt| secret::command(rt, &action)),
        Command::Cache { action } => admin(|rt| cache::command(rt, &action)),
        Command::Jobs { action } => admin(|rt| jobs::command(rt, &action)),
        Command::Token { action } => admin(|rt| token::command(rt, &action)),
        Command::UserConfig { action } => admin(|rt| user_config::command(rt, &action)),
        Command::Out { action } => admin(|rt| out::command(rt, &action)),
        Command::Inbound { action } => admin(|rt| inbound::command(rt, &action)),
        Command::Pubsub { action } => admin(|rt| pubsub::command(rt, &action)),
        Command::Audit {
            to,
            object,
            who,
            since,
            limit,
            before,
            json,
        } => admin(|rt| {
            let filter = audit::Filter {
                object: object.as_deref(),
                who: who.as_deref(),
                since: since.as_deref(),
                limit,
                before,
            };
            audit::command(rt, &to, &filter, json)
        }),
    }
}

/// An admin API subcommand, on a runtime of its own (one thread: one request at a time).
fn admin(f: impl FnOnce(&tokio::runtime::Runtime) -> Result<(), CliError>) -> ExitCode {
    quiet_on_closed_pipe();
    exit(runtime().and_then(|rt| f(&rt)))
}

/// A client command whose reader went away (`oxbus services | head -3`) ends as a Unix
/// tool does, quietly, instead of panicking in `println!` with a backtrace: from here on,
/// [`print_out`] ends the process with exit code 0 when standard output is a closed pipe.
/// SIGPIPE stays ignored (Rust's default), so a write to a server that has closed the
/// connection (a 413 on a big upload, a restart under `deploy --watch`) is an error the
/// command reports, not a silent death by the signal.
fn quiet_on_closed_pipe() {
    QUIET_ON_CLOSED_PIPE.store(true, Ordering::Relaxed);
}

/// Set by [`quiet_on_closed_pipe`]: a client command runs.
static QUIET_ON_CLOSED_PIPE: AtomicBool = AtomicBool::new(false);

/// What `println!` and `print!` of this module's files do: `args` to standard output. A
/// failed write panics as with std's, except a closed pipe under a client command
/// ([`quiet_on_closed_pipe`]): the process ends there, with exit code 0 and no message.
pub(crate) fn print_out(args: std::fmt::Arguments<'_>) {
    let result = std::io::stdout().lock().write_fmt(args);
    if let Err(e) = result {
        if quiet_exit(&e, QUIET_ON_CLOSED_PIPE.load(Ordering::Relaxed)) {
            std::process::exit(0);
        }
        panic!("failed printing to stdout: {e}");
    }
}

/// Whether a failed write to standard output ends the process quietly: a closed pipe, when
/// a client command runs (`client`).
fn quiet_exit(e: &std::io::Error, client: bool) -> bool {
    client && e.kind() == std::io::ErrorKind::BrokenPipe
}

/// The one-thread runtime a client subcommand runs on.
fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)
}

/// Calls `gone` on a thread of its own once the process that started this one has gone
/// (`--exit-with-parent`: quickstart's proxy and dashboard).
pub(crate) fn when_parent_gone(gone: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
    let parent = nix::unistd::getppid();
    std::thread::Builder::new()
        .name("parent-watch".into())
        .spawn(move || {
            while nix::unistd::getppid() == parent {
                std::thread::sleep(std::time::Duration::from_millis(500));
            }
            gone();
        })
        .map(drop)
}

/// Success, or the error printed as `oxbus: error: …` and exit code 1.
fn exit(result: Result<(), CliError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// Prints `oxbus: error: {e}`; exit code 1.
fn fail(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("oxbus: error: {e}");
    ExitCode::FAILURE
}

#[cfg(test)]
mod tests {
    use std::io::{Error, ErrorKind};

    #[test]
    fn only_a_closed_pipe_under_a_client_command_ends_quietly() {
        let closed = Error::from(ErrorKind::BrokenPipe);
        assert!(super::quiet_exit(&closed, true));
        // The server and its kin keep std's behaviour: a panic that says why.
        assert!(!super::quiet_exit(&closed, false));
        assert!(!super::quiet_exit(
            &Error::from(ErrorKind::StorageFull),
            true
        ));
        assert!(!super::quiet_exit(&Error::other("disk"), true));
    }
}
