//! The few operating-system facts the supervisors need: who we are, whether a process lives, how
//! to signal it, and the unprivileged account Postgres runs under when we are root.
//!
//! PostgreSQL refuses to run as root. These machines, CI and many containers run as root, so when
//! the effective uid is 0 the supervisor runs `initdb` and `postgres` as a system user
//! ([`SERVICE_USER`]), creating it when missing. For a normal user nothing changes.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

/// The system account that owns the embedded cluster when the gateway runs as root.
pub const SERVICE_USER: &str = "tessera";

/// A uid/gid pair to run a child process as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

#[expect(unsafe_code, reason = "geteuid has no preconditions and cannot fail")]
pub fn effective_uid() -> u32 {
    unsafe { libc::geteuid() }
}

/// True when a process with this pid exists and is not a zombie.
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state letter follows the parenthesised command name, which may itself hold spaces.
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// The executable name of a live process (`postgres`, `tessera`...), if it can be read.
pub fn process_name(pid: u32) -> Option<String> {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some(comm.trim().to_string())
}

/// Sends `signal` to `pid`; returns false when the process is gone or not ours to signal.
#[expect(unsafe_code, reason = "kill(2) is memory-safe; the pid comes from a postmaster.pid we validated")]
pub fn send_signal(pid: u32, signal: i32) -> bool {
    let Ok(pid) = i32::try_from(pid) else { return false };
    unsafe { libc::kill(pid, signal) == 0 }
}

/// When running as root, the account Postgres must run as (created if missing); otherwise `None`.
///
/// # Errors
/// The account is missing and cannot be created.
pub fn service_account() -> anyhow::Result<Option<RunAs>> {
    if effective_uid() != 0 {
        return Ok(None);
    }
    if let Some(run_as) = lookup_user(SERVICE_USER)? {
        return Ok(Some(run_as));
    }
    tracing::info!(user = SERVICE_USER, "running as root: creating a system user for Postgres");
    let status = Command::new("useradd")
        .args(["--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent"])
        .args(["--shell", "/usr/sbin/nologin", SERVICE_USER])
        .status();
    let created = matches!(status, Ok(s) if s.success());
    if !created {
        // Busybox-based images have adduser instead of useradd.
        let _ = Command::new("adduser").args(["-S", "-D", "-H", SERVICE_USER]).status();
    }
    lookup_user(SERVICE_USER)?.map(Some).ok_or_else(|| {
        anyhow::anyhow!(
            "PostgreSQL cannot run as root and the system user '{SERVICE_USER}' could not be created; \
             create it (useradd --system {SERVICE_USER}) or run tessera as a normal user"
        )
    })
}

fn lookup_user(name: &str) -> anyhow::Result<Option<RunAs>> {
    let out = Command::new("getent").args(["passwd", name]).output()?;
    if !out.status.success() {
        return Ok(None);
    }
    let line = String::from_utf8_lossy(&out.stdout);
    let fields: Vec<&str> = line.trim().split(':').collect();
    match (fields.get(2).and_then(|u| u.parse().ok()), fields.get(3).and_then(|g| g.parse().ok())) {
        (Some(uid), Some(gid)) => Ok(Some(RunAs { uid, gid })),
        _ => Ok(None),
    }
}

/// Gives `path` and everything below it to `run_as`.
///
/// # Errors
/// Any chown failure.
pub fn chown_tree(path: &Path, run_as: RunAs) -> std::io::Result<()> {
    std::os::unix::fs::lchown(path, Some(run_as.uid), Some(run_as.gid))?;
    if path.is_dir() && !path.is_symlink() {
        for entry in std::fs::read_dir(path)? {
            chown_tree(&entry?.path(), run_as)?;
        }
    }
    Ok(())
}

/// Makes every ancestor directory of `path` searchable by others (adds `o+x` only where missing),
/// so that the unprivileged service user can reach the data dir and the server bundle. Directories
/// that already allow it are left untouched; nothing is made readable or writable.
///
/// # Errors
/// A directory whose mode cannot be changed.
pub fn ensure_traversable(path: &Path) -> std::io::Result<()> {
    let mut current = Some(path);
    while let Some(dir) = current {
        if dir.is_dir() {
            let meta = std::fs::metadata(dir)?;
            let mode = meta.permissions().mode();
            if mode & 0o001 == 0 {
                tracing::info!(dir = %dir.display(), "adding o+x so the Postgres service user can traverse it");
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o001))?;
            }
        }
        current = dir.parent();
    }
    Ok(())
}

/// Raises the soft limit on open descriptors to the hard limit and returns the limit now in
/// force (soft, hard). Idle clients must never exhaust what Postgres, Valkey and the queue need,
/// so the gateway takes all the descriptors it is allowed and caps client connections below.
#[expect(unsafe_code, reason = "getrlimit/setrlimit on a stack value; failure is reported, not assumed")]
pub fn raise_descriptor_limit() -> std::io::Result<(u64, u64)> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const raised) } == 0 {
            limit = raised;
        }
    }
    Ok((limit.rlim_cur, limit.rlim_max))
}

/// Descriptors kept back from client connections: the two Postgres pools, Valkey, the queue's
/// listeners, log and data files, and the embedded supervisor's pipes.
pub const RESERVED_DESCRIPTORS: u64 = 128;

/// The most client connections the descriptor limit leaves room for.
pub fn connection_capacity(descriptor_limit: u64) -> usize {
    usize::try_from(descriptor_limit.saturating_sub(RESERVED_DESCRIPTORS).max(16)).unwrap_or(usize::MAX)
}
