//! The gateway as a whole, checked from outside: the real `tessera serve` binary over real TLS on
//! real Postgres (embedded and external), crash recovery, the CLI.

mod common;

use std::time::{Duration, Instant};

use common::{Gateway, GatewayOptions, TestDb, postmasters_for, run_cli, tls};

#[tokio::test]
async fn serves_health_ca_and_envelopes_over_tls() {
    let db = TestDb::new().await;
    let gw = Gateway::start(GatewayOptions { database_url: Some(db.url.clone()), ..Default::default() }).await;

    let r = gw.client.get(gw.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_2, "ALPN negotiates h2");
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["status"], "ok");

    let r = gw.client.get(gw.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["checks"]["database"], "ok");
    assert_eq!(body["checks"]["migrations"], "ok");

    // The CA served is the CA the server certificate chains to (the client trusts only it).
    let r = gw.client.get(gw.url("/api/federation/ca")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let pem = r.text().await.unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
    assert_eq!(pem.as_bytes(), gw.ca_pem.as_slice());

    // HTTP/1.1 works as well.
    let h1 = common::trusting(&gw.ca_pem).http1_only().build().unwrap();
    let r = h1.get(gw.url("/healthz")).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
    assert!(r.headers().contains_key("x-request-id"), "every response carries a request id");

    // Unknown route and wrong method: the JSON envelope, not an empty body.
    let (status, body) = gw.api().get("/no/such/route").await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "not_found");
    assert!(body["error"]["message"].is_string());
    let (status, body) = gw.api().delete("/healthz").await;
    assert_eq!(status, 405);
    assert_eq!(body["error"]["code"], "invalid_request");

    // The OpenAPI document is served and is the committed one.
    let r = gw.client.get(gw.url("/api/openapi.json")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), tessera::http::openapi_document_json());

    // /metrics counts requests by method and status class; a method a client makes up counts as
    // `other`, so nobody can mint new time series.
    let brew = reqwest::Method::from_bytes(b"BREWCOFFEE").unwrap();
    let r = gw.client.request(brew, gw.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    let metrics = gw.client.get(gw.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("tessera_http_requests_total{method=\"GET\",status=\"2xx\"}"), "{metrics}");
    assert!(metrics.contains("method=\"other\""), "{metrics}");
    assert!(!metrics.contains("BREWCOFFEE"), "{metrics}");
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_gateway_ca_is_refused() {
    let db = TestDb::new().await;
    let gw = Gateway::start(GatewayOptions { database_url: Some(db.url.clone()), ..Default::default() }).await;
    // A fresh, unrelated CA: the server certificate must not verify against it.
    let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let client = common::client_trusting(other.cert.pem().as_bytes());
    assert!(client.get(gw.url("/healthz")).send().await.is_err());
}

#[tokio::test]
async fn embedded_tier_survives_kill_9_with_its_data_and_one_postmaster() {
    let gw = Gateway::start(GatewayOptions::default()).await;
    let port = gw.port;
    let pgdata = gw.data_dir.join("pg");
    assert_eq!(postmasters_for(&pgdata).len(), 1);

    // Write a row through the embedded cluster's socket.
    let socket = tessera::services::postgres::running_socket_dir(&gw.data_dir).expect("socket");
    let url = format!("postgres://tessera@localhost/tessera?host={}", socket.display());
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::query("insert into teams (id, name) values ($1, 'survivors')")
        .bind(uuid::Uuid::new_v4())
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let ca_before = gw.ca_pem.clone();

    let mut gw = gw;
    gw.kill9();
    let (data_dir, tmp) = gw.into_data_dir();
    // The postmaster outlives the gateway: this is the orphan a restart must handle.
    assert_eq!(postmasters_for(&pgdata).len(), 1);

    let started = Instant::now();
    let gw =
        Gateway::start(GatewayOptions { data_dir: Some(data_dir.clone()), port: Some(port), ..Default::default() })
            .await;
    assert!(started.elapsed() < Duration::from_secs(10), "restart took {:?}", started.elapsed());
    assert_eq!(postmasters_for(&pgdata).len(), 1, "exactly one postmaster after restart");
    assert_eq!(gw.ca_pem, ca_before, "the CA survives restarts");

    let socket = tessera::services::postgres::running_socket_dir(&data_dir).expect("socket");
    let url = format!("postgres://tessera@localhost/tessera?host={}", socket.display());
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let n: i64 =
        sqlx::query_scalar("select count(*) from teams where name = 'survivors'").fetch_one(&pool).await.unwrap();
    assert_eq!(n, 1, "data written before kill -9 is still there");
    pool.close().await;

    // A second gateway on the same data dir is refused.
    let (code, _, stderr) =
        run_cli(&["serve"], &[("TESSERA_DATA_DIR", data_dir.to_str().unwrap()), ("TESSERA_LISTEN", "127.0.0.1:0")]);
    assert_eq!(code, 1);
    assert!(stderr.contains("already running"), "{stderr}");

    // A graceful stop also stops Postgres.
    let mut gw = gw;
    let status = gw.terminate();
    assert!(status.success(), "clean exit on SIGTERM: {status}");
    assert!(postmasters_for(&pgdata).is_empty(), "SIGTERM stops the embedded Postgres");
    drop(gw);
    drop(tmp);
}

#[tokio::test]
async fn stale_postmaster_pid_from_a_dead_process_is_cleared() {
    let gw = Gateway::start(GatewayOptions::default()).await;
    let mut gw = gw;
    gw.terminate();
    let (data_dir, tmp) = gw.into_data_dir();
    // Simulate a crash that left the lock file behind, naming a pid that is not a postgres.
    let pid_file = data_dir.join("pg/postmaster.pid");
    std::fs::write(&pid_file, format!("{}\n{}\n0\n5432\n/nonexistent\n\n", std::process::id(), data_dir.display()))
        .unwrap();
    let gw = Gateway::start(GatewayOptions { data_dir: Some(data_dir.clone()), ..Default::default() }).await;
    assert_eq!(postmasters_for(&data_dir.join("pg")).len(), 1);
    drop(gw);
    drop(tmp);
}

#[tokio::test]
async fn doctor_reports_json_and_exit_codes() {
    let db = TestDb::new().await;
    let gw = Gateway::start(GatewayOptions { database_url: Some(db.url.clone()), ..Default::default() }).await;
    let dd = gw.data_dir.to_str().unwrap().to_string();
    let (code, stdout, stderr) =
        run_cli(&["doctor", "--json"], &[("DATABASE_URL", &db.url), ("TESSERA_DATA_DIR", &dd)]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("valid JSON");
    assert_eq!(report["tier"], "standalone");
    let names: Vec<&str> = report["checks"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    for expected in ["tier", "data_dir", "postgres", "pgvector", "migrations", "ca"] {
        assert!(names.contains(&expected), "missing check {expected} in {names:?}");
    }
    assert_eq!(report["status"], "green");
    assert_eq!(report["warnings"], serde_json::json!([]));
    let peers = report["checks"].as_array().unwrap().iter().find(|c| c["name"] == "peers").expect("peers check");
    assert_eq!(peers["status"], "green", "{peers}");

    // A peer we call whose client certificate is in the last sixth of its life (55 minutes
    // long, 5 left): a warning, exit 2, naming the peer; the same with a healthy certificate
    // whose renewal failed three times in a row.
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::default();
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(50);
    params.not_after = now + time::Duration::minutes(5);
    let cert = params.self_signed(&key).unwrap().pem();
    sqlx::query(
        "insert into federation_peers (id, name, state, endpoint_url, client_cert_pem, client_cert_not_after,
                                       client_cert_received_at)
         values ($1, 'acme', 'active', 'https://acme.test', $2, now() + interval '5 minutes', now() - interval '50 minutes')",
    )
    .bind(uuid::Uuid::now_v7())
    .bind(&cert)
    .execute(&db.pool)
    .await
    .unwrap();
    let env = [("DATABASE_URL", db.url.as_str()), ("TESSERA_DATA_DIR", dd.as_str())];
    let (code, stdout, stderr) = run_cli(&["doctor", "--json"], &env);
    assert_eq!(code, 2, "{stdout}{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("valid JSON");
    assert_eq!(report["status"], "yellow");
    let warnings = report["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1, "{report}");
    assert!(warnings[0].as_str().unwrap().starts_with("peers: acme: client certificate in the last sixth"), "{report}");
    let (code, stdout, _) = run_cli(&["doctor"], &env);
    assert_eq!(code, 2);
    assert!(stdout.contains("[warn] peers") && stdout.contains("1 warning(s): exit 2"), "{stdout}");
    let mut params = rcgen::CertificateParams::default();
    params.not_before = now - time::Duration::minutes(1);
    params.not_after = now + time::Duration::hours(1);
    let healthy = params.self_signed(&key).unwrap().pem();
    sqlx::query(
        "update federation_peers set client_cert_pem = $1, client_cert_not_after = now() + interval '1 hour',
                renewal_failures = 3, last_error = 'peer ''acme'' refused the renewal (403 Forbidden)',
                last_error_at = now()
          where name = 'acme'",
    )
    .bind(&healthy)
    .execute(&db.pool)
    .await
    .unwrap();
    let (code, stdout, _) = run_cli(&["doctor", "--json"], &env);
    assert_eq!(code, 2, "{stdout}");
    assert!(stdout.contains("acme: renewal failed 3 times in a row (last error: peer 'acme' refused"), "{stdout}");
    // Renewed: green again.
    sqlx::query("update federation_peers set renewal_failures = 0, last_success_at = now() where name = 'acme'")
        .execute(&db.pool)
        .await
        .unwrap();
    let (code, stdout, _) = run_cli(&["doctor", "--json"], &env);
    assert_eq!(code, 0, "{stdout}");
    // A CA within 30 days of expiry is a warning too.
    sqlx::query("update gateway_ca set not_after = now() + interval '10 days'").execute(&db.pool).await.unwrap();
    let (code, stdout, _) = run_cli(&["doctor", "--json"], &env);
    assert_eq!(code, 2, "{stdout}");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("valid JSON");
    assert!(report["warnings"][0].as_str().unwrap().starts_with("ca: expires"), "{report}");

    // Unreachable database: red, exit 1, and the password never printed.
    let port = common::free_port();
    let bad = format!("postgres://app:hunter2@127.0.0.1:{port}/x");
    let (code, stdout, stderr) = run_cli(&["doctor", "--json"], &[("DATABASE_URL", &bad), ("TESSERA_DATA_DIR", &dd)]);
    assert_eq!(code, 1);
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("valid JSON");
    assert_eq!(report["status"], "red");
    assert!(!stdout.contains("hunter2") && !stderr.contains("hunter2"));

    // Tier local with no gateway running: red as well.
    let empty = tempfile::tempdir().unwrap();
    let (code, stdout, _) = run_cli(&["doctor", "--json"], &[("TESSERA_DATA_DIR", empty.path().to_str().unwrap())]);
    assert_eq!(code, 1);
    assert!(stdout.contains("not running"));
}

#[tokio::test]
async fn demo_seed_loads_a_realistic_data_set_once() {
    let db = TestDb::new().await;
    let (code, _, stderr) = run_cli(&["demo", "seed", "--tasks", "3000"], &[("DATABASE_URL", &db.url)]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("3000 tasks"), "{stderr}");
    let tasks: i64 = sqlx::query_scalar("select count(*) from tasks").fetch_one(&db.pool).await.unwrap();
    assert_eq!(tasks, 3000);
    // Realistic: personal and team projects, notes by several users on shared missions, memory.
    let personal: i64 = sqlx::query_scalar("select count(*) from projects where owner_user_id is not null")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let team: i64 = sqlx::query_scalar("select count(*) from projects where team_id is not null")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(personal > 0 && team > 0);
    let shared: i64 = sqlx::query_scalar(
        "select count(*) from (select mission_id from mission_tasks group by mission_id having count(distinct user_id) > 1) m",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(shared > 0, "some missions carry notes from several users");
    let embedded: i64 = sqlx::query_scalar("select count(*) from insights where embedding is not null")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(embedded > 0);
    let orphan_tasks: i64 = sqlx::query_scalar(
        "select count(*) from tasks t join missions m on m.id = t.mission_id where m.project_id <> t.project_id",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(orphan_tasks, 0, "a mission task belongs to the mission's project");

    let (code, _, stderr) = run_cli(&["demo", "seed", "--tasks", "10"], &[("DATABASE_URL", &db.url)]);
    assert_eq!(code, 3, "refused: {stderr}");
    assert!(stderr.contains("already holds the demo data set"), "{stderr}");
    let tasks: i64 = sqlx::query_scalar("select count(*) from tasks").fetch_one(&db.pool).await.unwrap();
    assert_eq!(tasks, 3000, "a refused second seed adds nothing");
}

#[tokio::test]
async fn bad_configuration_names_the_key() {
    let (code, _, stderr) = run_cli(&["serve"], &[("TESSERA_LISTEN", "not-an-address")]);
    assert_eq!(code, 64, "bad configuration is a usage error");
    assert!(stderr.contains("TESSERA_LISTEN"), "{stderr}");
    let (code, _, stderr) = run_cli(&["serve"], &[("TESSERA_TIER", "cloud")]);
    assert_eq!(code, 64);
    assert!(stderr.contains("TESSERA_TIER"), "{stderr}");
    let (code, _, stderr) =
        run_cli(&["serve"], &[("DATABASE_URL", "postgres://u:topsecret@127.0.0.1:1/x"), ("TESSERA_SEALING_KEY", "zz")]);
    assert_eq!(code, 64, "the key is checked before the database is tried: {stderr}");
    assert!(stderr.contains("TESSERA_SEALING_KEY"), "{stderr}");
    assert!(!stderr.contains("topsecret"), "{stderr}");
}

/// Start-up checks the settings, the sealing key and the listen socket before any service: a taken
/// port or a malformed key stops `serve` with one line naming the setting, and no Postgres was
/// ever started on the data dir.
#[tokio::test]
async fn a_taken_port_or_a_bad_sealing_key_stops_start_up_before_postgres() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let dir = tempfile::Builder::new().prefix("tsr").tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let data_dir = dir.path().to_str().unwrap();
    let pgdata = dir.path().join("pg");
    let listen = format!("127.0.0.1:{port}");

    let (code, out, err) = run_cli(&["serve"], &[("TESSERA_DATA_DIR", data_dir), ("TESSERA_LISTEN", &listen)]);
    assert_ne!(code, 0, "{out}{err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line: {err}");
    assert!(lines[0].contains("TESSERA_LISTEN") && lines[0].contains(&listen), "{err}");
    assert!(postmasters_for(&pgdata).is_empty(), "no Postgres for a gateway that cannot listen");
    assert!(!pgdata.exists(), "not even initdb ran");

    let (code, _, err) = run_cli(
        &["serve"],
        &[("TESSERA_DATA_DIR", data_dir), ("TESSERA_LISTEN", "127.0.0.1:0"), ("TESSERA_SEALING_KEY", "abc123")],
    );
    assert_eq!(code, 64, "a malformed setting is a usage error: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line: {err}");
    assert!(lines[0].contains("TESSERA_SEALING_KEY") && !lines[0].contains("abc123"), "{err}");
    assert!(postmasters_for(&pgdata).is_empty() && !pgdata.exists());
    drop(held);
}

#[tokio::test]
async fn concurrent_migrations_do_not_race() {
    let pg_db = TestDb::new().await;
    // A database with no schema at all: drop every schema the template created.
    sqlx::raw_sql(
        "do $$ declare s text; begin
             for s in select nspname from pg_namespace
                      where nspname not like 'pg\\_%' and nspname <> 'information_schema' loop
                 execute format('drop schema %I cascade', s);
             end loop;
         end $$;
         create schema public",
    )
    .execute(&pg_db.pool)
    .await
    .unwrap();
    let url = pg_db.url.clone();
    let runs: Vec<_> = (0..3)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || run_cli(&["migrate"], &[("DATABASE_URL", &url)]))
        })
        .collect();
    for r in runs {
        let (code, _, stderr) = r.join().unwrap();
        assert_eq!(code, 0, "{stderr}");
    }
    let n: i64 = sqlx::query_scalar("select count(*) from _sqlx_migrations").fetch_one(&pg_db.pool).await.unwrap();
    assert_eq!(n as usize, tessera::store::MIGRATOR.iter().count());
}

/// True when the server closes `stream` (EOF or reset) within `within`, whatever it sends first.
async fn closed_within<S: tokio::io::AsyncRead + Unpin>(stream: &mut S, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_connections_are_closed_and_a_flood_cannot_starve_the_gateway() {
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;
    let db = TestDb::new().await;
    let gw = Gateway::start(GatewayOptions {
        database_url: Some(db.url.clone()),
        env: vec![
            ("TESSERA_IDLE_TIMEOUT_SECS".into(), "2".into()),
            ("TESSERA_HANDSHAKE_TIMEOUT_SECS".into(), "2".into()),
        ],
        descriptor_limit: Some(256),
        ..Default::default()
    })
    .await;
    assert!(gw.log().contains("capacity=128"), "the connection cap sits below the descriptor limit:\n{}", gw.log());
    let addr = ("127.0.0.1", gw.port);
    let name = || rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let slack = Duration::from_secs(6);

    // A TCP connection that never starts TLS: the handshake timeout closes it.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    // A TLS connection that sends nothing after the handshake (HTTP/1.1).
    let h1 = tls::connector(tls::client_config(&gw.ca_pem, None, &[b"http/1.1"]));
    let mut idle_h1 = h1.connect(name(), TcpStream::connect(addr).await.unwrap()).await.unwrap();
    // An HTTP/2 connection idle after its preface and SETTINGS.
    let h2 = tls::connector(tls::client_config(&gw.ca_pem, None, &[b"h2"]));
    let mut idle_h2 = h2.connect(name(), TcpStream::connect(addr).await.unwrap()).await.unwrap();
    idle_h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00").await.unwrap();
    // A half-sent preface.
    let mut half = h2.connect(name(), TcpStream::connect(addr).await.unwrap()).await.unwrap();
    half.write_all(b"PRI * HTT").await.unwrap();
    // A kept-alive HTTP/1.1 connection after one request.
    let mut kept = h1.connect(name(), TcpStream::connect(addr).await.unwrap()).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();

    assert!(closed_within(&mut silent, slack).await, "a silent TCP connection is closed");
    assert!(closed_within(&mut idle_h1, slack).await, "an idle TLS connection is closed");
    assert!(closed_within(&mut idle_h2, slack).await, "an idle HTTP/2 connection is closed");
    assert!(closed_within(&mut half, slack).await, "a half-sent preface is closed");
    assert!(closed_within(&mut kept, slack).await, "an idle keep-alive connection is closed");

    // A flood well past the descriptor limit: the gateway accepts what its cap allows, closes
    // them as they idle out, and serves a legitimate client afterwards.
    let mut flood = Vec::new();
    for _ in 0..400 {
        if let Ok(tcp) = TcpStream::connect(addr).await {
            flood.push(tcp);
        }
    }
    let started = Instant::now();
    let client = common::client_trusting(&gw.ca_pem);
    let mut served = false;
    while started.elapsed() < Duration::from_secs(30) {
        let probe = tokio::time::timeout(Duration::from_secs(3), client.get(gw.url("/readyz")).send()).await;
        if let Ok(Ok(r)) = probe
            && r.status() == 200
        {
            served = true;
            break;
        }
    }
    assert!(served, "a legitimate client is served once idle connections time out:\n{}", gw.log());

    // The queue kept its descriptors: a job still runs to the end.
    let job = tessera::queue::NewJob::new("diag", "diag.probe", serde_json::json!({"after": "flood"}));
    tessera::queue::enqueue_many(&db.pool, &[job]).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let done: i64 = sqlx::query_scalar("select count(*) from queue.jobs where queue = 'diag' and status = 'done'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        if done == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the queue stopped:\n{}", gw.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(flood);
    let log = gw.log();
    assert!(!log.contains("Too many open files"), "{log}");
    assert!(log.lines().filter(|l| l.contains("accept failed")).count() <= 2, "{log}");
}

#[tokio::test]
async fn bench_handshake_measures_full_and_resumed_handshakes() {
    let (code, out, err) = run_cli(&["bench", "handshake", "--seconds", "1"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    let resumed_share = |label: &str| -> u32 {
        let line = out.lines().find(|l| l.trim_start().starts_with(label)).unwrap_or_else(|| panic!("{out}"));
        let pct = line.rsplit('(').next().unwrap().split('%').next().unwrap();
        pct.parse().unwrap()
    };
    assert_eq!(resumed_share("full, client certificate"), 0, "{out}");
    // A valid client certificate's session resumes: the binding to notAfter does not stop it.
    assert!(resumed_share("resumed, client certificate") >= 50, "{out}");
}

/// The pinned schemathesis, installed by the suite itself into `.schemathesis/` (like the server
/// bundles): its path.
fn schemathesis_bin() -> std::path::PathBuf {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = std::process::Command::new(format!("{root}/scripts/install-schemathesis.sh"))
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run scripts/install-schemathesis.sh");
    assert!(out.status.success(), "installing schemathesis failed:\n{}", String::from_utf8_lossy(&out.stderr));
    std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

fn new_csr() -> (rcgen::KeyPair, String) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let pem = rcgen::CertificateParams::default().serialize_request(&key).unwrap().pem().unwrap();
    (key, pem)
}

/// The committed OpenAPI document is an exact contract: schemathesis (all checks: status codes,
/// response schemas, positive data accepted, negative data refused, auth, stateful links) runs
/// its coverage, fuzzing and stateful phases against a fresh gateway, as an admin and with a
/// grant's client certificate for the peer-facing verbs, and finds nothing. Every operation in
/// the document is run, so a route added without its bounds, formats or statuses fails here.
/// The values no schema can produce (cursors, a webhook URL that resolves, a signed CSR, a
/// future expiry) come from `tests/fixtures/schemathesis_hooks.py`, which says why for each.
#[tokio::test(flavor = "multi_thread")]
async fn openapi_contract_holds_under_schemathesis() {
    let st = schemathesis_bin();
    let db = TestDb::new().await;
    let gw = Gateway::start(GatewayOptions {
        database_url: Some(db.url.clone()),
        env: vec![
            // Positive webhook cases register an unused loopback port (see the hooks).
            ("TESSERA_WEBHOOK_ALLOWED_CIDRS".into(), "127.0.0.1/32".into()),
            // `renew` succeeds in positive cases; the first certificate keeps reading meanwhile.
            ("TESSERA_FEDERATION_RENEW_GRACE_SECS".into(), "3600".into()),
            // Vector and hybrid search are on (memory), so they are run too.
            ("TESSERA_EMBEDDING_MODEL".into(), "contract-test-model".into()),
        ],
        ..Default::default()
    })
    .await;
    let c = &gw.client;
    let setup: serde_json::Value = c
        .post(gw.url("/api/bootstrap/setup"))
        .json(&serde_json::json!({"email": "ada@example.org", "name": "Ada", "password": "correct-horse-battery"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = setup["token"]["plaintext"].as_str().expect("bootstrap answers the first token").to_string();
    let admin = |r: reqwest::RequestBuilder| r.bearer_auth(&token);
    let post = |path: &str, body: serde_json::Value| admin(c.post(gw.url(path))).json(&body).send();
    let json = |r: reqwest::Response| async move {
        assert!(r.status().is_success(), "{} {}", r.status(), r.text().await.unwrap());
        r.json::<serde_json::Value>().await.unwrap()
    };
    // A grant and its client certificate, so the peer-facing verbs are run too.
    let subject = json(
        post("/api/admin/users", serde_json::json!({"email": "sub@example.org", "name": "Sub", "role": "member"}))
            .await
            .unwrap(),
    )
    .await;
    let peer = json(post("/api/admin/peers", serde_json::json!({"name": "reader"})).await.unwrap()).await;
    let grant = json(
        post(
            "/api/admin/grants",
            serde_json::json!({"peerId": peer["id"], "subjectUserId": subject["id"],
                               "scope": {"resources": ["tasks", "notes", "memory"]}}),
        )
        .await
        .unwrap(),
    )
    .await;
    let enrollment =
        json(post("/api/federation/enrollment/tokens", serde_json::json!({"grantId": grant["id"]})).await.unwrap())
            .await;
    let (key, csr) = new_csr();
    let issued = json(
        c.post(gw.url(&format!("/api/federation/enrollment/{}", enrollment["token"].as_str().unwrap())))
            .json(&serde_json::json!({"csrPem": csr}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (cert_file, key_file, ca_file) =
        (dir.path().join("client.pem"), dir.path().join("client.key"), dir.path().join("ca.pem"));
    std::fs::write(&cert_file, issued["certPem"].as_str().unwrap()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    std::fs::write(&ca_file, &gw.ca_pem).unwrap();
    let (_, hook_csr) = new_csr();

    let root = env!("CARGO_MANIFEST_DIR");
    let started = Instant::now();
    let run = || {
        std::process::Command::new(&st)
            .current_dir(dir.path())
            .arg("--config-file")
            .arg(format!("{root}/tests/fixtures/schemathesis.toml"))
            .args(["run", &format!("{root}/openapi/tessera.json"), "--url", &gw.base])
            .args(["--checks", "all", "--phases", "coverage,fuzzing,stateful", "--max-examples", "25", "--seed", "1"])
            .args(["--generation-allow-x00", "false", "--generation-with-security-parameters", "false"])
            // One worker: with two, the Python 3.11 here sometimes fails an internal `ast` check
            // across threads ("AST constructor recursion depth mismatch"), a runtime error of the run.
            .args(["--generation-database", "none", "--no-color", "--workers", "1"])
            // A response within 30 s: schemathesis' default of 10 s is missed on a loaded 2-core CI.
            .args(["--max-response-time", "30"])
            .arg("--tls-verify")
            .arg(&ca_file)
            .arg("--request-cert")
            .arg(&cert_file)
            .arg("--request-cert-key")
            .arg(&key_file)
            .args(["--header", &format!("Authorization: Bearer {token}")])
            .env("SCHEMATHESIS_HOOKS", format!("{root}/tests/fixtures/schemathesis_hooks.py"))
            .env("TESSERA_TEST_CSR_PEM", &hook_csr)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run schemathesis")
    };
    let mut out = run();
    // Known and open: now and then one request of the run loses its connection ("EOF occurred in
    // violation of protocol", seen on `renew` on a loaded machine) before any answer. It is not a
    // contract failure, so the run is repeated once, and the first report is printed.
    if !out.status.success() && String::from_utf8_lossy(&out.stdout).contains("EOF occurred in violation of protocol") {
        eprintln!(
            "schemathesis lost a connection; running it again. First report:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        out = run();
    }
    let report = String::from_utf8_lossy(&out.stdout);
    eprintln!("schemathesis ran {:.0?}", started.elapsed());
    assert!(
        out.status.success(),
        "schemathesis found failures against openapi/tessera.json:\n{report}\n{}\ngateway errors:\n{}",
        String::from_utf8_lossy(&out.stderr),
        gw.log().lines().filter(|l| l.contains("ERROR") || l.contains("WARN")).collect::<Vec<_>>().join("\n")
    );
    assert!(report.contains("Tested: "), "{report}");

    // NUL characters (which Postgres cannot store) are refused at the boundary on every route with a
    // JSON body, whatever the body means: 400 naming the field, never a 500. (The run above leaves
    // them out, so that its positive cases are not refused for them.)
    let doc: serde_json::Value = serde_json::from_str(tessera::http::openapi_document_json()).unwrap();
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if op.get("requestBody").is_none() {
                continue;
            }
            let concrete: Vec<String> = path
                .split('/')
                .map(|segment| match segment {
                    "{name}" => "maintenance".to_string(),
                    "{resource}" => "tasks".to_string(),
                    "{token}" => "0".repeat(64),
                    s if s.starts_with('{') => uuid::Uuid::nil().to_string(),
                    s => s.to_string(),
                })
                .collect();
            let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let r = admin(c.request(method.clone(), gw.url(&concrete.join("/"))))
                .header("content-type", "application/json")
                .body(r#"{"text": "a\u0000b"}"#)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let body = r.text().await.unwrap();
            if path.starts_with("/api/federation/v1/") {
                assert_eq!(status, 401, "{method} {path} without a client certificate: {body}");
            } else {
                assert_eq!(status, 400, "{method} {path}: {body}");
                assert!(body.contains("NUL"), "{method} {path}: {body}");
            }
            checked += 1;
        }
    }
    assert!(checked > 20, "{checked}");
}
