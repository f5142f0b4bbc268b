//! Embeds the `oxbus` Python package (python-worker/oxbus) into the binary, so a server
//! needs nothing installed in the user's interpreter or venv: at start it writes the package
//! into its private runtime directory and puts that first on the workers' PYTHONPATH.

use std::fmt::Write;
use std::path::PathBuf;

fn main() {
    // sqlx::migrate! reads the migrations at compile time but cannot tell cargo so on a
    // stable compiler: a new or changed migration must rebuild the crate.
    println!("cargo:rerun-if-changed=migrations");
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap())
        .join("../python-worker/oxbus")
        .canonicalize()
        .expect("python-worker/oxbus exists");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("read python-worker/oxbus")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".py") || n == "py.typed")
        .collect();
    names.sort();
    let mut out = String::from(
        "/// (file name, contents) of every file of the `oxbus` package.\npub static FILES: &[(&str, &[u8])] = &[\n",
    );
    for n in &names {
        let p = dir.join(n);
        println!("cargo:rerun-if-changed={}", p.display());
        writeln!(
            out,
            "    ({n:?}, include_bytes!({:?})),",
            p.display().to_string()
        )
        .unwrap();
    }
    out.push_str("];\n");
    let dest = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("python_files.rs");
    std::fs::write(dest, out).unwrap();
}
