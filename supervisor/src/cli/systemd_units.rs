//! `oxbus systemd install`: writes the systemd units of `systemd/` (embedded in the binary,
//! with `@PLACEHOLDERS@`) for one machine — the binary, the config directory, the user and
//! the state directory's name — and says what to run next. It never runs `systemctl`.

use std::path::{Path, PathBuf};

use super::CliError;
use super::args::SystemdAction;

/// Why the units were not written: a setting the units cannot hold, or the file system.
#[derive(Debug, thiserror::Error)]
pub enum UnitError {
    /// A path option that is not UTF-8.
    #[error("{opt} {}: not valid UTF-8", path.display())]
    NotUtf8 { opt: &'static str, path: PathBuf },
    /// A relative path option.
    #[error("{opt} {path}: must be an absolute path")]
    NotAbsolute { opt: &'static str, path: String },
    /// A path option with a character unit files read as syntax.
    #[error("{opt} {path}: the character {c:?} cannot go in a unit file's path here")]
    Character {
        opt: &'static str,
        path: String,
        c: char,
    },
    /// A path option with a `..` segment.
    #[error("{opt} {path}: no `..` please")]
    DotDot { opt: &'static str, path: String },
    /// `--user` that is not a conservative user name.
    #[error(
        "--user {0:?}: a user name is 1 to 32 of a-z, 0-9, `_`, `-`, starting with a letter or `_` (e.g. oxbus)"
    )]
    User(String),
    /// `--state-dir` that is not one directory name.
    #[error(
        "--state-dir {0:?}: a directory name (a-z, A-Z, 0-9, `.`, `_`, `-`; not a path), e.g. oxbus"
    )]
    StateDir(String),
    /// A template placeholder no setting fills (a template out of step with this file).
    #[error("{0}: a placeholder is left unfilled")]
    Unfilled(&'static str),
    /// The unit directory could not be created.
    #[error("cannot create {}: {source}", path.display())]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A unit file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// `oxbus systemd install`: writes the units (or prints them with `--dry-run`) and says
/// what to run next.
pub fn command(action: &SystemdAction) -> Result<(), CliError> {
    let SystemdAction::Install {
        unit_dir,
        bin,
        config_dir,
        state_dir,
        user,
        dry_run,
    } = action;
    let bin = match bin {
        Some(b) => b.clone(),
        None => std::env::current_exe().map_err(CliError::CurrentExe)?,
    };
    let install = Install {
        unit_dir: unit_dir.clone(),
        bin,
        config_dir: config_dir.clone(),
        state_dir: state_dir.clone(),
        user: user.clone(),
    };
    if *dry_run {
        for u in install.render()? {
            println!("# would write {}\n{}", u.path.display(), u.text);
        }
        return Ok(());
    }
    for u in install.write()? {
        println!("wrote {}", u.path.display());
    }
    print!("{}", install.next_steps());
    Ok(())
}

/// The templates, as in the source tree's `systemd/` directory.
pub const TEMPLATES: &[(&str, &str)] = &[
    (
        "oxbus@.service",
        include_str!("../../../systemd/oxbus@.service"),
    ),
    (
        "oxbus-proxy.service",
        include_str!("../../../systemd/oxbus-proxy.service"),
    ),
    (
        "oxbus-dashboard.service",
        include_str!("../../../systemd/oxbus-dashboard.service"),
    ),
    (
        "oxbus.target",
        include_str!("../../../systemd/oxbus.target"),
    ),
];

/// Where and how the units run.
#[derive(Debug, Clone)]
pub struct Install {
    /// Where the unit files go (`/etc/systemd/system`).
    pub unit_dir: PathBuf,
    /// The `oxbus` binary the units run.
    pub bin: PathBuf,
    /// Holds `NAME/server.toml` (+ `NAME/secret.key`) per server, and `proxy.toml`.
    pub config_dir: PathBuf,
    /// The name of the state, runtime and cache directories (`/var/lib/NAME/…`).
    pub state_dir: String,
    /// The user (and group) the units run as.
    pub user: String,
}

/// One unit file to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitFile {
    pub path: PathBuf,
    pub text: String,
}

impl Install {
    /// Checks the settings; the message names the option and says what is expected.
    pub fn check(&self) -> Result<(), UnitError> {
        for (opt, p) in [
            ("--unit-dir", &self.unit_dir),
            ("--bin", &self.bin),
            ("--config-dir", &self.config_dir),
        ] {
            let s = p.to_str().ok_or_else(|| UnitError::NotUtf8 {
                opt,
                path: p.clone(),
            })?;
            if !p.is_absolute() {
                return Err(UnitError::NotAbsolute {
                    opt,
                    path: s.to_owned(),
                });
            }
            // Unit files split command lines on whitespace and read `%` and `$` as
            // specifiers and variables, `\` as an escape, quotes as quoting, `;` as a
            // separator: refuse rather than quote.
            if let Some(c) = s
                .chars()
                .find(|c| c.is_whitespace() || c.is_control() || "%$\\\"';".contains(*c))
            {
                return Err(UnitError::Character {
                    opt,
                    path: s.to_owned(),
                    c,
                });
            }
            if s.split('/').any(|seg| seg == "..") {
                return Err(UnitError::DotDot {
                    opt,
                    path: s.to_owned(),
                });
            }
        }
        if !valid_user(&self.user) {
            return Err(UnitError::User(self.user.clone()));
        }
        let st = &self.state_dir;
        if st.is_empty()
            || st.len() > 64
            || st.starts_with(['.', '-'])
            || !st
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(UnitError::StateDir(st.clone()));
        }
        Ok(())
    }

    /// The unit files, filled in.
    pub fn render(&self) -> Result<Vec<UnitFile>, UnitError> {
        self.check()?;
        let path = |p: &Path| {
            p.to_str()
                .unwrap_or_default()
                .trim_end_matches('/')
                .to_owned()
        };
        let bin = path(&self.bin);
        let config_dir = path(&self.config_dir);
        let subst = [
            ("@OXBUS@", bin.as_str()),
            ("@CONFIG_DIR@", config_dir.as_str()),
            ("@USER@", self.user.as_str()),
            ("@GROUP@", self.user.as_str()),
            ("@STATE@", self.state_dir.as_str()),
        ];
        TEMPLATES
            .iter()
            .map(|(name, template)| {
                let mut text = (*template).to_owned();
                for (k, v) in subst {
                    text = text.replace(k, v);
                }
                if has_placeholder(&text) {
                    return Err(UnitError::Unfilled(name));
                }
                Ok(UnitFile {
                    path: self.unit_dir.join(name),
                    text,
                })
            })
            .collect()
    }

    /// Writes the units (creating `unit_dir` if needed); returns what was written.
    pub fn write(&self) -> Result<Vec<UnitFile>, UnitError> {
        let units = self.render()?;
        std::fs::create_dir_all(&self.unit_dir).map_err(|source| UnitError::Create {
            path: self.unit_dir.clone(),
            source,
        })?;
        for u in &units {
            // Written whole, then renamed: systemd never reads half a file.
            let tmp = u.path.with_extension("oxbus-tmp");
            std::fs::write(&tmp, &u.text)
                .and_then(|()| std::fs::rename(&tmp, &u.path))
                .map_err(|source| {
                    let _ = std::fs::remove_file(&tmp);
                    UnitError::Write {
                        path: u.path.clone(),
                        source,
                    }
                })?;
        }
        Ok(units)
    }

    /// What to do after the units are written.
    pub fn next_steps(&self) -> String {
        let c = self.config_dir.display();
        let st = &self.state_dir;
        let u = &self.user;
        format!(
            "Next (as root; docs/SYSTEMD.md has the details):\n  \
             useradd --system --home-dir /var/lib/{st} --shell /usr/sbin/nologin {u}   # if the user does not exist\n  \
             mkdir -p {c}/NAME && $EDITOR {c}/NAME/server.toml   # store.url, store.snapshot_file, admin.token_file under /var/lib/{st}/NAME\n  \
             (umask 077; openssl rand -hex 32 > {c}/NAME/secret.key)   # the secrets key, passed as the credential oxbus-secret-key\n  \
             systemctl daemon-reload\n  \
             systemctl enable --now oxbus@NAME          # one per server NAME\n  \
             systemctl enable --now oxbus-proxy         # if this machine runs the proxy ({c}/proxy.toml)\n  \
             systemctl enable --now oxbus-dashboard     # if this machine runs the dashboard ({c}/dashboard.toml; docs/DASHBOARD.md)\n  \
             systemctl enable oxbus.target\n"
        )
    }
}

/// `@UPPER_CASE@`, as the templates' placeholders are.
fn has_placeholder(text: &str) -> bool {
    text.match_indices('@').any(|(i, _)| {
        let rest = &text[i + 1..];
        let name = rest
            .find(|c: char| !(c.is_ascii_uppercase() || c == '_'))
            .map_or(rest, |end| &rest[..end]);
        !name.is_empty() && rest[name.len()..].starts_with('@')
    })
}

/// A conservative user name (what `useradd` accepts without `--badname`).
fn valid_user(u: &str) -> bool {
    let mut chars = u.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && u.len() <= 32
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn install() -> Install {
        Install {
            unit_dir: "/etc/systemd/system".into(),
            bin: "/usr/local/bin/oxbus".into(),
            config_dir: "/etc/oxbus".into(),
            state_dir: "oxbus".into(),
            user: "oxbus".into(),
        }
    }

    fn unit<'a>(units: &'a [UnitFile], name: &str) -> &'a str {
        &units
            .iter()
            .find(|u| u.path.file_name().unwrap() == name)
            .unwrap()
            .text
    }

    #[test]
    fn renders_every_placeholder() {
        let mut i = install();
        i.config_dir = "/srv/oxbus-conf/".into();
        i.user = "svc_bus".into();
        i.state_dir = "bus".into();
        let units = i.render().unwrap();
        assert_eq!(units.len(), 4);
        for u in &units {
            assert!(!has_placeholder(&u.text), "{}", u.text);
            assert!(u.path.starts_with("/etc/systemd/system"));
        }
        let server = unit(&units, "oxbus@.service");
        for line in [
            "ExecStart=/usr/local/bin/oxbus server --config /srv/oxbus-conf/%i/server.toml",
            "ExecReload=/usr/local/bin/oxbus reload --pid $MAINPID --timeout 90",
            "LoadCredential=oxbus-secret-key:/srv/oxbus-conf/%i/secret.key",
            "User=svc_bus",
            "Group=svc_bus",
            "StateDirectory=bus/%i",
            "RuntimeDirectory=bus/%i",
            "Type=notify",
            "NotifyAccess=main",
            "RestartPreventExitStatus=78",
            "ProtectSystem=strict",
        ] {
            assert!(
                server.lines().any(|l| l == line),
                "no {line:?} in\n{server}"
            );
        }
        assert!(
            !server
                .lines()
                .any(|l| l.starts_with("MemoryDenyWriteExecute")),
            "MemoryDenyWriteExecute breaks cffi callbacks"
        );
        let proxy = unit(&units, "oxbus-proxy.service");
        assert!(proxy.contains(
            "ExecStart=/usr/local/bin/oxbus proxy --config /srv/oxbus-conf/proxy.toml\n"
        ));
        assert!(proxy.contains("RuntimeDirectory=bus-proxy\n"));
        let dashboard = unit(&units, "oxbus-dashboard.service");
        assert!(dashboard.contains(
            "ExecStart=/usr/local/bin/oxbus dashboard --config /srv/oxbus-conf/dashboard.toml\n"
        ));
        assert!(dashboard.contains("User=svc_bus\n"));
    }

    #[test]
    fn refuses_bad_input() {
        type Change = fn(&mut Install);
        let cases: Vec<(Change, &str)> = vec![
            (
                |i| i.unit_dir = "units".into(),
                "--unit-dir units: must be an absolute path",
            ),
            (
                |i| i.bin = "./oxbus".into(),
                "--bin ./oxbus: must be an absolute path",
            ),
            (
                |i| i.config_dir = "/etc/ox bus".into(),
                "--config-dir /etc/ox bus: the character ' '",
            ),
            (|i| i.bin = "/opt/%i/oxbus".into(), "the character '%'"),
            (|i| i.config_dir = "/etc/../tmp".into(), "no `..`"),
            (
                |i| i.user = "root;rm".into(),
                "--user \"root;rm\": a user name",
            ),
            (|i| i.user = "Oxbus".into(), "--user \"Oxbus\""),
            (|i| i.user = "".into(), "--user \"\""),
            (|i| i.user = "a".repeat(33), "a user name is 1 to 32"),
            (
                |i| i.state_dir = "/var/lib/oxbus".into(),
                "--state-dir \"/var/lib/oxbus\": a directory name",
            ),
            (|i| i.state_dir = "..".into(), "--state-dir \"..\""),
        ];
        for (change, want) in cases {
            let mut i = install();
            change(&mut i);
            let err = i.render().unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} does not contain {want:?}");
        }
        let mut ok = install();
        ok.user = "_oxbus-1".into();
        ok.render().unwrap();
    }

    #[test]
    fn writes_the_files_and_overwrites_them() {
        let dir = std::env::temp_dir().join(format!("oxbus-units-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut i = install();
        i.unit_dir = dir.join("nested/system");
        let written = i.write().unwrap();
        for u in &written {
            assert_eq!(std::fs::read_to_string(&u.path).unwrap(), u.text);
        }
        i.user = "other".into();
        i.write().unwrap();
        let text = std::fs::read_to_string(i.unit_dir.join("oxbus@.service")).unwrap();
        assert!(text.contains("\nUser=other\n"));
        let names: Vec<_> = std::fs::read_dir(&i.unit_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), TEMPLATES.len(), "{names:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn next_steps_name_systemctl() {
        let s = install().next_steps();
        assert!(s.contains("systemctl daemon-reload"));
        assert!(s.contains("systemctl enable --now oxbus@NAME"));
    }
}
