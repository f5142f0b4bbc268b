//! `oxbus token create|list|revoke`: named admin API tokens through the admin API
//! (docs/SECURITY.md, "Admin identities and roles"). A created token is printed once, alone
//! on standard output (so `TOKEN=$(oxbus token create ci --role deployer)` keeps it), with a
//! line on standard error saying it will not be shown again.

use super::CliError;
use super::args::{Output, TokenAction};
use super::client::{call, percent_encode};
use super::format::{print, utc};
use tokio::runtime::Runtime;

/// Runs one `token` subcommand.
pub fn command(rt: &Runtime, action: &TokenAction) -> Result<(), CliError> {
    match action {
        TokenAction::Create {
            to,
            name,
            role,
            output,
        } => {
            let body = serde_json::json!({"name": name, "role": role});
            let answer = call(rt, to, "POST", "/v1/tokens", body.to_string().into_bytes())?;
            print(answer, *output, |d| {
                eprintln!(
                    "token {name} (role {}) created; it is shown this once and never again: \
                     keep it now (e.g. in your CI's secret store)",
                    d["role"].as_str().unwrap_or(role)
                );
                println!("{}", d["token"].as_str().unwrap_or(""));
            });
        }
        TokenAction::List { to, output } => {
            let answer = call(rt, to, "GET", "/v1/tokens", Vec::new())?;
            print(answer, *output, |d| {
                for t in d["tokens"].as_array().into_iter().flatten() {
                    let last = t["last_used_at_ms"]
                        .as_i64()
                        .map_or_else(|| "never".to_owned(), utc);
                    println!(
                        "{:<30} {:<8}  created {} by {}, last used {last}",
                        t["name"].as_str().unwrap_or(""),
                        t["role"].as_str().unwrap_or(""),
                        utc(t["created_at_ms"].as_i64().unwrap_or(0)),
                        t["created_by"].as_str().unwrap_or(""),
                    );
                }
            });
        }
        TokenAction::Revoke { to, name } => {
            let path = format!("/v1/tokens/{}", percent_encode(name));
            let answer = call(rt, to, "DELETE", &path, Vec::new())?;
            print(answer, Output::Text, |_| {
                println!("token {name} revoked: refused from now on, on every server")
            });
        }
    }
    Ok(())
}
