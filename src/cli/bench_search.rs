//! `tessera bench search`: the search verb under load, over the same mTLS keep-alive load
//! generator, server and data set as `tessera bench list` (shared from [`super::bench_list`]).
//!
//! Data set (seeded once per database): the list bench's 1 000 000 tasks over 50 projects (the
//! subject sees 200 000 of them), plus 100 000 insights of the subject with 384-dimension
//! embeddings. Embeddings are drawn around 1 000 random unit centres (as real embeddings
//! cluster by topic, see [`NOISE`]), each insight's content names its topic (`topic<n>`). Query
//! vectors are drawn the same way. Phases:
//!
//! - text search on tasks (a random task number: the 10 visible rows of 50 matches) at full
//!   load, at half that load (p50/p99), and the same SQL straight through the pool (the ceiling);
//! - vector top-20 over HNSW: recall against exact search (a sequential scan) on 200 random
//!   queries, then throughput and p99 over mTLS;
//! - hybrid (topic word + vector) throughput and p99;
//! - the size of every search index.
//!
//! It refuses a database that holds anything but its own data, like `bench list`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::Method;
use clap::Args;
use rand::RngExt;
use uuid::Uuid;

use super::bench_list::{self, BenchServer, Clients, drive, measure};
use crate::config::Config;
use crate::federation::ca::GatewayCa;
use crate::federation::scope::QueryFilter;
use crate::federation::verbs::search::{self as verb, DIMENSION, Search, SearchMode, Visibility};
use crate::rbac::Resource;
use crate::sealing::SealingKey;
use crate::services::Database;

const CENTRES: usize = 1000;
/// Per-dimension noise around a centre: about half the centre's length over 384 dimensions, so
/// a topic's insights lie at a cosine similarity of about 0.8 from one another and about 0 from
/// other topics. (Noise that drowns the centres, as uniform random vectors do, has no nearest
/// neighbours worth the name: every point is at about the same distance from every other.)
const NOISE: f32 = 0.1;

#[derive(Debug, Args)]
pub struct SearchBench {
    /// Total tasks to seed on first run.
    #[arg(long, default_value_t = 1_000_000)]
    tasks: u32,
    /// Insights (with embeddings) to seed on first run.
    #[arg(long, default_value_t = 100_000)]
    insights: u32,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Seconds per measured phase.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Queries for the recall measurement.
    #[arg(long, default_value_t = 200)]
    recall_queries: usize,
}

/// A unit vector near one of the centres (or a centre itself with `noise` 0).
fn near(centres: &[Vec<f32>], rng: &mut impl rand::Rng, noise: f32) -> (usize, Vec<f32>) {
    let c = rng.random_range(0..centres.len());
    let mut v: Vec<f32> = centres[c].iter().map(|x| x + noise * (rng.random::<f32>() - 0.5)).collect();
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(f32::MIN_POSITIVE);
    v.iter_mut().for_each(|x| *x /= norm);
    (c, v)
}

/// The same centres on every run (seeded generator), so later runs query the seeded clusters.
fn centres() -> Vec<Vec<f32>> {
    use rand::SeedableRng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(16);
    (0..CENTRES)
        .map(|_| {
            let v: Vec<f32> = (0..DIMENSION).map(|_| rng.random::<f32>() - 0.5).collect();
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.into_iter().map(|x| x / norm).collect()
        })
        .collect()
}

/// Seeds the insights once (after the list bench's seed made the subject and tasks).
///
/// Inserting 100 000 vectors one by one into the HNSW graph took minutes per 10 000 here, so
/// the load drops the migration's index and builds it again afterwards, in bulk, from its own
/// definition as the catalog holds it (`pg_get_indexdef`), all in one transaction: an
/// interrupted seed leaves neither rows nor a missing index behind.
async fn seed_insights(pool: &sqlx::PgPool, subject: Uuid, n: u32, centres: &[Vec<f32>]) -> anyhow::Result<()> {
    // The content names the data set's version: a data set drawn differently is drawn again.
    let have = sqlx::query_scalar!(r#"select count(*) as "n!" from insights where content like 'bench insight v2 %'"#)
        .fetch_one(pool)
        .await?;
    if have == i64::from(n) {
        return Ok(());
    }
    let started = Instant::now();
    eprintln!("seeding {n} insights with {DIMENSION}-dimension embeddings (first run only)...");
    let mut tx = pool.begin().await?;
    sqlx::query!("delete from insights").execute(&mut *tx).await?;
    let definition =
        sqlx::query_scalar!(r#"select pg_get_indexdef('insights_embedding_hnsw'::regclass) as "definition!""#)
            .fetch_one(&mut *tx)
            .await?;
    sqlx::query!("drop index insights_embedding_hnsw").execute(&mut *tx).await?;
    let mut rng = rand::rng();
    let mut left = n as usize;
    while left > 0 {
        let batch = left.min(2000);
        left -= batch;
        let mut ids = Vec::with_capacity(batch);
        let mut contents = Vec::with_capacity(batch);
        let mut vectors = Vec::with_capacity(batch);
        for _ in 0..batch {
            let (c, v) = near(centres, &mut rng, NOISE);
            ids.push(Uuid::now_v7());
            contents.push(format!("bench insight v2 about topic{c} number {}", rng.random_range(0..1_000_000)));
            vectors.push(pgvector::Vector::from(v));
        }
        // Unchecked: it binds pgvector `vector`s, whose OID differs per database.
        sqlx::query(
            "insert into insights (id, user_id, content, embedding, created_at)
             select id, $1, c, e, now() from unnest($2::uuid[], $3::text[], $4::vector[]) u(id, c, e)",
        )
        .bind(subject)
        .bind(&ids)
        .bind(&contents)
        .bind(&vectors)
        .execute(&mut *tx)
        .await?;
    }
    eprintln!("inserted in {:.1}s; building the HNSW index...", started.elapsed().as_secs_f64());
    sqlx::query!("set local maintenance_work_mem = '1GB'").execute(&mut *tx).await?;
    sqlx::query!("set local max_parallel_maintenance_workers = 2").execute(&mut *tx).await?;
    // Dynamic: the index's own definition, as the catalog gave it above.
    sqlx::query(sqlx::AssertSqlSafe(definition)).execute(&mut *tx).await?;
    tx.commit().await?;
    // Statistics only: a vacuum would walk the whole HNSW graph (minutes here), and no insight
    // read is index-only.
    sqlx::query!("analyze insights").execute(pool).await?;
    eprintln!("seeded insights in {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Runs the bench.
///
/// # Errors
/// A foreign database, or any set-up failure.
pub async fn run(config: &Config, args: &SearchBench) -> anyhow::Result<()> {
    let db = Database::open(config, (args.concurrency as u32 + 4).max(8)).await?;
    let result = run_on(config, &db.pool, args).await;
    db.close().await;
    result
}

async fn run_on(config: &Config, pool: &sqlx::PgPool, args: &SearchBench) -> anyhow::Result<()> {
    crate::store::migrate(pool).await?;
    let subject = bench_list::seed(pool, args.tasks).await?;
    let centres = Arc::new(centres());
    seed_insights(pool, subject, args.insights, &centres).await?;
    bench_list::forget_earlier_runs(pool).await?;
    let sealing = SealingKey::load(config.sealing_key.as_ref(), &config.data_dir)?;
    let ca = GatewayCa::load_or_create(pool, &sealing).await?;
    let scope = serde_json::json!({"resources": ["tasks", "memory"], "max_rows_per_query": 1000});
    let (_, identity_pem) = bench_list::enroll(pool, &ca, config, subject, scope).await?;
    let mut bench_config = config.clone();
    bench_config.search.embedding_model = Some("bench-random-384".into());
    let server =
        BenchServer::start(pool, &ca, &sealing, bench_config, args.concurrency, |_| axum::Router::new()).await?;
    let client = Clients::connect(ca.cert_pem(), &identity_pem, server.port, args.concurrency).await?;
    let filter = |resource: Resource| QueryFilter {
        resource,
        subject_user_id: subject,
        include_personal: true,
        team_ids: Vec::new(),
        limit: 20,
    };
    let teams =
        sqlx::query_scalar!("select team_id from team_members where user_id = $1", subject).fetch_all(pool).await?;
    let tasks_filter = Arc::new(QueryFilter { team_ids: teams, ..filter(Resource::Tasks) });
    let per_project = (args.tasks / 50).max(1);
    let insights = sqlx::query_scalar!(r#"select count(*) as "n!" from insights"#).fetch_one(pool).await?;
    println!(
        "data: {} tasks (200 000 visible at full size), {insights} insights with {DIMENSION}-dimension embeddings; \
         top 20, concurrency {}, {} s per phase",
        args.tasks, args.concurrency, args.seconds
    );
    let phase = Duration::from_secs(args.seconds);

    // Text on tasks: a random task number matches one task per project.
    let text_body = move || {
        let n = rand::rng().random_range(1..=per_project);
        format!(r#"{{"query":"{n}","limit":20}}"#)
    };
    let http = |path: &'static str, body: Arc<dyn Fn() -> String + Send + Sync>, rate: Option<f64>| {
        let client = client.clone();
        drive(args.concurrency, phase, rate, move |worker| {
            let (client, body) = (client.clone(), body.clone());
            async move { client.request(worker, Method::POST, path, body()).await }
        })
    };
    const TASKS: &str = "/api/federation/v1/search/tasks";
    const MEMORY: &str = "/api/federation/v1/search/memory";
    http(TASKS, Arc::new(text_body), None).await?; // warm-up
    let text = measure("text search over mTLS         ", true, || http(TASKS, Arc::new(text_body), None)).await?;
    let half = text.as_ref().map(|t| t.throughput() / 2.0);
    measure("text search at half load      ", true, || http(TASKS, Arc::new(text_body), half)).await?;
    let ceiling = measure("text search SQL ceiling       ", true, || {
        let (peer_reads, f) = (server.peer_reads.clone(), tasks_filter.clone());
        drive(args.concurrency, phase, None, move |_| {
            let (pool, f) = (peer_reads.clone(), f.clone());
            async move {
                let n = rand::rng().random_range(1..=per_project);
                let s = Search { mode: SearchMode::Text, query: n.to_string(), vector: None };
                verb::run(&pool, &f, Visibility::Grant, &s, 0, 21).await?;
                Ok(())
            }
        })
    })
    .await?;
    if let (Some(t), Some(c)) = (&text, &ceiling) {
        println!("text search / ceiling = {:.2}", t.throughput() / c.throughput());
    }

    // Vector: recall of the HNSW top 20 against exact search.
    let mut rng = rand::rng();
    let queries: Vec<(usize, Vec<f32>)> = (0..args.recall_queries).map(|_| near(&centres, &mut rng, NOISE)).collect();
    let memory = filter(Resource::Memory);
    let (mut hits, mut total) = (0usize, 0usize);
    let started = Instant::now();
    for (_, q) in &queries {
        let s = Search { mode: SearchMode::Vector, query: String::new(), vector: Some(q.clone()) };
        let approx = verb::run(&server.peer_reads, &memory, Visibility::Grant, &s, 0, 20).await?;
        let mut tx = pool.begin().await?;
        sqlx::query!("set local enable_indexscan = off").execute(&mut *tx).await?;
        // Unchecked: it binds a pgvector `vector`, whose OID differs per database.
        let exact: Vec<Uuid> = sqlx::query_scalar(
            "select id from insights where user_id = $1 and embedding is not null order by embedding <=> $2 limit 20",
        )
        .bind(subject)
        .bind(pgvector::Vector::from(q.clone()))
        .fetch_all(&mut *tx)
        .await?;
        tx.rollback().await?;
        total += exact.len();
        hits += approx
            .iter()
            .filter(|i| i["id"].as_str().and_then(|s| s.parse().ok()).is_some_and(|id| exact.contains(&id)))
            .count();
    }
    let recall = hits as f64 / total.max(1) as f64;
    println!(
        "vector top-20 recall (HNSW vs exact, {} queries) = {recall:.3}   ({:.1} s with the exact scans)",
        queries.len(),
        started.elapsed().as_secs_f64()
    );
    let bodies: Arc<Vec<(String, String)>> = Arc::new(
        queries
            .iter()
            .map(|(c, q)| {
                let v = serde_json::to_string(q).unwrap_or_default();
                (
                    format!(r#"{{"vector":{v},"mode":"vector","limit":20}}"#),
                    format!(r#"{{"query":"topic{c}","vector":{v},"limit":20}}"#),
                )
            })
            .collect(),
    );
    let pick = |hybrid: bool| {
        let bodies = bodies.clone();
        Arc::new(move || {
            let (v, h) = &bodies[rand::rng().random_range(0..bodies.len())];
            if hybrid { h.clone() } else { v.clone() }
        }) as Arc<dyn Fn() -> String + Send + Sync>
    };
    measure("vector top-20 over mTLS       ", true, || http(MEMORY, pick(false), None)).await?;
    measure("hybrid top-20 over mTLS       ", true, || http(MEMORY, pick(true), None)).await?;

    let sizes = sqlx::query!(
        r#"select c.relname::text as "name!", pg_size_pretty(pg_relation_size(c.oid)) as "size!"
           from pg_class c where c.relname in ('tasks_search', 'mission_tasks_search', 'insights_search',
               'preferences_search', 'insights_embedding_hnsw', 'insights_missing_embedding')
           order by pg_relation_size(c.oid) desc"#
    )
    .fetch_all(pool)
    .await?;
    for index in sizes {
        println!("index {:<28} {}", index.name, index.size);
    }
    server.stop().await;
    Ok(())
}
