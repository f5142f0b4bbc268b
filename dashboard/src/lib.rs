//! The Oxbus dashboard (`oxbus dashboard`): a web console for one cluster. It talks to the
//! servers only through their admin API, with each signed-in user's own API token
//! ([`users`]), renders pages on the server ([`pages`], maud templates) and uses htmx
//! (vendored, [`assets`]) for search, in-place answers and live tables (server-sent events).
//! docs/DASHBOARD.md tells how to run it and what each page does.

pub mod api;
pub mod assets;
pub mod figures;
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
    /// The cluster's per-service figures the services list shows, refreshed in the
    /// background (`figures::Figures`).
    pub figures: Arc<figures::Figures>,
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
            figures: Default::default(),
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
    let tls = match &settings.tls {
        Some((cert, key)) => Some(tls_acceptor(cert, key)?),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(settings.listen).await?;
    let addr = listener.local_addr()?;
    let app = Arc::new(App::new(settings));
    tokio::spawn(app.sampler.clone().run());
    ready(addr);
    http::serve(app, listener, tls).await;
    Ok(())
}

/// The TLS acceptor of a PEM certificate chain and key (TLS 1.2 and 1.3, ring).
fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> std::io::Result<tokio_rustls::TlsAcceptor> {
    let open = |p: &std::path::Path| {
        std::fs::File::open(p)
            .map(std::io::BufReader::new)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", p.display())))
    };
    let certs = rustls_pemfile::certs(&mut open(cert)?).collect::<Result<Vec<_>, _>>()?;
    if certs.is_empty() {
        return Err(std::io::Error::other(format!(
            "{}: no certificate in it",
            cert.display()
        )));
    }
    let key = rustls_pemfile::private_key(&mut open(key)?)?
        .ok_or_else(|| std::io::Error::other(format!("{}: no private key in it", key.display())))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(std::io::Error::other)?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(std::io::Error::other)?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
