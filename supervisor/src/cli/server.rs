//! `oxbus server --config FILE`, and the part of `oxbus quickstart` it shares: the log
//! subscriber, the runtime, then the server itself. The server's run is reached through
//! [`serve`] only (one call site); this file holds no server state.

use std::path::Path;
use std::process::ExitCode;

use super::{CliError, fail};
use crate::config::Settings;

/// `oxbus server`: settings that do not load exit with EX_CONFIG (78): restarting will not
/// help (the unit has RestartPreventExitStatus=78).
pub fn command(config: &Path, debug: Option<u16>) -> ExitCode {
    // Read whole first: a variable that is not UTF-8 stops the command before anything else.
    let mut env: Vec<(String, String)> = std::env::vars().collect();
    // `--debug[=PORT]` is `[debug] port`, checked with the other settings.
    if let Some(port) = debug {
        env.push(("OXBUS_DEBUG_PORT".into(), port.to_string()));
    }
    match Settings::load(config, env) {
        Ok(s) => serve(s, None, Vec::new()),
        Err(e) => {
            eprintln!("oxbus: error: {e}");
            ExitCode::from(78)
        }
    }
}

/// Runs the server in the foreground until it stops; its exit code is the process's.
/// `banner` is printed once logging is up; `companions` (quickstart's proxy and dashboard)
/// are stopped after the server.
pub fn serve(
    settings: Settings,
    banner: Option<String>,
    companions: Vec<std::process::Child>,
) -> ExitCode {
    let json_logs = settings.server.log_format == crate::config::LogFormat::Json;
    if let Err(e) =
        super::logging::init_logging(&settings.server.log_level, settings.server.log_format)
    {
        return fail(&CliError::from(e));
    }
    if let Some(b) = banner {
        println!("{b}");
    }
    // One I/O thread (the default on small machines) runs everything on the main thread:
    // no cross-thread wake-ups between the HTTP tasks and the worker connections.
    let rt = if settings.io_threads() == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(settings.io_threads())
            .enable_all()
            .build()
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => return fail(&CliError::Runtime(e)),
    };
    // Debug mode's interpreter and port, before anything starts: debugpy missing there is a
    // setup problem that a restart does not fix (EX_CONFIG, as bad settings).
    if let Some(port) = settings.debug_port() {
        use crate::lifecycle::python::{DebuggerError, check_debugger};
        if let Err(e) = rt.block_on(check_debugger(&settings.server.python, port)) {
            tracing::error!("{e}");
            if !json_logs {
                eprintln!("oxbus: error: {e}");
            }
            stop_companions(companions);
            return match e {
                DebuggerError::Setup(_) => ExitCode::from(78),
                DebuggerError::Unavailable(_) => ExitCode::FAILURE,
            };
        }
    }
    let result = rt.block_on(crate::boot::run(settings));
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    stop_companions(companions);
    match result {
        Ok(o) => ExitCode::from(o.exit_code as u8),
        Err(e) => {
            tracing::error!("{e}");
            if json_logs {
                // Logged above as JSON; a plain line would break the stream for a shipper.
                return ExitCode::FAILURE;
            }
            fail(&e)
        }
    }
}

/// Stops quickstart's proxy and dashboard (SIGTERM, then waits for each).
fn stop_companions(companions: Vec<std::process::Child>) {
    for mut child in companions {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = child.wait();
    }
}
