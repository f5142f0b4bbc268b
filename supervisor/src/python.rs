//! The bundled `oxbus` Python package and the runtime directory it is unpacked into.
//!
//! The server writes the package into a private (0700) runtime directory at start and puts
//! that directory first on the workers' `PYTHONPATH`, so any interpreter — the system one or
//! a user's venv with numpy and lxml — runs the worker without installing anything, and the
//! worker always speaks the same IPC protocol version as the server that started it.

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
}

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
            });
        }
        let base = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .filter(|p| p.is_dir())
            .unwrap_or_else(|| PathBuf::from("/tmp"));
        let pid = std::process::id();
        for n in 0..1000u32 {
            let path = base.join(format!("oxbus.{pid}.{n}"));
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return Ok(RuntimeDir { path, owned: true }),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
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

    /// Writes the bundled package; returns the directory to put on `PYTHONPATH`.
    pub fn unpack_python(&self) -> io::Result<PathBuf> {
        let root = self.path.join("python");
        let pkg = root.join("oxbus");
        std::fs::create_dir_all(&pkg)?;
        for (name, bytes) in FILES {
            let dest = pkg.join(name);
            let tmp = pkg.join(format!(".{name}.tmp"));
            std::fs::write(&tmp, bytes)?;
            std::fs::rename(&tmp, &dest)?;
        }
        Ok(root)
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
    fn unpacks_into_a_private_dir_and_cleans_up() {
        let rt = RuntimeDir::create(None).unwrap();
        let root = rt.unpack_python().unwrap();
        assert!(root.join("oxbus/__init__.py").is_file());
        let mode = std::fs::metadata(rt.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let p = rt.path().to_owned();
        drop(rt);
        assert!(!p.exists());
    }
}
