//! The job queue, the outbox and webhooks (issue 6) against real Postgres: the real `tessera
//! serve` binary (killed with -9 and restarted), the real CLI, in-process workers where a test
//! needs its own handler, and a real HTTP receiver for webhooks.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use common::{Gateway, GatewayOptions, TestDb, run_cli, seed_admin};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use tessera::queue::settings::{Backoff, QueueSettings};
use tessera::queue::{HandlerRegistry, JobError, NewJob, QueueRuntime, enqueue, enqueue_many};

const SECRET: &str = "whsec-test-0123456789abcdef";
const ALLOWED_CIDRS: &str = "TESSERA_WEBHOOK_ALLOWED_CIDRS";

// ---------------------------------------------------------------------------------------------
// A webhook receiver that checks every signature itself (HMAC-SHA256 over "t.body").

#[derive(Default)]
struct Received {
    /// (Idempotency-Key, event, body) in arrival order.
    deliveries: Vec<(String, String, Value)>,
    keys: HashSet<String>,
    bad_signatures: usize,
}

struct Receiver {
    url: String,
    state: Arc<Mutex<Received>>,
    /// The status code to answer with (200 by default).
    answer: Arc<AtomicU16>,
    /// TCP connections accepted, whatever they carried.
    connections: Arc<AtomicU32>,
}

fn expected_signature(secret: &[u8], t: &str, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).unwrap();
    mac.update(t.as_bytes());
    mac.update(b".");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// Verifies `t=..,v1=..` the way a receiver would, independently of the gateway's code.
fn signature_ok(secret: &[u8], header: &str, body: &[u8]) -> bool {
    let parts: HashMap<&str, &str> = header.split(',').filter_map(|p| p.split_once('=')).collect();
    let (Some(t), Some(v1)) = (parts.get("t"), parts.get("v1")) else { return false };
    let fresh = t.parse::<i64>().is_ok_and(|t| (chrono::Utc::now().timestamp() - t).abs() < 300);
    fresh && expected_signature(secret, t, body) == *v1
}

impl Receiver {
    async fn start() -> Self {
        let state = Arc::new(Mutex::new(Received::default()));
        let answer = Arc::new(AtomicU16::new(200));
        let (s, a) = (state.clone(), answer.clone());
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let (s, a) = (s.clone(), a.clone());
                async move {
                    let code = a.load(Ordering::SeqCst);
                    let sig = headers.get("tessera-signature").and_then(|v| v.to_str().ok()).unwrap_or("");
                    let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    let mut r = s.lock().unwrap();
                    if !signature_ok(SECRET.as_bytes(), sig, &body) {
                        r.bad_signatures += 1;
                    }
                    if code == 200 {
                        r.keys.insert(key.clone());
                        r.deliveries.push((key, json["event"].as_str().unwrap_or("").to_string(), json));
                    }
                    StatusCode::from_u16(code).unwrap()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicU32::new(0));
        let counter = connections.clone();
        let listener = axum::serve::ListenerExt::tap_io(listener, move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
        });
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url: format!("http://127.0.0.1:{port}/hook"), state, answer, connections }
    }

    fn port(&self) -> u16 {
        self.url.trim_start_matches("http://127.0.0.1:").split('/').next().unwrap().parse().unwrap()
    }

    fn connections(&self) -> u32 {
        self.connections.load(Ordering::SeqCst)
    }

    fn keys(&self) -> HashSet<String> {
        self.state.lock().unwrap().keys.clone()
    }

    fn deliveries(&self) -> Vec<(String, String, Value)> {
        self.state.lock().unwrap().deliveries.clone()
    }

    fn bad_signatures(&self) -> usize {
        self.state.lock().unwrap().bad_signatures
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers.

async fn register_webhook(gw: &Gateway, token: &str, url: &str, events: Value) -> Value {
    let (s, body) = gw
        .api()
        .bearer(token)
        .post("/api/admin/webhooks", json!({"url": url, "secret": SECRET, "events": events}))
        .await;
    assert_eq!(s, 201, "{body}");
    body
}

async fn wait_for<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn job_status(pool: &sqlx::PgPool, id: &str) -> (String, i32) {
    sqlx::query_as("select status, attempts from queue.jobs where id = $1").bind(id).fetch_one(pool).await.unwrap()
}

async fn count(pool: &sqlx::PgPool, sql: &'static str, queue: &str) -> i64 {
    sqlx::query_scalar(sql).bind(queue).fetch_one(pool).await.unwrap()
}

fn fast_settings() -> QueueSettings {
    QueueSettings {
        poll_interval: Duration::from_millis(20),
        lease: Duration::from_secs(10),
        backoff: Backoff { base: Duration::from_millis(20), cap: Duration::from_secs(5) },
        shutdown_grace: Duration::from_secs(2),
        ..QueueSettings::default()
    }
}

fn fast_env() -> Vec<(String, String)> {
    [
        ("TESSERA_QUEUE_POLL_MS", "50"),
        ("TESSERA_QUEUE_BACKOFF_BASE_MS", "50"),
        ("TESSERA_QUEUE_LEASE_SECS", "5"),
        ("TESSERA_OUTBOX_BACKOFF_BASE_MS", "50"),
        ("TESSERA_OUTBOX_BACKOFF_CAP_MS", "500"),
        ("TESSERA_OUTBOX_TIMEOUT_MS", "2000"),
        // The test receivers listen on loopback, which webhook targets reach only when allowed.
        (ALLOWED_CIDRS, "127.0.0.1/32"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
    .collect()
}

/// Two gateway processes on one database, with the fast settings plus `extra`. They share one
/// sealing key (the CA key in the database is sealed with it).
async fn two_gateways(db: &TestDb, extra: &[(&str, &str)]) -> (Gateway, Gateway) {
    let mut env = fast_env();
    env.extend(extra.iter().map(|(k, v)| ((*k).to_string(), (*v).to_string())));
    env.push(("TESSERA_SEALING_KEY".into(), "ab".repeat(32)));
    let opts = GatewayOptions { database_url: Some(db.url.clone()), env, ..Default::default() };
    (Gateway::start(opts.clone()).await, Gateway::start(opts).await)
}

/// A fresh database, a webhook receiver, one gateway with the fast settings, and an admin
/// (id, token).
async fn webhook_setup() -> (TestDb, Receiver, Gateway, uuid::Uuid, String) {
    let db = TestDb::new().await;
    let receiver = Receiver::start().await;
    let gw =
        Gateway::start(GatewayOptions { database_url: Some(db.url.clone()), env: fast_env(), ..Default::default() })
            .await;
    let (admin_id, token) = seed_admin(&db.pool, "ops@example.test").await;
    (db, receiver, gw, admin_id, token)
}

fn cli_env(db: &TestDb) -> Vec<(&str, &str)> {
    vec![("DATABASE_URL", db.url.as_str())]
}

// ---------------------------------------------------------------------------------------------
// Crash safety.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_safety_every_event_arrives_across_kill_9_and_nothing_stays_running() {
    use rand::RngExt;
    let db = TestDb::new().await;
    let receiver = Receiver::start().await;
    let dir = tempfile::Builder::new().prefix("tsrq").tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let opts = GatewayOptions {
        database_url: Some(db.url.clone()),
        data_dir: Some(dir.path().to_path_buf()),
        env: fast_env(),
        ..Default::default()
    };
    let mut gw = Gateway::start(opts.clone()).await;
    let (_, token) = seed_admin(&db.pool, "ops@example.test").await;
    register_webhook(&gw, &token, &receiver.url, json!(["rate_limit.exceeded"])).await;

    // Jobs that are running when the gateway is killed.
    let slow: Vec<NewJob> =
        (0..300).map(|i| NewJob::new("diag", "diag.probe", json!({"i": i, "sleepMs": 800}))).collect();
    enqueue_many(&db.pool, &slow).await.unwrap();

    // 10 000 events, written in transactions of 500 while the gateway delivers and is killed.
    let emitter = {
        let pool = db.pool.clone();
        tokio::spawn(async move {
            let mut ids = HashSet::new();
            for _ in 0..20 {
                let mut tx = pool.begin().await.unwrap();
                for i in 0..500 {
                    let id =
                        tessera::outbox::emit_event(&mut *tx, "rate_limit.exceeded", &json!({"n": i})).await.unwrap();
                    ids.insert(id.to_string());
                }
                tx.commit().await.unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            ids
        })
    };

    for round in 0..5 {
        let wait = rand::rng().random_range(300..1500);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        gw.kill9();
        let before_restart: chrono::DateTime<chrono::Utc> =
            sqlx::query_scalar("select clock_timestamp()").fetch_one(&db.pool).await.unwrap();
        gw = Gateway::start(opts.clone()).await;
        // Start-up reconciliation ran before the gateway became ready: whatever is running now was
        // claimed by the new process, and nothing is left in flight from the killed one.
        let stale_jobs: i64 =
            sqlx::query_scalar("select count(*) from queue.jobs where status = 'running' and updated_at < $1")
                .bind(before_restart)
                .fetch_one(&db.pool)
                .await
                .unwrap();
        let stale_deliveries: i64 =
            sqlx::query_scalar("select count(*) from outbox.deliveries where status = 'inflight' and updated_at < $1")
                .bind(before_restart)
                .fetch_one(&db.pool)
                .await
                .unwrap();
        assert_eq!((stale_jobs, stale_deliveries), (0, 0), "round {round}: work left running by the killed gateway");
    }

    let emitted = emitter.await.unwrap();
    assert_eq!(emitted.len(), 10_000);
    wait_for("all 10 000 events at the receiver", Duration::from_secs(240), || {
        let keys = receiver.keys();
        let missing = emitted.iter().filter(|id| !keys.contains(*id)).count();
        async move { missing == 0 }
    })
    .await;
    assert_eq!(receiver.bad_signatures(), 0);
    wait_for("every diagnostic job done", Duration::from_secs(60), || async {
        count(&db.pool, "select count(*) from queue.jobs where queue = $1 and status <> 'done'", "diag").await == 0
    })
    .await;
    let undelivered: i64 = sqlx::query_scalar("select count(*) from outbox.deliveries where status <> 'done'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(undelivered, 0);
    let dups = receiver.deliveries().len() - receiver.keys().len();
    eprintln!(
        "crash test: {} deliveries received, {dups} duplicates removed by Idempotency-Key",
        receiver.deliveries().len()
    );
    drop(gw);
}

// ---------------------------------------------------------------------------------------------
// Exactly once across processes.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_workers_in_two_processes_run_each_job_exactly_once() {
    let db = TestDb::new().await;
    let (a, b) = two_gateways(&db, &[("TESSERA_QUEUE_WORKERS", "2")]).await;

    // The same work twice is one job.
    let twice = NewJob::new("diag", "diag.probe", json!({"dedup": true}));
    assert!(enqueue(&db.pool, &twice).await.unwrap().created);
    assert!(!enqueue(&db.pool, &twice).await.unwrap().created);

    for chunk in 0..4 {
        let jobs: Vec<NewJob> =
            (0..1000).map(|i| NewJob::new("diag", "diag.probe", json!({"chunk": chunk, "i": i}))).collect();
        enqueue_many(&db.pool, &jobs).await.unwrap();
    }
    wait_for("4 001 jobs done", Duration::from_secs(120), || async {
        count(&db.pool, "select count(*) from queue.jobs where queue = $1 and status = 'done'", "diag").await == 4001
    })
    .await;
    let (runs, distinct_jobs, owners, nodes): (i64, i64, i64, i64) = sqlx::query_as(
        "select count(*), count(distinct job_id), count(distinct worker), count(distinct split_part(worker, '/', 1))
           from queue.diag_runs",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(distinct_jobs, 4001);
    assert_eq!(runs, 4001, "a job ran more than once");
    assert_eq!((owners, nodes), (4, 2), "all four workers in both processes took part");
    let attempts: Vec<i32> = sqlx::query_scalar("select distinct attempts from queue.jobs where queue = 'diag'")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(attempts, vec![1]);
    drop((a, b));
}

// ---------------------------------------------------------------------------------------------
// Retries.

#[tokio::test]
async fn a_job_failing_twice_then_succeeding_makes_three_attempts_with_growing_backoff() {
    let db = TestDb::new().await;
    let starts = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let mut registry = HandlerRegistry::new();
    {
        let starts = starts.clone();
        registry.register("flaky", move |job| {
            starts.lock().unwrap().push(Instant::now());
            async move {
                if job.attempt <= 2 {
                    Err(JobError::retryable(format!("attempt {} fails", job.attempt)))
                } else {
                    Ok(())
                }
            }
        });
    }
    let settings = QueueSettings {
        backoff: Backoff { base: Duration::from_millis(150), cap: Duration::from_secs(5) },
        ..fast_settings()
    };
    let rt = QueueRuntime::start(&db.pool, "retry-node", &["t-retry"], registry, &settings).await.unwrap();
    let id = enqueue(&db.pool, &NewJob::new("t-retry", "flaky", json!({}))).await.unwrap().id;
    wait_for("the flaky job done", Duration::from_secs(10), || async { job_status(&db.pool, &id).await.0 == "done" })
        .await;
    rt.shutdown().await;
    assert_eq!(job_status(&db.pool, &id).await, ("done".to_string(), 3));
    let starts = starts.lock().unwrap().clone();
    assert_eq!(starts.len(), 3);
    let (gap1, gap2) = (starts[1] - starts[0], starts[2] - starts[1]);
    // Attempt 1 backs off 90..150 ms, attempt 2 180..300 ms.
    assert!(gap1 >= Duration::from_millis(90), "{gap1:?}");
    assert!(gap2 > gap1, "backoff must grow: {gap1:?} then {gap2:?}");
    assert!(gap2 >= Duration::from_millis(180), "{gap2:?}");
}

#[tokio::test]
async fn an_always_failing_job_ends_dead_shows_in_stats_and_can_be_replayed() {
    let db = TestDb::new().await;
    let broken = Arc::new(AtomicBool::new(true));
    let runs = Arc::new(AtomicU32::new(0));
    let mut registry = HandlerRegistry::new();
    {
        let (broken, runs) = (broken.clone(), runs.clone());
        registry.register("doomed", move |_job| {
            runs.fetch_add(1, Ordering::SeqCst);
            let fail = broken.load(Ordering::SeqCst);
            async move { if fail { Err(JobError::retryable("still broken")) } else { Ok(()) } }
        });
    }
    registry.register("fatal", |_job| async { Err(JobError::fatal("bad payload")) });
    let rt = QueueRuntime::start(&db.pool, "dead-node", &["t-dead"], registry, &fast_settings()).await.unwrap();
    let id = enqueue(&db.pool, &NewJob::new("t-dead", "doomed", json!({})).max_attempts(3)).await.unwrap().id;
    let fatal = enqueue(&db.pool, &NewJob::new("t-dead", "fatal", json!({}))).await.unwrap().id;
    wait_for("the job dead", Duration::from_secs(10), || async { job_status(&db.pool, &id).await.0 == "dead" }).await;
    assert_eq!(job_status(&db.pool, &id).await.1, 3);
    assert_eq!(runs.load(Ordering::SeqCst), 3);
    wait_for("the fatal job failed", Duration::from_secs(10), || async {
        job_status(&db.pool, &fatal).await == ("failed".to_string(), 1)
    })
    .await;
    let last_error: Option<String> = sqlx::query_scalar("select last_error from queue.jobs where id = $1")
        .bind(&id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(last_error.as_deref(), Some("still broken"));

    let (code, out, err) = run_cli(&["queue", "stats", "t-dead", "--json"], &cli_env(&db));
    assert_eq!(code, 0, "{err}");
    let stats: Value = serde_json::from_str(&out).unwrap();
    assert_eq!((stats[0]["dead"].as_i64(), stats[0]["failed"].as_i64()), (Some(1), Some(1)), "{stats}");
    let (code, out, _) = run_cli(&["queue", "stats"], &cli_env(&db));
    assert_eq!(code, 0);
    assert!(out.contains("t-dead") && out.contains("DEAD"), "{out}");

    broken.store(false, Ordering::SeqCst);
    let (code, _, err) = run_cli(&["queue", "retry", &id], &cli_env(&db));
    assert_eq!(code, 0, "{err}");
    wait_for("the replayed job done", Duration::from_secs(10), || async {
        job_status(&db.pool, &id).await.0 == "done"
    })
    .await;
    assert_eq!(job_status(&db.pool, &id).await.1, 1, "a replay starts the attempt count afresh");
    // A done job cannot be retried, an unknown one does not exist.
    let (code, _, err) = run_cli(&["queue", "retry", &id], &cli_env(&db));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("done"), "{err}");
    let (code, _, _) = run_cli(&["queue", "retry", &"0".repeat(64)], &cli_env(&db));
    assert_eq!(code, 3);
    rt.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Queue control.

#[tokio::test]
async fn pause_stops_claiming_within_one_poll_interval_and_resume_restarts() {
    let db = TestDb::new().await;
    let runs = Arc::new(AtomicU32::new(0));
    let mut registry = HandlerRegistry::new();
    {
        let runs = runs.clone();
        registry.register("tick", move |_job| {
            runs.fetch_add(1, Ordering::SeqCst);
            async { Ok(()) }
        });
    }
    let poll = Duration::from_millis(100);
    let settings = QueueSettings { poll_interval: poll, ..fast_settings() };
    let rt = QueueRuntime::start(&db.pool, "pause-node", &["t-pause"], registry, &settings).await.unwrap();

    // Running normally first.
    enqueue(&db.pool, &NewJob::new("t-pause", "tick", json!({"n": 0}))).await.unwrap();
    wait_for("the first job", Duration::from_secs(5), || async { runs.load(Ordering::SeqCst) == 1 }).await;

    let (code, _, err) = run_cli(&["queue", "pause", "t-pause"], &cli_env(&db));
    assert_eq!(code, 0, "{err}");
    tokio::time::sleep(poll).await;
    let jobs: Vec<NewJob> = (1..=5).map(|n| NewJob::new("t-pause", "tick", json!({"n": n}))).collect();
    enqueue_many(&db.pool, &jobs).await.unwrap();
    tokio::time::sleep(poll * 5).await;
    assert_eq!(runs.load(Ordering::SeqCst), 1, "a paused queue must not be claimed");
    assert_eq!(
        count(&db.pool, "select count(*) from queue.jobs where queue = $1 and status = 'pending'", "t-pause").await,
        5
    );
    let (_, out, _) = run_cli(&["queue", "list", "--json"], &cli_env(&db));
    let list: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list[0]["paused"], true, "{list}");

    let (code, _, err) = run_cli(&["queue", "resume", "t-pause"], &cli_env(&db));
    assert_eq!(code, 0, "{err}");
    wait_for("the paused jobs run after resume", Duration::from_secs(5), || async { runs.load(Ordering::SeqCst) == 6 })
        .await;
    rt.shutdown().await;
}

#[tokio::test]
async fn drain_needs_yes_and_cancels_only_that_queues_pending_jobs() {
    let db = TestDb::new().await;
    let a: Vec<NewJob> = (0..5).map(|n| NewJob::new("t-a", "k", json!({"n": n}))).collect();
    let b: Vec<NewJob> = (0..3).map(|n| NewJob::new("t-b", "k", json!({"n": n}))).collect();
    enqueue_many(&db.pool, &a).await.unwrap();
    enqueue_many(&db.pool, &b).await.unwrap();
    // One job of t-a is running: drain leaves it alone.
    sqlx::query("update queue.jobs set status = 'running', lease_owner = 'x/t-a/0' where id = $1")
        .bind(a[0].id())
        .execute(&db.pool)
        .await
        .unwrap();

    let (code, _, err) = run_cli(&["queue", "drain", "t-a"], &cli_env(&db));
    assert_eq!(code, 64, "a missing confirmation is a usage error");
    assert!(err.contains("tessera queue drain t-a --yes"), "{err}");
    assert_eq!(
        count(&db.pool, "select count(*) from queue.jobs where queue = $1 and status = 'pending'", "t-a").await,
        4
    );

    let (code, _, err) = run_cli(&["queue", "drain", "t-a", "--yes"], &cli_env(&db));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("4 pending job(s) cancelled"), "{err}");
    let by_status: Vec<(String, String, i64)> =
        sqlx::query_as("select queue, status, count(*) from queue.jobs group by queue, status order by queue, status")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        by_status,
        vec![
            ("t-a".into(), "cancelled".into(), 4),
            ("t-a".into(), "running".into(), 1),
            ("t-b".into(), "pending".into(), 3)
        ]
    );
    let (code, _, _) = run_cli(&["queue", "drain", "Bad:Name", "--yes"], &cli_env(&db));
    assert_eq!(code, 64, "a malformed name is a usage error");

    // `jobs tail` shows the queue's jobs, newest last, filtered by status.
    let (code, out, err) = run_cli(&["queue", "jobs", "tail", "t-a", "--status", "cancelled", "--json"], &cli_env(&db));
    assert_eq!(code, 0, "{err}");
    let rows: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 4);
    assert!(rows.iter().all(|r| r["queue"] == "t-a" && r["status"] == "cancelled"), "{out}");
    let (code, out, _) = run_cli(&["queue", "jobs", "tail"], &cli_env(&db));
    assert_eq!((code, out.lines().count()), (0, 8), "{out}");
}

// ---------------------------------------------------------------------------------------------
// Webhooks: signatures, events from the real features, ordering, dead letters.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_signed_ordered_and_carry_the_feature_events_without_secrets() {
    let (db, receiver, gw, admin_id, token) = webhook_setup().await;
    let endpoint = register_webhook(&gw, &token, &receiver.url, json!(["*"])).await;
    assert!(endpoint.get("secret").is_none(), "{endpoint}");
    // The secret is sealed: no column of the row shows it.
    let raw: String = sqlx::query_scalar("select row_to_json(e)::text from outbox.webhook_endpoints e")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(!raw.contains(SECRET) && raw.contains("v1:"), "{raw}");

    // token.created / token.revoked through the admin API.
    let (s, created) = gw.api().bearer(&token).post("/api/admin/tokens", json!({"label": "ci"})).await;
    assert_eq!(s, 201);
    let plaintext = created["plaintext"].as_str().unwrap().to_string();
    let token_id = created["id"].as_str().unwrap().to_string();
    let (s, _) = gw.api().bearer(&token).delete(&format!("/api/admin/tokens/{token_id}")).await;
    assert_eq!(s, 204);
    // grant.created / grant.revoked.
    let (s, peer) = gw.api().bearer(&token).post("/api/admin/peers", json!({"name": "peer-a"})).await;
    assert_eq!(s, 201, "{peer}");
    let scope = json!({"resources": ["tasks"]});
    let (s, grant) = gw
        .api()
        .bearer(&token)
        .post("/api/admin/grants", json!({"peerId": peer["id"], "subjectUserId": admin_id, "scope": scope}))
        .await;
    assert_eq!(s, 201, "{grant}");
    let grant_id = grant["id"].as_str().unwrap().to_string();
    let (s, _) =
        gw.api().bearer(&token).post(&format!("/api/admin/grants/{grant_id}/revoke"), json!({"reason": "test"})).await;
    assert_eq!(s, 200);
    // enrollment.failed on a bad redemption.
    let r = gw
        .client
        .post(gw.url(&format!("/api/federation/enrollment/{}", "ab".repeat(32))))
        .json(&json!({"csrPem": "nope"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // Disabling a grant's subject revokes the grant in the database (a trigger): grant.revoked too.
    let member = uuid::Uuid::now_v7();
    sqlx::query("insert into users (id, email, name, role) values ($1, 'sub@example.test', 'S', 'member')")
        .bind(member)
        .execute(&db.pool)
        .await
        .unwrap();
    let (s, grant2) = gw
        .api()
        .bearer(&token)
        .post(
            "/api/admin/grants",
            json!({"peerId": peer["id"], "subjectUserId": member, "scope": {"resources": ["tasks"]}}),
        )
        .await;
    assert_eq!(s, 201, "{grant2}");
    sqlx::query("update users set disabled_at = now() where id = $1").bind(member).execute(&db.pool).await.unwrap();

    wait_for("seven events delivered", Duration::from_secs(15), || async { receiver.deliveries().len() >= 7 }).await;
    let got = receiver.deliveries();
    let events: Vec<&str> = got.iter().map(|(_, e, _)| e.as_str()).collect();
    assert_eq!(
        events,
        [
            "token.created",
            "token.revoked",
            "grant.created",
            "grant.revoked",
            "enrollment.failed",
            "grant.created",
            "grant.revoked"
        ]
    );
    assert_eq!(got[6].2["data"]["grantId"], grant2["id"]);
    assert_eq!(got[6].2["data"]["reason"], "subject user disabled");
    assert_eq!(got[3].2["data"]["reason"], "test");
    assert_eq!(receiver.bad_signatures(), 0, "every signature verifies with the secret");
    for (key, _, body) in &got {
        assert_eq!(body["id"].as_str(), Some(key.as_str()), "Idempotency-Key is the event id");
        let text = body.to_string();
        assert!(!text.contains(&plaintext) && !text.contains(&token), "no secrets in payloads: {text}");
    }
    assert_eq!(got[0].2["data"]["tokenId"], token_id);
    assert_eq!(got[3].2["data"]["grantId"], grant_id);
    assert_eq!(got[4].2["data"]["reason"], "invalid_csr");

    // A tampered body no longer verifies under the header that came with it.
    let body = br#"{"id":"1","event":"grant.created"}"#;
    let header = tessera::outbox::webhooks::signature_header(SECRET.as_bytes(), chrono::Utc::now().timestamp(), body);
    assert!(signature_ok(SECRET.as_bytes(), &header, body));
    assert!(!signature_ok(SECRET.as_bytes(), &header, br#"{"id":"1","event":"grant.revoked"}"#));
    assert!(!signature_ok(b"some-other-secret-000", &header, body));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_failures_go_dead_in_order_and_replay_delivers_them() {
    let (db, receiver, gw, _, token) = webhook_setup().await;
    register_webhook(&gw, &token, &receiver.url, json!(["rate_limit.exceeded"])).await;

    // Transient errors are retried and hold back later events: 503 for a while, then 200.
    receiver.answer.store(503, Ordering::SeqCst);
    let first = tessera::outbox::emit_event(&db.pool, "rate_limit.exceeded", &json!({"n": 1})).await.unwrap();
    let second = tessera::outbox::emit_event(&db.pool, "rate_limit.exceeded", &json!({"n": 2})).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let attempts: i32 = sqlx::query_scalar("select attempts from outbox.deliveries where event_id = $1")
        .bind(first)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(attempts >= 2, "retried: {attempts}");
    let second_attempts: i32 = sqlx::query_scalar("select attempts from outbox.deliveries where event_id = $1")
        .bind(second)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(second_attempts, 0, "a later event waits while an earlier one is pending");
    receiver.answer.store(200, Ordering::SeqCst);
    wait_for("both delivered", Duration::from_secs(10), || async { receiver.deliveries().len() == 2 }).await;
    let keys: Vec<String> = receiver.deliveries().into_iter().map(|(k, _, _)| k).collect();
    assert_eq!(keys, vec![first.to_string(), second.to_string()]);

    // A permanent error (410) makes the delivery dead at once; the next one goes through.
    receiver.answer.store(410, Ordering::SeqCst);
    let doomed = tessera::outbox::emit_event(&db.pool, "rate_limit.exceeded", &json!({"n": 3})).await.unwrap();
    wait_for("a dead letter", Duration::from_secs(10), || async {
        let status: Option<String> = sqlx::query_scalar("select status from outbox.deliveries where event_id = $1")
            .bind(doomed)
            .fetch_optional(&db.pool)
            .await
            .unwrap();
        status.as_deref() == Some("dead")
    })
    .await;
    let (s, dead) = gw.api().bearer(&token).get("/api/admin/outbox/dead").await;
    assert_eq!(s, 200);
    let item = &dead["items"][0];
    assert_eq!(item["eventId"], doomed.to_string());
    assert_eq!(item["attempts"], 1);
    assert_eq!(item["lastError"], "HTTP 410");
    receiver.answer.store(200, Ordering::SeqCst);
    let delivery_id = item["id"].as_str().unwrap().to_string();
    let (s, replayed) = gw
        .api()
        .bearer(&token)
        .call(reqwest::Method::POST, &format!("/api/admin/outbox/dead/{delivery_id}/replay"), None)
        .await;
    assert_eq!(s, 200, "{replayed}");
    wait_for("the replayed delivery", Duration::from_secs(10), || async {
        receiver.keys().contains(&doomed.to_string())
    })
    .await;
    let (s, body) = gw
        .api()
        .bearer(&token)
        .call(reqwest::Method::POST, &format!("/api/admin/outbox/dead/{delivery_id}/replay"), None)
        .await;
    assert_eq!((s, body["error"]["code"].as_str()), (409, Some("conflict")));
}

// ---------------------------------------------------------------------------------------------
// The admin API: allowed and denied paths.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_and_webhook_admin_api_denies_outsiders_and_rejects_bad_input() {
    let db = TestDb::new().await;
    let gw =
        Gateway::start(GatewayOptions { database_url: Some(db.url.clone()), env: fast_env(), ..Default::default() })
            .await;
    let (_, token) = seed_admin(&db.pool, "ops@example.test").await;
    let member_id = uuid::Uuid::now_v7();
    sqlx::query("insert into users (id, email, name, role) values ($1, 'm@example.test', 'M', 'member')")
        .bind(member_id)
        .execute(&db.pool)
        .await
        .unwrap();
    let (_, member) = tessera::admin::credentials::mint_token(&db.pool, member_id, "m", None).await.unwrap();
    let member = member.expose().to_string();

    use reqwest::Method as M;
    let job = "a".repeat(64);
    let delivery = uuid::Uuid::now_v7();
    let routes: Vec<(M, String, Option<Value>)> = vec![
        (M::GET, "/api/admin/queues".into(), None),
        (M::GET, "/api/admin/queues/diag".into(), None),
        (M::POST, "/api/admin/queues/diag/pause".into(), None),
        (M::POST, "/api/admin/queues/diag/resume".into(), None),
        (M::POST, "/api/admin/queues/diag/drain".into(), Some(json!({"confirm": true}))),
        (M::GET, "/api/admin/queues/diag/jobs".into(), None),
        (M::PUT, "/api/admin/queues/diag/concurrency".into(), Some(json!({"concurrency": 8}))),
        (M::POST, format!("/api/admin/jobs/{job}/retry"), None),
        (M::POST, "/api/admin/webhooks".into(), Some(json!({"url": "http://x", "secret": SECRET, "events": ["*"]}))),
        (M::GET, "/api/admin/webhooks".into(), None),
        (M::DELETE, format!("/api/admin/webhooks/{delivery}"), None),
        (M::GET, "/api/admin/outbox/dead".into(), None),
        (M::POST, format!("/api/admin/outbox/dead/{delivery}/replay"), None),
    ];
    for (method, path, body) in &routes {
        let (s, b) = gw.api().call(method.clone(), path, body.clone()).await;
        assert_eq!((s, b["error"]["code"].as_str()), (401, Some("unauthorized")), "anonymous {method} {path}");
        let (s, b) = gw.api().bearer("tsr_not-a-token").call(method.clone(), path, body.clone()).await;
        assert_eq!(s, 401, "bad token {method} {path}: {b}");
        let (s, b) = gw.api().bearer(&member).call(method.clone(), path, body.clone()).await;
        assert_eq!((s, b["error"]["message"].as_str()), (403, Some("User is not an admin")), "member {method} {path}");
    }
    assert_eq!(count(&db.pool, "select count(*) from queue.queues where name = $1", "diag").await, 0);

    // Bad input: 400 with the envelope naming the field.
    let bad: Vec<(M, &str, Option<Value>, &str)> = vec![
        (M::POST, "/api/admin/webhooks", Some(json!({"url": "ftp://x", "secret": SECRET, "events": ["*"]})), "url"),
        (M::POST, "/api/admin/webhooks", Some(json!({"url": "not a url", "secret": SECRET, "events": ["*"]})), "url"),
        (
            M::POST,
            "/api/admin/webhooks",
            Some(json!({"url": "https://ops:hunter2@hooks.example/x", "secret": SECRET, "events": ["*"]})),
            "url",
        ),
        (
            M::POST,
            "/api/admin/webhooks",
            Some(json!({"url": "http://x", "secret": "short", "events": ["*"]})),
            "secret",
        ),
        (M::POST, "/api/admin/webhooks", Some(json!({"url": "http://x", "secret": SECRET, "events": []})), "events"),
        (
            M::POST,
            "/api/admin/webhooks",
            Some(json!({"url": "http://x", "secret": SECRET, "events": ["nope"]})),
            "events",
        ),
        (M::POST, "/api/admin/queues/diag/drain", Some(json!({"confirm": false})), "confirm"),
        (M::PUT, "/api/admin/queues/diag/concurrency", Some(json!({"concurrency": 0})), "concurrency"),
        (M::POST, "/api/admin/queues/Bad:Name/pause", None, "name"),
        (M::GET, "/api/admin/queues/diag/jobs?status=bogus", None, "status"),
        (M::GET, "/api/admin/queues/diag/jobs?limit=0", None, "limit"),
        (M::POST, "/api/admin/jobs/not-hex/retry", None, "id"),
        (M::GET, "/api/admin/outbox/dead?limit=9999", None, "limit"),
    ];
    for (method, path, body, field) in bad {
        let (s, b) = gw.api().bearer(&token).call(method.clone(), path, body).await;
        assert_eq!(s, 400, "{method} {path}: {b}");
        assert_eq!(b["error"]["code"], "invalid_request", "{b}");
        assert_eq!(b["error"]["details"]["field"], field, "{method} {path}: {b}");
    }
    let (s, b) = gw.api().bearer(&token).post("/api/admin/webhooks", json!({"url": 1})).await;
    assert_eq!((s, b["error"]["code"].as_str()), (400, Some("invalid_request")));
    let (s, _) = gw.api().bearer(&token).call(M::POST, &format!("/api/admin/jobs/{job}/retry"), None).await;
    assert_eq!(s, 404);
    let (s, _) =
        gw.api().bearer(&token).call(M::POST, &format!("/api/admin/outbox/dead/{delivery}/replay"), None).await;
    assert_eq!(s, 404);
    let (s, _) = gw.api().bearer(&token).get("/api/admin/queues/never-used").await;
    assert_eq!(s, 404);

    // The allowed paths do what they say.
    let id = enqueue(&db.pool, &NewJob::new("t-api", "diag.probe", json!({}))).await.unwrap().id;
    let (s, b) = gw.api().bearer(&token).call(M::POST, "/api/admin/queues/t-api/pause", None).await;
    assert_eq!((s, &b["paused"], &b["pending"]), (200, &json!(true), &json!(1)), "{b}");
    let (s, b) = gw.api().bearer(&token).get("/api/admin/queues/t-api/jobs?status=pending").await;
    assert_eq!((s, b["items"][0]["id"].as_str()), (200, Some(id.as_str())), "{b}");
    let (s, b) = gw.api().bearer(&token).post("/api/admin/queues/t-api/drain", json!({"confirm": true})).await;
    assert_eq!((s, &b["cancelled"]), (200, &json!(1)), "{b}");
    let (s, b) = gw.api().bearer(&token).call(M::POST, &format!("/api/admin/jobs/{id}/retry"), None).await;
    assert_eq!((s, b["status"].as_str()), (200, Some("pending")), "{b}");
    let (s, b) = gw.api().bearer(&token).call(M::POST, "/api/admin/queues/t-api/resume", None).await;
    assert_eq!((s, &b["paused"]), (200, &json!(false)), "{b}");
    let (s, b) = gw
        .api()
        .bearer(&token)
        .call(M::PUT, "/api/admin/queues/t-api/concurrency", Some(json!({"concurrency": 7})))
        .await;
    assert_eq!((s, &b["concurrency"]), (200, &json!(7)), "{b}");
    let (code, _, err) = run_cli(&["queue", "concurrency", "t-api", "9"], &cli_env(&db));
    assert_eq!(code, 0, "{err}");
    let (_, out, _) = run_cli(&["queue", "stats", "t-api", "--json"], &cli_env(&db));
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()[0]["concurrency"], 9);
    let (s, b) = gw.api().bearer(&token).get("/api/admin/queues").await;
    assert_eq!(s, 200);
    assert!(b["items"].as_array().unwrap().iter().any(|q| q["name"] == "t-api"), "{b}");
    let hook = register_webhook(&gw, &token, "http://127.0.0.1:9/h", json!(["grant.created"])).await;
    assert_eq!(hook["url"], "http://127.0.0.1:9/h");
    let (s, b) = gw.api().bearer(&token).get("/api/admin/webhooks").await;
    assert_eq!((s, b["items"].as_array().map(Vec::len)), (200, Some(1)));
    let (s, _) = gw.api().bearer(&token).delete(&format!("/api/admin/webhooks/{}", hook["id"].as_str().unwrap())).await;
    assert_eq!(s, 204);
}

// ---------------------------------------------------------------------------------------------
// Webhook targets (SSRF): where deliveries may go.

/// The fast settings without the loopback opt-in: the gateway as an operator gets it by default.
fn strict_env() -> Vec<(String, String)> {
    let mut env = fast_env();
    env.retain(|(k, _)| k != ALLOWED_CIDRS);
    env
}

async fn register_status(gw: &Gateway, token: &str, url: &str) -> (u16, Value) {
    let body = json!({"url": url, "secret": SECRET, "events": ["*"]});
    gw.api().bearer(token).post("/api/admin/webhooks", body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_targets_on_internal_addresses_are_refused_by_default() {
    let db = TestDb::new().await;
    let receiver = Receiver::start().await;
    let gw =
        Gateway::start(GatewayOptions { database_url: Some(db.url.clone()), env: strict_env(), ..Default::default() })
            .await;
    let (_, token) = seed_admin(&db.pool, "ops@example.test").await;
    let refused = [
        ("http://169.254.169.254/latest/meta-data/iam/".to_string(), "cloud metadata"),
        ("http://[fd00:ec2::254]/latest/".to_string(), "cloud metadata"),
        (receiver.url.clone(), "loopback"),
        ("http://0x7f000001/".to_string(), "loopback"),
        ("http://2130706433/".to_string(), "loopback"),
        ("http://0177.0.0.1/".to_string(), "loopback"),
        ("http://[::ffff:127.0.0.1]/".to_string(), "loopback"),
        ("http://[::1]/".to_string(), "loopback"),
        // Loopback, and the gateway's own listener as well: either may be named first.
        (format!("http://localhost:{}/api/admin/queues/diag/pause", gw.port), "localhost resolves to"),
        (format!("https://127.0.0.1:{}/api/admin/tokens", gw.port), "own listener"),
        ("http://0.0.0.0/".to_string(), "unspecified"),
        ("http://[::]/".to_string(), "unspecified"),
        ("http://169.254.10.1/".to_string(), "link-local"),
        ("http://[fe80::1]/".to_string(), "link-local"),
        ("http://10.0.0.8/".to_string(), "private"),
        ("http://192.168.1.1/".to_string(), "private"),
        ("http://224.0.0.1/".to_string(), "multicast"),
        ("http://255.255.255.255/".to_string(), "broadcast"),
    ];
    for (url, why) in &refused {
        let (s, b) = register_status(&gw, &token, url).await;
        assert_eq!((s, b["error"]["code"].as_str()), (400, Some("invalid_request")), "{url}: {b}");
        assert_eq!(b["error"]["details"]["field"], "url", "{url}: {b}");
        let message = b["error"]["message"].as_str().unwrap();
        assert!(message.contains(why), "{url}: {message}");
        // The message says how to allow a range on purpose, except for the gateway itself.
        assert!(message.contains(ALLOWED_CIDRS) || message.contains("own listener"), "{url}: {message}");
    }
    let stored: i64 =
        sqlx::query_scalar("select count(*) from outbox.webhook_endpoints").fetch_one(&db.pool).await.unwrap();
    assert_eq!(stored, 0, "no refused target is stored");
    assert_eq!(receiver.connections(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_range_opens_loopback_receivers_but_never_the_gateway_itself() {
    // fast_env() allows 127.0.0.1/32.
    let (db, receiver, gw, _, token) = webhook_setup().await;
    register_webhook(&gw, &token, &receiver.url, json!(["grant.created"])).await;
    tessera::outbox::emit_event(&db.pool, "grant.created", &json!({"n": 1})).await.unwrap();
    wait_for("the delivery to the allowed loopback receiver", Duration::from_secs(5), || async {
        receiver.deliveries().len() == 1
    })
    .await;

    for (url, why) in [
        (format!("http://127.0.0.1:{}/api/admin/queues/diag/pause", gw.port), "own listener"),
        (format!("http://[::ffff:127.0.0.1]:{}/api/admin/tokens", gw.port), "own listener"),
        (format!("http://[::1]:{}/hook", receiver.port()), "loopback"),
        ("http://169.254.169.254/".to_string(), "cloud metadata"),
    ] {
        let (s, b) = register_status(&gw, &token, &url).await;
        assert_eq!((s, b["error"]["details"]["field"].as_str()), (400, Some("url")), "{url}: {b}");
        assert!(b["error"]["message"].as_str().unwrap().contains(why), "{url}: {b}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_refused_at_delivery_time_is_never_contacted_and_retried_like_an_unreachable_one() {
    let db = TestDb::new().await;
    let receiver = Receiver::start().await;
    let gateway = |allowed: Option<&str>| {
        let mut env = strict_env();
        env.push(("TESSERA_SEALING_KEY".into(), "cd".repeat(32)));
        env.push(("TESSERA_OUTBOX_MAX_ATTEMPTS".into(), "1000".into()));
        if let Some(a) = allowed {
            env.push((ALLOWED_CIDRS.into(), a.into()));
        }
        Gateway::start(GatewayOptions { database_url: Some(db.url.clone()), env, ..Default::default() })
    };
    // Registered while loopback was allowed, by address and by name...
    let mut gw = gateway(Some("127.0.0.1/32,::1/128")).await;
    let (_, token) = seed_admin(&db.pool, "ops@example.test").await;
    register_webhook(&gw, &token, &receiver.url, json!(["rate_limit.exceeded"])).await;
    register_webhook(
        &gw,
        &token,
        &format!("http://localhost:{}/hook", receiver.port()),
        json!(["rate_limit.exceeded"]),
    )
    .await;
    gw.terminate();

    // ...then delivered by a gateway that no longer allows it: every attempt stops before connecting.
    let mut gw = gateway(None).await;
    tessera::outbox::emit_event(&db.pool, "rate_limit.exceeded", &json!({"n": 1})).await.unwrap();
    let retried = || async {
        count(
            &db.pool,
            "select count(*) from outbox.deliveries where status = 'pending' and attempts >= 3 and last_error like $1",
            "target refused: %loopback address%",
        )
        .await
            == 2
    };
    wait_for("both deliveries refused and retried", Duration::from_secs(10), retried).await;
    assert_eq!(receiver.connections(), 0, "a refused target is never connected to");
    let log = gw.log();
    assert!(log.contains("webhook delivery not sent") && log.contains("127.0.0.1 is a loopback address"), "{log}");
    assert!(log.contains("localhost resolves to"), "{log}");
    gw.terminate();

    // The same rows are delivered once the range is allowed again: the refusal was the only obstacle.
    let _gw = gateway(Some("127.0.0.1/32,::1/128")).await;
    wait_for("both deliveries after allowing loopback", Duration::from_secs(10), || async {
        receiver.deliveries().len() == 2
    })
    .await;
    assert_eq!(receiver.bad_signatures(), 0);
}

// ---------------------------------------------------------------------------------------------
// Cookie sessions refuse cross-site writes (CSRF).

const PASSWORD: &str = "correct horse battery";

/// A raw request body: (content type, bytes).
type RawBody = Option<(&'static str, &'static str)>;

/// A call with the session cookie or a token, extra headers and an optional raw body; returns
/// status, body and the `Set-Cookie` header.
async fn raw_call(
    gw: &Gateway,
    method: reqwest::Method,
    path: &str,
    cookie: Option<&str>,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: RawBody,
) -> (u16, Value, Option<String>) {
    let mut req = gw.client.request(method, gw.url(path));
    if let Some(c) = cookie {
        req = req.header("cookie", format!("tessera_session={c}"));
    }
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some((content_type, bytes)) = body {
        req = req.header("content-type", content_type).body(bytes);
    }
    let r = common::http::Reply::read(req.send().await.expect("request")).await;
    let set_cookie = r.headers.get("set-cookie").map(|v| v.to_str().unwrap().to_string());
    (r.status.as_u16(), r.body, set_cookie)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_sessions_refuse_cross_site_writes_and_tokens_are_unaffected() {
    let db = TestDb::new().await;
    let gw =
        Gateway::start(GatewayOptions { database_url: Some(db.url.clone()), env: fast_env(), ..Default::default() })
            .await;
    let setup = json!({"email": "ada@example.test", "name": "Ada", "password": PASSWORD});
    let (s, b) = gw.api().post("/api/bootstrap/setup", setup).await;
    assert_eq!(s, 201, "{b}");
    let token = b["token"]["plaintext"].as_str().unwrap().to_string();
    let credentials = r#"{"email": "ada@example.test", "password": "correct horse battery"}"#;
    let (s, b, set_cookie) = raw_call(
        &gw,
        reqwest::Method::POST,
        "/api/auth/sign-in",
        None,
        None,
        &[],
        Some(("application/json", credentials)),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let cookie = set_cookie.unwrap().split(';').next().unwrap().strip_prefix("tessera_session=").unwrap().to_string();
    let paused = || async {
        sqlx::query_scalar::<_, bool>("select coalesce((select paused from queue.queues where name = 'diag'), false)")
            .fetch_one(&db.pool)
            .await
            .unwrap()
    };
    let own_origin = format!("https://localhost:{}", gw.port);
    let pause = "/api/admin/queues/diag/pause";
    let form: RawBody = Some(("application/x-www-form-urlencoded", "paused=1"));
    let json_body: RawBody = Some(("application/json", "{}"));
    use reqwest::Method as M;

    // What a page on another site can make the admin's browser send: refused, nothing changes.
    type Headers<'a> = &'a [(&'a str, &'a str)];
    let cross_site: Vec<(Headers, RawBody, &str)> = vec![
        (&[("origin", "https://evil.example")], form, "Origin 'https://evil.example'"),
        (&[("origin", "null")], json_body, "Origin 'null'"),
        (&[("sec-fetch-site", "cross-site")], json_body, "Sec-Fetch-Site is 'cross-site'"),
        (&[("sec-fetch-site", "same-site")], json_body, "Sec-Fetch-Site is 'same-site'"),
        // An old browser that sends neither header still cannot send JSON or a custom header.
        (&[], form, "content type 'application/x-www-form-urlencoded'"),
        (&[], Some(("text/plain", "{}")), "content type 'text/plain'"),
        (&[("x-requested-with", "x")], Some(("multipart/form-data; boundary=b", "--b--")), "content type"),
        (&[], None, "X-Requested-With"),
    ];
    for (headers, body, why) in cross_site {
        let (s, b, _) = raw_call(&gw, M::POST, pause, Some(&cookie), None, headers, body).await;
        assert_eq!((s, b["error"]["code"].as_str()), (403, Some("forbidden")), "{headers:?} {body:?}: {b}");
        assert!(b["error"]["message"].as_str().unwrap().contains(why), "{why}: {b}");
        assert!(!paused().await, "a refused request must not pause the queue ({headers:?})");
    }
    // Sign-out is a write too; the session survives the attempt. Reads are not affected.
    let evil = [("origin", "https://evil.example"), ("sec-fetch-site", "cross-site")];
    let (s, _, _) = raw_call(&gw, M::POST, "/api/auth/sign-out", Some(&cookie), None, &evil, None).await;
    assert_eq!(s, 403);
    let (s, b, _) = raw_call(&gw, M::GET, "/api/admin/queues", Some(&cookie), None, &evil, None).await;
    assert_eq!(s, 200, "{b}");
    // Signing in from another site is refused as well (no session is made for the page).
    let (s, _, set_cookie) =
        raw_call(&gw, M::POST, "/api/auth/sign-in", None, None, &evil, Some(("application/json", credentials))).await;
    assert_eq!((s, set_cookie), (403, None));

    // The gateway's own origin with JSON, or the custom header without a body: allowed.
    let own = [("origin", own_origin.as_str()), ("sec-fetch-site", "same-origin")];
    let (s, b, _) = raw_call(&gw, M::POST, pause, Some(&cookie), None, &own, json_body).await;
    assert_eq!((s, &b["paused"]), (200, &json!(true)), "{b}");
    assert!(paused().await);
    let resume = "/api/admin/queues/diag/resume";
    let (s, b, _) = raw_call(&gw, M::POST, resume, Some(&cookie), None, &[("x-requested-with", "fetch")], None).await;
    assert_eq!((s, &b["paused"]), (200, &json!(false)), "{b}");

    // A bearer token is never sent by a browser on its own: its calls are not checked.
    let (s, b, _) = raw_call(&gw, M::POST, pause, None, Some(&token), &evil, form).await;
    assert_eq!((s, &b["paused"]), (200, &json!(true)), "{b}");
    assert!(paused().await);

    // The session still works, and signs out from its own origin.
    let (s, _, _) = raw_call(&gw, M::POST, "/api/auth/sign-out", Some(&cookie), None, &own, json_body).await;
    assert_eq!(s, 204);
}

// ---------------------------------------------------------------------------------------------
// Scheduled jobs.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_schedule_each_periodic_slot_once() {
    let db = TestDb::new().await;
    let (a, b) = two_gateways(&db, &[("TESSERA_SCHEDULE_TICK_MS", "50")]).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let per_slot: Vec<(String, i64)> = sqlx::query_as(
        "select payload->>'slot', count(*) from queue.jobs where queue = 'maintenance' and kind = $1
          group by 1 order by 1",
    )
    .bind(tessera::federation::RENEW_CERTS)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(!per_slot.is_empty());
    assert!(per_slot.iter().all(|(_, n)| *n == 1), "{per_slot:?}");
    wait_for("a renewal job ran", Duration::from_secs(10), || async {
        count(
            &db.pool,
            "select count(*) from queue.jobs where kind = $1 and status = 'done'",
            tessera::federation::RENEW_CERTS,
        )
        .await
            >= 1
    })
    .await;
    // The clean-up jobs' statements (they are due up to a tenth of their 5-minute period late).
    tessera::queue::schedule::cleanup(&db.pool).await.unwrap();
    tessera::admin::cleanup_sessions(&db.pool).await.unwrap();
    tessera::federation::cleanup_enrollment_tokens(&db.pool).await.unwrap();
    tessera::outbox::cleanup_deliveries(&db.pool).await.unwrap();
    drop((a, b));
}

// ---------------------------------------------------------------------------------------------
// Leases: heartbeats keep long jobs, expired leases are reclaimed, shutdown releases.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_long_jobs_and_expired_leases_are_reclaimed() {
    let db = TestDb::new().await;
    let runs = Arc::new(Mutex::new(HashMap::<String, u32>::new()));
    let mut registry = HandlerRegistry::new();
    {
        let runs = runs.clone();
        registry.register("long", move |job| {
            *runs.lock().unwrap().entry(job.id.clone()).or_default() += 1;
            let ms = job.payload["ms"].as_u64().unwrap_or(0);
            async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(())
            }
        });
    }
    // A job some other worker claimed and then abandoned (its lease ran out a minute ago).
    let stalled = NewJob::new("t-lease", "long", json!({"ms": 0, "stalled": true}));
    enqueue(&db.pool, &stalled).await.unwrap();
    sqlx::query(
        "update queue.jobs set status = 'running', attempts = 1, lease_owner = 'gone/t-lease/0',
                lease_expires_at = now() - interval '1 minute' where id = $1",
    )
    .bind(stalled.id())
    .execute(&db.pool)
    .await
    .unwrap();
    let settings = QueueSettings { lease: Duration::from_secs(1), ..fast_settings() };
    let rt = QueueRuntime::start(&db.pool, "lease-node", &["t-lease"], registry, &settings).await.unwrap();
    // Runs three times as long as its lease: the heartbeat must keep it.
    let long = enqueue(&db.pool, &NewJob::new("t-lease", "long", json!({"ms": 3000}))).await.unwrap().id;
    wait_for("both jobs done", Duration::from_secs(15), || async {
        job_status(&db.pool, &long).await.0 == "done" && job_status(&db.pool, &stalled.id()).await.0 == "done"
    })
    .await;
    rt.shutdown().await;
    assert_eq!(runs.lock().unwrap().get(&long), Some(&1), "a heart-beating job is never taken away");
    assert_eq!(job_status(&db.pool, &stalled.id()).await, ("done".to_string(), 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_releases_running_jobs_without_counting_the_attempt() {
    let db = TestDb::new().await;
    let mut env = fast_env();
    env.push(("TESSERA_QUEUE_SHUTDOWN_GRACE_MS".into(), "200".into()));
    let mut gw = Gateway::start(GatewayOptions { database_url: Some(db.url.clone()), env, ..Default::default() }).await;
    let id = enqueue(&db.pool, &NewJob::new("diag", "diag.probe", json!({"sleepMs": 5000}))).await.unwrap().id;
    wait_for("the job running", Duration::from_secs(10), || async { job_status(&db.pool, &id).await.0 == "running" })
        .await;
    let status = gw.terminate();
    assert!(status.success(), "{status}");
    assert_eq!(job_status(&db.pool, &id).await, ("pending".to_string(), 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_emits_grant_activated_peer_enrolled_and_enrollment_failed() {
    let (_db, receiver, gw, admin_id, token) = webhook_setup().await;
    register_webhook(&gw, &token, &receiver.url, json!(["grant.activated", "peer.enrolled", "enrollment.failed"]))
        .await;
    let (_, peer) = gw.api().bearer(&token).post("/api/admin/peers", json!({"name": "peer-b"})).await;
    let (_, grant) = gw
        .api()
        .bearer(&token)
        .post(
            "/api/admin/grants",
            json!({"peerId": peer["id"], "subjectUserId": admin_id, "scope": {"resources": ["tasks"]}}),
        )
        .await;
    let (s, minted) =
        gw.api().bearer(&token).post("/api/federation/enrollment/tokens", json!({"grantId": grant["id"]})).await;
    assert_eq!(s, 201, "{minted}");
    let enrollment_token = minted["token"].as_str().unwrap().to_string();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let csr = rcgen::CertificateParams::new(vec![]).unwrap().serialize_request(&key).unwrap().pem().unwrap();
    let redeem = || {
        gw.client
            .post(gw.url(&format!("/api/federation/enrollment/{enrollment_token}")))
            .json(&json!({"csrPem": csr}))
            .send()
    };
    assert_eq!(redeem().await.unwrap().status(), 200);
    assert_eq!(redeem().await.unwrap().status(), 410);
    // Anyone can fail this unauthenticated route on purpose: at most one event per reason and
    // grant a minute, however many attempts.
    assert_eq!(redeem().await.unwrap().status(), 410);
    for i in 0..20u32 {
        let r = gw
            .client
            .post(gw.url(&format!("/api/federation/enrollment/{i:064x}")))
            .json(&json!({"csrPem": csr}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
    }

    wait_for("four events", Duration::from_secs(15), || async { receiver.deliveries().len() >= 4 }).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = receiver.deliveries();
    let events: Vec<&str> = got.iter().map(|(_, e, _)| e.as_str()).collect();
    assert_eq!(events, ["grant.activated", "peer.enrolled", "enrollment.failed", "enrollment.failed"]);
    assert_eq!(got[3].2["data"], json!({"reason": "unknown_token"}));
    assert_eq!(got[0].2["data"]["grantId"], grant["id"]);
    assert_eq!(got[1].2["data"]["peerName"], "peer-b");
    assert_eq!(
        got[2].2["data"],
        json!({"reason": "token_used_or_expired", "grantId": grant["id"], "peerId": peer["id"]})
    );
    for (_, _, body) in &got {
        let text = body.to_string();
        assert!(!text.contains(&enrollment_token) && !text.contains("BEGIN"), "no token or PEM in events: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn per_queue_concurrency_caps_running_jobs() {
    use std::sync::atomic::AtomicUsize;
    let db = TestDb::new().await;
    tessera::queue::set_concurrency(&db.pool, "t-conc", 3).await.unwrap();
    let (now, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut registry = HandlerRegistry::new();
    {
        let (now, peak) = (now.clone(), peak.clone());
        registry.register("slow", move |_job| {
            let (now, peak) = (now.clone(), peak.clone());
            async move {
                let running = now.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(running, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(150)).await;
                now.fetch_sub(1, Ordering::SeqCst);
                Ok(())
            }
        });
    }
    let jobs: Vec<NewJob> = (0..12).map(|n| NewJob::new("t-conc", "slow", json!({"n": n}))).collect();
    enqueue_many(&db.pool, &jobs).await.unwrap();
    let rt = QueueRuntime::start(&db.pool, "conc-node", &["t-conc"], registry, &fast_settings()).await.unwrap();
    wait_for("all done", Duration::from_secs(10), || async {
        count(&db.pool, "select count(*) from queue.jobs where queue = $1 and status = 'done'", "t-conc").await == 12
    })
    .await;
    rt.shutdown().await;
    assert_eq!(peak.load(Ordering::SeqCst), 3, "exactly the configured number run at once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_receiver_holds_up_only_its_own_line() {
    let db = TestDb::new().await;
    let receiver = Receiver::start().await;
    // A receiver that accepts connections and never answers.
    let hanging = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hanging_url = format!("http://{}/hook", hanging.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = hanging.accept().await {
            open.push(socket);
        }
    });
    let mut env = fast_env();
    env.retain(|(k, _)| k != "TESSERA_OUTBOX_TIMEOUT_MS");
    env.push(("TESSERA_OUTBOX_TIMEOUT_MS".into(), "8000".into()));
    let gw = Gateway::start(GatewayOptions { database_url: Some(db.url.clone()), env, ..Default::default() }).await;
    let (_, token) = seed_admin(&db.pool, "ops@example.test").await;
    register_webhook(&gw, &token, &hanging_url, json!(["rate_limit.exceeded"])).await;
    register_webhook(&gw, &token, &receiver.url, json!(["grant.created"])).await;

    tessera::outbox::emit_event(&db.pool, "rate_limit.exceeded", &json!({"n": 1})).await.unwrap();
    let inflight =
        || async { count(&db.pool, "select count(*) from outbox.deliveries where status = $1", "inflight").await == 1 };
    wait_for("the hanging delivery in flight", Duration::from_secs(5), inflight).await;
    let started = Instant::now();
    tessera::outbox::emit_event(&db.pool, "grant.created", &json!({"n": 2})).await.unwrap();
    wait_for("the other endpoint's event", Duration::from_secs(5), || async { receiver.deliveries().len() == 1 }).await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "delivered after {:?}: it waited for the hanging receiver's 8 s timeout",
        started.elapsed()
    );
    held.abort();
}

#[tokio::test]
async fn a_live_sibling_with_the_same_node_id_makes_the_second_process_take_a_fresh_one() {
    use sqlx::Connection;
    let db = TestDb::new().await;
    let (first, first_lock) = tessera::queue::claim_node_id(&db.pool, "nshared".into()).await.unwrap();
    assert_eq!(first, "nshared", "the stable id while nobody else holds it");
    let (second, second_lock) = tessera::queue::claim_node_id(&db.pool, "nshared".into()).await.unwrap();
    assert!(second.starts_with("nshared-") && second != first, "{second}");
    // Once the first process is gone, its next life gets the stable id back (and reconciles it).
    first_lock.close().await.unwrap();
    let (again, again_lock) = tessera::queue::claim_node_id(&db.pool, "nshared".into()).await.unwrap();
    assert_eq!(again, "nshared");
    second_lock.close().await.unwrap();
    again_lock.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_is_not_revived_and_the_old_attempts_outcome_is_ignored() {
    let db = TestDb::new().await;
    let runs = Arc::new(AtomicU32::new(0));
    let first_returned = Arc::new(AtomicBool::new(false));
    let mut registry = HandlerRegistry::new();
    {
        let (runs, first_returned) = (runs.clone(), first_returned.clone());
        registry.register("slow", move |job| {
            runs.fetch_add(1, Ordering::SeqCst);
            let first_returned = first_returned.clone();
            async move {
                if job.attempt == 1 {
                    tokio::time::sleep(Duration::from_millis(2000)).await;
                    first_returned.store(true, Ordering::SeqCst);
                } else {
                    tokio::time::sleep(Duration::from_millis(4000)).await;
                }
                Ok(())
            }
        });
    }
    let settings = QueueSettings { lease: Duration::from_secs(1), ..fast_settings() };
    let rt = QueueRuntime::start(&db.pool, "revive-node", &["t-revive"], registry, &settings).await.unwrap();
    let id = enqueue(&db.pool, &NewJob::new("t-revive", "slow", json!({}))).await.unwrap().id;
    wait_for("attempt 1 running", Duration::from_secs(5), || async {
        job_status(&db.pool, &id).await == ("running".to_string(), 1)
    })
    .await;
    // As if this process had lost the database for longer than a lease: the heartbeat must not
    // revive the lease, the reaper hands the job back, and the same worker claims attempt 2.
    sqlx::query("update queue.jobs set lease_expires_at = now() - interval '1 minute' where id = $1")
        .bind(&id)
        .execute(&db.pool)
        .await
        .unwrap();
    wait_for("attempt 2 running", Duration::from_secs(5), || async {
        job_status(&db.pool, &id).await == ("running".to_string(), 2)
    })
    .await;
    // Attempt 1 finishes while attempt 2 still runs: its late success must not complete attempt 2.
    wait_for("attempt 1 returned", Duration::from_secs(5), || async { first_returned.load(Ordering::SeqCst) }).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(job_status(&db.pool, &id).await, ("running".to_string(), 2), "attempt 1's outcome was applied");
    wait_for("attempt 2 done", Duration::from_secs(10), || async { job_status(&db.pool, &id).await.0 == "done" }).await;
    rt.shutdown().await;
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

/// An event emitted while a webhook endpoint is being deleted is delivered to the endpoints that
/// remain, and the caller's transaction stands. (Before, `outbox.emit` read the endpoint from its
/// snapshot and its delivery then failed the foreign key: revoking a token during a webhook
/// delete answered 500, which the schemathesis contract test found.)
#[tokio::test]
async fn an_event_emitted_during_an_endpoint_delete_skips_that_endpoint() {
    let db = TestDb::new().await;
    let (kept, deleted) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    for id in [kept, deleted] {
        sqlx::query(
            "insert into outbox.webhook_endpoints (id, url, secret_sealed, events) values ($1, 'https://x.example', 's', '{*}')",
        )
        .bind(id)
        .execute(&db.pool)
        .await
        .unwrap();
    }
    let mut deleting = db.pool.begin().await.unwrap();
    sqlx::query("delete from outbox.webhook_endpoints where id = $1")
        .bind(deleted)
        .execute(&mut *deleting)
        .await
        .unwrap();
    let pool = db.pool.clone();
    let emit = tokio::spawn(async move {
        let mut tx = pool.begin().await?;
        let id = tessera::outbox::emit_event(&mut *tx, "token.created", &json!({"tokenId": "t"})).await?;
        tx.commit().await?;
        Ok::<_, sqlx::Error>(id)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    deleting.commit().await.unwrap();
    let event = emit.await.unwrap().expect("the emit survives the concurrent delete");
    let endpoints: Vec<uuid::Uuid> =
        sqlx::query_scalar("select endpoint_id from outbox.deliveries where event_id = $1")
            .bind(event)
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(endpoints, [kept]);
}
