//! File-transfer channels as plain data (docs/FILES.md): watched local folders whose complete
//! files are each handed to a service, then moved to a processed or failed folder or deleted.
//! The rules (absolute folders, file-name patterns, limits, the parser names the worker
//! knows) and the pattern match. No I/O here.

use serde::{Deserialize, Serialize};

use crate::model::object::InvalidObject;

/// The largest `max_bytes`: a file's bytes travel in one worker frame (64 MiB payload), with
/// room for the meta.
pub const MAX_FILE_BYTES: u64 = 63 * 1024 * 1024;

/// What happens to a file once its service returned.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum After {
    /// Moved to `processed_dir` (a failure always goes to `failed_dir`).
    #[default]
    Move,
    /// Deleted (a failure still goes to `failed_dir`, with its reason).
    Delete,
}

/// A file-transfer channel: the files of `directories` matching `patterns`, each to `service`
/// once it is complete, in arrival order; exactly once across restarts and the cluster (one
/// server of the cluster holds the channel's lease and takes its files).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FileChannel {
    pub name: String,
    pub service: String,
    /// Absolute paths of the folders watched (Zato's `pickup_from_list`).
    pub directories: Vec<String>,
    /// File-name patterns (`*`, `?`, `[abc]`); a file matching any is taken. Hidden files
    /// (a leading `.`) and editor backups (a trailing `~`) never are.
    #[serde(default = "all_files")]
    pub patterns: Vec<String>,
    /// Patterns match case-sensitively (Zato's `is_case_sensitive`).
    #[serde(default = "yes")]
    pub case_sensitive: bool,
    /// Folders below `directories` are watched too (not `processed_dir` / `failed_dir`).
    #[serde(default)]
    pub recursive: bool,
    /// A file is complete once its writer closed it, or after this long without a change
    /// (a writer that keeps it open, a copy over a network filesystem).
    #[serde(default = "default_quiet_ms")]
    pub quiet_ms: u64,
    /// The service gets the file's bytes (`raw_data`); false: only its path (`full_path`),
    /// for files it reads itself, of any size.
    #[serde(default = "yes")]
    pub read_on_pickup: bool,
    /// The bytes are parsed with `parse_with` before the service runs (`data`).
    #[serde(default)]
    pub parse_on_pickup: bool,
    /// `json`, `csv`, `xml`, `lines` or `py:<module.callable>` (Zato's `py:csv.reader`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parse_with: Option<String>,
    /// The codec the bytes are decoded with (a Python codec name).
    #[serde(default = "default_encoding")]
    pub data_encoding: String,
    /// Files matching these are handed as bytes: never decoded nor parsed.
    #[serde(default)]
    pub binary_patterns: Vec<String>,
    /// A larger file is not read: it goes to `failed_dir` (set `read_on_pickup` false for
    /// such files).
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    #[serde(default)]
    pub after: After,
    /// Default `<directory>/processed`; relative paths are below each directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processed_dir: Option<String>,
    /// Default `<directory>/failed`; relative paths are below each directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_dir: Option<String>,
    /// Files handed to the service at once (1: one after another, in order).
    #[serde(default = "one")]
    pub parallel: u32,
    /// The service call's deadline.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "yes")]
    pub is_active: bool,
}

fn all_files() -> Vec<String> {
    vec!["*".into()]
}
fn yes() -> bool {
    true
}
fn one() -> u32 {
    1
}
fn default_quiet_ms() -> u64 {
    5_000
}
fn default_encoding() -> String {
    "utf-8".into()
}
fn default_max_bytes() -> u64 {
    10 * 1024 * 1024
}
fn default_timeout_ms() -> u64 {
    60_000
}

/// The parsers the worker knows by short name (`oxbus/files.py`).
pub const PARSERS: [&str; 4] = ["json", "csv", "xml", "lines"];

impl FileChannel {
    pub fn validate(&self) -> Result<(), InvalidObject> {
        crate::model::outgoing::validate_name(&self.name)?;
        let fail = |m: String| InvalidObject(format!("file channel {}: {m}", self.name));
        if self.service.trim().is_empty() {
            return Err(fail("service: missing".into()));
        }
        if self.directories.is_empty() {
            return Err(fail("directories: give at least one folder".into()));
        }
        for (i, d) in self.directories.iter().enumerate() {
            check_dir(d).map_err(|m| fail(format!("directories[{i}]: {m}")))?;
            if self.directories[..i].iter().any(|o| o == d) {
                return Err(fail(format!("directories[{i}]: {d:?} is given twice")));
            }
        }
        if self.patterns.is_empty() {
            return Err(fail(
                "patterns: give at least one (\"*\": every file)".into(),
            ));
        }
        for (field, list) in [
            ("patterns", &self.patterns),
            ("binary_patterns", &self.binary_patterns),
        ] {
            for (i, p) in list.iter().enumerate() {
                glob::Pattern::new(p).map_err(|e| fail(format!("{field}[{i}]: {p:?}: {e}")))?;
                if p.contains('/') {
                    return Err(fail(format!(
                        "{field}[{i}]: {p:?}: a pattern matches a file name, without a '/'"
                    )));
                }
            }
        }
        if !(50..=86_400_000).contains(&self.quiet_ms) {
            return Err(fail(format!(
                "quiet_ms: {} is not 50..=86400000",
                self.quiet_ms
            )));
        }
        if self.parse_on_pickup {
            let Some(p) = &self.parse_with else {
                return Err(fail(
                    "parse_on_pickup: give parse_with (json, csv, xml, lines or py:module.callable)"
                        .into(),
                ));
            };
            check_parser(p).map_err(|m| fail(format!("parse_with: {m}")))?;
            if !self.read_on_pickup {
                return Err(fail(
                    "parse_on_pickup: parsing needs the bytes; set read_on_pickup true".into(),
                ));
            }
        } else if let Some(p) = &self.parse_with {
            check_parser(p).map_err(|m| fail(format!("parse_with: {m}")))?;
        }
        if self.data_encoding.is_empty()
            || self.data_encoding.len() > 40
            || !self
                .data_encoding
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(fail(format!(
                "data_encoding: {:?} is not a codec name (utf-8, latin-1, cp1252, …)",
                self.data_encoding
            )));
        }
        if !(1..=MAX_FILE_BYTES).contains(&self.max_bytes) {
            return Err(fail(format!(
                "max_bytes: {} is not 1..={MAX_FILE_BYTES} (larger files: read_on_pickup false)",
                self.max_bytes
            )));
        }
        for (field, v) in [
            ("processed_dir", &self.processed_dir),
            ("failed_dir", &self.failed_dir),
        ] {
            if let Some(d) = v
                && (d.is_empty() || d.contains('\0') || d.split('/').any(|s| s == ".."))
            {
                return Err(fail(format!(
                    "{field}: {d:?}: an absolute path or one below the folder, without '..'"
                )));
            }
        }
        // A folder the channel takes from never receives its own files, and no file is in
        // two watched folders.
        let norm = |p: &std::path::Path| -> std::path::PathBuf { p.components().collect() };
        for (i, d) in self.directories.iter().enumerate() {
            let dir = norm(std::path::Path::new(d));
            for (field, failed) in [("processed_dir", false), ("failed_dir", true)] {
                let t = norm(&self.target_dir(d, failed));
                if let Some(w) = self
                    .directories
                    .iter()
                    .find(|w| norm(std::path::Path::new(w)) == t)
                {
                    return Err(fail(format!(
                        "{field}: {} is the watched folder {w}: its files would come back",
                        t.display()
                    )));
                }
            }
            for (j, o) in self.directories.iter().enumerate() {
                if i != j && dir.starts_with(norm(std::path::Path::new(o))) {
                    return Err(fail(format!(
                        "directories[{i}]: {d} is inside {o}: watch {o} with recursive = true"
                    )));
                }
            }
        }
        if !(1..=64).contains(&self.parallel) {
            return Err(fail(format!("parallel: {} is not 1..=64", self.parallel)));
        }
        if !(1..=86_400_000).contains(&self.timeout_ms) {
            return Err(fail(format!(
                "timeout_ms: {} is not 1..=86400000",
                self.timeout_ms
            )));
        }
        Ok(())
    }

    /// The compiled patterns (after [`FileChannel::validate`]).
    pub fn matcher(&self) -> Matcher {
        let compile = |l: &[String]| -> Vec<glob::Pattern> {
            l.iter()
                .filter_map(|p| glob::Pattern::new(p).ok())
                .collect()
        };
        Matcher {
            take: compile(&self.patterns),
            binary: compile(&self.binary_patterns),
            options: glob::MatchOptions {
                case_sensitive: self.case_sensitive,
                require_literal_separator: true,
                require_literal_leading_dot: true,
            },
        }
    }

    /// Where a file of `dir` goes after success (`kind` "processed") or failure ("failed").
    pub fn target_dir(&self, dir: &str, failed: bool) -> std::path::PathBuf {
        let (given, default) = if failed {
            (&self.failed_dir, "failed")
        } else {
            (&self.processed_dir, "processed")
        };
        match given {
            Some(d) if d.starts_with('/') => d.into(),
            Some(d) => std::path::Path::new(dir).join(d),
            None => std::path::Path::new(dir).join(default),
        }
    }
}

/// A channel's patterns, compiled.
#[derive(Debug, Clone)]
pub struct Matcher {
    take: Vec<glob::Pattern>,
    binary: Vec<glob::Pattern>,
    options: glob::MatchOptions,
}

impl Matcher {
    /// Whether a file of this name is the channel's.
    pub fn takes(&self, file_name: &str) -> bool {
        !file_name.starts_with('.')
            && !file_name.ends_with('~')
            && self
                .take
                .iter()
                .any(|p| p.matches_with(file_name, self.options))
    }

    /// Whether a file of this name is handed as bytes.
    pub fn binary(&self, file_name: &str) -> bool {
        self.binary
            .iter()
            .any(|p| p.matches_with(file_name, self.options))
    }
}

fn check_dir(d: &str) -> Result<(), String> {
    if !d.starts_with('/') {
        return Err(format!("{d:?} is not an absolute path"));
    }
    if d.contains('\0') || d.split('/').any(|s| s == "..") {
        return Err(format!("{d:?}: no NUL and no '..'"));
    }
    if d == "/" {
        return Err("the root folder cannot be watched".into());
    }
    Ok(())
}

fn check_parser(p: &str) -> Result<(), String> {
    if PARSERS.contains(&p) {
        return Ok(());
    }
    if let Some(path) = p.strip_prefix("py:") {
        let ok = path.contains('.')
            && path.split('.').all(|s| {
                !s.is_empty()
                    && !s.starts_with(|c: char| c.is_ascii_digit())
                    && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            });
        if ok {
            return Ok(());
        }
    }
    Err(format!(
        "{p:?}: json, csv, xml, lines or py:module.callable (py:csv.reader)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chan(v: serde_json::Value) -> Result<FileChannel, String> {
        let c: FileChannel = serde_json::from_value(v).map_err(|e| e.to_string())?;
        c.validate().map_err(|e| e.0)?;
        Ok(c)
    }

    #[test]
    fn defaults_and_rules() {
        let c =
            chan(serde_json::json!({"name": "in", "service": "s", "directories": ["/d"]})).unwrap();
        assert_eq!(c.patterns, vec!["*"]);
        assert_eq!(c.quiet_ms, 5000);
        assert_eq!(c.after, After::Move);
        assert_eq!(
            c.target_dir("/d", false),
            std::path::PathBuf::from("/d/processed")
        );
        assert_eq!(
            c.target_dir("/d", true),
            std::path::PathBuf::from("/d/failed")
        );
        for (bad, says) in [
            (
                serde_json::json!({"directories": []}),
                "at least one folder",
            ),
            (serde_json::json!({"directories": ["rel"]}), "absolute"),
            (serde_json::json!({"directories": ["/a/../b"]}), "'..'"),
            (serde_json::json!({"directories": ["/"]}), "root"),
            (serde_json::json!({"directories": ["/a", "/a"]}), "twice"),
            (
                serde_json::json!({"directories": ["/a"], "patterns": ["a/*"]}),
                "without a '/'",
            ),
            (
                serde_json::json!({"directories": ["/a"], "patterns": ["[a"]}),
                "patterns[0]",
            ),
            (
                serde_json::json!({"directories": ["/a"], "parse_on_pickup": true}),
                "give parse_with",
            ),
            (
                serde_json::json!({"directories": ["/a"], "parse_with": "yaml"}),
                "py:module",
            ),
            (
                serde_json::json!({"directories": ["/a"], "parse_with": "py:os"}),
                "py:module",
            ),
            (
                serde_json::json!({"directories": ["/a"], "max_bytes": 0}),
                "max_bytes",
            ),
            (
                serde_json::json!({"directories": ["/a"], "parallel": 0}),
                "parallel",
            ),
            (
                serde_json::json!({"directories": ["/a"], "data_encoding": "utf 8"}),
                "codec",
            ),
            (
                serde_json::json!({"directories": ["/a"], "failed_dir": "../x"}),
                "failed_dir",
            ),
            (
                serde_json::json!({"directories": ["/a"], "bogus": 1}),
                "unknown field",
            ),
            (
                serde_json::json!({"directories": ["/a"], "processed_dir": "."}),
                "watched folder",
            ),
            (
                serde_json::json!({"directories": ["/a", "/b"], "failed_dir": "/b/"}),
                "watched folder",
            ),
            (
                serde_json::json!({"directories": ["/a/b", "/a"]}),
                "inside /a",
            ),
        ] {
            let mut v = bad.clone();
            v["name"] = "in".into();
            v["service"] = "s".into();
            let e = chan(v).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        chan(
            serde_json::json!({"name": "in", "service": "s", "directories": ["/a"],
            "parse_on_pickup": true, "parse_with": "py:csv.reader"}),
        )
        .unwrap();
    }

    #[test]
    fn patterns_match_names_and_skip_hidden_files() {
        let c = chan(
            serde_json::json!({"name": "in", "service": "s", "directories": ["/d"],
            "patterns": ["*.csv", "order-?.xml"], "binary_patterns": ["*.bin"]}),
        )
        .unwrap();
        let m = c.matcher();
        assert!(m.takes("a.csv"));
        assert!(m.takes("order-1.xml"));
        assert!(!m.takes("order-12.xml"));
        assert!(!m.takes(".a.csv"));
        assert!(!m.takes("a.csv~"));
        assert!(!m.takes("A.CSV"));
        let all = chan(
            serde_json::json!({"name": "in", "service": "s", "directories": ["/d"],
            "case_sensitive": false, "patterns": ["*.csv"]}),
        )
        .unwrap()
        .matcher();
        assert!(all.takes("A.CSV"));
        assert!(!all.takes(".hidden.csv"));
        assert!(m.binary("x.bin") && !m.binary("x.csv"));
    }
}
