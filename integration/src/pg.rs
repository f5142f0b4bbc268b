//! PostgreSQL for the tests: [`PgDatabase`] (a throw-away database on the machine's shared
//! server) and [`PrivatePg`] (a server of a test's own, which it may stop and restart), and
//! the port such a server listens on. Knows nothing of the `oxbus` server under test.

use crate::next_id;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// A free port below the kernel's ephemeral range, for a listener that stops and must get
/// its port back (a private PostgreSQL restarted in an outage test): a port from the
/// ephemeral range may meanwhile become the local port of some outgoing connection or of
/// another test's `bind(0)`, and the restart then fails with "address already in use".
pub fn port_outside_ephemeral_range() -> u16 {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| {
            r.split_whitespace()
                .next()
                .and_then(|p| p.parse::<u16>().ok())
        })
        .unwrap_or(32768);
    let (from, to) = (10_000u16, low.saturating_sub(1));
    assert!(
        to > from,
        "the ephemeral port range starts at {low}: no room below it"
    );
    let span = u32::from(to - from);
    let mut seed = std::process::id().wrapping_mul(2_654_435_761) ^ next_id().wrapping_mul(40_503);
    for _ in 0..1000 {
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let port = from + (seed % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {from}..{to}");
}

/// A throw-away PostgreSQL database for one test.
#[derive(Debug)]
pub struct PgDatabase {
    pub name: String,
    pub url: String,
    admin: String,
}

impl PgDatabase {
    fn psql(admin: &str, sql: &str) {
        let out = Command::new("psql")
            .args([admin, "-v", "ON_ERROR_STOP=1", "-q", "-c", sql])
            .output()
            .expect("psql must be installed for the PostgreSQL tests");
        assert!(
            out.status.success(),
            "psql {sql:?} against {admin} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn create() -> PgDatabase {
        let admin = std::env::var("OXBUS_TEST_PG")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let name = format!("oxbus_it_{}_{}", std::process::id(), next_id());
        Self::psql(&admin, &format!("CREATE DATABASE {name}"));
        let url = format!(
            "{}/{name}",
            &admin[..admin.rfind('/').expect("a database in the URL")]
        );
        PgDatabase { name, url, admin }
    }
}

impl PgDatabase {
    /// Runs `sql` in this database as the administrator (the machine's `postgres` user).
    pub fn sql(&self, sql: &str) {
        let admin = &self.admin[..self.admin.rfind('/').expect("a database in the URL")];
        Self::psql(&format!("{admin}/{}", self.name), sql);
    }

    /// Runs `sql` in the administrator's database (roles, databases).
    pub fn admin_sql(sql: &str) {
        let admin = std::env::var("OXBUS_TEST_PG")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        Self::psql(&admin, sql);
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let _ = Command::new("psql")
            .args([self.admin.as_str(), "-q", "-c", sql.as_str()])
            .output();
    }
}

/// A PostgreSQL server of a test's own (initdb + pg_ctl into a temp dir, on a free port), so
/// that a test may stop and restart it; the machine's shared server is never touched. Runs
/// as the `postgres` user when the tests run as root (initdb refuses root). Stopped and
/// deleted on drop.
#[derive(Debug)]
pub struct PrivatePg {
    dir: PathBuf,
    pub port: u16,
}

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// Whether the tests run as root (the owner of /proc/self is the effective uid).
fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

fn as_postgres(program: &str, args: &[&str]) -> std::process::Output {
    let root = running_as_root();
    let mut cmd = if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", program]);
        c
    } else {
        Command::new(program)
    };
    cmd.args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"))
}

impl PrivatePg {
    pub fn start() -> PrivatePg {
        let n = next_id();
        let dir = std::env::temp_dir().join(format!("oxbus-pg-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        if running_as_root() {
            let out = Command::new("chown")
                .args(["postgres:postgres", dir.to_str().unwrap()])
                .output()
                .unwrap();
            assert!(out.status.success(), "chown: {out:?}");
        }
        let data = dir.join("data");
        let out = as_postgres(
            &format!("{PG_BIN}/initdb"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = port_outside_ephemeral_range();
        let pg = PrivatePg { dir, port };
        pg.start_again();
        let out = Command::new("psql")
            .args([
                &format!("postgres://postgres@127.0.0.1:{port}/postgres"),
                "-q",
                "-c",
                "CREATE DATABASE oxbus",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "createdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        pg
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/oxbus", self.port)
    }

    /// Starts it (again), waiting until it accepts connections.
    pub fn start_again(&self) {
        let data = self.dir.join("data");
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("log");
        let out = as_postgres(
            &format!("{PG_BIN}/pg_ctl"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-o",
                &opts,
                "-l",
                log.to_str().unwrap(),
                "-w",
                "start",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl start: {} {}",
            String::from_utf8_lossy(&out.stdout),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    fn pg_ctl_stop(&self) -> std::process::Output {
        let data = self.dir.join("data");
        as_postgres(
            &format!("{PG_BIN}/pg_ctl"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        )
    }

    /// Stops it at once (clients see their connections drop).
    pub fn stop(&self) {
        let out = self.pg_ctl_stop();
        assert!(out.status.success(), "pg_ctl stop: {out:?}");
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let _ = self.pg_ctl_stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
