//! The `oxbus` command line: every subcommand, one file per subcommand or group. `main.rs`
//! only parses ([`args`]) and calls [`run`]. The admin subcommands talk to a running server
//! only through its admin API ([`client`]); `server` and `quickstart` start one
//! ([`server::serve`], the one call into the server's run); `quickstart`, `proxy` and
//! `systemd install` also write the files a server or proxy reads. Nothing here reaches
//! into a running server's state. Errors are [`CliError`], printed once, here.

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

use std::process::ExitCode;

use args::{ClusterAction, Command, Output};
pub use error::CliError;

/// Runs one subcommand; returns the process's exit code.
pub fn run(command: Command) -> ExitCode {
    match command {
        Command::Server { config } => server::command(&config),
        Command::Quickstart {
            dir,
            port,
            workers,
            no_proxy,
            no_dashboard,
        } => quickstart::command(&dir, port, workers, no_proxy, no_dashboard),
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
        } => match runtime() {
            // Its own exit code: 2 when objects were left out (docs/ZATO_IMPORT.md).
            Ok(rt) => zato_import::command(&rt, &a).unwrap_or_else(|e| fail(&e)),
            Err(e) => fail(&e),
        },
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

/// A client command whose reader went away (`oxbus services | head -3`) ends as any Unix
/// tool does, by SIGPIPE, instead of panicking in `println!` with a backtrace. Only the
/// client commands: the server keeps Rust's default of ignoring SIGPIPE.
#[allow(unsafe_code)]
fn quiet_on_closed_pipe() {
    use nix::sys::signal::{SigHandler, Signal, signal};
    // SAFETY: SIG_DFL installs no handler of ours, and this runs before any other thread
    // of the process exists (the client runtime is built after it).
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
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
