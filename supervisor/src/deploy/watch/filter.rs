//! Which files of a watched directory count, the module each deploys as, and what a
//! notify event means for them. Pure functions of names and events: no I/O, no state.

use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
use notify::{Event, EventKind};
use std::path::{Path, PathBuf};

/// Why a candidate file is not deployed (the text names the file).
#[derive(Debug, thiserror::Error)]
pub enum NotDeployable {
    /// A `__dunder__.py` file: packages are not deployed from a watched directory.
    #[error(
        "{0} is not deployed: a watched directory holds top-level modules only, \
         not packages (name files with dots instead: crm.util.py deploys crm.util)"
    )]
    Package(String),
    /// The name breaks the rules of every deploy.
    #[error("{file_name} is not deployed: {source}")]
    Name {
        file_name: String,
        source: crate::store::StoreError,
    },
}

/// Whether a file name is a module candidate: `*.py`, not hidden, not an editor's file.
pub fn is_module_file(file_name: &str) -> bool {
    file_name.len() > ".py".len()
        && file_name.ends_with(".py")
        && !file_name.starts_with(['.', '#', '~'])
}

/// The module a candidate file deploys as, or why it cannot be deployed.
pub fn module_name(file_name: &str) -> Result<String, NotDeployable> {
    let stem = file_name.strip_suffix(".py").unwrap_or(file_name);
    if stem.starts_with("__") && stem.ends_with("__") {
        return Err(NotDeployable::Package(file_name.to_owned()));
    }
    crate::store::validate_module_name(stem)
        .map(|()| stem.to_owned())
        .map_err(|source| NotDeployable::Name {
            file_name: file_name.to_owned(),
            source,
        })
}

/// The file name of `path` when it is a module candidate directly in `dir`.
pub(super) fn candidate<'p>(dir: &Path, path: &'p Path) -> Option<&'p str> {
    if path.parent() != Some(dir) {
        return None;
    }
    path.file_name()
        .and_then(|n| n.to_str())
        .filter(|n| is_module_file(n))
}

/// What an event means for one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Touch {
    /// The file was created: like [`Touch::Written`] unless the watcher finds it complete
    /// already (a symlink or hard link).
    Created,
    /// Content is being written (written, truncated).
    Written,
    /// A writer closed the file (Linux).
    Closed,
    /// Complete content arrived at once: renamed into place, or changed where the watcher
    /// does not report writes and closes apart.
    Replaced,
    /// The file was deleted.
    Deleted,
    /// The file was renamed away (a temp file moved into place under another name).
    MovedAway,
}

/// What the watcher makes of one notify event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    File(PathBuf, Touch),
    /// Events were lost: look at every file again.
    Rescan,
    /// The watched directory itself was deleted or renamed.
    DirGone,
}

/// Maps a notify event to signals about the candidate files of `dir`; events about other
/// files, and reads (the watcher's own included), give none.
pub fn classify(event: &Event, dir: &Path) -> Vec<Signal> {
    if event.need_rescan() {
        return vec![Signal::Rescan];
    }
    let touch = match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => Touch::Closed,
        EventKind::Access(_) => return Vec::new(),
        EventKind::Create(_) => Touch::Created,
        EventKind::Modify(ModifyKind::Metadata(_)) => return Vec::new(),
        EventKind::Modify(ModifyKind::Name(RenameMode::From)) => Touch::MovedAway,
        EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => {
            // [from, to]; inotify also sends the two halves on their own.
            let mut out = Vec::new();
            let mut halves = event.paths.iter();
            if let Some(from) = halves.next() {
                if from == dir {
                    out.push(Signal::DirGone);
                } else if candidate(dir, from).is_some() {
                    out.push(Signal::File(from.clone(), Touch::MovedAway));
                }
            }
            if let Some(to) = halves.next()
                && candidate(dir, to).is_some()
            {
                out.push(Signal::File(to.clone(), Touch::Replaced));
            }
            return out;
        }
        // `To`, or a backend that does not say which end of the rename this path is: the
        // read at deploy time finds out.
        EventKind::Modify(ModifyKind::Name(_)) => Touch::Replaced,
        EventKind::Modify(_) => Touch::Written,
        EventKind::Remove(_) => Touch::Deleted,
        EventKind::Any | EventKind::Other => Touch::Replaced,
    };
    let mut out = Vec::new();
    for p in &event.paths {
        if p == dir {
            if matches!(touch, Touch::Deleted | Touch::MovedAway) {
                out.push(Signal::DirGone);
            }
        } else if candidate(dir, p).is_some() {
            out.push(Signal::File(p.clone(), touch));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::watch::drop_path as p;
    use notify::event::{CreateKind, DataChange, RemoveKind};

    fn ev(kind: EventKind, paths: &[&str]) -> Event {
        let mut e = Event::new(kind);
        for n in paths {
            e = e.add_path(p(n));
        }
        e
    }

    #[test]
    fn only_python_files_directly_in_the_directory_count() {
        for ok in ["crm.py", "crm.util.py", "a.py", "Bad-Name.py"] {
            assert!(is_module_file(ok), "{ok}");
        }
        for no in [
            ".crm.py.swp",
            ".#crm.py",
            "crm.py~",
            "#crm.py#",
            "4913",
            ".crm.py.Ab12Cd",
            "__pycache__",
            "crm.pyc",
            "crm.py.orig",
            ".py",
            "crm.py___jb_tmp___",
            "~crm.py",
            "notes.txt",
        ] {
            assert!(!is_module_file(no), "{no}");
        }
        let dir = Path::new("/drop");
        assert_eq!(candidate(dir, Path::new("/drop/crm.py")), Some("crm.py"));
        assert_eq!(candidate(dir, Path::new("/drop/sub/crm.py")), None);
        assert_eq!(candidate(dir, Path::new("/elsewhere/crm.py")), None);
    }

    #[test]
    fn module_names_follow_the_deploy_rules() {
        assert_eq!(module_name("crm.py").unwrap(), "crm");
        assert_eq!(module_name("crm.util.py").unwrap(), "crm.util");
        let e = module_name("bad-name.py").unwrap_err().to_string();
        assert!(
            e.contains("bad-name.py") && e.contains("not a valid Python module name"),
            "{e}"
        );
        assert!(module_name("1st.py").is_err());
        assert!(module_name("a..b.py").is_err());
        let e = module_name("__init__.py").unwrap_err().to_string();
        assert!(e.contains("top-level modules only"), "{e}");
    }

    #[test]
    fn events_map_to_touches_and_reads_are_ignored() {
        let dir = Path::new("/drop");
        let file = |t| vec![Signal::File(p("a.py"), t)];
        let close_w = EventKind::Access(AccessKind::Close(AccessMode::Write));
        assert_eq!(classify(&ev(close_w, &["a.py"]), dir), file(Touch::Closed));
        let create = EventKind::Create(CreateKind::File);
        assert_eq!(classify(&ev(create, &["a.py"]), dir), file(Touch::Created));
        let write = EventKind::Modify(ModifyKind::Data(DataChange::Any));
        assert_eq!(classify(&ev(write, &["a.py"]), dir), file(Touch::Written));
        let to = EventKind::Modify(ModifyKind::Name(RenameMode::To));
        assert_eq!(classify(&ev(to, &["a.py"]), dir), file(Touch::Replaced));
        let from = EventKind::Modify(ModifyKind::Name(RenameMode::From));
        assert_eq!(classify(&ev(from, &["a.py"]), dir), file(Touch::MovedAway));
        let rm = EventKind::Remove(RemoveKind::File);
        assert_eq!(classify(&ev(rm, &["a.py"]), dir), file(Touch::Deleted));
        // Our own reads (open, close-nowrite) and metadata changes are not changes.
        for kind in [
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
            EventKind::Modify(ModifyKind::Metadata(notify::event::MetadataKind::Any)),
        ] {
            assert!(classify(&ev(kind, &["a.py"]), dir).is_empty(), "{kind:?}");
        }
        // Temp files of editors and git are not files to deploy.
        for name in [".a.py.swp", "a.py~", "4913", ".a.py.XyZ123"] {
            assert!(classify(&ev(write, &[name]), dir).is_empty(), "{name}");
        }
        // A temp file renamed into place: only the target counts.
        let both = EventKind::Modify(ModifyKind::Name(RenameMode::Both));
        assert_eq!(
            classify(&ev(both, &[".a.py.tmp", "a.py"]), dir),
            file(Touch::Replaced)
        );
        assert_eq!(
            classify(&ev(both, &["tmp_x.py", "a.py"]), dir),
            vec![
                Signal::File(p("tmp_x.py"), Touch::MovedAway),
                Signal::File(p("a.py"), Touch::Replaced)
            ]
        );
        // The directory itself going away, and lost events.
        let gone = Event::new(EventKind::Remove(RemoveKind::Folder)).add_path(dir.into());
        assert_eq!(classify(&gone, dir), vec![Signal::DirGone]);
        let moved =
            Event::new(EventKind::Modify(ModifyKind::Name(RenameMode::From))).add_path(dir.into());
        assert_eq!(classify(&moved, dir), vec![Signal::DirGone]);
        let lost = Event::new(EventKind::Other).set_flag(notify::event::Flag::Rescan);
        assert_eq!(classify(&lost, dir), vec![Signal::Rescan]);
    }
}
