//! The Oxbus dashboard (`oxbus dashboard`): a web console for one cluster. It talks to the
//! servers only through their admin API, with each signed-in user's own API token
//! ([`users`]), renders pages on the server ([`pages`], maud templates) and uses htmx
//! (vendored, [`assets`]) for search, in-place answers and live tables (server-sent events).
//! docs/DASHBOARD.md tells how to run it and what each page does.

pub mod api;
pub mod assets;
pub mod http;
pub mod pages;
pub mod sampler;
pub mod session;
pub mod settings;
pub mod users;

use std::sync::Arc;

pub use settings::Settings;

/// What every request shares.
#[derive(Debug)]
pub struct App {
    pub settings: Settings,
    pub sessions: session::Sessions,
    pub limit: session::SignInLimit,
    /// Concurrent sign-in checks (argon2 is slow on purpose: two at a time at most).
    pub argon: tokio::sync::Semaphore,
    /// The figures of the last hour, per server (from each server's /metrics).
    pub sampler: Arc<sampler::Sampler>,
}

impl App {
    pub fn new(settings: Settings) -> App {
        let sampler = Arc::new(sampler::Sampler::new(
            settings.servers.clone(),
            settings.metrics_token.clone(),
        ));
        App {
            sessions: session::Sessions::new(settings.session_idle, settings.session_max),
            limit: session::SignInLimit::default(),
            argon: tokio::sync::Semaphore::new(2),
            sampler,
            settings,
        }
    }
}

/// Binds `settings.listen` and serves until the process ends; `ready` is called with the
/// bound address once the dashboard accepts connections.
pub async fn run(
    settings: Settings,
    ready: impl FnOnce(std::net::SocketAddr),
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(settings.listen).await?;
    let addr = listener.local_addr()?;
    let app = Arc::new(App::new(settings));
    tokio::spawn(app.sampler.clone().run());
    ready(addr);
    http::serve(app, listener).await;
    Ok(())
}
