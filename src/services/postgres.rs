//! The embedded Postgres supervisor (tier `local`, DESIGN §2).
//!
//! Life cycle of `<data_dir>/pg`:
//! - **init**: `initdb` runs once, into a temporary directory that is renamed into place only when
//!   it succeeded, so a crash during init never leaves a half-made cluster behind.
//! - **start**: `postgres` listens on a Unix socket only (`listen_addresses = ''`) in a private
//!   directory (mode 0700). Authentication is `trust` on that socket: only the socket directory's
//!   owner (and root) can reach it. The socket lives in `<data_dir>/run` when that path is short
//!   enough for `sun_path` (~100 bytes), otherwise in `/tmp/tessera-<hash of data dir>`.
//! - **adopt**: after a `kill -9` of the gateway the postmaster keeps running. A later start reads
//!   `postmaster.pid`; if the recorded process is alive and really is a postgres, it is adopted
//!   (reused) rather than a second one started. If it is gone, or the pid now belongs to some other
//!   program, the stale file is removed and a fresh postmaster starts. Starts are serialised with
//!   an exclusive lock on `<data_dir>/pg.lock`, so two starters never race into two postmasters.
//! - **stop**: SIGINT (Postgres "fast" shutdown: roll back sessions, checkpoint, exit) and wait.
//!
//! Postgres runs in its own process group so a Ctrl-C in the terminal reaches only the gateway,
//! which then shuts down HTTP first and Postgres last.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sha2::Digest;
use sqlx::postgres::PgConnectOptions;

use super::bundle;
use super::os::{self, RunAs};

/// The role and database the embedded cluster is created with.
pub const SUPERUSER: &str = "tessera";
pub const DEFAULT_DB: &str = "tessera";
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Conservative `sun_path` limit: 108 bytes on Linux, 104 on the BSDs, minus the NUL.
const MAX_SOCKET_PATH: usize = 100;

/// A running (started or adopted) embedded cluster.
#[derive(Debug)]
pub struct EmbeddedPostgres {
    pgdata: PathBuf,
    socket_dir: PathBuf,
    pid: u32,
    child: Option<Child>,
    /// False when the cluster was already running (adopted): a short-lived CLI command then leaves
    /// it running for whoever started it.
    started_here: bool,
}

impl EmbeddedPostgres {
    /// Starts the cluster under `data_dir/pg` (running `initdb` first if needed), or adopts the one
    /// already running there.
    ///
    /// # Errors
    /// Missing binaries, `initdb` or `postgres` failing, or readiness not reached in time. The
    /// message says what to do and points at the Postgres log.
    pub async fn start(data_dir: &Path, pg_bin: Option<&Path>) -> anyhow::Result<Self> {
        let data_dir = data_dir.to_path_buf();
        let pg_bin = pg_bin.map(Path::to_path_buf);
        // The start path is blocking (file locks, initdb); keep it off the async workers.
        let mut pg = tokio::task::spawn_blocking(move || Self::start_blocking(&data_dir, pg_bin.as_deref()))
            .await
            .context("embedded Postgres start-up task panicked")??;
        pg.wait_ready().await?;
        Ok(pg)
    }

    fn start_blocking(data_dir: &Path, pg_bin: Option<&Path>) -> anyhow::Result<Self> {
        std::fs::create_dir_all(data_dir).with_context(|| format!("cannot create data dir {}", data_dir.display()))?;
        let lock = File::create(data_dir.join("pg.lock"))?;
        lock.lock().context("cannot lock the embedded Postgres start-up")?;

        let pgdata = data_dir.join("pg");
        if let Some(adopted) = Self::adopt(&pgdata)? {
            tracing::info!(pid = adopted.pid, "reusing the embedded Postgres already running on this data dir");
            return Ok(adopted);
        }

        let bin = bundle::postgres_bin_dir(pg_bin)?;
        let run_as = os::service_account()?;
        if let Some(run_as) = run_as {
            prepare_for_service_user(data_dir, &bin, run_as)?;
        }
        if !pgdata.join("PG_VERSION").exists() {
            init_cluster(data_dir, &bin, run_as)?;
        }

        let socket_dir = socket_dir_for(data_dir);
        std::fs::create_dir_all(&socket_dir)?;
        std::fs::set_permissions(&socket_dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        if let Some(run_as) = run_as {
            os::chown_tree(&socket_dir, run_as)?;
        }

        let log_path = data_dir.join("postgres.log");
        let log = File::options().create(true).append(true).open(&log_path)?;
        let mut cmd = Command::new(bin.join("postgres"));
        cmd.arg("-D")
            .arg(&pgdata)
            .arg("-k")
            .arg(&socket_dir)
            .args(["-c", "listen_addresses=", "-c", "unix_socket_permissions=0700"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0);
        if let Some(run_as) = run_as {
            cmd.uid(run_as.uid).gid(run_as.gid);
        }
        let child = cmd.spawn().with_context(|| format!("cannot start {}", bin.join("postgres").display()))?;
        tracing::info!(pid = child.id(), socket = %socket_dir.display(), "started embedded Postgres");
        Ok(Self { pgdata, socket_dir, pid: child.id(), child: Some(child), started_here: true })
    }

    /// Reuses a live postmaster on `pgdata`, or clears a stale `postmaster.pid`.
    fn adopt(pgdata: &Path) -> anyhow::Result<Option<Self>> {
        let pid_file = pgdata.join("postmaster.pid");
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let Ok(text) = std::fs::read_to_string(&pid_file) else { return Ok(None) };
            let lines: Vec<&str> = text.lines().collect();
            let pid: Option<u32> = lines.first().and_then(|l| l.trim().parse().ok());
            let live_postgres =
                pid.is_some_and(|pid| os::process_alive(pid) && os::process_name(pid).as_deref() == Some("postgres"));
            if !live_postgres {
                tracing::warn!(file = %pid_file.display(), "removing stale postmaster.pid left by a crash");
                std::fs::remove_file(&pid_file)?;
                return Ok(None);
            }
            let pid = pid.unwrap_or_default();
            // The socket directory (line 5) is written once the postmaster listens; a postmaster
            // that is still starting is waited for, never doubled.
            if let Some(socket_dir) = lines.get(4).map(|l| PathBuf::from(l.trim())).filter(|p| p.is_absolute()) {
                return Ok(Some(Self {
                    pgdata: pgdata.to_path_buf(),
                    socket_dir,
                    pid,
                    child: None,
                    started_here: false,
                }));
            }
            if Instant::now() > deadline {
                bail!("a postmaster (pid {pid}) on {} never finished starting", pgdata.display());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Connection options for a database in this cluster.
    pub fn connect_options(&self, database: &str) -> PgConnectOptions {
        PgConnectOptions::new().socket(&self.socket_dir).username(SUPERUSER).database(database)
    }

    /// A `postgres://` URL for a database in this cluster (for child processes and tools).
    pub fn url(&self, database: &str) -> String {
        format!("postgres://{SUPERUSER}@localhost/{database}?host={}", self.socket_dir.display())
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn started_here(&self) -> bool {
        self.started_here
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!(
                    "embedded Postgres exited during start-up ({status}); see {}",
                    self.pgdata.parent().unwrap_or(&self.pgdata).join("postgres.log").display()
                );
            }
            let opts = self.connect_options("postgres");
            match sqlx::ConnectOptions::connect(&opts).await {
                Ok(conn) => {
                    let _ = sqlx::Connection::close(conn).await;
                    return Ok(());
                }
                Err(e) if Instant::now() > deadline => {
                    bail!("embedded Postgres did not become ready within {READY_TIMEOUT:?}: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Stops the postmaster with a fast shutdown and waits for it to exit.
    ///
    /// # Errors
    /// The postmaster did not exit within the stop timeout.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let pid = self.pid;
        let child = self.child.take();
        tokio::task::spawn_blocking(move || stop_pid(pid, child)).await.context("stop task panicked")?
    }

    /// Stops the cluster only if this process started it; an adopted cluster is left running.
    ///
    /// # Errors
    /// See [`EmbeddedPostgres::stop`].
    pub async fn release(self) -> anyhow::Result<()> {
        if self.started_here { self.stop().await } else { Ok(()) }
    }

    /// Takes over responsibility for stopping an adopted cluster (the gateway does this: the
    /// process that started the orphan is gone).
    pub fn take_ownership(&mut self) {
        self.started_here = true;
    }
}

/// Stops whatever postmaster runs on `data_dir/pg`, if any. Returns whether one was running.
///
/// # Errors
/// The postmaster did not exit in time.
pub fn stop_data_dir(data_dir: &Path) -> anyhow::Result<bool> {
    let pgdata = data_dir.join("pg");
    let Ok(text) = std::fs::read_to_string(pgdata.join("postmaster.pid")) else { return Ok(false) };
    let Some(pid) = text.lines().next().and_then(|l| l.trim().parse::<u32>().ok()) else { return Ok(false) };
    if !os::process_alive(pid) || os::process_name(pid).as_deref() != Some("postgres") {
        return Ok(false);
    }
    stop_pid(pid, None)?;
    Ok(true)
}

fn stop_pid(pid: u32, child: Option<Child>) -> anyhow::Result<()> {
    os::send_signal(pid, libc::SIGINT);
    let deadline = Instant::now() + STOP_TIMEOUT;
    if let Some(mut child) = child {
        loop {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("embedded Postgres (pid {pid}) did not stop within {STOP_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    while os::process_alive(pid) {
        if Instant::now() > deadline {
            bail!("embedded Postgres (pid {pid}) did not stop within {STOP_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn init_cluster(data_dir: &Path, bin: &Path, run_as: Option<RunAs>) -> anyhow::Result<()> {
    let staging = data_dir.join("pg.initdb");
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    std::fs::create_dir_all(&staging)?;
    if let Some(run_as) = run_as {
        os::chown_tree(&staging, run_as)?;
    }
    tracing::info!(dir = %data_dir.display(), "initialising the embedded Postgres cluster (first start only)");
    let mut cmd = Command::new(bin.join("initdb"));
    cmd.arg("-D")
        .arg(&staging)
        .args(["-U", SUPERUSER, "--auth=trust", "--encoding=UTF8", "--locale=C"])
        .stdin(Stdio::null());
    if let Some(run_as) = run_as {
        cmd.uid(run_as.uid).gid(run_as.gid);
    }
    let out = cmd.output().with_context(|| format!("cannot run {}", bin.join("initdb").display()))?;
    if !out.status.success() {
        bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    std::fs::rename(&staging, data_dir.join("pg"))?;
    Ok(())
}

/// Root only: the service user must own the cluster and reach both the data dir and the binaries.
fn prepare_for_service_user(data_dir: &Path, bin: &Path, run_as: RunAs) -> anyhow::Result<()> {
    os::ensure_traversable(data_dir).context("cannot make the data dir reachable for the Postgres user")?;
    os::ensure_traversable(bin).context("cannot make the Postgres binaries reachable for the Postgres user")?;
    let pgdata = data_dir.join("pg");
    if pgdata.exists() {
        os::chown_tree(&pgdata, run_as).context("cannot give the cluster to the Postgres user")?;
    }
    Ok(())
}

/// `<data_dir>/run` when short enough for a socket path, else a per-data-dir folder under /tmp.
pub fn socket_dir_for(data_dir: &Path) -> PathBuf {
    let inside = data_dir.join("run");
    if inside.join(".s.PGSQL.5432.lock").as_os_str().len() <= MAX_SOCKET_PATH {
        return inside;
    }
    let digest = sha2::Sha256::digest(data_dir.as_os_str().as_encoded_bytes());
    std::env::temp_dir().join(format!("tessera-{}", &hex::encode(digest)[..12]))
}

/// The socket directory of a postmaster already running on `data_dir/pg`, without starting one.
pub fn running_socket_dir(data_dir: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string(data_dir.join("pg/postmaster.pid")).ok()?;
    let lines: Vec<&str> = text.lines().collect();
    let pid: u32 = lines.first()?.trim().parse().ok()?;
    if !os::process_alive(pid) || os::process_name(pid).as_deref() != Some("postgres") {
        return None;
    }
    lines.get(4).map(|l| PathBuf::from(l.trim())).filter(|p| p.is_absolute())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_data_dirs_keep_the_socket_inside() {
        assert_eq!(socket_dir_for(Path::new("/srv/t")), PathBuf::from("/srv/t/run"));
    }

    #[test]
    fn deep_data_dirs_get_a_short_stable_socket_dir() {
        let deep = PathBuf::from(format!("/{}", "d/".repeat(80)));
        let a = socket_dir_for(&deep);
        assert_eq!(a, socket_dir_for(&deep));
        assert!(a.join(".s.PGSQL.5432").as_os_str().len() < MAX_SOCKET_PATH);
        assert_ne!(a, socket_dir_for(Path::new(&format!("/{}", "e/".repeat(80)))));
    }
}
