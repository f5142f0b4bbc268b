//! `oxbus`: the command line. Thin on purpose: parse, load settings, run, exit.

use clap::{Parser, Subcommand};
use oxbus_supervisor::config::{MAX_WORKERS, Settings};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "oxbus",
    version,
    about = "Oxbus: integration platform — Rust server, Python services"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a server from a settings file.
    Server {
        /// The server.toml to read (OXBUS_<SECTION>_<KEY> variables override it).
        #[arg(long, short, env = "OXBUS_CONFIG")]
        config: PathBuf,
    },
    /// Create (or reuse) an environment with sample services and run it in the foreground.
    Quickstart {
        /// Environment directory; created with server.toml and services/ if missing.
        #[arg(default_value = "oxbus-quickstart")]
        dir: PathBuf,
        /// HTTP port (default 17010).
        #[arg(long)]
        port: Option<u16>,
        /// Python workers, 1..=8 (default min(CPUs, 8)).
        #[arg(long)]
        workers: Option<u32>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let env: Vec<(String, String)> = std::env::vars().collect();
    let (settings, banner) = match cli.command {
        Command::Server { config } => match Settings::load(&config, env) {
            Ok(s) => (s, None),
            Err(e) => return fail(&e.to_string()),
        },
        Command::Quickstart { dir, port, workers } => {
            if let Some(w) = workers.filter(|w| *w == 0 || *w > MAX_WORKERS) {
                return fail(&format!(
                    "--workers {w}: Oxbus runs 1 to {MAX_WORKERS} Python workers per server"
                ));
            }
            let created = match oxbus_supervisor::quickstart::ensure_env(
                &dir,
                port.unwrap_or(17010),
                workers,
            ) {
                Ok(c) => c,
                Err(e) => return fail(&format!("cannot create {}: {e}", dir.display())),
            };
            let mut env = env;
            if let Some(p) = port {
                env.push(("OXBUS_SERVER_LISTEN".into(), format!("\"127.0.0.1:{p}\"")));
                // The admin API sits next to it, as Zato's 17010 / 17011.
                env.push((
                    "OXBUS_ADMIN_LISTEN".into(),
                    format!("\"127.0.0.1:{}\"", p.wrapping_add(1)),
                ));
            }
            if let Some(w) = workers {
                env.push(("OXBUS_SERVER_WORKERS".into(), w.to_string()));
            }
            match Settings::load(&dir.join("server.toml"), env) {
                Ok(s) => {
                    let url = format!("http://{}", s.server.listen);
                    let banner = format!(
                        "{} environment in {}\n  server:  {url}\n  admin:   http://{} (bearer token in {})\n  try:     curl -s -X POST {url}/echo -H 'Content-Type: application/json' -d '{{\"hello\": \"world\"}}'\n           curl -s {url}/hello/Ann?greeting=Hi\n  stop:    Ctrl-C (SIGTERM drains gracefully)",
                        if created {
                            "Created a new"
                        } else {
                            "Using the"
                        },
                        dir.display(),
                        s.admin.listen,
                        s.admin_token_file().display(),
                    );
                    (s, Some(banner))
                }
                Err(e) => return fail(&e.to_string()),
            }
        }
    };
    if let Err(e) = oxbus_supervisor::init_logging(&settings.server.log_level) {
        return fail(&e);
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
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    let result = rt.block_on(oxbus_supervisor::server::run(settings));
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(o) => ExitCode::from(o.exit_code as u8),
        Err(e) => {
            tracing::error!("{e}");
            fail(&e.to_string())
        }
    }
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("oxbus: error: {msg}");
    ExitCode::FAILURE
}
