//! `oxbus dashboard --config FILE`: the web console (the `oxbus-dashboard` crate), and its
//! users: `oxbus dashboard user add|remove|list`. A user is an admin API token
//! (`dashboard.<name>`, created and revoked through the admin API with `--env` or
//! `--server`/`--token`, an admin's) kept sealed under the user's password in the dashboard's
//! users file (docs/DASHBOARD.md).

use std::io::Read;
use std::path::Path;

use super::CliError;
use super::args::{DashboardUserAction, ServerArgs};
use oxbus_dashboard::users::{self, Role, User, Users};

fn settings(config: &Path) -> Result<oxbus_dashboard::Settings, CliError> {
    oxbus_dashboard::Settings::load(config).map_err(|e| CliError::Dashboard(e.to_string()))
}

/// Runs the dashboard in the foreground. `exit_with_parent`: stop when the process that
/// started it is gone (quickstart).
pub fn run(config: &Path, exit_with_parent: bool) -> Result<(), CliError> {
    let s = settings(config)?;
    let level = std::env::var("OXBUS_DASHBOARD_LOG").unwrap_or_else(|_| "info".into());
    super::logging::init_logging(&level, crate::config::LogFormat::Text)?;
    if exit_with_parent {
        super::when_parent_gone(|| std::process::exit(0))?;
    }
    let users = Users::load(&s.users_file).map_err(|e| CliError::Dashboard(e.to_string()))?;
    if users.users.is_empty() {
        tracing::warn!(
            file = %s.users_file.display(),
            "the dashboard has no user yet: add one with `oxbus dashboard user add NAME --role admin --config …`"
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(CliError::Runtime)?;
    rt.block_on(async move {
        let servers = s.servers.join(", ");
        let scheme = if s.tls.is_some() { "https" } else { "http" };
        oxbus_dashboard::run(s, |addr| {
            tracing::info!(%addr, servers = %servers, "dashboard listening");
            println!("oxbus dashboard at {scheme}://{addr}");
        })
        .await
    })
    .map_err(|e| CliError::Dashboard(format!("the dashboard cannot start: {e}")))
}

/// The password to give a new user: standard input's first line, or a new random one.
fn password(from_stdin: bool) -> Result<(String, bool), CliError> {
    if !from_stdin {
        return Ok((users::generate_password(), true));
    }
    let mut text = String::new();
    std::io::stdin().read_to_string(&mut text)?;
    let pw = text.lines().next().unwrap_or("").to_owned();
    if pw.chars().count() < users::MIN_PASSWORD {
        return Err(CliError::Dashboard(format!(
            "the password must have at least {} characters",
            users::MIN_PASSWORD
        )));
    }
    Ok((pw, false))
}

/// `oxbus dashboard user …`
pub fn user(rt: &tokio::runtime::Runtime, action: &DashboardUserAction) -> Result<(), CliError> {
    match action {
        DashboardUserAction::Add {
            config,
            to,
            name,
            role,
            password_stdin,
            replace,
        } => add(rt, config, to, name, role, *password_stdin, *replace),
        DashboardUserAction::Remove { config, to, name } => remove(rt, config, to, name),
        DashboardUserAction::List { config } => {
            let s = settings(config)?;
            let list =
                Users::load(&s.users_file).map_err(|e| CliError::Dashboard(e.to_string()))?;
            if list.users.is_empty() {
                println!("no users in {}", s.users_file.display());
            }
            for u in &list.users {
                println!("{}\t{}", u.name, u.role.as_str());
            }
            Ok(())
        }
    }
}

fn token_name(user: &str) -> String {
    format!("{}{user}", users::TOKEN_PREFIX)
}

fn add(
    rt: &tokio::runtime::Runtime,
    config: &Path,
    to: &ServerArgs,
    name: &str,
    role: &str,
    password_stdin: bool,
    replace: bool,
) -> Result<(), CliError> {
    users::validate_name(name).map_err(CliError::Dashboard)?;
    let role = Role::parse(role).ok_or_else(|| {
        CliError::Dashboard(format!("{role:?} is not a role: admin, deployer or viewer"))
    })?;
    let s = settings(config)?;
    let list = Users::load(&s.users_file).map_err(|e| CliError::Dashboard(e.to_string()))?;
    if list.get(name).is_some() && !replace {
        return Err(CliError::Dashboard(format!(
            "user {name} exists already in {} (--replace gives it a new password, role and token)",
            s.users_file.display()
        )));
    }
    let (pw, generated) = password(password_stdin)?;
    let target = super::client::target(to)?;
    rt.block_on(add_user(&target, &s.users_file, name, role, &pw, replace))?;
    let tname = token_name(name);
    println!(
        "dashboard user {name} ({}) added: admin API token {tname}",
        role.as_str()
    );
    if generated {
        println!("password: {pw}");
    }
    Ok(())
}

/// Creates user `name`'s admin API token through `target` (first revoking one of that name
/// when `replace`) and writes the user, its token sealed under `pw`, into `users_file`.
pub async fn add_user(
    target: &super::client::Target,
    users_file: &Path,
    name: &str,
    role: Role,
    pw: &str,
    replace: bool,
) -> Result<(), CliError> {
    let tname = token_name(name);
    if replace {
        // A token left from before (or another user's of the same name) is replaced.
        let (status, _) = target
            .request("DELETE", &format!("/v1/tokens/{tname}"), Vec::new())
            .await?;
        if status != 200 && status != 404 {
            return Err(CliError::Dashboard(format!(
                "revoking the old token {tname} answered {status}"
            )));
        }
    }
    let body = serde_json::json!({"name": tname, "role": role.as_str()}).to_string();
    let doc = target
        .call_json("POST", "/v1/tokens", body.into_bytes())
        .await?;
    let token = doc["token"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| CliError::Dashboard("the server's answer carries no token".into()))?;
    let (n, p, file) = (name.to_owned(), pw.to_owned(), users_file.to_owned());
    let written = tokio::task::spawn_blocking(move || {
        let user = User::new(&n, role, &p, &token)?;
        Users::update(&file, |list| list.put(user))
    })
    .await
    .map_err(|e| CliError::Dashboard(e.to_string()))
    .and_then(|r| r.map_err(|e| CliError::Dashboard(e.to_string())));
    if let Err(e) = written {
        // No user holds the new token: it goes, rather than stay valid with no owner.
        let _ = target
            .request("DELETE", &format!("/v1/tokens/{tname}"), Vec::new())
            .await;
        return Err(CliError::Dashboard(format!(
            "{e} (the new token {tname} was revoked again)"
        )));
    }
    Ok(())
}

fn remove(
    rt: &tokio::runtime::Runtime,
    config: &Path,
    to: &ServerArgs,
    name: &str,
) -> Result<(), CliError> {
    users::validate_name(name).map_err(CliError::Dashboard)?;
    let s = settings(config)?;
    let target = super::client::target(to)?;
    let tname = token_name(name);
    let status = rt.block_on(async {
        target
            .request("DELETE", &format!("/v1/tokens/{tname}"), Vec::new())
            .await
            .map(|(s, _)| s)
    })?;
    if status != 200 && status != 404 {
        return Err(CliError::Dashboard(format!(
            "revoking the token {tname} answered {status}: the user is kept"
        )));
    }
    let had = Users::update(&s.users_file, |list| {
        let had = list.get(name).is_some();
        list.users.retain(|u| u.name != name);
        had
    })
    .map_err(|e| CliError::Dashboard(e.to_string()))?;
    match (had, status) {
        (false, 404) => Err(CliError::Dashboard(format!("no dashboard user {name}"))),
        _ => {
            println!("dashboard user {name} removed; token {tname} revoked");
            Ok(())
        }
    }
}
