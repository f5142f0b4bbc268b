//! The bundled `oxbus` Python package and the runtime directory of a server.
//!
//! The package is compiled into the binary. At start the server installs it into a
//! content-addressed cache directory (see [`install_package`]) and puts that first on the
//! workers' `PYTHONPATH`, so any interpreter — the system one or a user's venv with numpy
//! and lxml — runs the worker without installing anything, and the worker always speaks the
//! same IPC protocol version as the server that started it. The private (0700) runtime
//! directory holds the IPC socket; it is removed when the server stops, and one left by a
//! server that was killed (`kill -9`, an OOM kill: no drop runs) is removed by the next
//! server that starts on the same base directory ([`remove_stale`]). A live server holds an
//! exclusive `flock` on the directory's `lock` file for its whole life (the kernel drops it
//! when the process dies, however it dies), and a directory is removed only by whoever can
//! take that lock: a pid alone cannot tell, since servers in other PID namespaces sharing
//! `/tmp` under one uid do not see each other's pids.

use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

include!(concat!(env!("OUT_DIR"), "/python_files.rs"));

/// A private directory for the IPC socket and the unpacked Python package; removed on drop
/// when the server created it.
#[derive(Debug)]
pub struct RuntimeDir {
    path: PathBuf,
    owned: bool,
    /// The `lock` file, exclusively locked for as long as this server runs (a directory it
    /// created; `None` for a configured one, which no cleanup touches). Opened close-on-exec
    /// (std's default): workers do not inherit it, so the lock ends with the server.
    _lock: Option<std::fs::File>,
}

/// The name of the lock file in a runtime directory.
const LOCK_FILE: &str = "lock";

impl RuntimeDir {
    /// Uses `configured` (created if missing) or makes a fresh directory under
    /// `$XDG_RUNTIME_DIR` or `/tmp`. The path stays short: a Unix socket path has a
    /// 108-byte limit.
    pub fn create(configured: Option<&Path>) -> io::Result<RuntimeDir> {
        if let Some(p) = configured {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(p)?;
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700))?;
            return Ok(RuntimeDir {
                path: p.to_owned(),
                owned: false,
                _lock: None,
            });
        }
        let base = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .filter(|p| p.is_dir())
            .unwrap_or_else(|| PathBuf::from("/tmp"));
        remove_stale(&base);
        let pid = std::process::id();
        for n in 0..1000u32 {
            let path = base.join(format!("oxbus.{pid}.{n}"));
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
            return match lock_dir(&path) {
                Ok(lock) => Ok(RuntimeDir {
                    path,
                    owned: true,
                    _lock: Some(lock),
                }),
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&path);
                    Err(e)
                }
            };
        }
        Err(io::Error::other("cannot create a runtime directory"))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Path of the worker IPC socket.
    pub fn socket_path(&self) -> PathBuf {
        self.path.join("ipc.sock")
    }

    /// Installs the bundled package (see [`install_package`]) with this runtime directory
    /// as the fallback location; returns the directory to put on `PYTHONPATH`.
    pub fn unpack_python(&self) -> io::Result<PathBuf> {
        install_package(cache_base().as_deref(), &self.path)
    }
}

/// Creates and locks `dir/lock` (exclusive `flock`, held while the returned file is open).
/// The file is locked under a temporary name and then renamed into place, so that a
/// `lock` file is locked from the moment it exists: a cleanup never finds it free in the
/// instant between its creation and its locking.
fn lock_dir(dir: &Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = dir.join(".lock.new");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    file.try_lock().map_err(|e| match e {
        std::fs::TryLockError::Error(e) => e,
        std::fs::TryLockError::WouldBlock => io::Error::other("the new lock file is locked"),
    })?;
    std::fs::rename(&tmp, dir.join(LOCK_FILE))?;
    Ok(file)
}

/// Removes the runtime directories (`oxbus.<pid>.<n>`) under `base` that a killed server
/// left: only directories (not symlinks) owned by this user whose `lock` file this call can
/// lock (no live server holds it) and whose process `<pid>` is not seen any more. The lock
/// decides: a server in another PID namespace is invisible to the pid check but holds its
/// lock. A directory without a `lock` file (one being created right now, or left by an
/// older version) is kept, as is one whose pid is seen alive (the server itself, or a
/// process that reused the pid): leaving a stale one is harmless, removing a live one would
/// cut a server off from its workers. Best effort: a failure is logged.
pub fn remove_stale(base: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    let me = nix::unistd::geteuid().as_raw();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("oxbus."))
            .and_then(|rest| rest.split_once('.'))
            .filter(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|(pid, _)| pid.parse::<i32>().ok())
            .filter(|pid| *pid > 0)
        else {
            continue;
        };
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if !meta.is_dir() || meta.uid() != me {
            continue;
        }
        let gone = matches!(
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
            Err(nix::errno::Errno::ESRCH)
        );
        if !gone {
            continue;
        }
        // Held (by this loop) until the directory is gone. Opened without following a
        // symlink: the lock file of a directory of ours is a plain file of ours.
        let lock = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(nix::libc::O_NOFOLLOW)
                .open(path.join(LOCK_FILE))
        };
        let Ok(lock) = lock else {
            continue;
        };
        if lock.try_lock().is_err() {
            tracing::debug!(dir = %path.display(), pid, "a runtime directory whose server is not seen here is locked: in use, kept");
            continue;
        }
        match std::fs::remove_dir_all(&path) {
            Ok(()) => {
                tracing::info!(dir = %path.display(), pid, "removed the runtime directory of a server that is gone")
            }
            Err(e) => {
                tracing::warn!(dir = %path.display(), error = %e, "cannot remove a stale runtime directory")
            }
        }
    }
}

/// Where workers keep the compiled code of deployed modules (`CodeCache` in
/// `oxbus/_deploy.py`, told by `OXBUS_CODE_CACHE`): next to the installed package, so in
/// the persistent cache directory when there is one — a deploy compiles its modules once
/// for all workers, and a restart loads bytecode instead of compiling every stored module
/// in every worker — else in the private runtime directory, for the life of the server.
pub fn code_cache_dir(python_path: &Path) -> PathBuf {
    python_path
        .parent()
        .map_or_else(|| python_path.join("code"), |p| p.join("code"))
}

/// Compiles the installed package to bytecode for `python`, once per interpreter path, so
/// that workers load it instead of compiling ~2.5k lines each at every start (Python reads
/// `.pyc` files even under `PYTHONDONTWRITEBYTECODE`; it only stops writing them, and this
/// directory is ours, not the user's source tree). Failure only costs start-up time, so it
/// is logged, not fatal.
pub async fn precompile(python: &str, root: &Path) {
    let marker = root.join(format!(".compiled-{:016x}", fnv(python.as_bytes())));
    if marker.exists() {
        return;
    }
    let pkg = root.join("oxbus");
    let run = tokio::process::Command::new(python)
        .arg("-c")
        .arg("import compileall, sys; sys.exit(0 if compileall.compile_dir(sys.argv[1], quiet=1) else 1)")
        .arg(&pkg)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(std::time::Duration::from_secs(30), run).await {
        Ok(Ok(out)) if out.status.success() => {
            let _ = std::fs::write(&marker, b"");
        }
        Ok(Ok(out)) => tracing::warn!(
            stderr = %String::from_utf8_lossy(&out.stderr).trim(),
            "could not precompile the oxbus package; workers will compile it at each start"
        ),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "could not run {python} to precompile the oxbus package")
        }
        Err(_) => tracing::warn!("precompiling the oxbus package took over 30 s; skipped"),
    }
}

/// Why debug mode cannot start (`check_debugger`).
#[derive(Debug, thiserror::Error)]
pub enum DebuggerError {
    /// debugpy is missing from the interpreter, or too old: a setup problem that restarting
    /// does not fix (the server exits with EX_CONFIG, 78).
    #[error("{0}")]
    Setup(String),
    /// The port is taken on 127.0.0.1, or the interpreter did not answer.
    #[error("{0}")]
    Unavailable(String),
}

/// The oldest debugpy debug mode runs: 1.8.1 added `listen(..., in_process_debug_adapter=)`.
const DEBUGPY_CHECK: &str = "import inspect, sys\n\
try:\n    import debugpy\n\
except ImportError as e:\n    sys.stdout.write('missing %s' % e); sys.exit(0)\n\
ok = 'in_process_debug_adapter' in inspect.signature(debugpy.listen).parameters\n\
sys.stdout.write('%s %s' % ('ok' if ok else 'old', debugpy.__version__))\n";

/// Debug mode's checks before any worker starts: `python` imports a debugpy recent enough
/// (the worker runs it from the operator's interpreter, so it must be installed there),
/// and the port is free on 127.0.0.1. Either failing stops the server with a message
/// saying what to do, rather than a worker starting without its debugger.
pub async fn check_debugger(python: &str, port: u16) -> Result<(), DebuggerError> {
    std::net::TcpListener::bind(("127.0.0.1", port)).map_err(|e| {
        DebuggerError::Unavailable(format!(
            "debug mode: cannot listen for the debugger on 127.0.0.1:{port}: {e} (another \
             debug session? choose another port: --debug=PORT or [debug] port)"
        ))
    })?;
    let run = tokio::process::Command::new(python)
        .arg("-c")
        .arg(DEBUGPY_CHECK)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .output();
    let out = match tokio::time::timeout(std::time::Duration::from_secs(30), run).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => {
            return Err(DebuggerError::Setup(format!(
                "debug mode: cannot run {python}: {e}"
            )));
        }
        Err(_) => {
            return Err(DebuggerError::Unavailable(format!(
                "debug mode: {python} did not import debugpy within 30 s"
            )));
        }
    };
    let said = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let install = format!("{python} -m pip install -U debugpy");
    match said.split_once(' ') {
        Some(("ok", version)) => {
            tracing::info!(version, python, "debugpy found");
            Ok(())
        }
        Some(("old", version)) => Err(DebuggerError::Setup(format!(
            "debug mode needs debugpy 1.8.1 or newer in the workers' interpreter {python} \
             (it has {version}); upgrade it there: {install}"
        ))),
        Some(("missing", why)) => Err(DebuggerError::Setup(format!(
            "debug mode needs debugpy in the workers' interpreter {python} ({why}); install \
             it there: {install}"
        ))),
        _ => Err(DebuggerError::Setup(format!(
            "debug mode: {python} could not check for debugpy: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))),
    }
}

fn fnv(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Where the package is cached across runs: systemd's `$CACHE_DIRECTORY`, else
/// `$XDG_CACHE_HOME/oxbus`, else `~/.cache/oxbus`.
fn cache_base() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("CACHE_DIRECTORY").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d).join("oxbus"));
    }
    std::env::var_os("HOME")
        .filter(|d| !d.is_empty())
        .map(|h| PathBuf::from(h).join(".cache/oxbus"))
}

/// A stable digest of the bundled package (FNV-1a over names and contents).
fn package_digest() -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (name, bytes) in FILES {
        for b in name
            .as_bytes()
            .iter()
            .chain([0u8].iter())
            .chain(bytes.iter())
        {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// Writes the package into `<base>/python-<digest>/oxbus` unless it is already there, and
/// returns `<base>/python-<digest>`. The directory is content-addressed and written under a
/// temporary name then renamed, so concurrent servers never see a half-written package, and
/// its path is stable across restarts, so Python's bytecode cache next to it stays valid:
/// only the first start of a new version compiles the package, which matters when 8 workers
/// start at once. Falls back to `fallback` (the private runtime directory) when `base` is
/// not writable (a read-only home under a hardened unit, say).
pub fn install_package(base: Option<&Path>, fallback: &Path) -> io::Result<PathBuf> {
    let name = format!("python-{:016x}", package_digest());
    if let Some(base) = base {
        match install_into(&base.join(&name)) {
            Ok(p) => return Ok(p),
            Err(e) => {
                tracing::debug!(error = %e, base = %base.display(), "package cache not writable; using the runtime directory")
            }
        }
    }
    install_into(&fallback.join(name))
}

fn install_into(root: &Path) -> io::Result<PathBuf> {
    let marker = root.join("oxbus/.complete");
    if marker.exists() {
        return Ok(root.to_owned());
    }
    let parent = root.parent().ok_or_else(|| io::Error::other("no parent"))?;
    std::fs::create_dir_all(parent)?;
    let tmp = parent.join(format!(
        ".{}.tmp-{}",
        root.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("python"),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(tmp.join("oxbus"))?;
    for (name, bytes) in FILES {
        std::fs::write(tmp.join("oxbus").join(name), bytes)?;
    }
    std::fs::write(tmp.join("oxbus/.complete"), b"")?;
    match std::fs::rename(&tmp, root) {
        Ok(()) => Ok(root.to_owned()),
        // Another server installed the same digest first: use theirs.
        Err(_) if marker.exists() => {
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(root.to_owned())
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            // A stale, incomplete directory from a crash: replace it.
            std::fs::remove_dir_all(root).ok();
            Err(e)
        }
    }
}

impl Drop for RuntimeDir {
    fn drop(&mut self) {
        if self.owned {
            let _ = std::fs::remove_dir_all(&self.path);
        } else {
            let _ = std::fs::remove_file(self.socket_path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_is_embedded_whole() {
        let names: Vec<&str> = FILES.iter().map(|(n, _)| *n).collect();
        for required in ["__init__.py", "worker.py", "_protocol.py", "py.typed"] {
            assert!(
                names.contains(&required),
                "{required} missing from {names:?}"
            );
        }
    }

    #[test]
    fn the_code_cache_sits_next_to_the_installed_package() {
        let rt = RuntimeDir::create(None).unwrap();
        let base = rt.path().join("cache");
        let root = install_package(Some(&base), rt.path()).unwrap();
        assert_eq!(code_cache_dir(&root), base.join("code"));
    }

    #[test]
    fn stale_runtime_dirs_of_dead_servers_are_removed_and_live_ones_kept() {
        let rt = RuntimeDir::create(None).unwrap();
        let base = rt.path().join("base");
        std::fs::create_dir(&base).unwrap();
        // A pid that cannot exist (above pid_max), ours (alive), and names that are not ours.
        let dead = base.join("oxbus.2147483646.0");
        let live = base.join(format!("oxbus.{}.3", std::process::id()));
        let other = base.join("oxbus.notapid.0");
        let file = base.join("oxbus.2147483645.1");
        // No lock file: being created, or left by an older version.
        let unlocked = base.join("oxbus.2147483644.0");
        for d in [&dead, &live, &other, &unlocked] {
            std::fs::create_dir(d).unwrap();
        }
        for d in [&dead, &live] {
            drop(lock_dir(d).unwrap());
        }
        std::fs::create_dir(dead.join("sub")).unwrap();
        std::fs::write(&file, b"").unwrap();
        remove_stale(&base);
        assert!(!dead.exists());
        assert!(live.is_dir() && other.is_dir() && file.is_file() && unlocked.is_dir());
    }

    /// A server in another PID namespace: its pid is not seen here, but it holds its lock.
    #[test]
    fn a_locked_runtime_dir_is_kept_though_its_pid_is_not_seen() {
        let rt = RuntimeDir::create(None).unwrap();
        let base = rt.path().join("base");
        std::fs::create_dir(&base).unwrap();
        let held = base.join("oxbus.2147483646.0");
        let free = base.join("oxbus.2147483646.1");
        std::fs::create_dir(&held).unwrap();
        std::fs::create_dir(&free).unwrap();
        let holding = lock_dir(&held).unwrap();
        drop(lock_dir(&free).unwrap());
        remove_stale(&base);
        assert!(
            held.join(LOCK_FILE).is_file(),
            "a held lock keeps its directory"
        );
        assert!(!free.exists(), "a free lock and a dead pid: removed");
        drop(holding);
        remove_stale(&base);
        assert!(!held.exists(), "removed once its lock is free");
    }

    #[test]
    fn a_runtime_dir_is_locked_for_the_life_of_its_server() {
        let rt = RuntimeDir::create(None).unwrap();
        let lock = std::fs::File::open(rt.path().join(LOCK_FILE)).unwrap();
        assert!(lock.try_lock().is_err(), "held while the server runs");
        assert!(!rt.path().join(".lock.new").exists());
        let flags =
            nix::fcntl::fcntl(rt._lock.as_ref().unwrap(), nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert!(
            flags & nix::libc::FD_CLOEXEC != 0,
            "workers do not inherit the lock"
        );
    }

    #[test]
    fn runtime_dir_is_private_and_cleaned_up() {
        let rt = RuntimeDir::create(None).unwrap();
        let mode = std::fs::metadata(rt.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let p = rt.path().to_owned();
        use std::os::unix::fs::MetadataExt;
        // Tests run in parallel in one process, so another test may create a directory
        // of the same name (`oxbus.<pid>.<n>`, first free n) right after the drop: the
        // one of this test is known by its inode and a file in it.
        std::fs::write(p.join("mine"), b"").unwrap();
        let ino = std::fs::metadata(&p).unwrap().ino();
        drop(rt);
        assert!(!p.join("mine").exists());
        assert!(std::fs::metadata(&p).map_or(true, |m| m.ino() != ino));
    }

    #[test]
    fn package_is_installed_once_per_digest_with_fallback() {
        let rt = RuntimeDir::create(None).unwrap();
        let base = rt.path().join("cache");
        let a = install_package(Some(&base), rt.path()).unwrap();
        assert!(a.starts_with(&base));
        assert!(a.join("oxbus/__init__.py").is_file());
        let t = std::fs::metadata(a.join("oxbus/__init__.py"))
            .unwrap()
            .modified()
            .unwrap();
        let b = install_package(Some(&base), rt.path()).unwrap();
        assert_eq!(a, b);
        let t2 = std::fs::metadata(b.join("oxbus/__init__.py"))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(t, t2, "an installed package is not rewritten");
        // An unwritable base falls back to the runtime directory.
        let c = install_package(Some(Path::new("/proc/oxbus-cannot-write")), rt.path()).unwrap();
        assert!(c.starts_with(rt.path()) && !c.starts_with(&base));
        assert!(c.join("oxbus/worker.py").is_file());
    }

    #[tokio::test]
    async fn precompile_writes_bytecode_once_even_under_dont_write_bytecode() {
        let rt = RuntimeDir::create(None).unwrap();
        let root = install_package(Some(&rt.path().join("cache")), rt.path()).unwrap();
        // The sandbox (and some users) set PYTHONDONTWRITEBYTECODE; compileall writes anyway.
        precompile("python3", &root).await;
        let cache = root.join("oxbus/__pycache__");
        let pycs = std::fs::read_dir(&cache).unwrap().count();
        assert!(
            pycs >= FILES.len() - 1,
            "{pycs} .pyc files in {}",
            cache.display()
        );
        assert!(
            std::fs::read_dir(&root)
                .unwrap()
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with(".compiled-"))
        );
        // A missing interpreter is a warning, not a failure.
        precompile("/nonexistent/python", &root).await;
    }
}
