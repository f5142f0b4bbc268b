//! The dashboard quickstart runs beside its server: `DIR/dashboard.toml` (rewritten at every
//! start, so it follows the server's address: the dashboard listens on the server's port + 4),
//! the dashboard process (stopped with quickstart, or by itself when quickstart dies; log in
//! `DIR/dashboard.log`) and, in a new environment, a first user `admin` (role admin) made
//! through the admin API once the server answers, its password printed and kept in
//! `DIR/dashboard-admin.password` (0600).

use std::path::Path;
use std::time::{Duration, Instant};

use super::CliError;
use super::client::Target;
use crate::config::Settings;
use oxbus_dashboard::users::{self, Role, Users};

pub const CONFIG: &str = "dashboard.toml";
pub const USERS_FILE: &str = "dashboard-users.json";
pub const PASSWORD_FILE: &str = "dashboard-admin.password";
/// The first user's name.
pub const FIRST_USER: &str = "admin";

/// Writes the settings, starts the dashboard and, when it has no users yet, a thread that
/// adds the first one; answers the process and the banner's line.
pub fn start(dir: &Path, s: &Settings) -> Result<(std::process::Child, String), CliError> {
    let port = s.server.listen.port().checked_add(4).ok_or_else(|| {
        CliError::Dashboard("the server's port leaves no room for the dashboard (+4)".into())
    })?;
    let mut admin = s.admin.listen;
    if admin.ip().is_unspecified() {
        admin.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let config = dir.join(CONFIG);
    let text = format!(
        "# The dashboard quickstart runs beside its server (`oxbus dashboard`, docs/DASHBOARD.md);\n\
         # rewritten at every start.\n[dashboard]\nlisten = \"127.0.0.1:{port}\"\n\
         servers = [\"http://{admin}\"]\nusers_file = \"{USERS_FILE}\"\n"
    );
    std::fs::write(&config, text).map_err(|source| CliError::Write {
        path: config.clone(),
        source,
    })?;
    let child = super::quickstart::spawn_companion(dir, "dashboard", &config)?;
    let users_file = dir.join(USERS_FILE);
    let pw_file = dir.join(PASSWORD_FILE);
    let has_users = Users::load(&users_file)
        .map(|u| !u.users.is_empty())
        .unwrap_or(true);
    if !has_users {
        let token_file = s.admin_token_file();
        let authority = admin.to_string();
        let pw_file2 = pw_file.clone();
        std::thread::Builder::new()
            .name("dashboard-user".into())
            .spawn(move || {
                if let Err(e) = first_user(&authority, &token_file, &users_file, &pw_file2) {
                    eprintln!("oxbus: the dashboard's first user was not made: {e}");
                }
            })?;
    }
    let password = if pw_file.is_file() || !has_users {
        format!("password in {}", pw_file.display())
    } else {
        "users: oxbus dashboard user list".to_owned()
    };
    Ok((
        child,
        format!(
            "\n  dashboard: http://127.0.0.1:{port} (user {FIRST_USER}, {password}; log {})",
            dir.join("dashboard.log").display()
        ),
    ))
}

/// Waits (up to 2 minutes) for the admin API, then adds user `admin` with a new password.
fn first_user(
    authority: &str,
    token_file: &Path,
    users_file: &Path,
    pw_file: &Path,
) -> Result<(), CliError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)?;
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(120);
        let target = loop {
            if let Ok(t) = std::fs::read_to_string(token_file) {
                let target = Target {
                    authority: authority.to_owned(),
                    token: t.trim().to_owned(),
                };
                if matches!(
                    target.request("GET", "/v1/info", Vec::new()).await,
                    Ok((200, _))
                ) {
                    break target;
                }
            }
            if Instant::now() > deadline {
                return Err(CliError::Dashboard(format!(
                    "the admin API at {authority} did not answer within 2 minutes"
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let pw = users::generate_password();
        super::dashboard_cmd::add_user(&target, users_file, FIRST_USER, Role::Admin, &pw, true)
            .await?;
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(pw_file)?;
            writeln!(f, "{pw}")?;
        }
        println!(
            "  dashboard: first user {FIRST_USER} (role admin), password {pw} (also in {})",
            pw_file.display()
        );
        Ok(())
    })
}
