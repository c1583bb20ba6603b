//! Shared test harness.
//!
//! - One embedded Postgres cluster per test run, under `target/tmp/pg-cluster`, started (or
//!   adopted, when an earlier test binary of the same run already started it) through the very
//!   supervisor the gateway uses. `make test` stops it when the run ends.
//! - A fresh database per test, copied from a migrated template (one template per migration set),
//!   so a test starts from an empty, fully migrated schema in milliseconds.
//! - [`Gateway`]: the real `tessera serve` binary on a free loopback port, spoken to over TLS with
//!   the CA it serves at `/api/federation/ca`.

#![allow(dead_code, reason = "each test binary uses a different part of the harness")]

pub mod http;
pub mod replicas;
pub mod tls;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection, PgPool};
use tessera::services::postgres::EmbeddedPostgres;
use tokio::sync::OnceCell;

static CLUSTER: OnceCell<EmbeddedPostgres> = OnceCell::const_new();

pub fn cluster_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("pg-cluster")
}

pub fn tessera_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tessera"))
}

async fn cluster() -> &'static EmbeddedPostgres {
    tessera::tls::install_crypto_provider();
    CLUSTER
        .get_or_init(|| async {
            EmbeddedPostgres::start(&cluster_dir(), None).await.expect("start the shared test cluster")
        })
        .await
}

/// A fresh, migrated database for one test.
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
}

impl TestDb {
    pub async fn new() -> Self {
        let pg = cluster().await;
        let template = ensure_template(pg).await;
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnection::connect_with(&pg.connect_options("postgres")).await.expect("connect");
        let sql = format!("create database \"{name}\" template \"{template}\"");
        sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut admin).await.expect("create test database");
        admin.close().await.ok();
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(8)
            .connect_with(pg.connect_options(&name))
            .await
            .expect("connect test database");
        Self { url: pg.url(&name), name, pool }
    }
}

impl TestDb {
    /// A fresh database with no schema at all, for migration tests.
    pub async fn empty() -> Self {
        let pg = cluster().await;
        let name = format!("e_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnection::connect_with(&pg.connect_options("postgres")).await.expect("connect");
        let sql = format!("create database \"{name}\"");
        sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut admin).await.expect("create empty database");
        admin.close().await.ok();
        let pool = PgPool::connect_with(pg.connect_options(&name)).await.expect("connect empty database");
        Self { url: pg.url(&name), name, pool }
    }
}

/// Creates (once per migration set, across processes) a migrated template database.
async fn ensure_template(pg: &EmbeddedPostgres) -> String {
    static TEMPLATE: OnceCell<String> = OnceCell::const_new();
    TEMPLATE
        .get_or_init(|| async {
            let mut digest = 0u64;
            for m in tessera::store::MIGRATOR.iter() {
                for b in m.checksum.iter() {
                    digest = digest.wrapping_mul(31).wrapping_add(u64::from(*b));
                }
            }
            let name = format!("tpl_{digest:016x}");
            let mut admin = PgConnection::connect_with(&pg.connect_options("postgres")).await.expect("connect");
            sqlx::query("select pg_advisory_lock(4242)").execute(&mut admin).await.expect("lock");
            let exists: bool = sqlx::query_scalar("select exists (select 1 from pg_database where datname = $1)")
                .bind(&name)
                .fetch_one(&mut admin)
                .await
                .expect("query");
            if !exists {
                let building = format!("{name}_building");
                let sql = format!("drop database if exists \"{building}\"");
                sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut admin).await.expect("drop");
                let sql = format!("create database \"{building}\"");
                sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut admin).await.expect("create template");
                let pool = PgPool::connect_with(pg.connect_options(&building)).await.expect("connect template");
                tessera::store::migrate(&pool).await.expect("migrate template");
                pool.close().await;
                let sql = format!("alter database \"{building}\" rename to \"{name}\"");
                sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut admin).await.expect("rename template");
            }
            sqlx::query("select pg_advisory_unlock(4242)").execute(&mut admin).await.expect("unlock");
            admin.close().await.ok();
            name
        })
        .await
        .clone()
}

/// Clears the gateway settings the test run itself may have inherited (a developer's
/// `TESSERA_DATA_DIR`, `DATABASE_URL`, an `OTEL_EXPORTER_OTLP_ENDPOINT`...), so every spawned process sees only what its test sets.
pub fn hermetic(mut cmd: Command) -> Command {
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        if key.starts_with("TESSERA_") || key.starts_with("OTEL_") || key == "DATABASE_URL" || key == "VALKEY_URL" {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// A free TCP port on loopback (bound and released; the small reuse race is acceptable in tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A running `tessera serve` process.
pub struct Gateway {
    pub child: Child,
    pub data_dir: PathBuf,
    pub port: u16,
    pub base: String,
    pub ca_pem: Vec<u8>,
    pub client: reqwest::Client,
    /// False once the data dir was handed on: a restart will adopt whatever Postgres is left.
    stop_postgres_on_drop: bool,
    _tmp: Option<tempfile::TempDir>,
}

/// How to start a gateway.
#[derive(Default, Clone)]
pub struct GatewayOptions {
    /// `Some(url)`: tier standalone on that database; `None`: tier local (embedded cluster).
    pub database_url: Option<String>,
    /// Reuse this data dir (for restart tests); a fresh temporary one otherwise.
    pub data_dir: Option<PathBuf>,
    pub port: Option<u16>,
    pub env: Vec<(String, String)>,
    /// Start the gateway under this open-descriptor limit (soft and hard), as `ulimit -n` would.
    pub descriptor_limit: Option<u64>,
}

impl Gateway {
    pub async fn start(opts: GatewayOptions) -> Self {
        tessera::tls::install_crypto_provider();
        let (tmp, data_dir) = match &opts.data_dir {
            Some(d) => (None, d.clone()),
            None => {
                let t =
                    tempfile::Builder::new().prefix("tsr").tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
                let p = t.path().to_path_buf();
                (Some(t), p)
            }
        };
        let port = opts.port.unwrap_or_else(free_port);
        let mut cmd = match opts.descriptor_limit {
            None => hermetic(Command::new(tessera_bin())),
            Some(limit) => {
                let mut sh = hermetic(Command::new("sh"));
                sh.arg("-c").arg(format!("ulimit -n {limit} && exec \"$0\" \"$@\"")).arg(tessera_bin());
                sh
            }
        };
        cmd.arg("serve")
            .env("TESSERA_DATA_DIR", &data_dir)
            .env("TESSERA_LISTEN", format!("127.0.0.1:{port}"))
            .env("TESSERA_LOG", "info,sqlx=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::options().create(true).append(true).open(data_dir_log(&data_dir)).expect("gateway log"));
        if let Some(url) = &opts.database_url {
            cmd.env("DATABASE_URL", url);
        }
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn tessera serve");
        let mut gw = Self {
            child,
            data_dir,
            port,
            base: format!("https://localhost:{port}"),
            ca_pem: Vec::new(),
            client: reqwest::Client::new(),
            stop_postgres_on_drop: true,
            _tmp: tmp,
        };
        gw.wait_ready(Duration::from_secs(60)).await;
        gw
    }

    /// Waits until `/readyz` answers 200 over TLS that trusts the CA the gateway serves.
    pub async fn wait_ready(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("tessera serve exited early ({status}):\n{}", self.log());
            }
            if let Ok(pem) = std::fs::read(self.data_dir.join("ca.pem")) {
                let client = client_trusting(&pem);
                if let Ok(r) = client.get(format!("{}/readyz", self.base)).send().await
                    && r.status() == 200
                {
                    self.ca_pem = pem;
                    self.client = client;
                    return;
                }
            }
            assert!(Instant::now() < deadline, "gateway not ready within {within:?}:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// JSON calls on this gateway through its client, with no credential until given one.
    pub fn api(&self) -> http::Client<'_> {
        http::Client::new(&self.client, &self.base)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(data_dir_log(&self.data_dir)).unwrap_or_default()
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait; returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        self.child.wait().expect("wait")
    }

    /// Hands the data dir over (so a restart can reuse it) and forgets the process.
    pub fn into_data_dir(mut self) -> (PathBuf, Option<tempfile::TempDir>) {
        self.stop_postgres_on_drop = false;
        (self.data_dir.clone(), self._tmp.take())
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(15);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // A gateway killed with -9 leaves its embedded postmaster behind; never leak it.
        if self.stop_postgres_on_drop {
            let _ = tessera::services::postgres::stop_data_dir(&self.data_dir);
        }
    }
}

use std::fs::File;

fn data_dir_log(data_dir: &Path) -> PathBuf {
    let _ = std::fs::create_dir_all(data_dir);
    data_dir.join("gateway.log")
}

/// A reqwest client builder (rustls) trusting only `ca_pem`: every client of the tests starts
/// here, then adds what it tests (a client certificate, HTTP/1.1 only, a timeout).
pub fn trusting(ca_pem: &[u8]) -> reqwest::ClientBuilder {
    let ca = reqwest::Certificate::from_pem(ca_pem).expect("CA PEM");
    reqwest::Client::builder().tls_backend_rustls().tls_certs_only([ca])
}

/// A reqwest client (HTTP/2 via ALPN) trusting only `ca_pem`.
pub fn client_trusting(ca_pem: &[u8]) -> reqwest::Client {
    trusting(ca_pem).timeout(Duration::from_secs(30)).build().expect("client")
}

/// A client trusting only `ca_pem` and presenting `identity_pem` (key and certificate PEM).
pub fn mtls_client(ca_pem: &[u8], identity_pem: &[u8]) -> reqwest::ClientBuilder {
    trusting(ca_pem).identity(reqwest::Identity::from_pem(identity_pem).expect("identity PEM"))
}

/// Runs the tessera binary with `args` and `env`, returning (exit code, stdout, stderr).
pub fn run_cli(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = hermetic(Command::new(tessera_bin()));
    cmd.args(args).env("TESSERA_LOG", "warn").stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run tessera");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Pids of postmasters whose data directory is `pgdata`.
pub fn postmasters_for(pgdata: &Path) -> Vec<u32> {
    let needle = pgdata.to_string_lossy().to_string();
    // (pid, parent pid) of every live process whose command line is `.../postgres -D <pgdata>`.
    let mut candidates = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let args: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        let is_postmaster = args.first().is_some_and(|a| a.ends_with("/postgres"));
        let on_dir = args.windows(2).any(|w| w[0] == "-D" && w[1] == needle);
        if is_postmaster && on_dir && tessera::services::os::process_alive(pid) {
            candidates.push((pid, parent_pid(pid)));
        }
    }
    // A backend or auxiliary process the postmaster has just forked keeps the postmaster's
    // command line until it sets its own title, so it can look like a second postmaster for a
    // moment. A real postmaster's parent is never a postgres on the same data dir.
    let pids: Vec<u32> = candidates.iter().map(|(pid, _)| *pid).collect();
    candidates.into_iter().filter(|(_, ppid)| !ppid.is_some_and(|p| pids.contains(&p))).map(|(pid, _)| pid).collect()
}

/// The parent pid from `/proc/<pid>/stat` (the field after the parenthesised command name).
fn parent_pid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(1)?.parse().ok()
}

/// Inserts an admin user straight into the database and mints a token for it: for tests of areas
/// that need an admin credential but are not about how one is obtained.
pub async fn seed_admin(pool: &sqlx::PgPool, email: &str) -> (uuid::Uuid, String) {
    let user_id = uuid::Uuid::now_v7();
    sqlx::query("insert into users (id, email, name, role) values ($1, $2, 'Test Admin', 'admin')")
        .bind(user_id)
        .bind(email)
        .execute(pool)
        .await
        .expect("insert admin");
    let (_, secret) = tessera::admin::credentials::mint_token(pool, user_id, "test", None).await.expect("mint token");
    (user_id, secret.expose().to_string())
}

/// Polls a count query with one uuid parameter until it reaches `want` or 5 s pass, and returns
/// the last count: for rows written off the request path (audit batches, outbox events).
pub async fn wait_for_count(pool: &sqlx::PgPool, sql: &'static str, grant: uuid::Uuid, want: i64) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n: i64 = sqlx::query_scalar(sql).bind(grant).fetch_one(pool).await.unwrap();
        if n >= want || Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The tail of every bench smoke test: the bench's `verb` requests reached the verb and its
/// audit (allowed rows of a real grant, waited for since the writer batches them off the
/// request path), and none was refused.
pub async fn assert_bench_audited(pool: &sqlx::PgPool, verb: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let allowed = loop {
        let n: i64 = sqlx::query_scalar(
            "select count(*) from federation_audit_log where verb = $1 and outcome = 'allowed' and grant_id <> $2",
        )
        .bind(verb)
        .bind(uuid::Uuid::nil())
        .fetch_one(pool)
        .await
        .unwrap();
        if n >= 1 || Instant::now() > deadline {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(allowed >= 1, "the bench's {verb} requests are audited");
    let denied: i64 = sqlx::query_scalar("select count(*) from federation_audit_log where outcome <> 'allowed'")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(denied, 0, "the bench's requests are all allowed");
}
