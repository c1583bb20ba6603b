//! `tessera bench list`: the list verb under load, over mTLS with keep-alive, against the SQL
//! ceiling.
//!
//! Data set (seeded once per database, reused on later runs): 1 000 000 tasks over 50 projects
//! created in the last year; the subject sees 10 of them (2 personal, 8 of its two teams). The
//! bench runs the real router on a loopback port in this process, enrolls a client certificate
//! straight through the CA, and drives `POST /api/federation/v1/list/tasks` over N keep-alive
//! HTTP/1.1 connections ([`Clients`]). It prints throughput, p50 and p99 for page 1, page 10 000 and random deep
//! pages; then the same query run straight through the pool at the same concurrency (the
//! ceiling); then that query behind the same mTLS connections and HTTP server with no gateway
//! work at all (a bench-only route, see [`sql_behind_tls_route`]: the most any list verb could
//! reach here); then a round trip to a route with no database work (the transport's own cost);
//! then p99 at half the measured random-page throughput.
//!
//! It refuses a database that holds anything but its own data: give it its own data dir
//! (`tessera --data-dir .tessera-bench bench list`) or database.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::body::Body;
use axum::extract::State;
use axum::http::{Method, StatusCode, header};
use chrono::{DateTime, Utc};
use clap::Args;
use http_body_util::BodyExt;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rand::RngExt;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use uuid::Uuid;

use crate::app::AppState;
use crate::config::Config;
use crate::federation::ca::{ClientCertRequest, GatewayCa};
use crate::federation::cursor::{CursorCodec, Position};
use crate::federation::scope::QueryFilter;
use crate::sealing::SealingKey;
use crate::services::Database;

pub(super) const SUBJECT_EMAIL: &str = "bench-subject@bench.tessera.test";
const OTHER_EMAIL: &str = "bench-other@bench.tessera.test";

#[derive(Debug, Args)]
pub struct ListBench {
    /// Total tasks to seed on first run.
    #[arg(long, default_value_t = 1_000_000)]
    tasks: u32,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Seconds per measured phase.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Page size.
    #[arg(long, default_value_t = 20)]
    limit: u32,
    /// Phases to run, comma-separated (all by default); meant for profiling one at a time.
    /// `half` runs `random` first (it paces at half of that). The list warm-up runs only with a
    /// list phase. Summaries print when their inputs ran: `bare` and `ceiling` for the first;
    /// `page1`, `page10k`, `random` and `ceiling` for the second.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = Phase::ALL)]
    phases: Vec<Phase>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Phase {
    Page1,
    Page10k,
    Random,
    Ceiling,
    Bare,
    Healthz,
    Half,
}

impl Phase {
    const ALL: [Phase; 7] =
        [Phase::Page1, Phase::Page10k, Phase::Random, Phase::Ceiling, Phase::Bare, Phase::Healthz, Phase::Half];
}

pub(super) struct Figures {
    pub(super) requests: usize,
    pub(super) elapsed: Duration,
    pub(super) p50: Duration,
    pub(super) p99: Duration,
}

impl std::fmt::Display for Figures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:>8.0} req/s   p50 {:>6.2} ms   p99 {:>6.2} ms   ({} requests)",
            self.requests as f64 / self.elapsed.as_secs_f64(),
            self.p50.as_secs_f64() * 1000.0,
            self.p99.as_secs_f64() * 1000.0,
            self.requests
        )
    }
}

impl Figures {
    pub(super) fn throughput(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
}

fn summarise(mut latencies: Vec<Duration>, elapsed: Duration) -> Figures {
    latencies.sort();
    let at = |q: f64| latencies.get(((latencies.len() as f64 - 1.0) * q) as usize).copied().unwrap_or_default();
    Figures { requests: latencies.len(), elapsed, p50: at(0.5), p99: at(0.99) }
}

/// Runs the bench.
///
/// # Errors
/// A foreign database, or any set-up failure.
pub async fn run(config: &Config, args: &ListBench) -> anyhow::Result<()> {
    let db = Database::open(config, (args.concurrency as u32 + 4).max(8)).await?;
    let result = run_on(config, &db.pool, args).await;
    db.close().await;
    result
}

async fn run_on(config: &Config, pool: &sqlx::PgPool, args: &ListBench) -> anyhow::Result<()> {
    crate::store::migrate(pool).await?;
    let subject = seed(pool, args.tasks).await?;
    forget_earlier_runs(pool).await?;
    let sealing = SealingKey::load(config.sealing_key.as_ref(), &config.data_dir)?;
    let ca = GatewayCa::load_or_create(pool, &sealing).await?;
    let scope = serde_json::json!({"resources": ["tasks"], "max_rows_per_query": 1000});
    let (grant_id, identity_pem) = enroll(pool, &ca, config, subject, scope).await?;

    // What the subject sees, as the scope service would put it: the ceiling's query filter.
    let filter = Arc::new(QueryFilter {
        resource: crate::rbac::Resource::Tasks,
        subject_user_id: subject,
        include_personal: true,
        team_ids: sqlx::query_scalar!("select team_id from team_members where user_id = $1", subject)
            .fetch_all(pool)
            .await?,
        limit: args.limit,
    });
    let bench_config = config.clone();
    let server = BenchServer::start(pool, &ca, &sealing, bench_config, args.concurrency, |peer_reads| {
        sql_behind_tls_route(peer_reads, filter.clone())
    })
    .await?;
    let (port, peer_reads) = (server.port, server.peer_reads.clone());
    let client = Clients::connect(ca.cert_pem(), &identity_pem, port, args.concurrency).await?;
    let codec = CursorCodec::new(sealing.derive_key("federation-cursor-v1"));

    // Positions: the start of page 10 000, and random depths across the visible rows.
    let visible = sqlx::query_scalar!(
        "select p.id from projects p where p.owner_user_id = $1
         or p.team_id in (select team_id from team_members where user_id = $1)",
        subject
    )
    .fetch_all(pool)
    .await?;
    let visible_rows =
        sqlx::query_scalar!(r#"select count(*) as "n!" from tasks where project_id = any($1)"#, &visible)
            .fetch_one(pool)
            .await?;
    // The cursor of page 10 000 is the last row of page 9 999 (with 200 000 visible rows and
    // limit 20, page 10 000 is the last page). On smaller data sets: the last full page.
    let deep_offset = (i64::from(args.limit) * 9_999 - 1).min(visible_rows - i64::from(args.limit) - 1).max(0);
    let deep = sqlx::query!(
        "select created_at, id from tasks where project_id = any($1) order by created_at desc, id desc offset $2 limit 1",
        &visible,
        deep_offset
    )
    .fetch_one(pool)
    .await?;
    let deep: (DateTime<Utc>, Uuid) = (deep.created_at, deep.id);
    let span = sqlx::query!(
        r#"select min(created_at) as "oldest!", max(created_at) as "newest!" from tasks where project_id = any($1)"#,
        &visible
    )
    .fetch_one(pool)
    .await?;
    let (oldest, newest) = (span.oldest, span.newest);
    println!(
        "data: {} tasks, {} visible to the subject in {} of 50 projects; limit {}, concurrency {}, {} s per phase",
        args.tasks,
        visible_rows,
        visible.len(),
        args.limit,
        args.concurrency,
        args.seconds
    );

    let deep_cursor = codec.encode(grant_id, &Position::new("tasks", deep.0, deep.1, None));
    let span = (newest - oldest).num_microseconds().unwrap_or(1).max(1);
    // A random position among the visible rows: the same spread for every random-page phase.
    let random_at = move || oldest + chrono::Duration::microseconds(rand::rng().random_range(0..span));
    let random_cursor = {
        let codec = codec.clone();
        move || Some(codec.encode(grant_id, &Position::new("tasks", random_at(), Uuid::max(), None)))
    };
    let phase = Duration::from_secs(args.seconds);
    let http = |cursor: Box<dyn Fn() -> Option<String> + Send + Sync>, rate: Option<f64>| {
        let (client, limit) = (client.clone(), args.limit);
        let cursor = Arc::new(cursor);
        drive(args.concurrency, phase, rate, move |worker| {
            let (client, cursor) = (client.clone(), cursor.clone());
            async move {
                // Cursors are base64url: nothing to escape.
                let body = match cursor() {
                    Some(c) => format!(r#"{{"limit":{limit},"cursor":"{c}"}}"#),
                    None => format!(r#"{{"limit":{limit}}}"#),
                };
                client.request(worker, Method::POST, "/api/federation/v1/list/tasks", body).await
            }
        })
    };

    let want = |p: Phase| args.phases.contains(&p);
    // Warm up caches and connections.
    if [Phase::Page1, Phase::Page10k, Phase::Random, Phase::Half].iter().any(|p| want(*p)) {
        http(Box::new(|| None), None).await?;
    }
    let page1 = measure("list over mTLS, page 1       ", want(Phase::Page1), || http(Box::new(|| None), None)).await?;
    let page10k = measure("list over mTLS, page 10 000  ", want(Phase::Page10k), || {
        http(Box::new(move || Some(deep_cursor.clone())), None)
    })
    .await?;
    let random = measure("list over mTLS, random pages ", want(Phase::Random) || want(Phase::Half), || {
        http(Box::new(random_cursor.clone()), None)
    })
    .await?;

    // The ceiling: the same query shape straight through the pool the verbs use.
    let sql_random = measure("SQL ceiling, random pages    ", want(Phase::Ceiling), || {
        let (pool, filter) = (peer_reads.clone(), filter.clone());
        drive(args.concurrency, phase, None, move |_| {
            let (pool, filter, at) = (pool.clone(), filter.clone(), random_at());
            async move {
                let n = i64::from(filter.limit) + 1;
                crate::federation::verbs::list::tasks_query(&pool, &filter, (at, Uuid::max()), n).await?;
                Ok(())
            }
        })
    })
    .await?;
    // The ceiling's query behind the same mTLS connections and HTTP server, with no gateway work
    // at all: the most any list verb could reach on this machine.
    let bare = measure("SQL behind mTLS, no gateway  ", want(Phase::Bare), || {
        let client = client.clone();
        drive(args.concurrency, phase, None, move |worker| {
            let (client, at) = (client.clone(), random_at());
            async move { client.request(worker, Method::POST, "/bench/sql", at.timestamp_micros().to_string()).await }
        })
    })
    .await?;
    // The transport alone: the same client and connections, a route with no database work.
    measure("mTLS round trip, no database ", want(Phase::Healthz), || {
        let client = client.clone();
        drive(args.concurrency, phase, None, move |worker| {
            let client = client.clone();
            async move { client.request(worker, Method::GET, "/healthz", String::new()).await }
        })
    })
    .await?;
    let half_rate = random.as_ref().map(|r| r.throughput() / 2.0);
    measure("list at half load (random)   ", want(Phase::Half), || http(Box::new(random_cursor), half_rate)).await?;

    if let (Some(bare), Some(sql_random)) = (&bare, &sql_random) {
        println!(
            "SQL behind mTLS / ceiling = {:.2} (the most a list verb could reach)",
            bare.throughput() / sql_random.throughput()
        );
    }
    if let (Some(page1), Some(page10k), Some(random), Some(sql_random)) = (page1, page10k, &random, sql_random) {
        let ratio = random.throughput() / sql_random.throughput();
        let spread = [page1.throughput(), page10k.throughput(), random.throughput()];
        let (lo, hi) = spread.iter().fold((f64::MAX, 0.0f64), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
        println!("random pages / ceiling = {ratio:.2}; fastest / slowest page kind = {:.2}", hi / lo);
    }

    server.stop().await;
    Ok(())
}

/// The real router and accept loop on a loopback port, with an in-process audit writer and its
/// own peer-read pool, plus a bench-only `extra` router; the per-grant rate limit is lifted out
/// of the way (the benches measure the verbs, not the limiter).
pub(super) struct BenchServer {
    pub(super) port: u16,
    pub(super) peer_reads: sqlx::PgPool,
    stop_tx: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<()>,
    audit_writer: tokio::task::JoinHandle<()>,
}

impl BenchServer {
    pub(super) async fn start(
        pool: &sqlx::PgPool,
        ca: &Arc<GatewayCa>,
        sealing: &SealingKey,
        mut bench_config: Config,
        concurrency: usize,
        extra: impl FnOnce(sqlx::PgPool) -> axum::Router,
    ) -> anyhow::Result<Self> {
        let issued = ca.issue_server_cert(&["localhost".to_string()])?;
        let tls = crate::tls::server_config(ca, issued.chain, issued.key)?;
        bench_config.federation.rate_per_minute = 1_000_000;
        let limits = crate::app::connection_limits(&bench_config);
        let oids = bench_config.federation.oids.clone();
        let peer_reads = crate::store::peer_read_pool(pool, concurrency as u32 + 2);
        let (state, audit_writer) = AppState::new(crate::app::Services {
            pool: pool.clone(),
            peer_reads: peer_reads.clone(),
            config: bench_config,
            ca: ca.clone(),
            sealing: sealing.clone(),
            valkey: None,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(crate::tls::serve(
            listener,
            tls,
            crate::http::router(state).merge(extra(peer_reads.clone())),
            oids,
            limits,
            async {
                let _ = stop_rx.await;
            },
            Duration::from_secs(2),
        ));
        Ok(Self { port, peer_reads, stop_tx, server, audit_writer })
    }

    pub(super) async fn stop(self) {
        let _ = self.stop_tx.send(());
        let _ = self.server.await;
        // The router (and with it the last audit sink) is gone: let the writer flush before the
        // pool closes.
        let _ = tokio::time::timeout(Duration::from_secs(5), self.audit_writer).await;
        self.peer_reads.close().await;
    }
}

/// Runs one phase when it is wanted, and prints its figures under `label`.
pub(super) async fn measure<Fut>(
    label: &str,
    wanted: bool,
    run: impl FnOnce() -> Fut,
) -> anyhow::Result<Option<Figures>>
where
    Fut: std::future::Future<Output = anyhow::Result<Figures>>,
{
    if !wanted {
        return Ok(None);
    }
    let figures = run().await?;
    println!("{label} {figures}");
    Ok(Some(figures))
}

/// `POST /bench/sql` (body: a timestamp in microseconds), served only by the bench's own server
/// and never by the gateway: the ceiling's query from that position, answered with its row
/// count. No guard, scope, audit or JSON: what is left is the transport and the SQL.
fn sql_behind_tls_route(pool: sqlx::PgPool, filter: Arc<QueryFilter>) -> axum::Router {
    async fn sql_only(
        State((pool, filter)): State<(sqlx::PgPool, Arc<QueryFilter>)>,
        body: String,
    ) -> Result<String, (StatusCode, String)> {
        let bad = |e: String| (StatusCode::BAD_REQUEST, e);
        let micros: i64 = body.trim().parse().map_err(|e: std::num::ParseIntError| bad(e.to_string()))?;
        let at = DateTime::<Utc>::from_timestamp_micros(micros).ok_or_else(|| bad("out of range".into()))?;
        let rows =
            crate::federation::verbs::list::tasks_query(&pool, &filter, (at, Uuid::max()), i64::from(filter.limit) + 1)
                .await
                .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        Ok(rows.to_string())
    }
    axum::Router::new().route("/bench/sql", axum::routing::post(sql_only)).with_state((pool, filter))
}

/// The load generator's side of the wire: one keep-alive mTLS connection per worker, HTTP/1.1
/// straight through hyper. It shares the machine's cores with the gateway and Postgres, so it
/// stays as lean as it can: no redirect, retry or decompression layers and no URL parsing per
/// request (a `reqwest` client cost about a tenth of the list throughput here).
#[derive(Clone)]
pub(super) struct Clients {
    connections: Arc<Vec<tokio::sync::Mutex<SendRequest<Body>>>>,
    connector: tokio_rustls::TlsConnector,
    port: u16,
}

impl Clients {
    pub(super) async fn connect(ca_pem: &str, identity_pem: &[u8], port: u16, n: usize) -> anyhow::Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(ca_pem.as_bytes())?)?;
        let chain = CertificateDer::pem_slice_iter(identity_pem).collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_slice(identity_pem)?;
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)?;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
        let mut connections = Vec::with_capacity(n);
        for _ in 0..n {
            connections.push(tokio::sync::Mutex::new(open(&connector, port).await?));
        }
        Ok(Self { connections: Arc::new(connections), connector, port })
    }

    /// One request on worker `worker`'s connection; fails unless the answer is a 2xx.
    pub(super) async fn request(
        &self,
        worker: usize,
        method: Method,
        path: &'static str,
        body: String,
    ) -> anyhow::Result<()> {
        let request = axum::http::Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "localhost")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body))?;
        let mut send = self.connections[worker].lock().await;
        // The gateway closes a connection that idles past its header timeout (for example through
        // a long ceiling phase): open a new one rather than fail the run.
        if send.ready().await.is_err() {
            *send = open(&self.connector, self.port).await?;
            send.ready().await?;
        }
        let response = send.send_request(request).await?;
        let status = response.status();
        let _ = response.into_body().collect().await?;
        if !status.is_success() {
            bail!("{path} returned {status}");
        }
        Ok(())
    }
}

async fn open(connector: &tokio_rustls::TlsConnector, port: u16) -> anyhow::Result<SendRequest<Body>> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    tcp.set_nodelay(true)?;
    let stream = connector.connect(ServerName::try_from("localhost")?, tcp).await?;
    let (send, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(send)
}

/// Runs `make(worker)` from `concurrency` workers for `phase`, optionally paced to `rate`
/// requests/s in total, and returns the latency figures.
pub(super) async fn drive<F, Fut>(
    concurrency: usize,
    phase: Duration,
    rate: Option<f64>,
    make: F,
) -> anyhow::Result<Figures>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let make = Arc::new(make);
    let started = Instant::now();
    let deadline = started + phase;
    let interval = rate.map(|r| Duration::from_secs_f64(concurrency as f64 / r.max(1.0)));
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..concurrency {
        let make = make.clone();
        workers.spawn(async move {
            let mut latencies = Vec::new();
            let mut next = Instant::now();
            while Instant::now() < deadline {
                if let Some(gap) = interval {
                    tokio::time::sleep_until(next.into()).await;
                    next += gap;
                }
                let t = Instant::now();
                make(worker).await?;
                latencies.push(t.elapsed());
            }
            anyhow::Ok(latencies)
        });
    }
    let mut all = Vec::new();
    for result in workers.join_all().await {
        all.extend(result?);
    }
    Ok(summarise(all, started.elapsed()))
}

/// Removes the peers, grants and audit rows of earlier runs, so that every run starts from the
/// same database: otherwise the audit log grows by a few hundred thousand rows a run, and its
/// autovacuum lands inside later runs' phases. `seed` has just made sure that this database
/// holds no user but the bench's own, so every grant and audit row here is the bench's.
pub(super) async fn forget_earlier_runs(pool: &sqlx::PgPool) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query!("truncate federation_audit_log").execute(&mut *tx).await?;
    sqlx::query!("delete from federation_grants").execute(&mut *tx).await?;
    sqlx::query!("delete from federation_peers").execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(())
}

/// Seeds the bench data set once; returns the subject's id.
pub(super) async fn seed(pool: &sqlx::PgPool, tasks: u32) -> anyhow::Result<Uuid> {
    // Only the bench's own two users may be here, on every run: `forget_earlier_runs` empties
    // the federation tables next.
    let foreign = sqlx::query_scalar!(
        r#"select exists (select 1 from users where email not in ($1, $2)) as "exists!""#,
        SUBJECT_EMAIL,
        OTHER_EMAIL
    )
    .fetch_one(pool)
    .await?;
    if foreign {
        return Err(crate::outcome::Refused(
            "this database already holds data; run the bench on its own data dir \
             (tessera --data-dir .tessera-bench bench list)"
                .into(),
        )
        .into());
    }
    if let Some(subject) =
        sqlx::query_scalar!("select id from users where email = $1", SUBJECT_EMAIL).fetch_optional(pool).await?
    {
        return Ok(subject);
    }
    let started = Instant::now();
    eprintln!("seeding {tasks} tasks over 50 projects (first run only)...");
    let mut tx = pool.begin().await?;
    let subject = Uuid::now_v7();
    let other = Uuid::now_v7();
    sqlx::query!(
        "insert into users (id, email, name, role) values ($1, $2, 'Bench Subject', 'member'), ($3, $4, 'Other', 'member')",
        subject,
        SUBJECT_EMAIL,
        other,
        OTHER_EMAIL
    )
    .execute(&mut *tx)
    .await?;
    // Teams 0 and 1 include the subject; 2..=9 do not.
    let teams: Vec<Uuid> = (0..10).map(|_| Uuid::now_v7()).collect();
    for (i, t) in teams.iter().enumerate() {
        crate::store::teams::insert(&mut tx, *t, &format!("bench team {i}"), None).await?;
        crate::store::teams::add_member(&mut tx, *t, other, None).await?;
        if i < 2 {
            crate::store::teams::add_member(&mut tx, *t, subject, None).await?;
        }
    }
    // 50 projects: 2 personal of the subject, 4 per team for 10 teams (8 visible), 8 of another user.
    let mut projects = Vec::new();
    for i in 0..50 {
        let (owner, team) = match i {
            0 | 1 => (Some(subject), None),
            2..=41 => (None, Some(teams[(i - 2) / 4])),
            _ => (Some(other), None),
        };
        let id = Uuid::now_v7();
        crate::store::projects::insert(&mut tx, id, &format!("bench project {i}"), (owner, team), None).await?;
        projects.push(id);
    }
    // Rows arrive as on a live gateway: in creation order, with the time-ordered (v7) ids the
    // data API mints, so heap and primary key follow time. Inserting project by project with
    // random ids would scatter every page's rows over the table, a layout no gateway has.
    let per_project = i64::from(tasks) / 50;
    sqlx::query!(
        "insert into tasks (id, title, status, priority, project_id, created_at, updated_at)
         select uuidv7(ts - now()), 'bench task ' || g, 'todo', 'medium', p, ts, ts
         from (select p, g, now() - random() * interval '365 days' as ts
               from unnest($1::uuid[]) p, generate_series(1, $2::int8) g) s
         order by ts",
        &projects,
        per_project
    )
    .execute(&mut *tx)
    .await
    .context("seeding tasks")?;
    tx.commit().await?;
    // Vacuum sets the visibility map, as autovacuum would on a live gateway, so the list
    // query's per-project key scans are index-only.
    sqlx::query!("vacuum (analyze) tasks").execute(pool).await?;
    sqlx::query!("analyze").execute(pool).await?;
    eprintln!("seeded in {:.1}s", started.elapsed().as_secs_f64());
    Ok(subject)
}

/// Registers a peer and an active grant for the subject and issues a client certificate for it
/// directly through the CA (the enrollment round trip is not what is measured).
pub(super) async fn enroll(
    pool: &sqlx::PgPool,
    ca: &GatewayCa,
    config: &Config,
    subject: Uuid,
    scope: serde_json::Value,
) -> anyhow::Result<(Uuid, Vec<u8>)> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let csr = rcgen::CertificateParams::default().serialize_request(&key)?.pem()?;
    let public_key = crate::federation::csr::verified_public_key(&csr)?;
    let peer_id = Uuid::now_v7();
    let grant_id = Uuid::now_v7();
    // The whole id: a v7 id's first hex digits are its timestamp, the same for a minute.
    let name = format!("bench-{}", peer_id.simple());
    let cert = ca.issue_client_cert(
        &public_key,
        &ClientCertRequest {
            peer_name: &name,
            grant_id,
            subject_user_id: subject,
            oids: &config.federation.oids,
            ttl: Duration::from_secs(3600),
        },
    )?;
    sqlx::query!(
        "insert into federation_peers (id, name, state, current_serial, cert_not_after) values ($1, $2, 'active', $3, $4)",
        peer_id,
        &name,
        &cert.serial,
        cert.not_after
    )
    .execute(pool)
    .await?;
    sqlx::query!(
        "insert into federation_grants (id, peer_id, subject_user_id, scope, status, activated_at, current_serial, cert_not_after)
         values ($1, $2, $3, $4, 'active', now(), $5, $6)",
        grant_id,
        peer_id,
        subject,
        scope,
        &cert.serial,
        cert.not_after
    )
    .execute(pool)
    .await?;
    let mut identity = key.serialize_pem().into_bytes();
    identity.extend_from_slice(cert.pem.as_bytes());
    Ok((grant_id, identity))
}
