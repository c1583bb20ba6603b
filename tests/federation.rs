//! Federation between two real gateways on loopback: trust (peers, grants, enrollment, pinning,
//! renewal, revocation, CRL) and the mTLS guard.

mod common;

use std::time::Duration;

use common::{Gateway, GatewayOptions, TestDb, run_cli, seed_admin, tls, wait_for_count};
use serde_json::{Value, json};
use uuid::Uuid;

/// Gateway B (holds the data, serves) plus gateway A's database and data dir (the caller).
struct Pair {
    b: Gateway,
    b_db: TestDb,
    a_db: TestDb,
    a_dir: tempfile::TempDir,
    token: String,
    subject: Uuid,
    peer_id: Uuid,
}

impl Pair {
    async fn new(env: Vec<(String, String)>) -> Self {
        let b_db = TestDb::new().await;
        let a_db = TestDb::new().await;
        let b =
            Gateway::start(GatewayOptions { database_url: Some(b_db.url.clone()), env, ..Default::default() }).await;
        let (_, token) = seed_admin(&b_db.pool, "admin@b.test").await;
        let subject = Uuid::now_v7();
        sqlx::query("insert into users (id, email, name, role) values ($1, 'subject@b.test', 'Subject', 'member')")
            .bind(subject)
            .execute(&b_db.pool)
            .await
            .unwrap();
        let a_dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let mut pair = Self { b, b_db, a_db, a_dir, token, subject, peer_id: Uuid::nil() };
        let peer = pair.admin_post("/api/admin/peers", json!({"name": "gateway-a"})).await;
        assert_eq!(peer.0, 201, "{}", peer.1);
        pair.peer_id = peer.1["id"].as_str().unwrap().parse().unwrap();
        pair
    }

    async fn admin(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        self.b.api().bearer(&self.token).call(method, path, body).await
    }

    async fn admin_post(&self, path: &str, body: Value) -> (u16, Value) {
        self.admin(reqwest::Method::POST, path, Some(body)).await
    }

    async fn grant(&self, scope: Value) -> Uuid {
        let (status, g) = self
            .admin_post(
                "/api/admin/grants",
                json!({"peerId": self.peer_id, "subjectUserId": self.subject, "scope": scope}),
            )
            .await;
        assert_eq!(status, 201, "{g}");
        assert_eq!(g["status"], "pending");
        g["id"].as_str().unwrap().parse().unwrap()
    }

    async fn enrollment_url(&self, grant: Uuid) -> (String, String) {
        let (status, t) = self.admin_post("/api/federation/enrollment/tokens", json!({"grantId": grant})).await;
        assert_eq!(status, 201, "{t}");
        assert_eq!(t["token"].as_str().unwrap().len(), 64);
        (t["token"].as_str().unwrap().to_string(), t["enrollmentUrl"].as_str().unwrap().to_string())
    }

    fn a_env(&self) -> Vec<(&str, &str)> {
        vec![("DATABASE_URL", self.a_db.url.as_str()), ("TESSERA_DATA_DIR", self.a_dir.path().to_str().unwrap())]
    }

    fn peer_add(&self, url: &str) -> (i32, String, String) {
        run_cli(&["peer", "add", url, "--name", "gateway-b", "--json"], &self.a_env())
    }

    /// A's stored client identity for B: (key PEM + cert PEM, cert PEM).
    async fn a_identity(&self) -> (Vec<u8>, String) {
        let (cert, sealed): (String, String) =
            sqlx::query_as("select client_cert_pem, sealed_client_key from federation_peers where name = 'gateway-b'")
                .fetch_one(&self.a_db.pool)
                .await
                .unwrap();
        let sealing = tessera::sealing::SealingKey::load(None, self.a_dir.path()).unwrap();
        let mut pem = sealing.open(tessera::federation::client::CLIENT_KEY_CONTEXT, &sealed).unwrap();
        pem.extend_from_slice(cert.as_bytes());
        (pem, cert)
    }

    fn mtls_client(&self, identity_pem: &[u8]) -> reqwest::Client {
        common::mtls_client(&self.b.ca_pem, identity_pem).build().unwrap()
    }

    /// Enrolls A with a new tasks grant and returns the grant id.
    async fn enroll(&self) -> Uuid {
        let grant = self.grant(json!({"resources": ["tasks"]})).await;
        let (_, url) = self.enrollment_url(grant).await;
        let (code, out, err) = self.peer_add(&url);
        assert_eq!(code, 0, "{out}{err}");
        grant
    }

    fn b_ca(&self) -> std::sync::Arc<tessera::federation::ca::GatewayCa> {
        let sealing = tessera::sealing::SealingKey::load(None, &self.b.data_dir).unwrap();
        let pool = self.b_db.pool.clone();
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current()
                .block_on(tessera::federation::ca::GatewayCa::load_or_create(&pool, &sealing))
                .unwrap()
        })
    }
}

fn csr(key: &rcgen::KeyPair, params: rcgen::CertificateParams) -> String {
    params.serialize_request(key).unwrap().pem().unwrap()
}

fn p256() -> rcgen::KeyPair {
    rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()
}

async fn redeem(b: &Gateway, token: &str, csr_pem: &str) -> (u16, Value) {
    b.api().post(&format!("/api/federation/enrollment/{token}"), json!({"csrPem": csr_pem})).await
}

fn leaf_identity(cert_pem: &str) -> tessera::federation::identity::PeerIdentity {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
    tessera::federation::identity::parse_identity(der.as_ref(), &Default::default()).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_gateways_enroll_with_a_pinned_ca_and_exact_certificates() {
    let pair = Pair::new(vec![]).await;
    let grant = pair.grant(json!({"resources": ["tasks", "notes"], "max_rows_per_query": 50})).await;
    let (token, url) = pair.enrollment_url(grant).await;
    assert!(url.contains(&format!(
        "#sha256={}",
        tessera::federation::client::pem_fingerprint(std::str::from_utf8(&pair.b.ca_pem).unwrap()).unwrap()
    )));

    let (code, out, err) = pair.peer_add(&url);
    assert_eq!(code, 0, "{out}{err}");
    let enrolled: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(enrolled["remoteGrantId"], grant.to_string());

    // A's record: active, with a valid certificate and the pinned CA.
    let (state, not_after, fp): (String, chrono::DateTime<chrono::Utc>, String) = sqlx::query_as(
        "select state, client_cert_not_after, ca_fingerprint from federation_peers where name = 'gateway-b'",
    )
    .fetch_one(&pair.a_db.pool)
    .await
    .unwrap();
    assert_eq!(state, "active");
    assert!(not_after > chrono::Utc::now());
    assert_eq!(fp.len(), 64);
    let (code, out, _) = run_cli(&["peer", "list", "--json"], &pair.a_env());
    assert_eq!(code, 0);
    let listed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed[0]["caFingerprint"], fp.as_str());
    assert_eq!(listed[0]["state"], "active");
    assert!(listed[0]["clientCertNotAfter"].is_string());

    // B's grant and peer are active, with the serial recorded.
    let (status, g) = pair.admin(reqwest::Method::GET, &format!("/api/admin/grants/{grant}"), None).await;
    assert_eq!(status, 200);
    assert_eq!(g["status"], "active");
    let (_, cert_pem) = pair.a_identity().await;
    let identity = leaf_identity(&cert_pem);
    assert_eq!(identity.grant_id, grant);
    assert_eq!(identity.subject_user_id, pair.subject);
    let serial: String = sqlx::query_scalar("select current_serial from federation_peers where id = $1")
        .bind(pair.peer_id)
        .fetch_one(&pair.b_db.pool)
        .await
        .unwrap();
    assert_eq!(serial, identity.serial);

    // openssl sees both OIDs, non-critical, with EKU clientAuth and the peer name as CN.
    let path = pair.a_dir.path().join("client.pem");
    std::fs::write(&path, &cert_pem).unwrap();
    let text =
        std::process::Command::new("openssl").args(["x509", "-noout", "-text", "-in"]).arg(&path).output().unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("1.3.6.1.4.1.99999.1:") && !text.contains("1.3.6.1.4.1.99999.1: critical"), "{text}");
    assert!(text.contains("1.3.6.1.4.1.99999.2:") && !text.contains("1.3.6.1.4.1.99999.2: critical"), "{text}");
    assert!(text.contains(&grant.to_string()) && text.contains(&pair.subject.to_string()), "{text}");
    assert!(text.contains("TLS Web Client Authentication"), "{text}");
    assert!(text.contains("CN=gateway-a") || text.contains("CN = gateway-a"), "{text}");

    // A second redeem of the same token is gone.
    let (status, body) = redeem(&pair.b, &token, &csr(&p256(), rcgen::CertificateParams::default())).await;
    assert_eq!(status, 410, "{body}");
    assert_eq!(body["error"]["code"], "gone");

    // No private key is stored in the clear, on either side.
    for pool in [&pair.a_db.pool, &pair.b_db.pool] {
        let sealed: Vec<Option<String>> = sqlx::query_scalar(
            "select sealed_key from gateway_ca union all select sealed_client_key from federation_peers",
        )
        .fetch_all(pool)
        .await
        .unwrap();
        assert!(sealed.iter().flatten().all(|s| !s.contains("-----BEGIN") && s.starts_with("v1:")));
        let columns: Vec<(String, String)> = sqlx::query_as(
            "select table_name::text, column_name::text from information_schema.columns
             where table_schema = 'public' and data_type = 'text'",
        )
        .fetch_all(pool)
        .await
        .unwrap();
        for (table, column) in columns {
            let sql = format!("select count(*) from \"{table}\" where \"{column}\" like '%PRIVATE KEY%'");
            let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_one(pool).await.unwrap();
            assert_eq!(n, 0, "{table}.{column} holds a private key");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_pin_stops_before_the_csr_is_sent() {
    let pair = Pair::new(vec![]).await;
    let grant = pair.grant(json!({"resources": ["tasks"]})).await;
    let (_, url) = pair.enrollment_url(grant).await;
    let (base, _) = url.split_once("#sha256=").unwrap();
    let wrong = format!("{base}#sha256={}", "00".repeat(32));
    let (code, _, err) = pair.peer_add(&wrong);
    assert_eq!(code, 2, "a CA that is not the pinned one is a trust failure");
    assert!(err.contains("fingerprint mismatch"), "{err}");
    let used: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("select used_at from federation_enrollment_tokens where grant_id = $1")
            .bind(grant)
            .fetch_one(&pair.b_db.pool)
            .await
            .unwrap();
    assert!(used.is_none(), "the token was never presented to B");
    let n: i64 = sqlx::query_scalar("select count(*) from federation_peers").fetch_one(&pair.a_db.pool).await.unwrap();
    assert_eq!(n, 0, "nothing stored on A");
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_redeems_issue_exactly_one_certificate() {
    let pair = Pair::new(vec![]).await;
    let grant = pair.grant(json!({"resources": ["tasks"]})).await;
    let (token, _) = pair.enrollment_url(grant).await;
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (client, url, csr_pem) = (
            pair.b.client.clone(),
            pair.b.url(&format!("/api/federation/enrollment/{token}")),
            csr(&p256(), rcgen::CertificateParams::default()),
        );
        set.spawn(async move {
            let r = client.post(url).json(&json!({"csrPem": csr_pem})).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap_or_default())
        });
    }
    let results = set.join_all().await;
    let ok = results.iter().filter(|(s, _)| *s == 200).count();
    let gone = results.iter().filter(|(s, _)| *s == 410).count();
    assert_eq!((ok, gone), (1, 19), "{results:?}");
    let issued: i64 = sqlx::query_scalar("select count(*) from federation_issued_certs where grant_id = $1")
        .bind(grant)
        .fetch_one(&pair.b_db.pool)
        .await
        .unwrap();
    assert_eq!(issued, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_oids_in_a_csr_are_ignored_and_weak_or_bad_csrs_are_refused() {
    let pair = Pair::new(vec![]).await;
    let grant = pair.grant(json!({"resources": ["tasks"]})).await;
    let (token, _) = pair.enrollment_url(grant).await;

    // Weak and broken CSRs: 400 naming csrPem, and the token stays usable.
    let weak = include_str!("fixtures/rsa1024.csr");
    let (status, body) = redeem(&pair.b, &token, weak).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["details"]["field"], "csrPem");
    assert!(body["error"]["message"].as_str().unwrap().contains("weak"), "{body}");
    let (status, _) = redeem(&pair.b, &token, "not a csr").await;
    assert_eq!(status, 400);
    let (status, _) = redeem(&pair.b, &"0".repeat(64), &csr(&p256(), rcgen::CertificateParams::default())).await;
    assert_eq!(status, 404, "unknown token");

    // A CSR asking for its own grant/subject values gets the grant's true values.
    let mut params = rcgen::CertificateParams::default();
    for (arc, value) in [(1u64, Uuid::new_v4()), (2, Uuid::new_v4())] {
        let mut content = vec![0x0c, 36];
        content.extend_from_slice(value.to_string().as_bytes());
        params
            .custom_extensions
            .push(rcgen::CustomExtension::from_oid_content(&[1, 3, 6, 1, 4, 1, 99999, arc], content));
    }
    let (status, body) = redeem(&pair.b, &token, &csr(&p256(), params)).await;
    assert_eq!(status, 200, "{body}");
    let identity = leaf_identity(body["certPem"].as_str().unwrap());
    assert_eq!(identity.grant_id, grant);
    assert_eq!(identity.subject_user_id, pair.subject);
    assert!(body["certChainPem"].as_str().unwrap().ends_with(std::str::from_utf8(&pair.b.ca_pem).unwrap()));

    // RSA 2048 is strong enough.
    let grant2 = pair.grant(json!({"resources": ["tasks"]})).await;
    let (token2, _) = pair.enrollment_url(grant2).await;
    let (status, body) = redeem(&pair.b, &token2, include_str!("fixtures/rsa2048.csr")).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_scopes_are_rejected_naming_the_problem() {
    let pair = Pair::new(vec![]).await;
    let cases = [
        (json!({"resources": ["tasks", "secrets"]}), "scope.resources[1]"),
        (json!({"resources": ["tasks"], "excluded_resources": ["tasks"]}), "scope.excluded_resources[0]"),
        (json!({"resources": ["tasks"], "filters": {"notes": {}}}), "scope.filters.notes"),
        (json!({"resources": ["tasks"], "max_rows_per_query": 0}), "scope.max_rows_per_query"),
        (json!({"resources": ["tasks"], "max_rows_per_query": 10001}), "scope.max_rows_per_query"),
        (json!({"resources": ["tasks"], "surprise": true}), "scope.surprise"),
        (json!({"resources": []}), "scope.resources"),
    ];
    for (scope, field) in cases {
        let (status, body) = pair
            .admin_post(
                "/api/admin/grants",
                json!({"peerId": pair.peer_id, "subjectUserId": pair.subject, "scope": scope}),
            )
            .await;
        assert_eq!(status, 400, "{scope} → {body}");
        assert_eq!(body["error"]["details"]["field"], field, "{body}");
        assert!(body["error"]["message"].as_str().unwrap().contains(field), "{body}");
    }
    // Unknown peer or user: 404 naming the field. No credentials: 401.
    let (status, body) = pair
        .admin_post(
            "/api/admin/grants",
            json!({"peerId": Uuid::new_v4(), "subjectUserId": pair.subject, "scope": {"resources": ["tasks"]}}),
        )
        .await;
    assert_eq!((status, body["error"]["details"]["field"].as_str()), (404, Some("peerId")));
    let (status, body) = pair
        .admin_post(
            "/api/admin/grants",
            json!({"peerId": pair.peer_id, "subjectUserId": Uuid::new_v4(), "scope": {"resources": ["tasks"]}}),
        )
        .await;
    assert_eq!((status, body["error"]["details"]["field"].as_str()), (404, Some("subjectUserId")));
    let r = pair.b.client.get(pair.b.url("/api/admin/grants")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let n: i64 = sqlx::query_scalar("select count(*) from federation_grants").fetch_one(&pair.b_db.pool).await.unwrap();
    assert_eq!(n, 0, "no invalid grant was stored");
}

#[tokio::test(flavor = "multi_thread")]
async fn revocation_is_final_bites_at_once_and_lands_in_the_crl() {
    let pair = Pair::new(vec![]).await;
    let grant = pair.enroll().await;
    let (identity_pem, cert_pem) = pair.a_identity().await;
    let serial = leaf_identity(&cert_pem).serial;
    let client = pair.mtls_client(&identity_pem);
    let renew_body = json!({"csrPem": csr(&p256(), rcgen::CertificateParams::default())});

    // Allowed before revocation.
    let r = client.get(pair.b.url("/api/federation/v1/capabilities")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = client.post(pair.b.url("/api/federation/v1/renew")).json(&renew_body).send().await.unwrap();
    assert_eq!(r.status(), 200);

    let (status, g) =
        pair.admin_post(&format!("/api/admin/grants/{grant}/revoke"), json!({"reason": "contract ended"})).await;
    assert_eq!(status, 200, "{g}");
    assert_eq!(g["status"], "revoked");
    assert_eq!(g["revokeReason"], "contract ended");

    // The very next request with that certificate (inside its renewal grace): 403, generic message.
    let r = client.get(pair.b.url("/api/federation/v1/capabilities")).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["message"], "Access denied");

    // Revoked never comes back.
    for (method, path, body) in [
        (reqwest::Method::PATCH, format!("/api/admin/grants/{grant}"), json!({"status": "active"})),
        (reqwest::Method::PATCH, format!("/api/admin/grants/{grant}"), json!({"scope": {"resources": ["notes"]}})),
        (reqwest::Method::POST, format!("/api/admin/grants/{grant}/revoke"), json!({"reason": "again"})),
    ] {
        let (status, body) = pair.admin(method, &path, Some(body)).await;
        assert_eq!(status, 409, "{path} {body}");
    }
    let (status, _) = pair.admin_post("/api/federation/enrollment/tokens", json!({"grantId": grant})).await;
    assert_eq!(status, 409, "no enrollment token for a revoked grant");

    // The revocation is audited with its reason.
    let reason: String =
        sqlx::query_scalar("select reason from federation_audit_log where grant_id = $1 and verb = 'revoke'")
            .bind(grant)
            .fetch_one(&pair.b_db.pool)
            .await
            .unwrap();
    assert_eq!(reason, "contract ended");

    // The CRL is public, signed by B's CA, and lists the serials issued under the grant.
    let anon = common::client_trusting(&pair.b.ca_pem);
    let r = anon.get(pair.b.url("/api/federation/crl")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let der = r.bytes().await.unwrap();
    use x509_parser::prelude::FromDer;
    let (_, crl) = x509_parser::revocation_list::CertificateRevocationList::from_der(&der).unwrap();
    let listed: Vec<String> = crl.iter_revoked_certificates().map(|c| hex::encode(c.raw_serial())).collect();
    assert!(listed.contains(&serial), "{listed:?} lacks {serial}");
    assert_eq!(listed.len(), 2, "the original and the renewed certificate");
    use rustls_pki_types::pem::PemObject;
    let ca_der = rustls_pki_types::CertificateDer::from_pem_slice(&pair.b.ca_pem).unwrap();
    let (_, ca) = x509_parser::certificate::X509Certificate::from_der(ca_der.as_ref()).unwrap();
    crl.verify_signature(ca.public_key()).expect("CRL signed by the gateway CA");
}

#[tokio::test(flavor = "multi_thread")]
async fn enrollment_tokens_expire_and_need_a_pending_grant() {
    let pair = Pair::new(vec![]).await;
    let grant = pair.grant(json!({"resources": ["tasks"]})).await;
    let (status, body) =
        pair.admin_post("/api/federation/enrollment/tokens", json!({"grantId": grant, "ttlSeconds": 901})).await;
    assert_eq!((status, body["error"]["details"]["field"].as_str()), (400, Some("ttlSeconds")));
    let (status, t) =
        pair.admin_post("/api/federation/enrollment/tokens", json!({"grantId": grant, "ttlSeconds": 1})).await;
    assert_eq!(status, 201);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, _) =
        redeem(&pair.b, t["token"].as_str().unwrap(), &csr(&p256(), rcgen::CertificateParams::default())).await;
    assert_eq!(status, 410, "expired");

    // A token minted while pending is gone once the grant is revoked.
    let (token, _) = pair.enrollment_url(grant).await;
    let (status, _) =
        pair.admin_post(&format!("/api/admin/grants/{grant}/revoke"), json!({"reason": "changed my mind"})).await;
    assert_eq!(status, 200);
    let (status, _) = redeem(&pair.b, &token, &csr(&p256(), rcgen::CertificateParams::default())).await;
    assert_eq!(status, 410, "grant not pending");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_guard_checks_identity_serial_and_subject() {
    let pair = Pair::new(vec![("TESSERA_FEDERATION_RENEW_GRACE_SECS".into(), "2".into())]).await;
    let grant = pair.enroll().await;
    let (identity_pem, _) = pair.a_identity().await;
    let old = pair.mtls_client(&identity_pem);
    let caps = |c: &reqwest::Client| {
        let req = c.get(pair.b.url("/api/federation/v1/capabilities"));
        async move { req.send().await.map(|r| r.status().as_u16()) }
    };
    // No client certificate: 401.
    assert_eq!(caps(&pair.b.client).await.unwrap(), 401);

    // A certificate from another CA carrying the same OIDs: the handshake fails.
    let rogue_ca_key = p256();
    let mut rogue_params = rcgen::CertificateParams::default();
    rogue_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let rogue_ca = rcgen::Issuer::new(rogue_params, rogue_ca_key);
    let leaf_key = p256();
    let mut leaf = rcgen::CertificateParams::default();
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    for (arc, value) in [(1u64, grant), (2, pair.subject)] {
        let mut content = vec![0x0c, 36];
        content.extend_from_slice(value.to_string().as_bytes());
        leaf.custom_extensions.push(rcgen::CustomExtension::from_oid_content(&[1, 3, 6, 1, 4, 1, 99999, arc], content));
    }
    let rogue = leaf.signed_by(&leaf_key, &rogue_ca).unwrap();
    let rogue_identity = format!("{}{}", leaf_key.serialize_pem(), rogue.pem());
    assert!(caps(&pair.mtls_client(rogue_identity.as_bytes())).await.is_err(), "foreign CA → handshake fails");

    // Signed by B's CA but without the OIDs: 401.
    let ca = pair.b_ca();
    let bare_key = p256();
    let mut bare = rcgen::CertificateParams::default();
    bare.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let bare = bare.signed_by(&bare_key, ca.issuer()).unwrap();
    let bare_identity = format!("{}{}", bare_key.serialize_pem(), bare.pem());
    assert_eq!(caps(&pair.mtls_client(bare_identity.as_bytes())).await.unwrap(), 401);

    // Right CA and OIDs but a subject that is not the grant's: 403.
    let forged = ca
        .issue_client_cert(
            &tessera::federation::csr::verified_public_key(&csr(&bare_key, rcgen::CertificateParams::default()))
                .unwrap(),
            &tessera::federation::ca::ClientCertRequest {
                peer_name: "gateway-a",
                grant_id: grant,
                subject_user_id: Uuid::new_v4(),
                oids: &Default::default(),
                ttl: Duration::from_secs(600),
            },
        )
        .unwrap();
    let forged_identity = format!("{}{}", bare_key.serialize_pem(), forged.pem);
    assert_eq!(caps(&pair.mtls_client(forged_identity.as_bytes())).await.unwrap(), 403);

    // Renewal: the new certificate works; the old one works during the grace period, then not.
    let new_key = p256();
    let r = old
        .post(pair.b.url("/api/federation/v1/renew"))
        .json(&json!({"csrPem": csr(&new_key, rcgen::CertificateParams::default())}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let issued: Value = r.json().await.unwrap();
    let new_identity = format!("{}{}", new_key.serialize_pem(), issued["certPem"].as_str().unwrap());
    let new = pair.mtls_client(new_identity.as_bytes());
    assert_eq!(caps(&old).await.unwrap(), 200, "previous serial inside the grace period");
    assert_eq!(caps(&new).await.unwrap(), 200);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(caps(&old).await.unwrap(), 403, "superseded serial after the grace period");
    assert_eq!(caps(&new).await.unwrap(), 200);

    // Denials are audited with their reasons (written off the request path: poll briefly).
    let mut n = 0i64;
    for _ in 0..50 {
        n = sqlx::query_scalar("select count(*) from federation_audit_log where outcome = 'denied'")
            .fetch_one(&pair.b_db.pool)
            .await
            .unwrap();
        if n >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // No certificate, no OIDs, a foreign subject, a superseded serial.
    assert!(n >= 4, "denials audited: {n}");
    let reasons: Vec<String> = sqlx::query_scalar("select reason from federation_audit_log where outcome = 'denied'")
        .fetch_all(&pair.b_db.pool)
        .await
        .unwrap();
    assert!(reasons.iter().any(|r| r.contains("subject does not match")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("serial is not current")), "{reasons:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn disabling_the_subject_revokes_its_grants() {
    let pair = Pair::new(vec![]).await;
    let grant = pair.enroll().await;
    sqlx::query("update users set disabled_at = now() where id = $1")
        .bind(pair.subject)
        .execute(&pair.b_db.pool)
        .await
        .unwrap();
    let (status, g) = pair.admin(reqwest::Method::GET, &format!("/api/admin/grants/{grant}"), None).await;
    assert_eq!(status, 200);
    assert_eq!(g["status"], "revoked");
    assert_eq!(g["revokeReason"], "subject user disabled");
    let revoked: i64 = sqlx::query_scalar(
        "select count(*) from federation_issued_certs where grant_id = $1 and revoked_at is not null",
    )
    .bind(grant)
    .fetch_one(&pair.b_db.pool)
    .await
    .unwrap();
    assert_eq!(revoked, 1);
}

/// B's data for the visibility tests: the subject is in teams T1 and T2 (not T3); another user
/// shares T1 with it.
struct World {
    t1: Uuid,
    personal_tasks: Vec<Uuid>,
    t1_tasks: Vec<Uuid>,
    t2_tasks: Vec<Uuid>,
    hidden_tasks: Vec<Uuid>,
    subject_note: Uuid,
    other_note: Uuid,
}

async fn insert(pool: &sqlx::PgPool, sql: &'static str, ids: &[Uuid]) {
    let mut q = sqlx::query(sql);
    for id in ids {
        q = q.bind(id);
    }
    q.execute(pool).await.unwrap();
}

async fn tasks_in(pool: &sqlx::PgPool, project: Uuid, n: usize) -> Vec<Uuid> {
    let ids: Vec<Uuid> = (0..n).map(|_| Uuid::new_v4()).collect();
    sqlx::query(
        "insert into tasks (id, title, project_id, created_at)
         select id, 'task', $2, now() - (random() * interval '30 days') from unnest($1::uuid[]) id",
    )
    .bind(&ids)
    .bind(project)
    .execute(pool)
    .await
    .unwrap();
    ids
}

/// A member of gateway A's own data and their project (one id for both): rows that merged
/// answers tag as local.
async fn local_owner(pool: &sqlx::PgPool) -> Uuid {
    let id = Uuid::new_v4();
    sqlx::query("insert into users (id, email, name, role) values ($1, 'local@a.test', 'L', 'member')")
        .bind(id)
        .execute(pool)
        .await
        .unwrap();
    sqlx::query("insert into projects (id, name, owner_user_id) values ($1, 'a', $1)")
        .bind(id)
        .execute(pool)
        .await
        .unwrap();
    id
}

async fn world(pair: &Pair) -> World {
    let pool = &pair.b_db.pool;
    let other = Uuid::new_v4();
    insert(pool, "insert into users (id, email, name, role) values ($1, 'other@b.test', 'Other', 'member')", &[other])
        .await;
    let (t1, t2, t3) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    for (t, name) in [(t1, "t1"), (t2, "t2"), (t3, "t3")] {
        sqlx::query("insert into teams (id, name) values ($1, $2)").bind(t).bind(name).execute(pool).await.unwrap();
    }
    for (t, u) in [(t1, pair.subject), (t2, pair.subject), (t1, other), (t3, other)] {
        insert(pool, "insert into team_members (team_id, user_id) values ($1, $2)", &[t, u]).await;
    }
    let project = |owner: Option<Uuid>, team: Option<Uuid>| async move {
        let id = Uuid::new_v4();
        sqlx::query("insert into projects (id, name, owner_user_id, team_id) values ($1, 'p', $2, $3)")
            .bind(id)
            .bind(owner)
            .bind(team)
            .execute(pool)
            .await
            .unwrap();
        id
    };
    let personal = project(Some(pair.subject), None).await;
    let others_personal = project(Some(other), None).await;
    let p1 = project(None, Some(t1)).await;
    let p2 = project(None, Some(t2)).await;
    let p3 = project(None, Some(t3)).await;
    let personal_tasks = tasks_in(pool, personal, 7).await;
    let t1_tasks = tasks_in(pool, p1, 5).await;
    let t2_tasks = tasks_in(pool, p2, 4).await;
    let mut hidden_tasks = tasks_in(pool, p3, 3).await;
    hidden_tasks.extend(tasks_in(pool, others_personal, 3).await);
    // A shared team mission with a note by each user.
    let mission = Uuid::new_v4();
    insert(pool, "insert into missions (id, name, project_id) values ($1, 'm', $2)", &[mission, p1]).await;
    let (subject_note, other_note) = (Uuid::new_v4(), Uuid::new_v4());
    for (id, user) in [(subject_note, pair.subject), (other_note, other)] {
        sqlx::query("insert into mission_tasks (id, mission_id, user_id, notes) values ($1, $2, $3, 'note')")
            .bind(id)
            .bind(mission)
            .bind(user)
            .execute(pool)
            .await
            .unwrap();
    }
    World { t1, personal_tasks, t1_tasks, t2_tasks, hidden_tasks, subject_note, other_note }
}

impl Pair {
    /// Enrolls A under a new grant with `scope` and returns (grant, mTLS client).
    async fn enroll_with(&self, scope: Value) -> (Uuid, reqwest::Client) {
        let grant = self.grant(scope).await;
        let (_, url) = self.enrollment_url(grant).await;
        let (code, out, err) = self.peer_add(&url);
        assert_eq!(code, 0, "{out}{err}");
        let (identity, _) = self.a_identity().await;
        (grant, self.mtls_client(&identity))
    }

    async fn list(&self, client: &reqwest::Client, resource: &str, body: Value) -> (u16, Value) {
        common::http::Client::new(client, &self.b.base).post(&format!("/api/federation/v1/list/{resource}"), body).await
    }

    /// Follows cursors to the end; returns the ids in order.
    async fn list_all(&self, client: &reqwest::Client, resource: &str, limit: u32) -> Vec<Uuid> {
        let mut ids = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let (status, page) = self.list(client, resource, json!({"limit": limit, "cursor": cursor})).await;
            assert_eq!(status, 200, "{page}");
            for item in page["items"].as_array().unwrap() {
                assert_eq!(item["_source"], "local");
                ids.push(item["id"].as_str().unwrap().parse().unwrap());
            }
            // Mosaic's meaning: `_truncated` exactly when more rows follow, with `nextCursor`.
            assert_eq!(page.get("_truncated") == Some(&json!(true)), page.get("nextCursor").is_some(), "{page}");
            match page.get("nextCursor") {
                Some(Value::String(c)) => {
                    assert!(!c.is_empty());
                    cursor = Some(c.clone());
                }
                None => break,
                Some(other) => panic!("nextCursor must be absent or a string, got {other}"),
            }
        }
        ids
    }
}

fn sorted(mut v: Vec<Uuid>) -> Vec<Uuid> {
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn list_returns_exactly_native_visibility_narrowed_by_the_grant() {
    let pair = Pair::new(vec![]).await;
    let w = world(&pair).await;

    let (_, all) = pair.enroll_with(json!({"resources": ["tasks", "notes"]})).await;
    let expected = sorted([w.personal_tasks.clone(), w.t1_tasks.clone(), w.t2_tasks.clone()].concat());
    let got = pair.list_all(&all, "tasks", 4).await;
    assert_eq!(sorted(got.clone()), expected, "personal + the subject's teams, nothing else");
    assert!(w.hidden_tasks.iter().all(|h| !got.contains(h)));
    // Notes: only the subject's own, even on a shared team mission.
    let notes = pair.list_all(&all, "notes", 10).await;
    assert_eq!(notes, vec![w.subject_note]);
    assert!(!notes.contains(&w.other_note));

    // get: inside the grant → 200; outside or unknown → 404 (no existence oracle).
    let r = all.post(pair.b.url(&format!("/api/federation/v1/get/tasks/{}", w.t1_tasks[0]))).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let item: Value = r.json().await.unwrap();
    assert_eq!(item["item"]["_source"], "local");
    for id in [w.hidden_tasks[0], Uuid::new_v4()] {
        let r = all.post(pair.b.url(&format!("/api/federation/v1/get/tasks/{id}"))).send().await.unwrap();
        assert_eq!(r.status(), 404);
    }
    let r = all.post(pair.b.url(&format!("/api/federation/v1/get/notes/{}", w.other_note))).send().await.unwrap();
    assert_eq!(r.status(), 404, "another user's note is invisible");

    // include_teams = [T1]: the T2 tasks the subject sees natively are excluded.
    let (_, t1_only) =
        pair.enroll_with(json!({"resources": ["tasks"], "filters": {"tasks": {"include_teams": [w.t1]}}})).await;
    let got = sorted(pair.list_all(&t1_only, "tasks", 50).await);
    assert_eq!(got, sorted([w.personal_tasks.clone(), w.t1_tasks.clone()].concat()));

    // include_personal = false: no personal task.
    let (_, teams_only) =
        pair.enroll_with(json!({"resources": ["tasks"], "filters": {"tasks": {"include_personal": false}}})).await;
    let got = sorted(pair.list_all(&teams_only, "tasks", 50).await);
    assert_eq!(got, sorted([w.t1_tasks.clone(), w.t2_tasks.clone()].concat()));

    // The grant cannot widen native RBAC: a team the subject is not in adds nothing.
    let t3: Uuid =
        sqlx::query_scalar("select id from teams where name = 't3'").fetch_one(&pair.b_db.pool).await.unwrap();
    let (_, wider) =
        pair.enroll_with(json!({"resources": ["tasks"], "filters": {"tasks": {"include_teams": [t3]}}})).await;
    let got = sorted(pair.list_all(&wider, "tasks", 50).await);
    assert_eq!(got, sorted(w.personal_tasks.clone()));

    // Every request left an audit row.
    let n = wait_for_count(
        &pair.b_db.pool,
        "select count(*) from federation_audit_log where verb in ('list', 'get') and $1::uuid is not null",
        Uuid::nil(),
        10,
    )
    .await;
    assert!(n >= 10, "audit rows: {n}");
}

/// The value of a counter on B's `/metrics` (0 while it has no series yet).
async fn counter(pair: &Pair, series: &str) -> f64 {
    let text = pair.b.client.get(pair.b.url("/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok())).unwrap_or(0.0)
}

async fn patch_scope(pair: &Pair, grant: Uuid, scope: Value) -> (u16, Value) {
    pair.admin(reqwest::Method::PATCH, &format!("/api/admin/grants/{grant}"), Some(json!({"scope": scope}))).await
}

async fn set_grant_rate(pool: &sqlx::PgPool, grant: Uuid, per_minute: i32) {
    sqlx::query("update federation_grants set rate_per_minute = $2 where id = $1")
        .bind(grant)
        .bind(per_minute)
        .execute(pool)
        .await
        .unwrap();
}

const UNCONFIRMED: &str = "tessera_federation_guard_unconfirmed_total";
const GRANT_READS: &str = "tessera_federation_guard_decisions_total{source=\"database\"}";

#[tokio::test(flavor = "multi_thread")]
async fn list_confirms_the_remembered_grant_in_its_own_statement() {
    let pair = Pair::new(vec![]).await;
    let w = world(&pair).await;
    let pool = &pair.b_db.pool;
    let (grant, client) = pair.enroll_with(json!({"resources": ["tasks"]})).await;
    let everything = sorted([w.personal_tasks.clone(), w.t1_tasks.clone(), w.t2_tasks.clone()].concat());
    let ids = |page: &Value| -> Vec<Uuid> {
        page["items"].as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap().parse().unwrap()).collect()
    };

    // After the first request the guard remembers the grant: later lists cost one statement,
    // with no separate read of the grant.
    let (status, page) = pair.list(&client, "tasks", json!({"limit": 100})).await;
    assert_eq!((status, sorted(ids(&page))), (200, everything.clone()));
    let reads = counter(&pair, GRANT_READS).await;
    for _ in 0..3 {
        let (status, page) = pair.list(&client, "tasks", json!({"limit": 100})).await;
        assert_eq!((status, sorted(ids(&page))), (200, everything.clone()));
    }
    assert_eq!(counter(&pair, GRANT_READS).await, reads, "remembered decisions, confirmed in the page statement");

    // Native RBAC narrows on the very next request: the subject leaves T2.
    let t2: Uuid = sqlx::query_scalar("select id from teams where name = 't2'").fetch_one(pool).await.unwrap();
    sqlx::query("delete from team_members where team_id = $1 and user_id = $2")
        .bind(t2)
        .bind(pair.subject)
        .execute(pool)
        .await
        .unwrap();
    let (status, page) = pair.list(&client, "tasks", json!({"limit": 100})).await;
    assert_eq!((status, sorted(ids(&page))), (200, sorted([w.personal_tasks.clone(), w.t1_tasks.clone()].concat())));

    // A scope edit narrows on the very next request...
    let (status, body) =
        patch_scope(&pair, grant, json!({"resources": ["tasks"], "filters": {"tasks": {"include_personal": false}}}))
            .await;
    assert_eq!(status, 200, "{body}");
    let (status, page) = pair.list(&client, "tasks", json!({"limit": 100})).await;
    assert_eq!((status, sorted(ids(&page))), (200, sorted(w.t1_tasks.clone())));
    let (status, _) = pair.list(&client, "notes", json!({})).await;
    assert_eq!(status, 403, "notes are outside the scope");
    // ...and widens on the very next request: a remembered scope never denies on its own.
    let (status, body) = patch_scope(&pair, grant, json!({"resources": ["tasks", "notes"]})).await;
    assert_eq!(status, 200, "{body}");
    let (status, page) = pair.list(&client, "notes", json!({})).await;
    assert_eq!((status, ids(&page)), (200, vec![w.subject_note]));
    // The notes statement confirms a remembered decision too.
    let unconfirmed = counter(&pair, UNCONFIRMED).await;
    let (status, page) = pair.list(&client, "notes", json!({})).await;
    assert_eq!((status, ids(&page)), (200, vec![w.subject_note]));
    assert_eq!(counter(&pair, UNCONFIRMED).await, unconfirmed);

    // Every rule of the guard, changed in the database behind the remembered row, decides the
    // very next request.
    let rules: [(&str, &str, &str, u16); 4] = [
        (
            "peer suspended",
            "update federation_peers set state = 'suspended' where id = $1",
            "update federation_peers set state = 'active' where id = $1",
            403,
        ),
        (
            "grant expired",
            "update federation_grants set expires_at = now() - interval '1 second' where peer_id = $1",
            "update federation_grants set expires_at = null where peer_id = $1",
            403,
        ),
        (
            "certificate superseded, grace over",
            "update federation_grants set previous_serial = current_serial, current_serial = 'ab',
                    previous_serial_grace_until = now() - interval '1 second' where peer_id = $1",
            "update federation_grants set current_serial = previous_serial, previous_serial = null,
                    previous_serial_grace_until = null where peer_id = $1",
            403,
        ),
        (
            "certificate superseded, within grace",
            "update federation_grants set previous_serial = current_serial, current_serial = 'ab',
                    previous_serial_grace_until = now() + interval '1 hour' where peer_id = $1",
            "update federation_grants set current_serial = previous_serial, previous_serial = null,
                    previous_serial_grace_until = null where peer_id = $1",
            200,
        ),
    ];
    for (rule, change, restore, expected) in rules {
        let (status, _) = pair.list(&client, "notes", json!({"limit": 1})).await;
        assert_eq!(status, 200, "{rule}: before");
        sqlx::query(change).bind(pair.peer_id).execute(pool).await.unwrap();
        let (status, body) = pair.list(&client, "notes", json!({"limit": 1})).await;
        assert_eq!(status, expected, "{rule}: {body}");
        sqlx::query(restore).bind(pair.peer_id).execute(pool).await.unwrap();
    }
    // A new rate is picked up on the next request (through a read of the grant).
    let unconfirmed = counter(&pair, UNCONFIRMED).await;
    set_grant_rate(pool, grant, 5000).await;
    let (status, _) = pair.list(&client, "tasks", json!({"limit": 1})).await;
    assert_eq!(status, 200);
    assert_eq!(counter(&pair, UNCONFIRMED).await, unconfirmed + 1.0);

    // An empty page under a remembered decision is still a 200 with no items.
    let (status, body) = patch_scope(
        &pair,
        grant,
        json!({"resources": ["tasks"], "filters": {"tasks": {"include_personal": false, "include_teams": [t2]}}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    for _ in 0..2 {
        let (status, page) = pair.list(&client, "tasks", json!({})).await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["items"], json!([]));
        assert!(page.get("nextCursor").is_none());
    }

    // A revocation written straight to the database (as the CLI does) bites on the very next
    // request, and a bad request under a revoked grant gets the 403, not a 400.
    patch_scope(&pair, grant, json!({"resources": ["tasks"]})).await;
    let (status, _) = pair.list(&client, "tasks", json!({"limit": 1})).await;
    assert_eq!(status, 200);
    // The remembered grant is now over its budget: a revoked grant must still get its 403, not
    // a 429 decided from memory.
    set_grant_rate(pool, grant, 3).await;
    let (status, _) = pair.list(&client, "tasks", json!({"limit": 1})).await;
    assert_eq!(status, 200, "the new rate applies from the next request");
    sqlx::query("update federation_grants set status = 'revoked', revoked_at = now() where id = $1")
        .bind(grant)
        .execute(pool)
        .await
        .unwrap();
    let (status, body) = pair.list(&client, "tasks", json!({"limit": 1})).await;
    assert_eq!((status, body["error"]["message"].as_str()), (403, Some("Access denied")));
    let (status, _) = pair.list(&client, "tasks", json!({"cursor": "not-a-cursor"})).await;
    assert_eq!(status, 403);
    let r = client
        .post(pair.b.url("/api/federation/v1/list/tasks"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    // One audit row per request, whichever path decided it.
    wait_for_count(pool, "select count(*) from federation_audit_log where grant_id = $1 and verb = 'list'", grant, 25)
        .await;
    let (allowed, denied): (i64, i64) = sqlx::query_as(
        "select count(*) filter (where outcome = 'allowed'), count(*) filter (where outcome = 'denied')
         from federation_audit_log where grant_id = $1 and verb = 'list'",
    )
    .bind(grant)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!((allowed, denied), (18, 7));
}

#[tokio::test(flavor = "multi_thread")]
async fn keyset_pages_are_exact_stable_and_tamper_proof() {
    let pair = Pair::new(vec![]).await;
    let pool = &pair.b_db.pool;
    let project = Uuid::new_v4();
    sqlx::query("insert into projects (id, name, owner_user_id) values ($1, 'big', $2)")
        .bind(project)
        .bind(pair.subject)
        .execute(pool)
        .await
        .unwrap();
    // 10 000 tasks, many sharing a timestamp, so the id tie-break matters.
    let ids: Vec<Uuid> = (0..10_000).map(|_| Uuid::new_v4()).collect();
    sqlx::query(
        "insert into tasks (id, title, project_id, created_at)
         select id, 'bulk', $2, timestamptz '2026-01-01' + (ord % 500) * interval '1 second'
         from unnest($1::uuid[]) with ordinality as u(id, ord)",
    )
    .bind(&ids)
    .bind(project)
    .execute(pool)
    .await
    .unwrap();
    let (grant_x, client) =
        pair.enroll_with(json!({"resources": ["tasks", "notes", "memory"], "max_rows_per_query": 500})).await;

    // Page through with limit 37 while new rows arrive: each original row exactly once, in order.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let (status, page) = pair.list(&client, "tasks", json!({"limit": 37, "cursor": cursor})).await;
        assert_eq!(status, 200, "{page}");
        seen.extend(page["items"].as_array().unwrap().iter().map(|i| {
            (i["createdAt"].as_str().unwrap().to_string(), i["id"].as_str().unwrap().parse::<Uuid>().unwrap())
        }));
        pages += 1;
        if pages == 5 {
            tasks_in(pool, project, 50).await; // newer rows: must not shift the pages
        }
        match page.get("nextCursor") {
            Some(Value::String(c)) => cursor = Some(c.clone()),
            _ => break,
        }
    }
    let seen_ids: Vec<Uuid> = seen.iter().map(|(_, id)| *id).collect();
    let originals: Vec<Uuid> = seen_ids.iter().copied().filter(|id| ids.contains(id)).collect();
    assert_eq!(originals.len(), 10_000, "every original row exactly once");
    assert_eq!(sorted(originals), sorted(ids.clone()));
    let mut dedup = seen_ids.clone();
    dedup.sort();
    dedup.dedup();
    assert_eq!(dedup.len(), seen_ids.len(), "no row twice");
    let mut order = seen.clone();
    order.sort_by(|a, b| b.cmp(a));
    assert_eq!(order, seen, "created_at desc, id desc");

    // Cursors: one byte changed, another resource, another grant → 400, never a first page.
    let (_, page) = pair.list(&client, "tasks", json!({"limit": 5})).await;
    let cursor = page["nextCursor"].as_str().unwrap().to_string();
    let mut bytes = cursor.clone().into_bytes();
    bytes[3] = if bytes[3] == b'x' { b'y' } else { b'x' };
    let tampered = String::from_utf8(bytes).unwrap();
    for (resource, c) in [("tasks", tampered.as_str()), ("notes", cursor.as_str()), ("tasks", "garbage")] {
        let (status, body) = pair.list(&client, resource, json!({"cursor": c})).await;
        assert_eq!(status, 400, "{resource} {c}: {body}");
        assert_eq!(body["error"]["code"], "invalid_request");
    }
    let (grant_y, client_y) = pair.enroll_with(json!({"resources": ["tasks"]})).await;
    assert_ne!(grant_x, grant_y);
    let (status, _) = pair.list(&client_y, "tasks", json!({"cursor": cursor})).await;
    assert_eq!(status, 400, "a cursor from grant X is refused under grant Y");

    // Limits: bad ones → 400; a numeric string is a number (Mosaic's parseLimit); unknown fields
    // are ignored; above the cap → capped, said in a header, and paginated.
    for bad in [json!(0), json!("abc"), json!(false), json!(-3), json!("-3"), json!("0"), json!("1.5")] {
        let (status, body) = pair.list(&client_y, "tasks", json!({"limit": bad})).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    let (status, page) = pair.list(&client_y, "tasks", json!({"limit": "3", "somethingElse": {"x": 1}})).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["items"].as_array().unwrap().len(), 3);
    assert_eq!((page["_truncated"].clone(), page["nextCursor"].is_string()), (json!(true), true), "more rows follow");
    let r =
        client_y.post(pair.b.url("/api/federation/v1/list/tasks")).json(&json!({"limit": 5000})).send().await.unwrap();
    assert_eq!(r.headers()["x-tessera-limit-capped"], "100");
    let page: Value = r.json().await.unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 100, "capped at the default max_rows_per_query");
    assert_eq!(page["_truncated"], true);
    assert!(page["nextCursor"].is_string());
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_pages_from_insights_into_preferences_without_gaps() {
    let pair = Pair::new(vec![]).await;
    let pool = &pair.b_db.pool;
    let at = "2026-03-01T00:00:00Z";
    let insights: Vec<Uuid> = (0..7).map(|_| Uuid::new_v4()).collect();
    let prefs: Vec<Uuid> = (0..6).map(|_| Uuid::new_v4()).collect();
    for id in &insights {
        sqlx::query("insert into insights (id, user_id, content, created_at) values ($1, $2, 'i', $3::timestamptz)")
            .bind(id)
            .bind(pair.subject)
            .bind(at)
            .execute(pool)
            .await
            .unwrap();
    }
    for (n, id) in prefs.iter().enumerate() {
        sqlx::query(
            "insert into preferences (id, user_id, key, value, created_at) values ($1, $2, $3, '1', $4::timestamptz)",
        )
        .bind(id)
        .bind(pair.subject)
        .bind(format!("k{n}"))
        .bind(at)
        .execute(pool)
        .await
        .unwrap();
    }
    let (_, client) = pair.enroll_with(json!({"resources": ["memory"]})).await;
    let got = pair.list_all(&client, "memory", 3).await;
    assert_eq!(got.len(), 13);
    let (first, rest) = got.split_at(7);
    assert_eq!(sorted(first.to_vec()), sorted(insights), "insights first");
    assert_eq!(sorted(rest.to_vec()), sorted(prefs), "then preferences");

    // include_personal = false leaves no memory at all.
    let (_, none) =
        pair.enroll_with(json!({"resources": ["memory"], "filters": {"memory": {"include_personal": false}}})).await;
    assert!(pair.list_all(&none, "memory", 10).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn scope_denials_are_generic_on_the_wire_and_specific_in_the_audit() {
    let pair = Pair::new(vec![]).await;
    let (grant, client) =
        pair.enroll_with(json!({"resources": ["tasks", "credentials"], "excluded_resources": ["notes"]})).await;
    let (status, caps) = {
        let r = client.get(pair.b.url("/api/federation/v1/capabilities")).send().await.unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    };
    assert_eq!(status, 200);
    assert_eq!(caps["resources"], json!(["tasks"]), "credentials is never served");
    assert_eq!(caps["max_rows_per_query"], 100);

    let mut bodies = Vec::new();
    for resource in ["credentials", "notes", "memory", "api_keys"] {
        let (status, body) = pair.list(&client, resource, json!({})).await;
        assert_eq!(status, 403, "{resource}: {body}");
        bodies.push(body.to_string());
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]), "one generic 403: {bodies:?}");
    assert!(!bodies[0].contains("credentials") && !bodies[0].contains("excluded"));
    let envelope: Value = serde_json::from_str(&bodies[0]).unwrap();
    assert_eq!(envelope["error"]["code"], "scope_violation", "Mosaic's code for a scope denial");
    assert_eq!(envelope["error"]["message"], "Access denied");
    let (status, _) = pair.list(&client, "nonsense", json!({})).await;
    assert_eq!(status, 400);

    wait_for_count(
        &pair.b_db.pool,
        "select count(*) from federation_audit_log where grant_id = $1 and outcome = 'denied'",
        grant,
        5,
    )
    .await;
    let codes: Vec<String> = sqlx::query_scalar(
        "select deny_code from federation_audit_log where grant_id = $1 and outcome = 'denied' order by id",
    )
    .bind(grant)
    .fetch_all(&pair.b_db.pool)
    .await
    .unwrap();
    for code in ["native_rbac_denied", "resource_excluded", "resource_not_granted"] {
        assert!(codes.iter().any(|c| c == code), "{code} in {codes:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn gateway_a_reads_from_b_with_tagged_rows_merges_and_fails_fast_when_b_is_down() {
    let mut pair = Pair::new(vec![]).await;
    let w = world(&pair).await;
    let (grant, _) = pair.enroll_with(json!({"resources": ["tasks", "notes"], "max_rows_per_query": 5})).await;

    // CLI on A: all pages of B's tasks, tagged with B's name.
    let (code, out, err) =
        run_cli(&["federation", "list", "--peer", "gateway-b", "tasks", "--all-pages", "--json"], &pair.a_env());
    assert_eq!(code, 0, "{err}");
    let listed: Value = serde_json::from_str(&out).unwrap();
    let items = listed["items"].as_array().unwrap();
    assert_eq!(items.len(), w.personal_tasks.len() + w.t1_tasks.len() + w.t2_tasks.len());
    assert!(items.iter().all(|i| i["_source"] == "gateway-b"));
    assert!(listed["nextCursor"].is_null());
    let id = w.t2_tasks[0].to_string();
    let (code, out, _) = run_cli(&["federation", "get", "--peer", "gateway-b", "tasks", &id, "--json"], &pair.a_env());
    assert_eq!(code, 0);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["item"]["id"], id.as_str());
    let (code, out, _) = run_cli(&["federation", "capabilities", "--peer", "gateway-b", "--json"], &pair.a_env());
    assert_eq!(code, 0);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["resources"], json!(["tasks", "notes"]));
    let (code, _, err) = run_cli(&["federation", "list", "--peer", "nobody", "tasks"], &pair.a_env());
    assert_eq!(code, 3);
    assert!(err.contains("peer_not_found"), "{err}");

    // Gateway A's own API: local rows and B's rows merged, each tagged with its source.
    let (a, a_token) = start_a(&pair, &[]).await;
    let local_project = local_owner(&pair.a_db.pool).await;
    tasks_in(&pair.a_db.pool, local_project, 3).await;
    let query = |source: &str| {
        let req = a
            .client
            .post(a.url("/api/admin/federation/query"))
            .bearer_auth(&a_token)
            .json(&json!({"resource": "tasks", "source": source, "limit": 100}));
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let (status, all) = query("all").await;
    assert_eq!(status, 200, "{all}");
    let sources: Vec<&str> = all["items"].as_array().unwrap().iter().map(|i| i["_source"].as_str().unwrap()).collect();
    assert_eq!(sources.iter().filter(|s| **s == "local").count(), 3);
    assert_eq!(sources.iter().filter(|s| **s == "gateway-b").count(), 5, "one page per peer, capped by B's grant");
    let (_, local) = query("local").await;
    assert!(local["items"].as_array().unwrap().iter().all(|i| i["_source"] == "local"));
    let (status, bad) = query("elsewhere").await;
    assert_eq!((status, bad["error"]["details"]["field"].as_str()), (400, Some("source")));

    // B goes down: a network error per call, then the circuit opens and calls fail fast.
    pair.b.terminate();
    for _ in 0..tessera::federation::peer_client::FAILURES_TO_OPEN {
        let (status, r) = query("peer:gateway-b").await;
        assert_eq!(status, 200);
        assert_eq!(r["errors"][0]["code"], "network", "{r}");
    }
    let started = std::time::Instant::now();
    let (_, r) = query("peer:gateway-b").await;
    assert!(r["errors"][0]["message"].as_str().unwrap().contains("circuit open"), "{r}");
    assert!(started.elapsed() < Duration::from_millis(500), "fails fast");
    let _ = grant;

    // A knows where it stands: the last call failed on the network (not a refusal), and the
    // metrics count each outcome, the fast failures apart.
    let peers: Value =
        a.client.get(a.url("/api/admin/peers")).bearer_auth(&a_token).send().await.unwrap().json().await.unwrap();
    let b = peers.as_array().unwrap().iter().find(|p| p["name"] == "gateway-b").unwrap();
    assert_eq!(b["reader"]["status"], "failing", "{b}");
    assert!(b["reader"]["lastError"].as_str().unwrap().starts_with("network ("), "{b}");
    assert!(b["reader"]["refusingSince"].is_null() && b["reader"]["lastSuccessAt"].is_string(), "{b}");
    let text = metrics_text(&a).await;
    let calls = |outcome| series(&text, "tessera_peer_calls_total", &[("peer", "gateway-b"), ("outcome", outcome)]);
    assert_eq!(calls("network"), Some(f64::from(tessera::federation::peer_client::FAILURES_TO_OPEN)), "{text}");
    assert_eq!(calls("circuit_open"), Some(1.0), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_resumed_tls_session_still_gets_every_guard_check() {
    let pair = Pair::new(vec![]).await;
    let grant = pair.enroll().await;
    let (identity, cert_pem) = pair.a_identity().await;
    // One client config, so its session cache lets the second connection resume.
    let config = tls::client_config(&pair.b.ca_pem, Some((&identity, cert_pem.as_bytes())), &[]);
    let (status, kind) = tls::raw_get(pair.b.port, config.clone(), "/api/federation/v1/capabilities").await;
    assert_eq!((status, kind), (200, rustls::HandshakeKind::Full));
    let (status, kind) = tls::raw_get(pair.b.port, config.clone(), "/api/federation/v1/capabilities").await;
    assert_eq!((status, kind), (200, rustls::HandshakeKind::Resumed), "the session resumed and identity carried over");

    let (status, _) =
        pair.admin_post(&format!("/api/admin/grants/{grant}/revoke"), json!({"reason": "resumption test"})).await;
    assert_eq!(status, 200);
    let (status, kind) = tls::raw_get(pair.b.port, config, "/api/federation/v1/capabilities").await;
    assert_eq!(kind, rustls::HandshakeKind::Resumed);
    assert_eq!(status, 403, "a resumed session is still checked against the database");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_client_certificate_fails_the_handshake() {
    let pair = Pair::new(vec![]).await;
    let grant = pair.enroll().await;
    let ca = pair.b_ca();
    let key = p256();
    let mut params = rcgen::CertificateParams::default();
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(2);
    params.not_after = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    for (arc, value) in [(1u64, grant), (2, pair.subject)] {
        let mut content = vec![0x0c, 36];
        content.extend_from_slice(value.to_string().as_bytes());
        params
            .custom_extensions
            .push(rcgen::CustomExtension::from_oid_content(&[1, 3, 6, 1, 4, 1, 99999, arc], content));
    }
    let cert = params.signed_by(&key, ca.issuer()).unwrap();
    let identity = format!("{}{}", key.serialize_pem(), cert.pem());
    let r = pair.mtls_client(identity.as_bytes()).get(pair.b.url("/api/federation/v1/capabilities")).send().await;
    assert!(r.is_err(), "expired certificate must not complete the handshake: {r:?}");

    // The caller learns why, from the TLS alert deep in the error chain, and what to do. The
    // peer client speaks HTTP/1.1 (over HTTP/2 hyper drops the connection's error and reports
    // only "channel closed").
    let peer_like = common::mtls_client(&pair.b.ca_pem, identity.as_bytes()).http1_only().build().unwrap();
    // Whether the server's alert or its closing of the socket reaches the client first is a race
    // on a loaded machine; the alert is what is classified, so a few attempts may be needed.
    let mut attempts = 0;
    let (err, failure) = loop {
        attempts += 1;
        let err = peer_like.get(pair.b.url("/api/federation/v1/capabilities")).send().await.unwrap_err();
        let failure = tessera::connect_failure::ConnectFailure::classify(&err);
        let refused = matches!(failure, tessera::connect_failure::ConnectFailure::CertificateRefused { .. });
        if refused || attempts == 5 {
            break (err, failure);
        }
    };
    assert!(
        matches!(failure, tessera::connect_failure::ConnectFailure::CertificateRefused { expired: true, .. }),
        "{failure:?} from {err:?}"
    );
    let peer_error = tessera::federation::peer_client::transport_error("gateway-b", &err);
    assert_eq!(peer_error.code(), "certificate_refused");
    let message = peer_error.to_string();
    assert!(message.contains("expired") && message.contains("tessera grant reenroll"), "{message}");
    assert!(!message.contains("error sending request"), "{message}");
}

#[tokio::test(flavor = "multi_thread")]
async fn gateway_a_renews_certificates_that_are_due() {
    use tessera::federation::client::renew_due;
    let pair = Pair::new(vec![]).await;
    pair.enroll().await;
    let (_, before) = pair.a_identity().await;
    let sealing = tessera::sealing::SealingKey::load(None, pair.a_dir.path()).unwrap();
    let pool = &pair.a_db.pool;
    let schedule = || async {
        sqlx::query_as::<_, (Option<chrono::DateTime<chrono::Utc>>, chrono::DateTime<chrono::Utc>)>(
            "select renew_at, client_cert_received_at from federation_peers where name = 'gateway-b'",
        )
        .fetch_one(pool)
        .await
        .unwrap()
    };
    // Not due: a fresh hour-long certificate. The pass only schedules it, two thirds into its
    // own life (counted from when A stored it), within the jitter of a thirtieth of it.
    let pass = renew_due(pool, &sealing, Duration::ZERO).await;
    assert_eq!((pass.renewed, pass.failed), (0, 0));
    assert_eq!(pair.a_identity().await.1, before, "not renewed before two thirds of its lifetime");
    let (renew_at, received) = schedule().await;
    let lifetime = leaf_identity(&before).not_after - received;
    let expected = received + lifetime * 2 / 3;
    let renew_at = renew_at.expect("scheduled");
    assert!((renew_at - expected).num_seconds().abs() <= lifetime.num_seconds() / 30 + 1, "{renew_at} vs {expected}");
    // Due in two seconds: a pass covering the next five waits for that moment, then renews.
    sqlx::query("update federation_peers set renew_at = now() + interval '2 seconds' where name = 'gateway-b'")
        .execute(pool)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let pass = renew_due(pool, &sealing, Duration::from_secs(5)).await;
    assert_eq!((pass.renewed, pass.failed), (1, 0));
    assert!(started.elapsed() >= Duration::from_millis(1500), "waited for the renewal moment");
    let (identity, after) = pair.a_identity().await;
    assert_ne!(after, before, "renewed");
    let new_serial = leaf_identity(&after).serial;
    let current: String = sqlx::query_scalar("select current_serial from federation_peers where id = $1")
        .bind(pair.peer_id)
        .fetch_one(&pair.b_db.pool)
        .await
        .unwrap();
    assert_eq!(current, new_serial, "B made the new serial current");
    let r = pair.mtls_client(&identity).get(pair.b.url("/api/federation/v1/capabilities")).send().await.unwrap();
    assert_eq!(r.status(), 200, "the stored (re-sealed) key and new certificate work");
    // The new certificate has its own schedule: nothing is due again right away.
    let (renew_at, received) = schedule().await;
    assert!(renew_at.unwrap() > received + chrono::Duration::minutes(30), "{renew_at:?}");
    let pass = renew_due(pool, &sealing, Duration::ZERO).await;
    assert_eq!((pass.renewed, pass.failed), (0, 0));
}

/// Runs the CLI off the async runtime (the bench takes a few seconds).
async fn run_cli_blocking(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let args: Vec<String> = args.iter().map(|s| (*s).to_string()).collect();
    let env: Vec<(String, String)> = env.iter().map(|(k, v)| ((*k).to_string(), (*v).to_string())).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        run_cli(&args, &env)
    })
    .await
    .unwrap()
}

/// `tessera bench list` end to end on a small data set: every phase drives the real router over
/// mTLS (the bench fails on any answer but 2xx) and prints its figures; the list requests reach
/// the verb and its audit. The figures themselves are read from the bench, never asserted here.
#[tokio::test(flavor = "multi_thread")]
async fn bench_list_runs_every_phase_over_mtls_and_refuses_a_database_with_data() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let dd = dir.path().to_str().unwrap();
    let args = ["bench", "list", "--tasks", "3000", "--seconds", "1", "--concurrency", "2"];
    let (code, stdout, stderr) = run_cli_blocking(&args, &[("DATABASE_URL", &db.url), ("TESSERA_DATA_DIR", dd)]).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    for line in [
        "list over mTLS, page 1",
        "list over mTLS, page 10 000",
        "list over mTLS, random pages",
        "SQL ceiling, random pages",
        "SQL behind mTLS, no gateway",
        "mTLS round trip, no database",
        "list at half load (random)",
        "SQL behind mTLS / ceiling =",
        "random pages / ceiling =",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
    common::assert_bench_audited(&db.pool, "list").await;

    // One phase alone: only its line, and no summary that would need the others.
    let args = ["bench", "list", "--tasks", "3000", "--seconds", "1", "--concurrency", "2", "--phases", "ceiling"];
    let (code, stdout, stderr) = run_cli_blocking(&args, &[("DATABASE_URL", &db.url), ("TESSERA_DATA_DIR", dd)]).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("SQL ceiling, random pages"), "{stdout}");
    assert!(!stdout.contains("list over mTLS") && !stdout.contains("/ ceiling ="), "{stdout}");
    // The second run forgot the first run's peer and grant.
    let peers: i64 = sqlx::query_scalar("select count(*) from federation_peers").fetch_one(&db.pool).await.unwrap();
    assert_eq!(peers, 1);

    // Once the database holds any other user, even a bench database is refused, and nothing of
    // the federation tables is touched.
    seed_admin(&db.pool, "admin@example.test").await;
    let (code, stdout, stderr) = run_cli_blocking(&args, &[("DATABASE_URL", &db.url), ("TESSERA_DATA_DIR", dd)]).await;
    assert_eq!(code, 3, "{stdout}");
    assert!(stderr.contains("already holds data"), "{stderr}");
    let peers: i64 = sqlx::query_scalar("select count(*) from federation_peers").fetch_one(&db.pool).await.unwrap();
    assert_eq!(peers, 1);

    // So is any other database with users in it: no bench data is written there.
    let other = TestDb::new().await;
    seed_admin(&other.pool, "admin@example.test").await;
    let (code, stdout, stderr) =
        run_cli_blocking(&args, &[("DATABASE_URL", &other.url), ("TESSERA_DATA_DIR", dd)]).await;
    assert_eq!(code, 3, "{stdout}");
    assert!(stderr.contains("already holds data"), "{stderr}");
    let tasks: i64 = sqlx::query_scalar("select count(*) from tasks").fetch_one(&other.pool).await.unwrap();
    assert_eq!(tasks, 0);
}

// --- Hostile peers (the attack run of the security issue) -------------------------------------

/// A second peer of B with its own tasks grant, enrolled by redeeming a CSR straight at B:
/// (grant id, mTLS identity PEM).
async fn second_peer(pair: &Pair, name: &str) -> (Uuid, String) {
    let (status, peer) = pair.admin_post("/api/admin/peers", json!({"name": name})).await;
    assert_eq!(status, 201, "{peer}");
    let (status, g) = pair
        .admin_post(
            "/api/admin/grants",
            json!({"peerId": peer["id"], "subjectUserId": pair.subject, "scope": {"resources": ["tasks"]}}),
        )
        .await;
    assert_eq!(status, 201, "{g}");
    let grant: Uuid = g["id"].as_str().unwrap().parse().unwrap();
    let (token, _) = pair.enrollment_url(grant).await;
    let key = p256();
    let (status, issued) = redeem(&pair.b, &token, &csr(&key, rcgen::CertificateParams::default())).await;
    assert_eq!(status, 200, "{issued}");
    (grant, format!("{}{}", key.serialize_pem(), issued["certPem"].as_str().unwrap()))
}

async fn audit_rows(pool: &sqlx::PgPool, grant: Uuid) -> Vec<(String, Option<String>, Option<String>)> {
    sqlx::query_as(
        "select outcome, deny_code, resource from federation_audit_log
          where grant_id = $1 and outcome <> 'enrolled' order by id",
    )
    .bind(grant)
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_poisoned_request_never_erases_other_audit_rows() {
    let pair = Pair::new(vec![]).await;
    let grant_a = pair.enroll().await;
    let a = pair.mtls_client(&pair.a_identity().await.0);
    let (grant_c, identity_c) = second_peer(&pair, "gateway-c").await;
    let c = pair.mtls_client(identity_c.as_bytes());
    let list = |client: &reqwest::Client, path: &str| client.post(pair.b.url(path)).json(&json!({})).send();

    // Within one batch window: legitimate reads of two peers with NUL-carrying paths between them.
    assert_eq!(list(&a, "/api/federation/v1/list/tasks").await.unwrap().status(), 200);
    let poisoned = list(&a, "/api/federation/v1/list/tasks%00").await.unwrap();
    assert_eq!(poisoned.status(), 400);
    assert_eq!(poisoned.json::<Value>().await.unwrap()["error"]["code"], "invalid_request");
    let poisoned = list(&c, &format!("/api/federation/v1/get/tasks%00/{}", Uuid::now_v7())).await.unwrap();
    assert_eq!(poisoned.status(), 400);
    assert_eq!(list(&c, "/api/federation/v1/list/tasks").await.unwrap().status(), 200);
    assert_eq!(list(&a, "/api/federation/v1/list/tasks%00%00%00").await.unwrap().status(), 400);

    let sql = "select count(*) from federation_audit_log where grant_id = $1 and outcome <> 'enrolled'";
    assert_eq!(wait_for_count(&pair.b_db.pool, sql, grant_a, 3).await, 3);
    assert_eq!(wait_for_count(&pair.b_db.pool, sql, grant_c, 2).await, 2);
    let rows_a = audit_rows(&pair.b_db.pool, grant_a).await;
    assert_eq!(rows_a[0], ("allowed".into(), None, Some("tasks".into())), "{rows_a:?}");
    for (outcome, deny_code, resource) in &rows_a[1..] {
        // A NUL in a path parameter is refused by the extractor (400 `invalid_request`) before
        // the verb sees it; either way the row is written, without the text as its resource.
        assert_eq!(outcome, "denied", "{rows_a:?}");
        assert!(matches!(deny_code.as_deref(), Some("invalid_request" | "invalid_resource")), "{rows_a:?}");
        assert_eq!(resource, &None, "an unknown resource name is never stored as the resource");
    }
    let rows_c = audit_rows(&pair.b_db.pool, grant_c).await;
    assert_eq!(rows_c.iter().filter(|r| r.0 == "allowed").count(), 1, "{rows_c:?}");
    assert_eq!(rows_c.iter().filter(|r| r.0 == "denied" && r.2.is_none()).count(), 1, "{rows_c:?}");
    let gaps: i64 = sqlx::query_scalar("select count(*) from federation_audit_log where outcome = 'gap'")
        .fetch_one(&pair.b_db.pool)
        .await
        .unwrap();
    assert_eq!(gaps, 0, "nothing was lost");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_audit_batch_is_retried_row_by_row_and_the_loss_names_its_cause() {
    use tessera::federation::audit::{AuditEntry, AuditSink};
    let db = common::TestDb::new().await;
    // A row the database refuses for a reason no input cleaning can foresee.
    sqlx::query("alter table federation_audit_log add constraint no_poison check (reason is distinct from 'poison')")
        .execute(&db.pool)
        .await
        .unwrap();
    let (sink, writer) = AuditSink::start(db.pool.clone());
    let row = |reason: &str| AuditEntry {
        verb: "list",
        outcome: "allowed",
        reason: Some(reason.to_string()),
        ..Default::default()
    };
    sink.submit(&row("first"));
    sink.submit(&row("poison"));
    sink.submit(&row("nul \u{0} inside"));
    sink.submit(&AuditEntry { verb: "list\u{0}", outcome: "denied", resource: Some("tasks\u{0}"), ..row("last") });
    drop(sink);
    writer.await.unwrap();
    let rows: Vec<(String, Option<String>)> =
        sqlx::query_as("select outcome, reason from federation_audit_log order by id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    let reasons: Vec<&str> = rows.iter().filter_map(|r| r.1.as_deref()).collect();
    assert!(reasons.contains(&"first") && reasons.contains(&"last"), "{rows:?}");
    assert!(reasons.contains(&"nul \u{FFFD} inside"), "a NUL is replaced, not refused: {rows:?}");
    assert!(!reasons.contains(&"poison"));
    let gap = rows.iter().find(|r| r.0 == "gap").expect("the refused row is recorded as a gap");
    let cause = gap.1.as_deref().unwrap();
    assert!(cause.starts_with("1 audit rows lost") && cause.contains("no_poison"), "the true cause: {cause}");
}

#[tokio::test(flavor = "multi_thread")]
async fn only_the_current_certificate_may_renew() {
    let pair = Pair::new(vec![
        ("TESSERA_FEDERATION_RENEW_GRACE_SECS".into(), "30".into()),
        ("TESSERA_WEBHOOK_ALLOWED_CIDRS".into(), "192.0.2.0/24".into()),
    ])
    .await;
    // A receiver subscribed to the event (never reached; the delivery row is what counts).
    let hook = json!({"url": "http://192.0.2.1:9/hook", "secret": "s".repeat(32), "events": ["peer.superseded_certificate_used"]});
    let (status, body) = pair.admin_post("/api/admin/webhooks", hook).await;
    assert_eq!(status, 201, "{body}");
    let grant = pair.enroll().await;
    let s1 = pair.mtls_client(&pair.a_identity().await.0);
    let renew = |client: &reqwest::Client| {
        let body = json!({"csrPem": csr(&p256(), rcgen::CertificateParams::default())});
        common::http::Client::new(client, &pair.b.base).post("/api/federation/v1/renew", body)
    };
    let new_key = p256();
    let r = s1
        .post(pair.b.url("/api/federation/v1/renew"))
        .json(&json!({"csrPem": csr(&new_key, rcgen::CertificateParams::default())}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let issued: Value = r.json().await.unwrap();
    let s2 = pair.mtls_client(format!("{}{}", new_key.serialize_pem(), issued["certPem"].as_str().unwrap()).as_bytes());

    // The superseded serial renews: refused, generic on the wire, and announced.
    let (status, body) = renew(&s1).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["message"], "Access denied");
    let caps = |c: &reqwest::Client| c.get(pair.b.url("/api/federation/v1/capabilities")).send();
    assert_eq!(caps(&s1).await.unwrap().status(), 200, "the grace serial still reads");
    let current: String = sqlx::query_scalar("select current_serial from federation_peers where id = $1")
        .bind(pair.peer_id)
        .fetch_one(&pair.b_db.pool)
        .await
        .unwrap();
    assert_eq!(current, leaf_identity(issued["certPem"].as_str().unwrap()).serial, "s2 stays current");
    let denied: Vec<(Option<String>, Option<String>)> = sqlx::query_as(
        "select deny_code, reason from federation_audit_log where grant_id = $1 and verb = 'renew' and outcome = 'denied'",
    )
    .bind(grant)
    .fetch_all(&pair.b_db.pool)
    .await
    .unwrap();
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert_eq!(denied[0].0.as_deref(), Some("superseded_certificate"));
    let events: i64 = sqlx::query_scalar(
        "select count(*) from outbox.deliveries where event = 'peer.superseded_certificate_used' and payload->>'grantId' = $1::text",
    )
    .bind(grant.to_string())
    .fetch_one(&pair.b_db.pool)
    .await
    .unwrap();
    assert_eq!(events, 1, "the outbox announces a copied key");

    // The current serial renews as before.
    let (status, body) = renew(&s2).await;
    assert_eq!(status, 200, "{body}");
}

/// A client certificate for `grant` signed by B's CA, valid for `secs` from now, made the
/// peer's current serial: (identity PEM, cert PEM).
async fn short_lived_identity(pair: &Pair, grant: Uuid, secs: i64) -> (String, String) {
    let ca = pair.b_ca();
    let key = p256();
    let mut params = rcgen::CertificateParams::default();
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::minutes(1);
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::seconds(secs);
    params.serial_number = Some(rcgen::SerialNumber::from_slice(Uuid::new_v4().as_bytes()));
    for (arc, value) in [(1u64, grant), (2, pair.subject)] {
        let mut content = vec![0x0c, 36];
        content.extend_from_slice(value.to_string().as_bytes());
        params
            .custom_extensions
            .push(rcgen::CustomExtension::from_oid_content(&[1, 3, 6, 1, 4, 1, 99999, arc], content));
    }
    let cert = params.signed_by(&key, ca.issuer()).unwrap();
    sqlx::query("update federation_grants set current_serial = $2 where id = $1")
        .bind(grant)
        .bind(leaf_identity(&cert.pem()).serial)
        .execute(&pair.b_db.pool)
        .await
        .unwrap();
    (format!("{}{}", key.serialize_pem(), cert.pem()), cert.pem())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_certificate_is_refused_on_a_kept_alive_connection_and_on_resumption() {
    let pair = Pair::new(vec![]).await;
    let grant = pair.enroll().await;
    let (identity, cert_pem) = short_lived_identity(&pair, grant, 4).await;
    let kept_alive = pair.mtls_client(identity.as_bytes());
    let caps = |c: &reqwest::Client| c.get(pair.b.url("/api/federation/v1/capabilities")).send();
    assert_eq!(caps(&kept_alive).await.unwrap().status(), 200);

    let config = tls::client_config(&pair.b.ca_pem, Some((identity.as_bytes(), cert_pem.as_bytes())), &[]);
    let path = "/api/federation/v1/capabilities";
    assert_eq!(tls::try_raw_get(pair.b.port, config.clone(), path).await, Some((200, rustls::HandshakeKind::Full)));
    assert_eq!(tls::try_raw_get(pair.b.port, config.clone(), path).await, Some((200, rustls::HandshakeKind::Resumed)));
    assert_eq!(tls::try_raw_get(pair.b.port, config.clone(), path).await, Some((200, rustls::HandshakeKind::Resumed)));

    tokio::time::sleep(Duration::from_secs(5)).await;
    // The same HTTP/2 connection, opened while the certificate was valid: refused per request.
    let r = caps(&kept_alive).await.expect("the kept-alive connection is reused, not re-handshaken");
    assert_eq!(r.status(), 401);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "unauthorized");
    // A resumption after notAfter is not honoured: the full handshake that follows refuses the
    // expired certificate.
    let resumed = tls::try_raw_get(pair.b.port, config, path).await;
    assert!(
        resumed.is_none_or(|(status, kind)| status != 200 && kind != rustls::HandshakeKind::Resumed),
        "{resumed:?}"
    );

    let sql = "select count(*) from federation_audit_log where grant_id = $1 and deny_code = 'certificate_expired'";
    assert_eq!(wait_for_count(&pair.b_db.pool, sql, grant, 1).await, 1, "the refusal is audited as denied");
    let allowed_after: i64 = sqlx::query_scalar(
        "select count(*) from federation_audit_log where grant_id = $1 and outcome = 'allowed' and at > now() - interval '4 seconds'",
    )
    .bind(grant)
    .fetch_one(&pair.b_db.pool)
    .await
    .unwrap();
    assert_eq!(allowed_after, 0, "nothing was allowed after the expiry");
    let metrics = pair.b.client.get(pair.b.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains("tessera_tls_handshake_failures_total{reason=\"certificate_expired\"}"),
        "the refused handshake is counted by reason"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_federation_request_leaves_exactly_one_audit_row() {
    let pair = Pair::new(vec![]).await;
    let grant = pair.enroll().await;
    let a = pair.mtls_client(&pair.a_identity().await.0);
    let post = |c: &reqwest::Client, path: &str, body: Value| c.post(pair.b.url(path)).json(&body).send();
    let statuses = [
        post(&a, "/api/federation/v1/list/tasks", json!({"cursor": "bm90LWEtY3Vyc29y"})).await.unwrap().status(),
        post(&a, "/api/federation/v1/list/tasks", json!({"limit": "many"})).await.unwrap().status(),
        post(&a, "/api/federation/v1/list/tasks", json!({})).await.unwrap().status(),
        a.get(pair.b.url("/api/federation/v1/capabilities")).send().await.unwrap().status(),
        post(&a, "/api/federation/v1/nope", json!({})).await.unwrap().status(),
        a.get(pair.b.url("/api/federation/v1/list/tasks")).send().await.unwrap().status(),
        a.post(pair.b.url("/api/federation/v1/list/tasks")).body("{").send().await.unwrap().status().to_owned(),
    ];
    let statuses: Vec<u16> = statuses.iter().map(|s| s.as_u16()).collect();
    assert_eq!(statuses, [400, 400, 200, 200, 404, 405, 400]);
    let sql = "select count(*) from federation_audit_log where grant_id = $1 and outcome <> 'enrolled'";
    assert_eq!(wait_for_count(&pair.b_db.pool, sql, grant, 7).await, 7);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rows = audit_rows(&pair.b_db.pool, grant).await;
    assert_eq!(rows.len(), 7, "exactly one row each: {rows:?}");
    let codes: Vec<Option<&str>> = rows.iter().map(|r| r.1.as_deref()).collect();
    assert_eq!(
        codes,
        [
            Some("invalid_cursor"),
            Some("invalid_limit"),
            None,
            None,
            Some("unknown_route"),
            Some("method_not_allowed"),
            Some("invalid_request")
        ],
        "{rows:?}"
    );

    // Without a certificate there is no grant, but still one row.
    let before: i64 =
        sqlx::query_scalar("select count(*) from federation_audit_log where deny_code = 'no_certificate'")
            .fetch_one(&pair.b_db.pool)
            .await
            .unwrap();
    assert_eq!(before, 0);
    let r = pair.b.client.get(pair.b.url("/api/federation/v1/capabilities")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let mut n = 0i64;
    for _ in 0..50 {
        n = sqlx::query_scalar("select count(*) from federation_audit_log where deny_code = 'no_certificate'")
            .fetch_one(&pair.b_db.pool)
            .await
            .unwrap();
        if n > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(n, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn handshake_failures_are_counted_and_logged_by_reason() {
    let pair = Pair::new(vec![]).await;
    // A client certificate from a CA the gateway does not trust.
    let rogue_ca_key = p256();
    let mut rogue_params = rcgen::CertificateParams::default();
    rogue_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let rogue_ca = rcgen::Issuer::new(rogue_params, rogue_ca_key);
    let leaf_key = p256();
    let mut leaf = rcgen::CertificateParams::default();
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let rogue = leaf.signed_by(&leaf_key, &rogue_ca).unwrap();
    let rogue_identity = format!("{}{}", leaf_key.serialize_pem(), rogue.pem());
    for _ in 0..3 {
        let r = pair.mtls_client(rogue_identity.as_bytes()).get(pair.b.url("/healthz")).send().await;
        assert!(r.is_err());
    }
    // Not TLS at all.
    {
        use tokio::io::AsyncWriteExt;
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", pair.b.port)).await.unwrap();
        tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let metrics = pair.b.client.get(pair.b.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("tessera_tls_handshake_failures_total{reason=\"untrusted_certificate\"}"))
        .unwrap_or_else(|| panic!("no untrusted_certificate series:\n{metrics}"));
    assert!(line.ends_with(" 3"), "{line}");
    assert!(metrics.contains("tessera_tls_handshake_failures_total{reason=\"not_tls\"}"), "{metrics}");
    let log = pair.b.log();
    let logged =
        log.lines().filter(|l| l.contains("TLS handshake failed") && l.contains("untrusted_certificate")).count();
    assert_eq!(logged, 1, "logged at info with the peer address, once a second per reason:\n{log}");
    assert!(log.lines().any(|l| l.contains("TLS handshake failed") && l.contains("127.0.0.1:")));
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_headers_get_431_in_the_envelope() {
    let pair = Pair::new(vec![]).await;
    let huge = "x".repeat(2 << 20);
    let h1 = common::trusting(&pair.b.ca_pem).http1_only().build().unwrap();
    for client in [&h1, &pair.b.client] {
        let r = client.get(pair.b.url("/healthz")).header("x-big", &huge).send().await.unwrap();
        assert_eq!(r.status(), 431);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_request");
        assert!(body["error"]["message"].as_str().unwrap().contains("too large"), "{body}");
    }
    assert_eq!(h1.get(pair.b.url("/healthz")).send().await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn enrollment_redemptions_are_limited_per_address_and_unknown_tokens_counted() {
    let pair = Pair::new(vec![("TESSERA_ENROLLMENT_RATE_PER_MINUTE".into(), "3".into())]).await;
    let body = csr(&p256(), rcgen::CertificateParams::default());
    let mut statuses = Vec::new();
    for i in 0..5 {
        statuses.push(redeem(&pair.b, &format!("{i:064}"), &body).await.0);
    }
    assert_eq!(statuses, [404, 404, 404, 429, 429]);
    // A good token from the same address waits for the window too: the budget is per address.
    let grant = pair.grant(json!({"resources": ["tasks"]})).await;
    let (token, _) = pair.enrollment_url(grant).await;
    let (status, body) = redeem(&pair.b, &token, &body).await;
    assert_eq!(status, 429, "{body}");
    let metrics = pair.b.client.get(pair.b.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.lines().any(|l| l == "tessera_enrollment_unknown_tokens_total 3"), "{metrics}");
}

// --- Day-2: certificates per grant, renewal budget, re-enrollment -----------------------------

/// A second grant for gateway-a itself, enrolled by redeeming a CSR at B: (grant, identity PEM).
async fn another_grant_for_a(pair: &Pair) -> (Uuid, String) {
    let grant = pair.grant(json!({"resources": ["tasks"]})).await;
    let (token, _) = pair.enrollment_url(grant).await;
    let key = p256();
    let (status, issued) = redeem(&pair.b, &token, &csr(&key, rcgen::CertificateParams::default())).await;
    assert_eq!(status, 200, "{issued}");
    (grant, format!("{}{}", key.serialize_pem(), issued["certPem"].as_str().unwrap()))
}

async fn renew_with_client(pair: &Pair, client: &reqwest::Client) -> (u16, String) {
    let key = p256();
    let r = client
        .post(pair.b.url("/api/federation/v1/renew"))
        .json(&json!({"csrPem": csr(&key, rcgen::CertificateParams::default())}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    let identity = body["certPem"].as_str().map(|c| format!("{}{c}", key.serialize_pem())).unwrap_or_default();
    (status, identity)
}

#[tokio::test(flavor = "multi_thread")]
async fn several_grants_of_one_peer_each_keep_their_own_certificate() {
    let pair = Pair::new(vec![("TESSERA_FEDERATION_RENEW_GRACE_SECS".into(), "30".into())]).await;
    let grant_1 = pair.enroll().await;
    let c1 = pair.mtls_client(&pair.a_identity().await.0);
    let (grant_2, identity_2) = another_grant_for_a(&pair).await;
    let c2 = pair.mtls_client(identity_2.as_bytes());
    let caps = |c: &reqwest::Client| {
        let req = c.get(pair.b.url("/api/federation/v1/capabilities"));
        async move { req.send().await.unwrap().status().as_u16() }
    };
    // Enrolling the second grant leaves the first grant's certificate alone.
    assert_eq!((caps(&c1).await, caps(&c2).await, caps(&c1).await), (200, 200, 200));

    // Each renews on its own; the superseded one reads during its grace, the other is untouched.
    let (status, renewed_1) = renew_with_client(&pair, &c1).await;
    assert_eq!(status, 200);
    let c1b = pair.mtls_client(renewed_1.as_bytes());
    assert_eq!((caps(&c1b).await, caps(&c2).await, caps(&c1).await), (200, 200, 200));
    let (status, renewed_2) = renew_with_client(&pair, &c2).await;
    assert_eq!(status, 200);
    let c2b = pair.mtls_client(renewed_2.as_bytes());
    assert_eq!((caps(&c2b).await, caps(&c1b).await, caps(&c2).await), (200, 200, 200));
    // A grant's certificate is no key to another grant's renewal.
    assert_eq!(renew_with_client(&pair, &c1).await.0, 403, "grant 1's superseded serial cannot renew");
    assert_eq!(caps(&c2b).await, 200);

    let serials: Vec<(Uuid, Option<String>)> =
        sqlx::query_as("select id, current_serial from federation_grants where peer_id = $1 order by created_at")
            .bind(pair.peer_id)
            .fetch_all(&pair.b_db.pool)
            .await
            .unwrap();
    assert_eq!(serials.len(), 2);
    assert_eq!(serials[0], (grant_1, Some(leaf_identity(&renewed_1).serial)));
    assert_eq!(serials[1], (grant_2, Some(leaf_identity(&renewed_2).serial)));

    // Revoking one grant leaves the other working.
    let (status, _) =
        pair.admin_post(&format!("/api/admin/grants/{grant_1}/revoke"), json!({"reason": "one of two"})).await;
    assert_eq!(status, 200);
    assert_eq!((caps(&c1b).await, caps(&c2b).await), (403, 200));
}

#[tokio::test(flavor = "multi_thread")]
async fn renewal_has_its_own_budget_and_never_competes_with_data_verbs() {
    let pair = Pair::new(vec![]).await;
    let grant = pair.enroll().await;
    set_grant_rate(&pair.b_db.pool, grant, 1).await;
    let client = pair.mtls_client(&pair.a_identity().await.0);
    let list = || client.post(pair.b.url("/api/federation/v1/list/tasks")).json(&json!({})).send();
    assert_eq!(list().await.unwrap().status(), 200);
    assert_eq!(list().await.unwrap().status(), 429, "the data budget is spent");
    let (status, renewed) = renew_with_client(&pair, &client).await;
    assert_eq!(status, 200, "renewal is not counted against the data budget");
    // Nor can renewals be looped: they have a small budget of their own.
    let mut current = pair.mtls_client(renewed.as_bytes());
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let (status, identity) = renew_with_client(&pair, &current).await;
        statuses.push(status);
        if status == 200 {
            current = pair.mtls_client(identity.as_bytes());
        }
    }
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 5, "{statuses:?}");
    assert!(statuses.ends_with(&[429, 429, 429]), "{statuses:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_reader_rejoins_on_the_same_grant_with_reenroll_and_peer_add() {
    let pair = Pair::new(vec![
        ("TESSERA_FEDERATION_CERT_TTL_SECS".into(), "10".into()),
        ("TESSERA_WEBHOOK_ALLOWED_CIDRS".into(), "192.0.2.0/24".into()),
    ])
    .await;
    let hook = json!({"url": "http://192.0.2.1:9/hook", "secret": "s".repeat(32), "events": ["peer.reenrolled"]});
    assert_eq!(pair.admin_post("/api/admin/webhooks", hook).await.0, 201);
    let grant = pair.enroll().await;
    let a_caps = || run_cli(&["federation", "capabilities", "--peer", "gateway-b", "--json"], &pair.a_env());
    assert_eq!(a_caps().0, 0);
    let b_env = [
        ("DATABASE_URL", pair.b_db.url.as_str()),
        ("TESSERA_DATA_DIR", pair.b.data_dir.to_str().unwrap()),
        ("TESSERA_PUBLIC_URL", pair.b.base.as_str()),
    ];

    // Re-enrollment while the old certificate is still valid: the old serial stops at once.
    let old = pair.mtls_client(&pair.a_identity().await.0);
    let (code, out, err) = run_cli(&["grant", "reenroll", &grant.to_string()], &b_env);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = pair.peer_add(out.trim());
    assert_eq!(code, 0, "{out}{err}");
    let added: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(added["remoteGrantId"], grant.to_string(), "the same grant");
    assert!(added["replaced"]["serial"].is_string(), "says what it replaces: {added}");
    let r = old.get(pair.b.url("/api/federation/v1/capabilities")).send().await.unwrap();
    assert_eq!(r.status(), 403, "the replaced serial is refused at once, no grace");
    assert_eq!(a_caps().0, 0, "the new certificate works");

    // Away past expiry: nothing works until the data holder mints a re-enrollment token.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let (code, out, err) = a_caps();
    assert_ne!(code, 0, "an expired certificate is refused: {out}{err}");
    let (code, _, err) = run_cli(&["grant", "token", &grant.to_string()], &b_env);
    assert_eq!(code, 3);
    assert!(err.contains("reenroll"), "the refusal names the way back: {err}");
    let (status, token) =
        pair.admin_post(&format!("/api/admin/grants/{grant}/reenroll"), json!({"ttlSeconds": 300})).await;
    assert_eq!(status, 201, "{token}");
    let (code, out, err) =
        run_cli(&["peer", "add", token["enrollmentUrl"].as_str().unwrap(), "--name", "gateway-b"], &pair.a_env());
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("re-enrolled") && out.contains("expired"), "{out}");
    assert_eq!(a_caps().0, 0, "back on the same grant");
    // A re-enrollment token is single-use.
    let (code, _, err) =
        run_cli(&["peer", "add", token["enrollmentUrl"].as_str().unwrap(), "--name", "gateway-b"], &pair.a_env());
    assert_ne!(code, 0, "{err}");

    let audit: Vec<String> = sqlx::query_scalar(
        "select outcome from federation_audit_log where grant_id = $1 and outcome in ('enrolled', 'reenrolled') order by id",
    )
    .bind(grant)
    .fetch_all(&pair.b_db.pool)
    .await
    .unwrap();
    assert_eq!(audit, ["enrolled", "reenrolled", "reenrolled"]);
    let events: i64 = sqlx::query_scalar(
        "select count(*) from outbox.deliveries where event = 'peer.reenrolled' and payload->>'grantId' = $1::text",
    )
    .bind(grant.to_string())
    .fetch_one(&pair.b_db.pool)
    .await
    .unwrap();
    assert_eq!(events, 2, "each re-enrollment is announced");
    // Pending grants still take ordinary tokens only; active ones re-enrollment tokens only.
    let pending = pair.grant(json!({"resources": ["tasks"]})).await;
    let (status, body) = pair.admin_post(&format!("/api/admin/grants/{pending}/reenroll"), json!({})).await;
    assert_eq!(status, 409, "{body}");
}

// --- Reading the audit log ----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn the_audit_log_reads_newest_first_filtered_and_paged_over_the_api_and_the_cli() {
    let pair = Pair::new(vec![]).await;
    let grant = pair.enroll().await;
    let a = pair.mtls_client(&pair.a_identity().await.0);
    for _ in 0..7 {
        let r = a.post(pair.b.url("/api/federation/v1/list/tasks")).json(&json!({})).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let r = a.post(pair.b.url("/api/federation/v1/list/nope")).json(&json!({})).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(pair.b.client.get(pair.b.url("/api/federation/v1/capabilities")).send().await.unwrap().status(), 401);
    let sql = "select count(*) from federation_audit_log where grant_id = $1 and verb = 'list'";
    assert_eq!(wait_for_count(&pair.b_db.pool, sql, grant, 8).await, 8);

    // Pages of 3, newest first, every row once.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/api/admin/audit?grantId={grant}&verb=list&limit=3");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let (status, page) = pair.admin(reqwest::Method::GET, &path, None).await;
        assert_eq!(status, 200, "{page}");
        for item in page["items"].as_array().unwrap() {
            seen.push((item["at"].as_str().unwrap().to_string(), item["id"].as_i64().unwrap()));
        }
        match page["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 8);
    let mut sorted = seen.clone();
    sorted.sort_by(|x, y| y.cmp(x));
    assert_eq!(seen, sorted, "newest first");

    let (_, denied) =
        pair.admin(reqwest::Method::GET, "/api/admin/audit?outcome=denied&denyCode=no_certificate", None).await;
    assert_eq!(denied["items"].as_array().unwrap().len(), 1, "{denied}");
    let (_, invalid) = pair
        .admin(reqwest::Method::GET, &format!("/api/admin/audit?grantId={grant}&denyCode=invalid_resource"), None)
        .await;
    assert_eq!(invalid["items"].as_array().unwrap().len(), 1, "{invalid}");

    // Refusals name the field; no admin credential, no rows.
    for (path, field) in [
        ("/api/admin/audit?cursor=bm9wZQ", "cursor"),
        ("/api/admin/audit?limit=0", "limit"),
        ("/api/admin/audit?grantId=not-a-uuid", "grantId"),
    ] {
        let (status, body) = pair.admin(reqwest::Method::GET, path, None).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["error"]["details"]["field"], field, "{path}: {body}");
    }
    let anonymous = pair.b.client.get(pair.b.url("/api/admin/audit")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);

    // The CLI over the same API.
    let ca = pair.b.data_dir.join("ca.pem");
    let env = [
        ("TESSERA_GATEWAY", pair.b.base.as_str()),
        ("TESSERA_CA_FILE", ca.to_str().unwrap()),
        ("TESSERA_TOKEN", pair.token.as_str()),
        ("TESSERA_CONFIG_DIR", pair.a_dir.path().to_str().unwrap()),
    ];
    let grant_s = grant.to_string();
    let (code, out, err) =
        run_cli(&["audit", "list", "--grant-id", &grant_s, "--verb", "list", "--all", "--json"], &env);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.lines().count(), 8, "{out}");
    let from = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    let to = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let (code, out, err) =
        run_cli(&["audit", "export", "--grant-id", &grant_s, "--from", &from, "--to", &to, "--format", "csv"], &env);
    assert_eq!(code, 0, "{out}{err}");
    let mut lines = out.lines();
    assert!(lines.next().unwrap().starts_with("id,at,grant_id"));
    assert!(lines.count() >= 9, "the list rows and the enrollment: {out}");
    let (code, _, err) = run_cli(&["audit", "list"], &[env[0], env[1], ("TESSERA_TOKEN", "tsr_wrong")]);
    assert_eq!(code, 2, "a bad credential is an authentication failure: {err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_audit_log_moves_into_day_partitions_keeping_every_row_and_retention_drops_old_days() {
    // A database migrated up to just before the partitioning, with rows in the old table.
    let db = common::TestDb::empty().await;
    let before = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations")).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap().to_str().unwrap() < "20261201091000" {
            std::fs::copy(&path, before.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    sqlx::migrate::Migrator::new(before.path()).await.unwrap().run(&db.pool).await.unwrap();
    sqlx::query(
        "insert into federation_audit_log (at, verb, outcome, reason)
         select now() - make_interval(days => d), 'list', 'allowed', 'day ' || d from generate_series(0, 119) d,
                generate_series(1, 5)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let ids_before: Vec<i64> =
        sqlx::query_scalar("select id from federation_audit_log order by id").fetch_all(&db.pool).await.unwrap();
    assert_eq!(ids_before.len(), 600);

    tessera::store::migrate(&db.pool).await.unwrap();
    let ids_after: Vec<i64> =
        sqlx::query_scalar("select id from federation_audit_log order by id").fetch_all(&db.pool).await.unwrap();
    assert_eq!(ids_after, ids_before, "every row kept, with its id");

    // Retention: 90 days kept (today is day 0), older days gone, the rest in day partitions.
    let (created, dropped) = tessera::federation::audit::maintain(&db.pool, 90).await.unwrap();
    assert_eq!(dropped, 0, "nothing was partitioned yet");
    assert_eq!(created, 91 + 7, "days 0..=90 plus the week ahead (today included once)");
    let kept: i64 = sqlx::query_scalar("select count(*) from federation_audit_log").fetch_one(&db.pool).await.unwrap();
    assert_eq!(kept, 91 * 5);
    let in_default: i64 =
        sqlx::query_scalar("select count(*) from federation_audit_log_default").fetch_one(&db.pool).await.unwrap();
    assert_eq!(in_default, 0, "every row moved into its day");
    // A shorter retention drops whole partitions.
    let (created, dropped) = tessera::federation::audit::maintain(&db.pool, 30).await.unwrap();
    assert_eq!((created, dropped), (0, 60));
    let kept: i64 = sqlx::query_scalar("select count(*) from federation_audit_log").fetch_one(&db.pool).await.unwrap();
    assert_eq!(kept, 31 * 5);

    // The batch writer does not notice: new rows get new ids in today's partition.
    let (sink, writer) = tessera::federation::audit::AuditSink::start(db.pool.clone());
    sink.submit(&tessera::federation::audit::AuditEntry { verb: "list", outcome: "allowed", ..Default::default() });
    drop(sink);
    writer.await.unwrap();
    let newest: i64 = sqlx::query_scalar("select max(id) from federation_audit_log").fetch_one(&db.pool).await.unwrap();
    assert!(newest > *ids_before.last().unwrap());
    let today = format!("federation_audit_log_{}", chrono::Utc::now().format("%Y%m%d"));
    let in_today: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("select count(*) from {today} where id = $1")))
        .bind(newest)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(in_today, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn bench_audit_drops_old_days_under_write_load_and_refuses_real_audit_rows() {
    let db = common::TestDb::new().await;
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let env = [("DATABASE_URL", db.url.as_str()), ("TESSERA_DATA_DIR", dir.path().to_str().unwrap())];
    let args = ["bench", "audit", "--rows", "20000", "--days", "100", "--seconds", "1", "--writers", "1"];
    let (code, out, err) = run_cli_blocking(&args, &env).await;
    assert_eq!(code, 0, "{out}{err}");
    let dropped = out.lines().find(|l| l.contains("retention dropped")).unwrap_or_else(|| panic!("{out}"));
    assert!(dropped.contains(" 10 day partitions"), "days 91 to 100 are past a 90-day retention: {out}");
    let figure = |label: &str| -> i64 {
        let line = out.lines().find(|l| l.contains(label)).unwrap_or_else(|| panic!("no {label:?} in {out}"));
        line.split_whitespace().last().unwrap().parse().unwrap()
    };
    let (before, after) = (figure("rows before retention"), figure("rows after retention"));
    assert!(after < before + 1_000_000 && before >= 20_000, "{out}");
    let oldest: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("select min(at) from federation_audit_log").fetch_one(&db.pool).await.unwrap();
    assert!(oldest > chrono::Utc::now() - chrono::Duration::days(91), "nothing older than retention is left");

    sqlx::query("insert into federation_audit_log (verb, outcome) values ('list', 'allowed')")
        .execute(&db.pool)
        .await
        .unwrap();
    let (code, _, err) = run_cli_blocking(&args, &env).await;
    assert_ne!(code, 0);
    assert!(err.contains("data dir of its own"), "{err}");
}

/// A webhook receiver on loopback that answers 200 to everything.
async fn ok_receiver() -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://127.0.0.1:{}/hook", listener.local_addr().unwrap().port());
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let _ = tcp.read(&mut buf).await;
                let _ = tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await;
            });
        }
    });
    url
}

#[tokio::test(flavor = "multi_thread")]
async fn every_metric_the_dashboard_uses_is_exported_by_a_running_gateway() {
    let pair = Pair::new(vec![("TESSERA_WEBHOOK_ALLOWED_CIDRS".into(), "127.0.0.1/32".into())]).await;
    let hook = json!({"url": ok_receiver().await, "secret": "s".repeat(32), "events": ["*"]});
    assert_eq!(pair.admin_post("/api/admin/webhooks", hook).await.0, 201);
    pair.enroll().await;
    let a = pair.mtls_client(&pair.a_identity().await.0);
    assert_eq!(
        a.post(pair.b.url("/api/federation/v1/list/tasks")).json(&json!({})).send().await.unwrap().status(),
        200
    );
    {
        use tokio::io::AsyncWriteExt;
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", pair.b.port)).await.unwrap();
        tcp.write_all(b"not tls\r\n\r\n").await.unwrap();
    }
    let job = tessera::queue::NewJob::new("diag", "diag.probe", json!({"for": "metrics"}));
    tessera::queue::enqueue_many(&pair.b_db.pool, &[job]).await.unwrap();

    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/ops/grafana/tessera.json")).unwrap(),
    )
    .unwrap();
    let wanted = tessera::http::metrics::referenced_metrics(&dashboard);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut missing: Vec<String>;
    loop {
        let text = pair.b.client.get(pair.b.url("/metrics")).send().await.unwrap().text().await.unwrap();
        missing = wanted
            .iter()
            .filter(|name| !text.lines().any(|l| !l.starts_with('#') && l.starts_with(name.as_str())))
            .cloned()
            .collect();
        if missing.is_empty() || std::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(missing.is_empty(), "referenced by the dashboard but not exported: {missing:?}");
    // The pools: their size, and how long a connection took to get at the last sample.
    let text = metrics_text(&pair.b).await;
    assert_eq!(series(&text, "tessera_db_pool_max_connections", &[("pool", "peer_reads")]), Some(16.0), "{text}");
    for pool in ["main", "peer_reads"] {
        let wait = series(&text, "tessera_db_pool_acquire_wait_seconds", &[("pool", pool)]).unwrap();
        assert!((0.0..2.0).contains(&wait), "a pool with room hands out a connection under the cap: {wait}");
    }
}

/// Ids of every row `list` returns for `resource`, or the status when it refuses.
async fn list_everything(pair: &Pair, client: &reqwest::Client, resource: &str) -> Result<usize, u16> {
    let (status, page) = pair.list(client, resource, json!({})).await;
    if status != 200 {
        return Err(status);
    }
    let _ = page;
    Ok(pair.list_all(client, resource, 3).await.len())
}

#[tokio::test(flavor = "multi_thread")]
async fn scope_explain_agrees_with_what_list_returns_for_every_resource() {
    let pair = Pair::new(vec![]).await;
    let w = world(&pair).await;
    for i in 0..3 {
        sqlx::query("insert into insights (id, user_id, content) values ($1, $2, 'i')")
            .bind(Uuid::now_v7())
            .bind(pair.subject)
            .execute(&pair.b_db.pool)
            .await
            .unwrap();
        sqlx::query("insert into preferences (id, user_id, key, value) values ($1, $2, $3, '1')")
            .bind(Uuid::now_v7())
            .bind(pair.subject)
            .bind(format!("k{i}"))
            .execute(&pair.b_db.pool)
            .await
            .unwrap();
    }
    let scope = json!({
        "resources": ["tasks", "notes", "credentials"],
        "excluded_resources": ["memory"],
        "filters": {"tasks": {"include_teams": [w.t1], "include_personal": true}},
        "max_rows_per_query": 40
    });
    // Before saving: the same answer for the scope alone.
    let (status, draft) = pair
        .admin_post(
            "/api/admin/grants/explain",
            json!({"peerId": pair.peer_id, "subjectUserId": pair.subject, "scope": scope}),
        )
        .await;
    assert_eq!(status, 200, "{draft}");
    let (grant, client) = pair.enroll_with(scope).await;
    let (status, saved) = pair.admin_post(&format!("/api/admin/grants/{grant}/explain"), json!({})).await;
    assert_eq!(status, 200, "{saved}");
    assert_eq!(draft["resources"], saved["resources"], "the draft and the saved grant explain alike");

    for r in saved["resources"].as_array().unwrap() {
        let resource = r["resource"].as_str().unwrap();
        let listed = list_everything(&pair, &client, resource).await;
        if r["allowed"] == true {
            assert_eq!(listed, Ok(usize::try_from(r["visibleRows"].as_i64().unwrap()).unwrap()), "{resource}: {r}");
        } else {
            assert!(listed.is_err(), "{resource} is refused by list too: {r}");
            let code: String = sqlx::query_scalar(
                "select deny_code from federation_audit_log where grant_id = $1 and resource = $2 and outcome = 'denied'
                 order by id desc limit 1",
            )
            .bind(grant)
            .bind(resource)
            .fetch_optional(&pair.b_db.pool)
            .await
            .unwrap()
            .unwrap_or_default();
            let code = if code.is_empty() {
                // Written off the request path; give the batch writer a moment.
                tokio::time::sleep(Duration::from_millis(400)).await;
                sqlx::query_scalar(
                    "select deny_code from federation_audit_log where grant_id = $1 and resource = $2 and outcome = 'denied'
                     order by id desc limit 1",
                )
                .bind(grant)
                .bind(resource)
                .fetch_one(&pair.b_db.pool)
                .await
                .unwrap()
            } else {
                code
            };
            assert_eq!(r["denyCode"], code, "{resource}: explain names the deny code list records");
        }
    }
    let tasks = &saved["resources"][0];
    assert_eq!(tasks["visibleRows"], w.personal_tasks.len() + w.t1_tasks.len(), "team t2 is filtered out");
    assert_eq!(tasks["teamIds"], json!([w.t1]));
    assert_eq!(saved["resources"][2]["denyCode"], "resource_excluded");
    assert_eq!(saved["resources"][3]["denyCode"], "native_rbac_denied", "credentials are never federated");
    assert_eq!(saved["resources"][4]["denyCode"], "resource_not_granted");
    // Memory on a grant that includes it: the subject's insights and preferences.
    let (memory_grant, memory_client) = pair.enroll_with(json!({"resources": ["memory"]})).await;
    let (_, memory) = pair.admin_post(&format!("/api/admin/grants/{memory_grant}/explain"), json!({})).await;
    assert_eq!(memory["resources"][2]["visibleRows"], 6, "{memory}");
    assert_eq!(list_everything(&pair, &memory_client, "memory").await, Ok(6));

    // Revoked: every resource refused at the guard, and the CLI says so.
    let (status, _) = pair.admin_post(&format!("/api/admin/grants/{grant}/revoke"), json!({"reason": "explain"})).await;
    assert_eq!(status, 200);
    let b_env = [("DATABASE_URL", pair.b_db.url.as_str()), ("TESSERA_DATA_DIR", pair.b.data_dir.to_str().unwrap())];
    let (code, out, err) = run_cli(&["grant", "explain", &grant.to_string()], &b_env);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("the grant itself is refused") && out.contains("refused at guard"), "{out}");
    let (status, body) = pair
        .admin_post(
            "/api/admin/grants/explain",
            json!({"peerId": Uuid::now_v7(), "subjectUserId": pair.subject, "scope": {"resources": ["tasks"]}}),
        )
        .await;
    assert_eq!((status, body["error"]["details"]["field"].clone()), (404, json!("peerId")));
}

// ---------------------------------------------------------------------------------------------
// The reader's side (gateway A): renewal that follows the certificate, status, metrics, events.

/// Gateway A on the pair's database and data dir, with `env`, and an admin token for it.
/// When A received its client certificate for B, and whether A has renewed it once `within`
/// has passed (or as soon as it has).
async fn received_then_renewed(pool: &sqlx::PgPool, within: Duration) -> (chrono::DateTime<chrono::Utc>, i64) {
    let received = sqlx::query_scalar("select client_cert_received_at from federation_peers where name = 'gateway-b'")
        .fetch_one(pool)
        .await
        .unwrap();
    let sql = "select count(*) from federation_peers where name = 'gateway-b' and last_renewed_at is not null";
    (received, wait_count(pool, sql, 1, within).await)
}

async fn start_a(pair: &Pair, env: &[(&str, &str)]) -> (Gateway, String) {
    let a = Gateway::start(GatewayOptions {
        database_url: Some(pair.a_db.url.clone()),
        data_dir: Some(pair.a_dir.path().to_path_buf()),
        env: env.iter().map(|(k, v)| ((*k).to_string(), (*v).to_string())).collect(),
        ..Default::default()
    })
    .await;
    let email = format!("admin-{}@a.test", Uuid::new_v4().simple());
    let (_, token) = seed_admin(&pair.a_db.pool, &email).await;
    (a, token)
}

/// The value of the series `name` whose labels include every one of `labels`, from `text`.
fn series(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (head, value) = l.rsplit_once(' ')?;
        let (metric, rest) = head.split_once('{').unwrap_or((head, ""));
        (metric == name && labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse().ok())
            .flatten()
    })
}

async fn metrics_text(gw: &Gateway) -> String {
    gw.client.get(gw.url("/metrics")).send().await.unwrap().text().await.unwrap()
}

/// `tessera peer show gateway-b --json` on A.
fn a_peer_show(pair: &Pair) -> Value {
    let (code, out, err) = run_cli(&["peer", "show", "gateway-b", "--json"], &pair.a_env());
    assert_eq!(code, 0, "{out}{err}");
    serde_json::from_str(&out).unwrap()
}

/// Polls `sql` (a count on A's database) until it reaches `want` or `within` passes.
async fn wait_count(pool: &sqlx::PgPool, sql: &'static str, want: i64, within: Duration) -> i64 {
    let deadline = std::time::Instant::now() + within;
    loop {
        let n: i64 = sqlx::query_scalar(sql).fetch_one(pool).await.unwrap();
        if n >= want || std::time::Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn renewal_follows_the_certificate_lifetime_not_the_local_setting() {
    // B issues 60 s certificates; A's own setting says an hour. Counted from A's setting (as it
    // used to be), the certificate would be due at once; counted from its own life, at ~40 s.
    let pair = Pair::new(vec![("TESSERA_FEDERATION_CERT_TTL_SECS".into(), "60".into())]).await;
    pair.enroll().await;
    let (_, first) = pair.a_identity().await;
    let first_not_after = leaf_identity(&first).not_after;
    let (a, _) = start_a(&pair, &[("TESSERA_FEDERATION_CERT_TTL_SECS", "3600")]).await;
    let (received, renewed) = received_then_renewed(&pair.a_db.pool, Duration::from_secs(70)).await;
    assert_eq!(renewed, 1, "renewed before expiry:\n{}", a.log());
    let (renewed_at, failures): (chrono::DateTime<chrono::Utc>, i32) =
        sqlx::query_as("select last_renewed_at, renewal_failures from federation_peers where name = 'gateway-b'")
            .fetch_one(&pair.a_db.pool)
            .await
            .unwrap();
    let lifetime = (first_not_after - received).num_milliseconds() as f64 / 1000.0;
    let at = (renewed_at - received).num_milliseconds() as f64 / 1000.0;
    // Two thirds of 60 s is 40 s; the jitter is a thirtieth (2 s); slots and polling add ~2 s.
    assert!((57.0..=61.0).contains(&lifetime), "{lifetime}");
    assert!(
        (lifetime * 2.0 / 3.0 - 3.0..=lifetime * 2.0 / 3.0 + 5.0).contains(&at),
        "renewed after {at} s of {lifetime} s"
    );
    assert_eq!(failures, 0);

    // The reader's view names the new certificate and the renewal.
    let (_, second) = pair.a_identity().await;
    let new = leaf_identity(&second);
    let shown = a_peer_show(&pair);
    let reader = &shown["reader"];
    assert_eq!(reader["certSerial"], new.serial.as_str(), "{shown}");
    assert_eq!(
        reader["certNotAfter"].as_str().unwrap().parse::<chrono::DateTime<chrono::Utc>>().unwrap(),
        new.not_after
    );
    assert_eq!(reader["status"], "ok");
    assert!(reader["lastRenewedAt"].is_string() && reader["lastSuccessAt"].is_string(), "{shown}");
    assert!(reader["renewAt"].as_str().unwrap().parse::<chrono::DateTime<chrono::Utc>>().unwrap() > renewed_at);
    assert_eq!(reader["renewalFailures"], 0);
    assert!(reader["refusingSince"].is_null() && reader["lastError"].is_null(), "{shown}");

    // Metrics: the renewal by outcome, and the expiry of every certificate as a timestamp.
    let text = metrics_text(&a).await;
    let ok = series(&text, "tessera_peer_renewals_total", &[("peer", "gateway-b"), ("outcome", "ok")]);
    assert_eq!(ok, Some(1.0), "{text}");
    let expiry = series(&text, "tessera_peer_client_certificate_expiry_timestamp_seconds", &[("peer", "gateway-b")]);
    assert_eq!(expiry, Some(new.not_after.timestamp() as f64), "{text}");
    let now = chrono::Utc::now().timestamp() as f64;
    let ca = series(&text, "tessera_ca_certificate_expiry_timestamp_seconds", &[]).expect("CA expiry gauge");
    let server = series(&text, "tessera_server_certificate_expiry_timestamp_seconds", &[]).expect("server gauge");
    assert!(ca > now + 86_400.0 * 300.0 && server > now, "{text}");
}

/// A client certificate for `grant` signed by B's CA, valid from `not_before` to `not_after`
/// seconds from now, without touching B's records: (key PEM, cert PEM).
fn cert_from_b(pair: &Pair, grant: Uuid, not_before: i64, not_after: i64) -> (String, String) {
    let ca = pair.b_ca();
    let key = p256();
    let mut params = rcgen::CertificateParams::default();
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = time::OffsetDateTime::now_utc() + time::Duration::seconds(not_before);
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::seconds(not_after);
    params.serial_number = Some(rcgen::SerialNumber::from_slice(Uuid::new_v4().as_bytes()));
    for (arc, value) in [(1u64, grant), (2, pair.subject)] {
        let mut content = vec![0x0c, 36];
        content.extend_from_slice(value.to_string().as_bytes());
        params
            .custom_extensions
            .push(rcgen::CustomExtension::from_oid_content(&[1, 3, 6, 1, 4, 1, 99999, arc], content));
    }
    (key.serialize_pem(), params.signed_by(&key, ca.issuer()).unwrap().pem())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_reader_sees_refusals_failed_renewals_and_expiry_with_their_cause() {
    let pair = Pair::new(vec![]).await;
    let grant = pair.enroll().await;
    let (mut a, a_token) = start_a(&pair, &[("TESSERA_WEBHOOK_ALLOWED_CIDRS", "192.0.2.0/24")]).await;
    let a_admin =
        |method: reqwest::Method, path: &str, body: Option<Value>| a.api().bearer(&a_token).call(method, path, body);
    // A receiver on A for both events (never reached; the delivery rows are what counts).
    let hook = json!({"url": "http://192.0.2.1:9/x", "secret": "s".repeat(32),
        "events": ["peer.certificate_expiring", "peer.renewal_failed"]});
    let (status, body) = a_admin(reqwest::Method::POST, "/api/admin/webhooks", Some(hook)).await;
    assert_eq!(status, 201, "{body}");
    let query = json!({"resource": "tasks", "source": "peer:gateway-b", "limit": 10});

    // A successful call: status ok, last success recorded, our serial shown.
    let (status, r) = a_admin(reqwest::Method::POST, "/api/admin/federation/query", Some(query.clone())).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["errors"], json!([]), "{r}");
    let (status, peers) = a_admin(reqwest::Method::GET, "/api/admin/peers", None).await;
    assert_eq!(status, 200);
    let b = peers.as_array().unwrap().iter().find(|p| p["name"] == "gateway-b").unwrap().clone();
    let b_id = b["id"].as_str().unwrap().to_string();
    assert_eq!(b["state"], "active");
    assert_eq!(b["reader"]["status"], "ok", "{b}");
    assert!(b["reader"]["lastSuccessAt"].is_string(), "{b}");
    assert_eq!(b["reader"]["certSerial"], leaf_identity(&pair.a_identity().await.1).serial.as_str());

    // B revokes the grant: the next calls are refused, and A says so, with the cause and since when.
    let (status, _) = pair.admin_post(&format!("/api/admin/grants/{grant}/revoke"), json!({"reason": "test"})).await;
    assert_eq!(status, 200);
    let (_, r) = a_admin(reqwest::Method::POST, "/api/admin/federation/query", Some(query.clone())).await;
    assert_eq!(r["errors"][0]["code"], "http_403", "{r}");
    let (status, shown) = a_admin(reqwest::Method::GET, &format!("/api/admin/peers/{b_id}"), None).await;
    assert_eq!(status, 200);
    let reader = &shown["reader"];
    assert_eq!(reader["status"], "refusing", "{shown}");
    assert!(reader["lastError"].as_str().unwrap().contains("http_403"), "{shown}");
    let since = reader["refusingSince"].as_str().expect("refusing since").to_string();
    let _ = a_admin(reqwest::Method::POST, "/api/admin/federation/query", Some(query.clone())).await;
    let (_, shown) = a_admin(reqwest::Method::GET, &format!("/api/admin/peers/{b_id}"), None).await;
    assert_eq!(shown["reader"]["refusingSince"], since.as_str(), "the streak keeps its first refusal");
    let text = metrics_text(&a).await;
    let calls = |outcome| series(&text, "tessera_peer_calls_total", &[("peer", "gateway-b"), ("outcome", outcome)]);
    assert_eq!((calls("ok"), calls("refused")), (Some(1.0), Some(2.0)), "{text}");

    // Renewal is refused too: recorded with its cause, retried with backoff, announced.
    sqlx::query("update federation_peers set renew_at = now() where name = 'gateway-b'")
        .execute(&pair.a_db.pool)
        .await
        .unwrap();
    let failed = wait_count(
        &pair.a_db.pool,
        "select count(*) from outbox.deliveries where event = 'peer.renewal_failed'",
        1,
        Duration::from_secs(20),
    )
    .await;
    assert!(failed >= 1, "a failed renewal is announced:\n{}", a.log());
    let text = metrics_text(&a).await;
    let refused = series(&text, "tessera_peer_renewals_total", &[("peer", "gateway-b"), ("outcome", "refused")]);
    assert!(refused.is_some_and(|n| n >= 1.0), "renewals are counted by outcome: {text}");
    // From here on the test drives renewal passes itself.
    a.terminate();
    let (failures, retry, error_at, cause): (
        i32,
        chrono::DateTime<chrono::Utc>,
        chrono::DateTime<chrono::Utc>,
        String,
    ) = sqlx::query_as(
        "select renewal_failures, renew_at, last_error_at, last_error from federation_peers where name = 'gateway-b'",
    )
    .fetch_one(&pair.a_db.pool)
    .await
    .unwrap();
    assert!(failures >= 1);
    assert!(cause.contains("refused the renewal (403"), "{cause}");
    let backoff = (retry - error_at).num_milliseconds();
    let ceiling = 5_000 * (1 << (failures - 1));
    assert!(
        backoff >= ceiling * 4 / 5 - 100 && backoff <= ceiling + 100,
        "retry after {backoff} ms, {failures} failures"
    );
    let payload: Value = sqlx::query_scalar(
        "select payload from outbox.deliveries where event = 'peer.renewal_failed' order by seq limit 1",
    )
    .fetch_one(&pair.a_db.pool)
    .await
    .unwrap();
    assert_eq!((payload["peer"].as_str(), payload["consecutiveFailures"].as_i64()), (Some("gateway-b"), Some(1)));
    assert_eq!(payload["refused"], true, "{payload}");

    // A certificate in the last sixth of its life (63 s long, 8 s left): announced once, and the
    // doctor warns (exit 2), naming the peer.
    let (key, cert) = cert_from_b(&pair, grant, -55, 8);
    let sealing = tessera::sealing::SealingKey::load(None, pair.a_dir.path()).unwrap();
    sqlx::query(
        "update federation_peers
            set client_cert_pem = $1, sealed_client_key = $2, client_cert_not_after = $3,
                client_cert_received_at = now() - interval '55 seconds'
          where name = 'gateway-b'",
    )
    .bind(&cert)
    .bind(sealing.seal(tessera::federation::client::CLIENT_KEY_CONTEXT, key.as_bytes()))
    .bind(leaf_identity(&cert).not_after)
    .execute(&pair.a_db.pool)
    .await
    .unwrap();
    let (code, out, err) = run_cli(&["doctor", "--json"], &pair.a_env());
    assert_eq!(code, 2, "{out}{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["status"], "yellow");
    let warnings = report["warnings"].as_array().unwrap();
    assert!(
        warnings.iter().any(|w| w.as_str().unwrap().contains("gateway-b: client certificate in the last sixth")),
        "{report}"
    );
    let pass = tessera::federation::client::renew_due(&pair.a_db.pool, &sealing, Duration::ZERO).await;
    assert_eq!((pass.expiring, pass.failed), (1, 1), "announced, and renewal tried (and refused) at once");
    let pass = tessera::federation::client::renew_due(&pair.a_db.pool, &sealing, Duration::ZERO).await;
    assert_eq!(pass.expiring, 0, "once per certificate");
    let expiring: Vec<Value> =
        sqlx::query_scalar("select payload from outbox.deliveries where event = 'peer.certificate_expiring'")
            .fetch_all(&pair.a_db.pool)
            .await
            .unwrap();
    assert_eq!(expiring.len(), 1);
    assert_eq!(expiring[0]["serial"], leaf_identity(&cert).serial.as_str());

    // Expired: never plain `active`, in JSON or text; the cause stays; the doctor still warns.
    tokio::time::sleep(Duration::from_secs(9)).await;
    let shown = a_peer_show(&pair);
    assert_eq!(shown["reader"]["status"], "expired", "{shown}");
    assert!(shown["reader"]["lastError"].as_str().unwrap().contains("403"), "{shown}");
    let (code, out, _) = run_cli(&["peer", "list"], &pair.a_env());
    assert_eq!(code, 0);
    let line = out.lines().find(|l| l.contains("gateway-b")).unwrap();
    assert!(line.contains(" expired ") && !line.contains(" active "), "{line}");
    let (code, out, _) = run_cli(&["peer", "show", "gateway-b"], &pair.a_env());
    assert_eq!(code, 0);
    assert!(out.contains("status:           expired") && out.contains("re-enroll"), "{out}");
    let (code, out, _) = run_cli(&["doctor"], &pair.a_env());
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("gateway-b: client certificate expired"), "{out}");
    // An expired certificate is not renewed (the peer's handshake would refuse it).
    let pass = tessera::federation::client::renew_due(&pair.a_db.pool, &sealing, Duration::ZERO).await;
    assert_eq!((pass.renewed, pass.failed), (0, 0));
}

/// `grant token` runs on the database beside the gateway, not in its environment: it prints the
/// URL the running gateway recorded at start (the port it really bound), whatever this shell's
/// TESSERA_LISTEN says, and the admin API returns the same URL. TESSERA_PUBLIC_URL wins over the
/// derived one. With no gateway ever started on the database it falls back to its own
/// configuration and says so.
#[tokio::test]
async fn grant_token_prints_the_url_the_running_gateway_serves() {
    let pair = Pair::new(vec![]).await;
    let grant = pair.grant(json!({"resources": ["tasks"]})).await;
    let served = format!("https://127.0.0.1:{}/api/federation/enrollment/", pair.b.port);
    let (_, api_url) = pair.enrollment_url(grant).await;
    assert!(api_url.starts_with(&served), "{api_url}");
    let b_dir = pair.b.data_dir.to_str().unwrap();
    let grant_id = grant.to_string();
    for listen in [None, Some("127.0.0.1:1"), Some("0.0.0.0:9443")] {
        let mut env = vec![("DATABASE_URL", pair.b_db.url.as_str()), ("TESSERA_DATA_DIR", b_dir)];
        env.extend(listen.map(|l| ("TESSERA_LISTEN", l)));
        let (code, out, err) = run_cli(&["grant", "token", &grant_id, "--json"], &env);
        assert_eq!(code, 0, "{err}");
        let minted: Value = serde_json::from_str(&out).unwrap();
        let url = minted["enrollmentUrl"].as_str().unwrap();
        assert!(url.starts_with(&served), "listen {listen:?}: {url}");
        assert!(err.trim().is_empty(), "no warning when a gateway recorded its URL: {err}");
    }

    // grant list/show print the peer and subject names beside their ids, in text and JSON.
    let env = [("DATABASE_URL", pair.b_db.url.as_str()), ("TESSERA_DATA_DIR", b_dir)];
    let (code, out, err) = run_cli(&["grant", "list", "--json"], &env);
    assert_eq!(code, 0, "{err}");
    let listed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed[0]["id"], grant_id.as_str());
    assert_eq!(listed[0]["peerName"], "gateway-a");
    assert_eq!(listed[0]["subjectEmail"], "subject@b.test");
    let (code, out, _) = run_cli(&["grant", "show", &grant_id], &env);
    assert_eq!(code, 0);
    assert!(out.contains("peer=gateway-a") && out.contains("subject=subject@b.test"), "{out}");

    // A configured public URL is the one advertised, by the API and by the CLI.
    let c_db = TestDb::new().await;
    let c = Gateway::start(GatewayOptions {
        database_url: Some(c_db.url.clone()),
        env: vec![("TESSERA_PUBLIC_URL".into(), "https://gw.example:7443/".into())],
        ..Default::default()
    })
    .await;
    let recorded: String =
        sqlx::query_scalar("select url from gateway_public_url").fetch_one(&c_db.pool).await.unwrap();
    assert_eq!(recorded, "https://gw.example:7443");
    drop(c);

    // No gateway has ever started on this database: the shell's own setting, with a warning.
    let fresh = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = run_cli(
        &["grant", "token", &Uuid::now_v7().to_string()],
        &[("DATABASE_URL", fresh.url.as_str()), ("TESSERA_DATA_DIR", dir.path().to_str().unwrap())],
    );
    assert_eq!(code, 3, "an unknown grant is refused: {err}");
    assert!(err.contains("no gateway has recorded its public URL"), "{err}");
}

/// The day-2 acceptance run: two gateways and short certificates. Renewal at two thirds of the
/// real lifetime even while data calls have used up a rate limit of 1 a minute; the reader
/// stopped past expiry and seeing it; `grant reenroll` + `peer add` bringing it back on the same
/// grant, the old serial refused; a wrong CA file reported as a trust error.
#[tokio::test(flavor = "multi_thread")]
async fn day_two_end_to_end_with_two_gateways_and_short_certificates() {
    let pair = Pair::new(vec![("TESSERA_FEDERATION_CERT_TTL_SECS".into(), "15".into())]).await;
    let grant = pair.enroll().await;
    set_grant_rate(&pair.b_db.pool, grant, 1).await;
    let (first_identity, first_cert) = pair.a_identity().await;
    let (mut a, _) = start_a(&pair, &[]).await;

    // Data calls use up the grant's budget of 1 a minute...
    let list = || run_cli(&["federation", "list", "--peer", "gateway-b", "tasks", "--json"], &pair.a_env());
    assert_eq!(list().0, 0);
    let (code, out, err) = list();
    assert_ne!(code, 0, "the second call of the minute is over budget: {out}{err}");
    // ...and the running reader still renews, at about two thirds of the certificate's life.
    let (received, renewed) = received_then_renewed(&pair.a_db.pool, Duration::from_secs(25)).await;
    assert_eq!(renewed, 1, "renewed under the rate limit:\n{}", a.log());
    let renewed_at: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("select last_renewed_at from federation_peers where name = 'gateway-b'")
            .fetch_one(&pair.a_db.pool)
            .await
            .unwrap();
    let lifetime = (leaf_identity(&first_cert).not_after - received).num_milliseconds() as f64 / 1000.0;
    let at = (renewed_at - received).num_milliseconds() as f64 / 1000.0;
    assert!(
        (lifetime * 2.0 / 3.0 - 3.0..=lifetime * 2.0 / 3.0 + 6.0).contains(&at),
        "renewed after {at} s of {lifetime} s"
    );
    let (_, renewed_cert) = pair.a_identity().await;
    assert_ne!(renewed_cert, first_cert);

    // The reader is stopped past its certificate's expiry, and sees where it stands. (It may have
    // renewed once more before it stopped: the certificate it holds now is the one to replace.)
    a.terminate();
    let (_, last_cert) = pair.a_identity().await;
    tokio::time::sleep(Duration::from_secs(17)).await;
    let (code, out, err) = run_cli(&["peer", "list", "--json"], &pair.a_env());
    assert_eq!(code, 0, "{out}{err}");
    let peers: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(peers[0]["reader"]["status"], "expired", "{peers}");
    let (code, out, err) = run_cli(&["federation", "capabilities", "--peer", "gateway-b"], &pair.a_env());
    assert_eq!(code, 2, "an expired certificate is an authentication failure: {out}{err}");
    assert!(err.contains("reenroll"), "the message names the way back: {err}");

    // One step on each side brings it back on the same grant.
    let b_env = [("DATABASE_URL", pair.b_db.url.as_str()), ("TESSERA_DATA_DIR", pair.b.data_dir.to_str().unwrap())];
    let (code, url, err) = run_cli(&["grant", "reenroll", &grant.to_string()], &b_env);
    assert_eq!(code, 0, "{url}{err}");
    let (code, out, err) = pair.peer_add(url.trim());
    assert_eq!(code, 0, "{out}{err}");
    let added: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(added["remoteGrantId"], grant.to_string());
    assert_eq!(added["replaced"]["serial"], leaf_identity(&last_cert).serial.as_str(), "{added}");
    set_grant_rate(&pair.b_db.pool, grant, 600).await;
    assert_eq!(list().0, 0, "back on the same grant");
    let (code, out, _) = run_cli(&["peer", "show", "gateway-b", "--json"], &pair.a_env());
    assert_eq!(code, 0);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["reader"]["status"], "ok");
    // The old serials are refused: the superseded one by the grant, both by their expiry too.
    let current: String = sqlx::query_scalar("select current_serial from federation_grants where id = $1")
        .bind(grant)
        .fetch_one(&pair.b_db.pool)
        .await
        .unwrap();
    assert_ne!(current, leaf_identity(&last_cert).serial);
    let old = pair.mtls_client(&first_identity).get(pair.b.url("/api/federation/v1/capabilities")).send().await;
    assert!(old.is_err() || old.unwrap().status() != 200);

    // A wrong CA file is a trust error, exit 2.
    let wrong_ca = pair.a_dir.path().join("wrong-ca.pem");
    std::fs::write(&wrong_ca, tessera::federation::ca::GatewayCa::ephemeral().unwrap().cert_pem()).unwrap();
    let (code, out, err) = run_cli(
        &["token", "list", "--gateway", &pair.b.base, "--ca-file", wrong_ca.to_str().unwrap()],
        &[("TESSERA_TOKEN", pair.token.as_str()), ("TESSERA_CONFIG_DIR", pair.a_dir.path().to_str().unwrap())],
    );
    assert_eq!(code, 2, "{out}{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn peer_health_shows_both_ways_over_the_api_and_the_cli() {
    let pair = Pair::new(vec![]).await;
    let grant = pair.enroll().await;
    let (a, a_token) = start_a(&pair, &[]).await;
    // A reads from B through its own admin API (its peer client, its breakers).
    let a_admin =
        |body: Value| a.client.post(a.url("/api/admin/federation/query")).bearer_auth(&a_token).json(&body).send();
    for _ in 0..3 {
        let r = a_admin(json!({"resource": "tasks", "source": "peer:gateway-b"})).await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let r = a_admin(json!({"resource": "notes", "source": "peer:gateway-b"})).await.unwrap();
    assert_eq!(r.status(), 200, "a failed source is listed, not fatal");
    let sql = "select count(*) from federation_audit_log where grant_id = $1 and verb = 'list'";
    assert_eq!(wait_for_count(&pair.b_db.pool, sql, grant, 4).await, 4);

    // B, the data holder: inbound.
    let (status, health) =
        pair.admin(reqwest::Method::GET, &format!("/api/admin/peers/{}/health", pair.peer_id), None).await;
    assert_eq!(status, 200, "{health}");
    let inbound = &health["inbound"];
    assert_eq!(inbound["requestsLastHour"], 4, "{health}");
    assert_eq!(inbound["deniedLastHour"], 1);
    assert_eq!(inbound["denialsByCode"], json!({"resource_not_granted": 1}));
    assert_eq!(inbound["certificates"][0]["grantId"], grant.to_string());
    assert!(inbound["certificates"][0]["serial"].is_string() && inbound["lastRequestAt"].is_string());
    assert!(health.get("outbound").is_none(), "B does not call A");

    // A, the reader: outbound, with what only its process knows.
    let a_peer: String = sqlx::query_scalar("select id::text from federation_peers where name = 'gateway-b'")
        .fetch_one(&pair.a_db.pool)
        .await
        .unwrap();
    let r =
        a.client.get(a.url(&format!("/api/admin/peers/{a_peer}/health"))).bearer_auth(&a_token).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let health: Value = r.json().await.unwrap();
    let outbound = &health["outbound"];
    assert_eq!(outbound["circuit"], "closed", "{health}");
    assert_eq!(outbound["callsLastHour"], 4);
    assert!(outbound["latencyP50Ms"].as_f64().unwrap() > 0.0 && outbound["latencyP99Ms"].as_f64().unwrap() > 0.0);
    assert!(outbound["reader"]["lastError"].as_str().unwrap_or("").contains("403"), "{health}");
    assert!(outbound["reader"]["certNotAfter"].is_string());

    // The CLI on B's database.
    let b_env = [("DATABASE_URL", pair.b_db.url.as_str()), ("TESSERA_DATA_DIR", pair.b.data_dir.to_str().unwrap())];
    let (code, out, err) = run_cli(&["peer", "health", "gateway-a"], &b_env);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("4 requests in the last hour, 1 denied") && out.contains("resource_not_granted"), "{out}");
    let (code, _, _) = run_cli(&["peer", "health", "nobody"], &b_env);
    assert_eq!(code, 3);

    // The CLI on A, the reader: status, certificate expiry, last success, last error with its
    // cause from the database; the circuit and latencies from the running gateway.
    let config_dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let ca_file = a.data_dir.join("ca.pem");
    let mut a_env = pair.a_env();
    a_env.push(("TESSERA_CONFIG_DIR", config_dir.path().to_str().unwrap()));
    let (code, out, err) = run_cli(&["peer", "health", "gateway-b"], &a_env);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("circuit and latency unknown: no credential"), "says why, without a credential: {out}");
    a_env.extend([("TESSERA_GATEWAY", a.base.as_str()), ("TESSERA_CA_FILE", ca_file.to_str().unwrap())]);
    a_env.push(("TESSERA_TOKEN", a_token.as_str()));
    let (code, out, err) = run_cli(&["peer", "health", "gateway-b"], &a_env);
    assert_eq!(code, 0, "{out}{err}");
    let not_after = outbound["reader"]["certNotAfter"].as_str().unwrap();
    for fact in [
        "outbound: refusing".to_string(),
        "circuit closed".to_string(),
        "4 calls in the last hour, latency p50 ".to_string(),
        ", p99 ".to_string(),
        "last success 20".to_string(),
        "last error http_403".to_string(),
        format!("until {}", &not_after[..19]),
    ] {
        assert!(out.contains(&fact), "no '{fact}' in:\n{out}");
    }
    let (code, out, _) = run_cli(&["peer", "health", "gateway-b", "--json"], &a_env);
    assert_eq!(code, 0);
    let health: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(health["outbound"]["circuit"], "closed", "{health}");
    assert!(health["outbound"]["latencyP99Ms"].as_f64().unwrap() > 0.0);
    assert!(health["outboundUnavailable"].is_null() && health["reader"]["lastSuccessAt"].is_string());
}

// ---------------------------------------------------------------------------------------------
// Traces across gateways (OpenTelemetry over OTLP/HTTP).

/// A small OTLP/HTTP receiver on loopback: accepts `POST /v1/traces` in the JSON encoding and
/// keeps every span with its resource's `service.name`.
struct OtlpReceiver {
    base: String,
    spans: std::sync::Arc<std::sync::Mutex<Vec<ExportedSpan>>>,
    _server: tokio::task::JoinHandle<()>,
}

#[derive(Debug, Clone)]
struct ExportedSpan {
    service: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    name: String,
    /// OTLP's `SpanKind`: 2 server, 3 client.
    kind: i64,
    attributes: std::collections::BTreeMap<String, String>,
}

/// An OTLP JSON `AnyValue` as text (`{"stringValue": "x"}` is `x`, `{"intValue": 5}` is `5`).
fn any_value(v: &Value) -> String {
    match v.as_object().and_then(|o| o.values().next()) {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    }
}

fn attributes(list: &Value) -> std::collections::BTreeMap<String, String> {
    list.as_array()
        .into_iter()
        .flatten()
        .map(|kv| (kv["key"].as_str().unwrap_or_default().to_string(), any_value(&kv["value"])))
        .collect()
}

impl OtlpReceiver {
    async fn start() -> Self {
        let spans = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let store = spans.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: axum::body::Bytes| {
                let store = store.clone();
                async move {
                    let export: Value = serde_json::from_slice(&body).expect("an OTLP JSON export");
                    for rs in export["resourceSpans"].as_array().into_iter().flatten() {
                        let service =
                            attributes(&rs["resource"]["attributes"]).remove("service.name").unwrap_or_default();
                        for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                            for s in ss["spans"].as_array().into_iter().flatten() {
                                store.lock().unwrap().push(ExportedSpan {
                                    service: service.clone(),
                                    trace_id: s["traceId"].as_str().unwrap_or_default().to_string(),
                                    span_id: s["spanId"].as_str().unwrap_or_default().to_string(),
                                    parent_span_id: s["parentSpanId"].as_str().unwrap_or_default().to_string(),
                                    name: s["name"].as_str().unwrap_or_default().to_string(),
                                    kind: s["kind"].as_i64().unwrap_or_default(),
                                    attributes: attributes(&s["attributes"]),
                                });
                            }
                        }
                    }
                    ([(axum::http::header::CONTENT_TYPE, "application/json")], "{}")
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { base, spans, _server: server }
    }

    /// The standard variables that point a process at this receiver as `service`.
    fn env(&self, service: &str) -> Vec<(String, String)> {
        [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", self.base.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_SERVICE_NAME", service),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    fn spans(&self) -> Vec<ExportedSpan> {
        self.spans.lock().unwrap().clone()
    }

    /// Waits until `pred` holds for the spans received so far.
    async fn wait_for(&self, what: &str, pred: impl Fn(&[ExportedSpan]) -> bool) -> Vec<ExportedSpan> {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let spans = self.spans();
            if pred(&spans) {
                return spans;
            }
            assert!(std::time::Instant::now() < deadline, "no {what} within 20 s; received:\n{spans:#?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn find<'a>(spans: &'a [ExportedSpan], service: &str, name: &str, trace_id: &str) -> Vec<&'a ExportedSpan> {
    spans.iter().filter(|s| s.service == service && s.name == name && s.trace_id == trace_id).collect()
}

/// The holder's spans in the trace of the reader's `peer.call` span `call`.
fn holder_side<'a>(spans: &'a [ExportedSpan], call: &ExportedSpan) -> Vec<&'a ExportedSpan> {
    spans.iter().filter(|s| s.service == "gateway-b" && s.trace_id == call.trace_id).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn one_federated_query_is_one_trace_across_both_gateways() {
    let receiver = OtlpReceiver::start().await;
    let mut b_env = receiver.env("gateway-b");
    // The request span's closing line, so that B's log shows which trace each request was in.
    b_env.push(("TESSERA_LOG".into(), "info,sqlx=warn,tower_http=debug".into()));
    let pair = Pair::new(b_env).await;
    let grant = pair.enroll().await;
    let mut a_env = receiver.env("gateway-a");
    a_env.push(("TESSERA_LOG_FORMAT".into(), "json".into()));
    a_env.push(("TESSERA_LOG".into(), "info,sqlx=warn,tower_http=debug".into()));
    let a_env: Vec<(&str, &str)> = a_env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (a, a_token) = start_a(&pair, &a_env).await;

    // The reader's admin query: allowed (tasks), then refused by B's scope (notes).
    let query = |resource: &str| {
        a.client
            .post(a.url("/api/admin/federation/query"))
            .bearer_auth(&a_token)
            .json(&json!({"resource": resource, "source": "peer:gateway-b"}))
            .send()
    };
    assert_eq!(query("tasks").await.unwrap().status(), 200);
    let spans = receiver
        .wait_for("the allowed call's trace", |spans| {
            // Each side exports its spans as they end: the request spans last.
            spans.iter().any(|c| {
                c.service == "gateway-a"
                    && c.name == "peer.call"
                    && ["gateway-a", "gateway-b"]
                        .iter()
                        .all(|service| !find(spans, service, "request", &c.trace_id).is_empty())
                    && spans.iter().any(|s| s.name == "federation.audit" && s.trace_id == c.trace_id)
            })
        })
        .await;
    let call = spans.iter().find(|s| s.service == "gateway-a" && s.name == "peer.call").unwrap();
    assert_eq!((call.attributes["peer"].as_str(), call.attributes["verb"].as_str()), ("gateway-b", "list"));
    assert_eq!(call.attributes["outcome"], "ok");
    let t = call.trace_id.as_str();
    // A: the admin request is the root, the peer call its child.
    let a_request = find(&spans, "gateway-a", "request", t);
    assert_eq!(a_request.len(), 1, "{spans:#?}");
    assert_eq!(a_request[0].attributes["path"], "/api/admin/federation/query");
    assert!(a_request[0].parent_span_id.is_empty(), "the reader's admin query starts the trace");
    assert_eq!(call.parent_span_id, a_request[0].span_id);
    // B: its request continues A's peer call, and the guard, scope, page SQL and audit are in it.
    let b_request = find(&spans, "gateway-b", "request", t);
    assert_eq!(b_request.len(), 1, "{spans:#?}");
    assert_eq!(b_request[0].parent_span_id, call.span_id, "B's request is a child of A's peer call");
    assert_eq!((call.kind, b_request[0].kind, a_request[0].kind), (3, 2, 2), "client and server spans");
    assert_eq!(b_request[0].attributes["path"], "/api/federation/v1/list/tasks");
    assert_eq!(b_request[0].attributes["http.response.status_code"], "200");
    let b = holder_side(&spans, call);
    for step in ["federation.guard", "federation.scope", "federation.page_sql", "federation.audit"] {
        assert!(b.iter().any(|s| s.name == step), "no {step} in B's part of the trace: {b:#?}");
    }
    let guard = b.iter().find(|s| s.name == "federation.guard").unwrap();
    assert_eq!(guard.parent_span_id, b_request[0].span_id);
    assert_eq!(guard.attributes["grant_id"], grant.to_string());
    assert_eq!(guard.attributes["outcome"], "allowed");
    let audit = b.iter().find(|s| s.name == "federation.audit").unwrap();
    assert_eq!(
        (
            audit.attributes["verb"].as_str(),
            audit.attributes["resource"].as_str(),
            audit.attributes["outcome"].as_str()
        ),
        ("list", "tasks", "allowed")
    );
    assert!(b.iter().any(|s| s.name == "federation.scope" && s.attributes.get("outcome").map(String::as_str) == Some("allowed")));
    assert!(b.iter().any(|s| s.name == "federation.page_sql" && s.attributes.contains_key("rows")));

    // A denial is in the trace with its deny code, on both the scope and the audit step.
    assert_eq!(query("notes").await.unwrap().status(), 200, "a failed source is listed, not fatal");
    let spans = receiver
        .wait_for("the refused call's trace", |spans| {
            spans.iter().any(|s| {
                s.name == "federation.audit"
                    && s.attributes.get("outcome").map(String::as_str) == Some("denied")
                    && !find(spans, "gateway-a", "peer.call", &s.trace_id).is_empty()
            })
        })
        .await;
    let denied = spans.iter().find(|s| s.name == "federation.audit" && s.attributes["outcome"] == "denied").unwrap();
    assert_eq!(denied.attributes["deny_code"], "resource_not_granted");
    let refused_call = find(&spans, "gateway-a", "peer.call", &denied.trace_id);
    assert_eq!(refused_call.len(), 1, "the denial is in the reader's trace");
    assert_eq!(refused_call[0].attributes["error.code"], "http_403");
    assert!(
        find(&spans, "gateway-b", "federation.scope", &denied.trace_id).iter().any(|s| s
            .attributes
            .get("deny_code")
            .map(String::as_str)
            == Some("resource_not_granted"))
    );

    // Never a credential or a certificate in an attribute.
    for s in receiver.spans() {
        for v in s.attributes.values() {
            assert!(!v.contains(&a_token) && !v.contains(&pair.token) && !v.contains("BEGIN"), "{s:?}");
        }
    }

    // Log lines carry the trace id: B's in text, A's in JSON.
    let b_log = pair.b.log();
    assert!(b_log.lines().any(|l| l.contains(&format!("trace_id={t}"))), "{b_log}");
    let a_log = a.log();
    assert!(
        a_log
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .any(|l| l.to_string().contains(&format!("\"trace_id\":\"{t}\""))),
        "{a_log}"
    );

    // The CLI path is a trace of its own command, continued by B the same way.
    // A batch delay far beyond the test: the spans can only come from the flush at exit.
    let mut cli_env: Vec<(String, String)> = receiver.env("reader-cli");
    cli_env.push(("OTEL_BSP_SCHEDULE_DELAY".into(), "600000".into()));
    let mut env = pair.a_env();
    env.extend(cli_env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let (code, out, err) = run_cli(&["federation", "list", "--peer", "gateway-b", "tasks", "--json"], &env);
    assert_eq!(code, 0, "{out}{err}");
    let spans = receiver
        .wait_for("the CLI's trace", |spans| {
            spans.iter().any(|s| s.service == "reader-cli" && s.name == "tessera federation")
        })
        .await;
    let cli_call = spans.iter().find(|s| s.service == "reader-cli" && s.name == "peer.call").unwrap();
    let command = find(&spans, "reader-cli", "tessera federation", &cli_call.trace_id);
    assert_eq!(command.len(), 1, "{spans:#?}");
    assert!(command[0].parent_span_id.is_empty() && cli_call.parent_span_id == command[0].span_id);
    let spans = receiver
        .wait_for("B's part of the CLI's trace", |spans| {
            !find(spans, "gateway-b", "request", &cli_call.trace_id).is_empty()
        })
        .await;
    assert_eq!(find(&spans, "gateway-b", "request", &cli_call.trace_id)[0].parent_span_id, cli_call.span_id);

    // A reader with no OTEL_* variables sends no trace context: B's request is a root of its own.
    let roots_before = receiver
        .spans()
        .iter()
        .filter(|s| {
            s.service == "gateway-b"
                && s.name == "request"
                && s.parent_span_id.is_empty()
                && s.attributes.get("path").map(String::as_str) == Some("/api/federation/v1/list/tasks")
        })
        .count();
    let (code, out, err) = run_cli(&["federation", "list", "--peer", "gateway-b", "tasks", "--json"], &pair.a_env());
    assert_eq!(code, 0, "{out}{err}");
    let spans = receiver
        .wait_for("B's span of the untraced call", |spans| {
            spans
                .iter()
                .filter(|s| {
                    s.service == "gateway-b"
                        && s.name == "request"
                        && s.parent_span_id.is_empty()
                        && s.attributes.get("path").map(String::as_str) == Some("/api/federation/v1/list/tasks")
                })
                .count()
                > roots_before
        })
        .await;
    let services: std::collections::BTreeSet<&str> = spans.iter().map(|s| s.service.as_str()).collect();
    assert_eq!(
        services,
        ["gateway-a", "gateway-b", "reader-cli"].into_iter().collect(),
        "nothing from an unconfigured process"
    );
}

/// The fields of a task row on the wire, sorted.
const TASK_KEYS: [&str; 14] = [
    "_source",
    "assignee",
    "createdAt",
    "description",
    "dueDate",
    "id",
    "metadata",
    "missionId",
    "priority",
    "projectId",
    "status",
    "tags",
    "title",
    "updatedAt",
];

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
    k.sort();
    k
}

#[tokio::test(flavor = "multi_thread")]
async fn rows_carry_mosaics_fields_from_the_data_api_to_list_and_get() {
    let pair = Pair::new(vec![]).await;
    let created = |r: (u16, Value)| {
        assert_eq!(r.0, 201, "{}", r.1);
        r.1
    };
    let project =
        created(pair.admin_post("/api/admin/projects", json!({"name": "p", "ownerUserId": pair.subject})).await);
    let mission =
        created(pair.admin_post("/api/admin/missions", json!({"name": "m", "projectId": project["id"]})).await);
    let task = created(
        pair.admin_post(
            "/api/admin/tasks",
            json!({"title": "Ship", "missionId": mission["id"], "assignee": "ada", "tags": ["a", "b"],
                   "dueDate": "2027-01-02T03:04:05Z", "metadata": {"points": 3}}),
        )
        .await,
    );
    assert_eq!((task["assignee"].as_str(), task["tags"].clone()), (Some("ada"), json!(["a", "b"])), "{task}");
    // `notes` is still accepted as the old name of `content`.
    let note = created(
        pair.admin_post(
            "/api/admin/mission-tasks",
            json!({"missionId": mission["id"], "userId": pair.subject, "notes": "remember"}),
        )
        .await,
    );
    assert_eq!(note["content"], "remember", "{note}");
    let insight = created(
        pair.admin_post(
            "/api/admin/insights",
            json!({"userId": pair.subject, "content": "c", "category": "cat", "relevanceScore": 0.5, "metadata": {"x": 1}}),
        )
        .await,
    );
    assert_eq!((insight["source"].as_str(), insight["relevanceScore"].as_f64()), (Some("agent"), Some(0.5)));
    let pref = created(
        pair.admin_post(
            "/api/admin/preferences",
            json!({"userId": pair.subject, "key": "k", "value": {"on": true}, "category": "ui", "source": "user", "mutable": false}),
        )
        .await,
    );
    assert_eq!(pref["mutable"], false, "{pref}");
    // Bad new fields are named.
    for (body, field) in [
        (json!({"title": "x", "missionId": mission["id"], "metadata": [1]}), "metadata"),
        (json!({"title": "x", "missionId": mission["id"], "tags": [""]}), "tags[0]"),
        (json!({"title": "x", "missionId": mission["id"], "assignee": "a".repeat(201)}), "assignee"),
    ] {
        let (status, e) = pair.admin_post("/api/admin/tasks", body).await;
        assert_eq!((status, e["error"]["details"]["field"].as_str()), (400, Some(field)), "{e}");
    }

    let (_, client) = pair.enroll_with(json!({"resources": ["tasks", "notes", "memory"]})).await;
    let (_, page) = pair.list(&client, "tasks", json!({})).await;
    let t = &page["items"][0];
    assert_eq!(keys(t), TASK_KEYS);
    assert_eq!((t["dueDate"].as_str(), t["metadata"].clone()), (Some("2027-01-02T03:04:05Z"), json!({"points": 3})));
    let (_, page) = pair.list(&client, "notes", json!({})).await;
    let n = &page["items"][0];
    assert_eq!(keys(n), ["_source", "content", "createdAt", "id", "missionId", "status", "taskId", "updatedAt"]);
    assert_eq!(n["content"], "remember");
    let (_, page) = pair.list(&client, "memory", json!({})).await;
    let (i, p) = (&page["items"][0], &page["items"][1]);
    assert_eq!(
        keys(i),
        ["_source", "category", "content", "createdAt", "id", "kind", "metadata", "relevanceScore", "updatedAt"]
    );
    assert_eq!((i["kind"].as_str(), i["category"].as_str()), (Some("agent"), Some("cat")), "kind is the source");
    assert_eq!(keys(p), ["_source", "createdAt", "id", "key", "kind", "mutable", "source", "updatedAt", "value"]);
    assert_eq!((p["kind"].as_str(), p["mutable"].as_bool()), (Some("ui"), Some(false)), "kind is the category");
    // get answers the same shape as list.
    let r = client.post(pair.b.url(&format!("/api/federation/v1/get/tasks/{}", task["id"].as_str().unwrap())));
    let got: Value = r.send().await.unwrap().json().await.unwrap();
    assert_eq!(got["item"], *t);

    // updatedAt follows an update (a trigger), and an update that changes nothing leaves it.
    let before: chrono::DateTime<chrono::Utc> = t["updatedAt"].as_str().unwrap().parse().unwrap();
    let id: Uuid = task["id"].as_str().unwrap().parse().unwrap();
    sqlx::query("update tasks set title = title where id = $1").bind(id).execute(&pair.b_db.pool).await.unwrap();
    let (_, page) = pair.list(&client, "tasks", json!({})).await;
    assert_eq!(page["items"][0]["updatedAt"], t["updatedAt"], "a no-op update keeps updatedAt");
    sqlx::query("update tasks set title = 'Shipped' where id = $1").bind(id).execute(&pair.b_db.pool).await.unwrap();
    let (_, page) = pair.list(&client, "tasks", json!({})).await;
    let after: chrono::DateTime<chrono::Utc> = page["items"][0]["updatedAt"].as_str().unwrap().parse().unwrap();
    assert!(after > before, "{before} -> {after}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_row_shape_migration_keeps_existing_rows() {
    let db = TestDb::empty().await;
    let before = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations")).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap().to_str().unwrap() < "20261201122000" {
            std::fs::copy(&path, before.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    sqlx::migrate::Migrator::new(before.path()).await.unwrap().run(&db.pool).await.unwrap();
    let (user, project, mission) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let at = "2025-01-01T00:00:00Z";
    for sql in [
        "insert into users (id, email, name, role) values ($1, 'u@x', 'U', 'member')",
        "insert into projects (id, name, owner_user_id) values ($2, 'p', $1)",
        "insert into missions (id, name, project_id) values ($3, 'm', $2)",
        "insert into tasks (id, title, project_id, created_at, updated_at) values (gen_random_uuid(), 'old', $2, $4, $4)",
        "insert into mission_tasks (id, mission_id, user_id, notes, created_at) values (gen_random_uuid(), $3, $1, 'n', $4)",
        "insert into insights (id, user_id, content, created_at) values (gen_random_uuid(), $1, 'i', $4)",
        "insert into preferences (id, user_id, key, value, created_at) values (gen_random_uuid(), $1, 'k', '1', $4)",
    ] {
        sqlx::query(sql)
            .bind(user)
            .bind(project)
            .bind(mission)
            .bind(at.parse::<chrono::DateTime<chrono::Utc>>().unwrap())
            .execute(&db.pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    tessera::store::migrate(&db.pool).await.unwrap();
    let task: (String, Vec<String>, Option<Value>) =
        sqlx::query_as("select title, tags, metadata from tasks").fetch_one(&db.pool).await.unwrap();
    assert_eq!(task, ("old".to_string(), vec![], None));
    for table in ["mission_tasks", "insights", "preferences"] {
        let sql = format!("select count(*) from {table} where updated_at = created_at and created_at = '{at}'");
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_one(&db.pool).await.unwrap();
        assert_eq!(n, 1, "{table}: the row survives, updated when created");
    }
    let memory: (String, f32, bool) =
        sqlx::query_as("select i.source, i.relevance_score, p.mutable from insights i cross join preferences p")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(memory, ("agent".to_string(), 1.0, true));
    // The trigger works on migrated rows too, including insights with a vector column.
    sqlx::query("update insights set content = 'j'").execute(&db.pool).await.unwrap();
    let moved: bool =
        sqlx::query_scalar("select updated_at > created_at from insights").fetch_one(&db.pool).await.unwrap();
    assert!(moved);
}

#[tokio::test(flavor = "multi_thread")]
async fn peer_add_without_a_url_pin_needs_one_out_of_band_and_never_trusts_on_first_use() {
    let pair = Pair::new(vec![]).await;
    let grant = pair.grant(json!({"resources": ["tasks"]})).await;
    let (_, url) = pair.enrollment_url(grant).await;
    let (bare, pin) = url.split_once("#sha256=").unwrap();
    let stored = || async {
        let n: i64 =
            sqlx::query_scalar("select count(*) from federation_peers").fetch_one(&pair.a_db.pool).await.unwrap();
        let status: String = sqlx::query_scalar("select status from federation_grants where id = $1")
            .bind(grant)
            .fetch_one(&pair.b_db.pool)
            .await
            .unwrap();
        (n, status)
    };
    let env = pair.a_env();

    // A URL without a pin (as Mosaic's are) and no terminal to ask: refused (trust, 2), with the
    // exact command to run, and nothing sent or stored.
    let (code, out, err) = run_cli(&["peer", "add", bare, "--name", "gateway-b"], &env);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("no #sha256= pin"), "{err}");
    assert!(err.contains(&format!("tessera peer add '{bare}' --name 'gateway-b' --ca-fingerprint <sha256")), "{err}");
    assert_eq!(stored().await, (0, "pending".to_string()), "nothing enrolled, the token not spent");

    // A pin out of band that does not match the CA: refused (trust), nothing sent.
    let wrong = "00".repeat(32);
    let (code, _, err) = run_cli(&["peer", "add", bare, "--ca-fingerprint", &wrong], &env);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("CA fingerprint mismatch"), "{err}");
    // One that disagrees with the URL's own pin, or is not a fingerprint: usage (64).
    let (code, _, err) = run_cli(&["peer", "add", &url, "--ca-fingerprint", &wrong], &env);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("--ca-fingerprint gives"), "{err}");
    let (code, _, err) = run_cli(&["peer", "add", bare, "--ca-fingerprint", "abc"], &env);
    assert_eq!(code, 64, "{err}");
    assert_eq!(stored().await, (0, "pending".to_string()));

    // The right one, pasted as openssl prints it: enrolled.
    let colons =
        pin.to_uppercase().as_bytes().chunks(2).map(|c| std::str::from_utf8(c).unwrap()).collect::<Vec<_>>().join(":");
    let (code, out, err) =
        run_cli(&["peer", "add", bare, "--ca-fingerprint", &colons, "--name", "gateway-b", "--json"], &env);
    assert_eq!(code, 0, "{out}{err}");
    let enrolled: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(enrolled["caFingerprint"], pin);
    assert_eq!(enrolled["subjectUserId"], pair.subject.to_string());
    assert_eq!(stored().await, (1, "active".to_string()));
}

// ------------------------------------------------------------------ docs/protocol.md

/// The fenced blocks of `docs/protocol.md` whose info string holds `vector=...`: their
/// `key=value` attributes and body.
fn protocol_vectors() -> Vec<(std::collections::HashMap<String, String>, String)> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/protocol.md")).unwrap();
    let mut vectors = Vec::new();
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        let Some(info) = line.trim_start().strip_prefix("```") else { continue };
        let attrs: std::collections::HashMap<String, String> = info
            .split_whitespace()
            .filter_map(|w| w.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
            .collect();
        let body: Vec<&str> = lines.by_ref().take_while(|l| !l.trim_start().starts_with("```")).collect();
        if attrs.contains_key("vector") {
            vectors.push((attrs, body.join("\n")));
        }
    }
    vectors
}

fn hex_block(body: &str) -> Vec<u8> {
    hex::decode(body.split_whitespace().collect::<String>()).unwrap()
}

/// The envelope vector for `case`, with its status.
fn envelope_vector(case: &str) -> (u16, Value) {
    let (attrs, body) = protocol_vectors()
        .into_iter()
        .find(|(a, _)| a["vector"] == "envelope" && a.get("case").map(String::as_str) == Some(case))
        .unwrap_or_else(|| panic!("docs/protocol.md has no envelope vector for case {case}"));
    (attrs["status"].parse().unwrap(), serde_json::from_str(&body).unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_protocol_document_vectors_match_the_code() {
    use rustls_pki_types::pem::PemObject;
    let vectors = protocol_vectors();
    let of = |kind: &str| vectors.iter().filter(|(a, _)| a["vector"] == kind).collect::<Vec<_>>();

    // The two extensions, as the gateway CA really writes them into a client certificate.
    let ext = of("der-extension");
    assert_eq!(ext.len(), 2);
    let value_of =
        |oid: &str| ext.iter().find(|(a, _)| a["oid"] == oid).map(|(a, b)| (a["value"].clone(), hex_block(b))).unwrap();
    let (grant, grant_der) = value_of("1.3.6.1.4.1.99999.1");
    let (subject, subject_der) = value_of("1.3.6.1.4.1.99999.2");
    let db = TestDb::new().await;
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let sealing = tessera::sealing::SealingKey::load(None, dir.path()).unwrap();
    let ca = tessera::federation::ca::GatewayCa::load_or_create(&db.pool, &sealing).await.unwrap();
    let key = p256();
    let public_key =
        tessera::federation::csr::verified_public_key(&csr(&key, rcgen::CertificateParams::default())).unwrap();
    let oids = tessera::federation::identity::FederationOids::default();
    let req = tessera::federation::ca::ClientCertRequest {
        peer_name: "gateway-a",
        grant_id: grant.parse().unwrap(),
        subject_user_id: subject.parse().unwrap(),
        oids: &oids,
        ttl: Duration::from_secs(3600),
    };
    let cert = ca.issue_client_cert(&public_key, &req).unwrap();
    let der = rustls_pki_types::CertificateDer::from_pem_slice(cert.pem.as_bytes()).unwrap();
    for (name, bytes) in [("grant", &grant_der), ("subject", &subject_der)] {
        assert!(der.as_ref().windows(bytes.len()).any(|w| w == bytes.as_slice()), "the {name} extension bytes");
    }
    let identity = tessera::federation::identity::parse_identity(der.as_ref(), &oids).unwrap();
    assert_eq!((identity.grant_id.to_string(), identity.subject_user_id.to_string()), (grant, subject));
    let oid_bytes = |arc: u8| [0x06, 0x09, 0x2b, 0x06, 0x01, 0x04, 0x01, 0x86, 0x8d, 0x1f, arc];
    assert_eq!(&grant_der[2..13], &oid_bytes(1), "the OID row of the table");
    assert_eq!(&subject_der[2..13], &oid_bytes(2));

    // A text subject id, as a reader receives it from a Mosaic peer.
    for (a, body) in of("der-utf8string") {
        assert_eq!(tessera::federation::identity::encode_utf8string(&a["value"]), hex_block(body));
    }

    // One envelope per error code, each a code the gateway has; the live ones are compared with
    // real answers by `a_client_written_from_the_protocol_document_pages_tessera`.
    let envelopes = of("envelope");
    let mut codes: Vec<String> = envelopes
        .iter()
        .map(|(_, b)| serde_json::from_str::<Value>(b).unwrap()["error"]["code"].as_str().unwrap().to_string())
        .collect();
    codes.sort();
    assert_eq!(
        codes,
        [
            "forbidden",
            "gone",
            "internal",
            "invalid_request",
            "not_found",
            "rate_limited",
            "scope_violation",
            "unauthorized"
        ]
    );
    let (status, want) = envelope_vector("internal");
    let response =
        axum::response::IntoResponse::into_response(tessera::http::error::ApiError::internal(anyhow::anyhow!("boom")));
    assert_eq!(response.status().as_u16(), status);
    let body = axum::body::to_bytes(response.into_body(), 1 << 16).await.unwrap();
    assert_eq!(serde_json::from_slice::<Value>(&body).unwrap(), want);
}

/// Compares a live answer with the document's envelope for `case`.
async fn assert_envelope(case: &str, response: reqwest::Response) {
    let (status, want) = envelope_vector(case);
    let got_status = response.status().as_u16();
    let got: Value = response.json().await.unwrap();
    assert_eq!((got_status, got), (status, want), "case {case}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_written_from_the_protocol_document_pages_tessera() {
    use rustls_pki_types::pem::PemObject;
    use sha2::Digest;
    let pair = Pair::new(vec![]).await;
    let pool = &pair.b_db.pool;
    let project = Uuid::new_v4();
    sqlx::query("insert into projects (id, name, owner_user_id) values ($1, 'p', $2)")
        .bind(project)
        .bind(pair.subject)
        .execute(pool)
        .await
        .unwrap();
    let tasks = tasks_in(pool, project, 5).await;
    let grant = pair.grant(json!({"resources": ["tasks"], "max_rows_per_query": 100})).await;
    let (_, url) = pair.enrollment_url(grant).await;

    // Enrollment, as the document describes it: split the URL, check the CA against the pin
    // before anything else, then send a CSR over TLS that trusts that CA alone.
    let (base, pin) = url.split_once("#sha256=").unwrap();
    let (origin, token) = base.split_once("/api/federation/enrollment/").unwrap();
    let unverified = reqwest::Client::builder().tls_backend_rustls().danger_accept_invalid_certs(true).build().unwrap();
    let ca_pem = unverified.get(format!("{origin}/api/federation/ca")).send().await.unwrap().text().await.unwrap();
    let ca_der = rustls_pki_types::CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap();
    assert_eq!(hex::encode(sha2::Sha256::digest(ca_der.as_ref())), pin);
    let anonymous = common::trusting(ca_pem.as_bytes()).build().unwrap();
    let key = p256();
    let redeem_url = format!("{origin}/api/federation/enrollment/{token}");
    let csr_pem = csr(&key, rcgen::CertificateParams::default());
    let r = anonymous.post(&redeem_url).json(&json!({"csrPem": csr_pem})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let issued: Value = r.json().await.unwrap();
    let cert_pem = issued["certPem"].as_str().unwrap();
    assert!(issued["certChainPem"].as_str().unwrap().starts_with(cert_pem));
    let mut identity = key.serialize_pem().into_bytes();
    identity.extend_from_slice(cert_pem.as_bytes());
    let peer = common::mtls_client(ca_pem.as_bytes(), &identity).build().unwrap();
    let list_url = format!("{origin}/api/federation/v1/list/tasks");

    // Paging as a Mosaic peer does: limit as a string, no null fields, an unknown field, and
    // `nextCursor` followed until it is absent.
    let mut got = Vec::new();
    let mut body = json!({"limit": "2", "client": "mosaic"});
    let mut pages = 0;
    loop {
        let r = peer.post(&list_url).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.headers().get("x-tessera-limit-capped").is_none());
        let page: Value = r.json().await.unwrap();
        pages += 1;
        for item in page["items"].as_array().unwrap() {
            assert_eq!(keys(item), TASK_KEYS);
            got.push(item["id"].as_str().unwrap().parse::<Uuid>().unwrap());
        }
        match page.get("nextCursor") {
            Some(c) => {
                assert_eq!(page["_truncated"], true, "more rows follow: {page}");
                body = json!({"limit": "2", "cursor": c});
            }
            None => {
                assert!(page.get("_truncated").is_none(), "the last page: {page}");
                break;
            }
        }
    }
    assert_eq!(pages, 3);
    let mut want: Vec<(chrono::DateTime<chrono::Utc>, Uuid)> = Vec::new();
    for id in &tasks {
        let at: chrono::DateTime<chrono::Utc> =
            sqlx::query_scalar("select created_at from tasks where id = $1").bind(id).fetch_one(pool).await.unwrap();
        want.push((at, *id));
    }
    want.sort_by(|a, b| b.cmp(a));
    assert_eq!(got, want.into_iter().map(|(_, id)| id).collect::<Vec<_>>(), "newest first, each row once");
    // A limit above the cap is lowered and said so in the header.
    let r = peer.post(&list_url).json(&json!({"limit": 1000})).send().await.unwrap();
    assert_eq!(r.headers()["x-tessera-limit-capped"], "100");
    // get, in list's shape.
    let r = peer.post(format!("{origin}/api/federation/v1/get/tasks/{}", tasks[0])).send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["item"]["id"], tasks[0].to_string());

    // Every live error case of the document, byte for byte.
    assert_envelope("no-client-certificate", anonymous.post(&list_url).json(&json!({})).send().await.unwrap()).await;
    let notes = format!("{origin}/api/federation/v1/list/notes");
    assert_envelope("resource-not-granted", peer.post(&notes).json(&json!({})).send().await.unwrap()).await;
    assert_envelope("bad-cursor", peer.post(&list_url).json(&json!({"cursor": "abc"})).send().await.unwrap()).await;
    let unknown = format!("{origin}/api/federation/v1/get/tasks/{}", Uuid::new_v4());
    assert_envelope("get-unknown-id", peer.post(&unknown).send().await.unwrap()).await;
    let again = anonymous.post(&redeem_url).json(&json!({"csrPem": csr_pem})).send().await.unwrap();
    assert_envelope("token-used", again).await;
    set_grant_rate(pool, grant, 1).await;
    let mut limited = None;
    for _ in 0..5 {
        let r = peer.post(&list_url).json(&json!({})).send().await.unwrap();
        if r.status() == 429 {
            assert!(r.headers().contains_key("retry-after"));
            limited = Some(r);
            break;
        }
    }
    assert_envelope("over-budget", limited.expect("a 429 within five requests at 1 a minute")).await;
    set_grant_rate(pool, grant, 600).await;
    let (status, _) = pair.admin_post(&format!("/api/admin/grants/{grant}/revoke"), json!({"reason": "done"})).await;
    assert_eq!(status, 200);
    assert_envelope("grant-revoked", peer.post(&list_url).json(&json!({})).send().await.unwrap()).await;
}

/// A peer that answers as Mosaic Stack's federation does (the seed's `ListController` and
/// `FederationListQueryService`): enrollment without a pin in the URL, text subject ids, its row
/// shape and dates, `parseLimit`/`parseCursor` (a `null` is a 400), base64url-JSON cursors, and
/// `_truncated`/`nextCursor` only when more rows follow.
mod mosaic_peer {
    use std::sync::{Arc, Mutex};

    use axum::Extension;
    use axum::extract::{Path, State};
    use axum::http::StatusCode;
    use axum::response::{IntoResponse, Response};
    use base64::Engine as _;
    use serde_json::{Value, json};
    use uuid::Uuid;

    pub const SUBJECT: &str = "fed-m3-05-subject";
    /// The grant's `max_rows_per_query`.
    pub const CAP: usize = 3;

    #[derive(Clone)]
    struct ClientCert(Option<Vec<u8>>);

    struct St {
        ca_pem: String,
        issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
        token: String,
        grant: Uuid,
        rows: Vec<Value>,
        bodies: Arc<Mutex<Vec<Value>>>,
    }

    pub struct Peer {
        pub origin: String,
        pub fingerprint: String,
        pub token: String,
        pub bodies: Arc<Mutex<Vec<Value>>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for Peer {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    fn envelope(status: u16, code: &str, message: &str) -> Response {
        let body = json!({"error": {"code": code, "message": message}});
        (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response()
    }

    async fn ca(State(s): State<Arc<St>>) -> String {
        s.ca_pem.clone()
    }

    async fn enroll(State(s): State<Arc<St>>, Path(token): Path<String>, body: axum::body::Bytes) -> Response {
        if token != s.token {
            return envelope(404, "not_found", "Enrollment token not found");
        }
        let v: Value = serde_json::from_slice(&body).unwrap_or_default();
        let Some(csr) = v["csrPem"].as_str().and_then(|c| rcgen::CertificateSigningRequestParams::from_pem(c).ok())
        else {
            return envelope(400, "invalid_request", "csrPem is required");
        };
        let mut params = rcgen::CertificateParams::default();
        params.not_before = time::OffsetDateTime::now_utc() - time::Duration::minutes(1);
        params.not_after = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        for (arc, value) in [(1u64, s.grant.to_string()), (2, SUBJECT.to_string())] {
            let content = tessera::federation::identity::encode_utf8string(&value);
            params
                .custom_extensions
                .push(rcgen::CustomExtension::from_oid_content(&[1, 3, 6, 1, 4, 1, 99999, arc], content));
        }
        let cert = params.signed_by(&csr.public_key, &s.issuer).unwrap();
        // Only the certificate: a reader must not need more.
        axum::Json(json!({"certPem": cert.pem()})).into_response()
    }

    fn encode_cursor(row: &Value) -> String {
        let json = json!({"createdAt": row["createdAt"], "id": row["id"]}).to_string();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    }

    fn decode_cursor(cursor: &str) -> Option<(String, String)> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(cursor).ok()?;
        let v: Value = serde_json::from_slice(&bytes).ok()?;
        Some((v["createdAt"].as_str()?.to_string(), v["id"].as_str().filter(|i| !i.is_empty())?.to_string()))
    }

    async fn list(
        State(s): State<Arc<St>>,
        Extension(cert): Extension<ClientCert>,
        Path(resource): Path<String>,
        body: axum::body::Bytes,
    ) -> Response {
        let identity =
            cert.0.and_then(|der| tessera::federation::identity::parse_issued(&der, &Default::default()).ok());
        if identity.is_none_or(|i| i.grant_id != s.grant || i.subject != SUBJECT) {
            return envelope(401, "unauthorized", "Federation context missing");
        }
        let body: Value =
            if body.is_empty() { json!({}) } else { serde_json::from_slice(&body).unwrap_or(Value::Null) };
        s.bodies.lock().unwrap().push(body.clone());
        // parseLimit: a number, or a non-blank string Number() reads; anything else (null too) is NaN.
        let limit = match body.get("limit") {
            None => None,
            Some(Value::Number(n)) => n.as_f64(),
            Some(Value::String(t)) if !t.trim().is_empty() => Some(t.trim().parse::<f64>().unwrap_or(f64::NAN)),
            Some(_) => Some(f64::NAN),
        };
        if limit.is_some_and(|l| !(l.fract() == 0.0 && (1.0..=9_007_199_254_740_991.0).contains(&l))) {
            return envelope(400, "invalid_request", "Federation list limit must be a positive integer");
        }
        // parseCursor: absent, or a string; `null` is neither.
        let cursor = match body.get("cursor") {
            None => None,
            Some(Value::String(c)) => Some(c.clone()),
            Some(_) => return envelope(400, "invalid_request", "Federation list cursor must be a string"),
        };
        if resource != "tasks" {
            return envelope(403, "scope_violation", "Requested federation resource is not allowed by grant scope");
        }
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "checked above")]
        let limit = limit.map_or(CAP, |l| (l as usize).min(CAP));
        let after = match cursor.as_deref().map(decode_cursor) {
            None => None,
            Some(Some(position)) => Some(position),
            Some(None) => return envelope(400, "invalid_request", "Federation list cursor is invalid"),
        };
        let mut rows: Vec<&Value> = s
            .rows
            .iter()
            .filter(|r| {
                after.as_ref().is_none_or(|(t, i)| {
                    (r["createdAt"].as_str().unwrap(), r["id"].as_str().unwrap()) < (t.as_str(), i.as_str())
                })
            })
            .take(limit + 1)
            .collect();
        let has_more = rows.len() > limit;
        rows.truncate(limit);
        let items: Vec<Value> = rows
            .iter()
            .map(|r| {
                let mut r = (*r).clone();
                r["_source"] = json!("local");
                r
            })
            .collect();
        let mut response = json!({"items": items});
        if has_more {
            response["nextCursor"] = json!(encode_cursor(rows.last().unwrap()));
            response["_truncated"] = json!(true);
        }
        axum::Json(response).into_response()
    }

    /// Starts the peer on a free loopback port, serving `rows` (newest first) for one grant.
    pub async fn start(rows: Vec<Value>) -> Peer {
        use sha2::Digest;
        tessera::tls::install_crypto_provider();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::default();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let ca_der = ca_cert.der().clone();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let server_key = rcgen::KeyPair::generate().unwrap();
        let server_cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap()
            .signed_by(&server_key, &issuer)
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca_der.clone()).unwrap();
        let verifier =
            rustls::server::WebPkiClientVerifier::builder(Arc::new(roots)).allow_unauthenticated().build().unwrap();
        let key = rustls_pki_types::PrivateKeyDer::Pkcs8(server_key.serialize_der().into());
        let mut config = rustls::ServerConfig::builder()
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![server_cert.der().clone()], key)
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = format!("https://127.0.0.1:{}", listener.local_addr().unwrap().port());
        let token = hex::encode(rand::random::<[u8; 16]>());
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let state = Arc::new(St {
            ca_pem: ca_cert.pem(),
            issuer,
            token: token.clone(),
            grant: Uuid::new_v4(),
            rows,
            bodies: bodies.clone(),
        });
        let router = axum::Router::new()
            .route("/api/federation/ca", axum::routing::get(ca))
            .route("/api/federation/enrollment/{token}", axum::routing::post(enroll))
            .route("/api/federation/v1/list/{resource}", axum::routing::post(list))
            .with_state(state);
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                let (acceptor, router) = (acceptor.clone(), router.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let cert = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.as_ref().to_vec());
                    let service =
                        hyper_util::service::TowerToHyperService::new(router.layer(Extension(ClientCert(cert))));
                    let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Peer { origin, fingerprint: hex::encode(sha2::Sha256::digest(ca_der.as_ref())), token, bodies, task }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tesseras_peer_client_pages_a_server_answering_like_mosaic() {
    // Seven Mosaic task rows, newest first, two of them created in the same millisecond.
    let project = "05000000-0000-4000-8000-000000000101";
    let at = ["06", "05", "04", "04", "03", "02", "01"];
    let rows: Vec<Value> = (0..7)
        .map(|n| {
            let created = format!("2026-06-24T{}:00:00.000Z", at[n]);
            json!({
                "id": format!("05000000-0000-4000-8000-00000000060{}", 9 - n), "title": format!("task {n}"),
                "description": null, "status": "not-started", "priority": "medium", "projectId": project,
                "missionId": null, "assignee": null, "tags": null, "dueDate": null, "metadata": null,
                "createdAt": created, "updatedAt": created,
            })
        })
        .collect();
    let mosaic = mosaic_peer::start(rows.clone()).await;
    let a_db = TestDb::new().await;
    let a_dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let env = [("DATABASE_URL", a_db.url.as_str()), ("TESSERA_DATA_DIR", a_dir.path().to_str().unwrap())];

    // Mosaic's enrollment URL has no pin; it comes out of band. The subject id is text.
    let url = format!("{}/api/federation/enrollment/{}", mosaic.origin, mosaic.token);
    let (code, out, err) = run_cli_blocking(
        &["peer", "add", &url, "--ca-fingerprint", &mosaic.fingerprint, "--name", "mosaic", "--json"],
        &env,
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let enrolled: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(enrolled["subjectUserId"], mosaic_peer::SUBJECT);

    let want: Vec<Value> = rows.iter().map(|r| r["id"].clone()).collect();
    for (limit, pages) in [(None, 3), (Some("2"), 4)] {
        mosaic.bodies.lock().unwrap().clear();
        let mut args = vec!["federation", "list", "--peer", "mosaic", "tasks", "--all-pages", "--json"];
        if let Some(l) = limit {
            args.extend(["--limit", l]);
        }
        let (code, out, err) = run_cli_blocking(&args, &env).await;
        assert_eq!(code, 0, "{out}{err}");
        let got: Value = serde_json::from_str(&out).unwrap();
        let items = got["items"].as_array().unwrap();
        assert_eq!(items.iter().map(|i| i["id"].clone()).collect::<Vec<_>>(), want, "every row once, in order");
        assert!(items.iter().all(|i| i["_source"] == "mosaic" && i["title"].is_string()));
        assert_eq!(got["nextCursor"], Value::Null, "paged to the end");
        // What tessera sent: only the fields it set, never a null (Mosaic answers those 400).
        let bodies = mosaic.bodies.lock().unwrap().clone();
        assert_eq!(bodies.len(), pages, "{bodies:?}");
        for (n, body) in bodies.iter().enumerate() {
            let mut expected: Vec<&str> = limit.map(|_| "limit").into_iter().collect();
            if n > 0 {
                expected.push("cursor");
            }
            expected.sort_unstable();
            assert_eq!(keys(body), expected, "{body}");
            if limit.is_some() {
                assert_eq!(body["limit"], 2);
            }
        }
    }
}

// --- Search (issue 16) ------------------------------------------------------------------------

impl Pair {
    async fn search(&self, client: &reqwest::Client, resource: &str, body: Value) -> (u16, Value) {
        common::http::Client::new(client, &self.b.base)
            .post(&format!("/api/federation/v1/search/{resource}"), body)
            .await
    }

    /// Follows a search's cursors to the end; returns the items in order.
    async fn search_all(&self, client: &reqwest::Client, resource: &str, body: Value) -> Vec<Value> {
        let mut items = Vec::new();
        let mut body = body;
        loop {
            let (status, page) = self.search(client, resource, body.clone()).await;
            assert_eq!(status, 200, "{resource}: {page}");
            for item in page["items"].as_array().unwrap() {
                assert_eq!(item["_source"], "local");
                assert!(item["_score"].is_number(), "{item}");
                items.push(item.clone());
            }
            assert_eq!(page.get("_truncated") == Some(&json!(true)), page.get("nextCursor").is_some(), "{page}");
            match page.get("nextCursor") {
                Some(Value::String(c)) => body["cursor"] = json!(c),
                _ => break,
            }
        }
        items
    }
}

fn ids_of(items: &[Value]) -> Vec<Uuid> {
    items.iter().map(|i| i["id"].as_str().unwrap().parse().unwrap()).collect()
}

/// A unit vector along axis `i` plus `tilt` along axis `j`.
fn axis(i: usize, j: usize, tilt: f32) -> Vec<f32> {
    let mut v = vec![0.0; 384];
    v[i] = 1.0;
    v[j] += tilt;
    v
}

/// Memory for the subject (three insights with known text and embeddings, a preference) and one
/// insight of another user that must never show. Returns (deploy-friday, deploy×3, coffee,
/// preference, other's insight).
async fn memory_world(pair: &Pair) -> (Uuid, Uuid, Uuid, Uuid, Uuid) {
    let pool = &pair.b_db.pool;
    let other: Uuid = match sqlx::query_scalar("select id from users where email = 'other@b.test'")
        .fetch_optional(pool)
        .await
        .unwrap()
    {
        Some(id) => id,
        None => {
            let id = Uuid::new_v4();
            insert(pool, "insert into users (id, email, name, role) values ($1, 'other@b.test', 'O', 'member')", &[id])
                .await;
            id
        }
    };
    let (a, b, c, p, o) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    for (id, user, content, v) in [
        (a, pair.subject, "deploy the gateway on friday", axis(0, 0, 0.0)),
        (b, pair.subject, "deploy deploy deploy rollback", axis(1, 1, 0.0)),
        (c, pair.subject, "coffee machine upstairs", axis(2, 2, 0.0)),
        (o, other, "deploy secrets of another user", axis(0, 0, 0.0)),
    ] {
        sqlx::query("insert into insights (id, user_id, content, embedding) values ($1, $2, $3, $4)")
            .bind(id)
            .bind(user)
            .bind(content)
            .bind(pgvector::Vector::from(v))
            .execute(pool)
            .await
            .unwrap();
    }
    sqlx::query("insert into preferences (id, user_id, key, value) values ($1, $2, 'release day', '\"friday\"')")
        .bind(p)
        .bind(pair.subject)
        .execute(pool)
        .await
        .unwrap();
    (a, b, c, p, o)
}

#[tokio::test(flavor = "multi_thread")]
async fn search_never_returns_a_row_that_list_would_not() {
    let pair = Pair::new(vec![("TESSERA_EMBEDDING_MODEL".into(), "test-model".into())]).await;
    let w = world(&pair).await;
    let (_, _, _, _, others) = memory_world(&pair).await;
    let t3: Uuid =
        sqlx::query_scalar("select id from teams where name = 't3'").fetch_one(&pair.b_db.pool).await.unwrap();
    let everything = json!(["tasks", "notes", "memory"]);
    let scopes = [
        json!({"resources": everything}),
        json!({"resources": everything, "max_rows_per_query": 2}),
        json!({"resources": everything, "filters": {"tasks": {"include_teams": [w.t1]}}}),
        json!({"resources": everything, "filters": {"tasks": {"include_personal": false}, "memory": {"include_personal": false}}}),
        json!({"resources": everything, "filters": {"tasks": {"include_teams": [t3]}}}),
        json!({"resources": ["tasks", "notes"], "filters": {"notes": {"include_personal": false}}}),
    ];
    // Queries that match every row of their resource, so search must return exactly list's rows.
    let queries = [("tasks", "task"), ("notes", "note"), ("memory", "deploy or coffee or friday")];
    for scope in scopes {
        let (_, client) = pair.enroll_with(scope.clone()).await;
        for (resource, query) in queries {
            let (status, listed) = pair.list(&client, resource, json!({})).await;
            if status != 200 {
                let (s, searched) = pair.search(&client, resource, json!({"query": query})).await;
                assert_eq!((s, &searched), (status, &listed), "{scope}: denied search is list's denial");
                continue;
            }
            let listed = sorted(pair.list_all(&client, resource, 3).await);
            let found = pair.search_all(&client, resource, json!({"query": query, "limit": 2})).await;
            let found_ids = ids_of(&found);
            assert!(found_ids.iter().all(|id| listed.contains(id)), "{scope} {resource}: {found_ids:?} ⊄ {listed:?}");
            let mut unique = found_ids.clone();
            unique.sort();
            unique.dedup();
            assert_eq!(unique.len(), found_ids.len(), "pages never repeat a row");
            // On this data every listed row matches: nothing in the grant is missed either.
            assert_eq!(sorted(found_ids.clone()), listed, "{scope} {resource}");
            assert!(!found_ids.contains(&others) && !found_ids.contains(&w.other_note));
            // Vector mode: the subject's insights only (list's memory minus preferences).
            if resource == "memory" {
                let v = pair
                    .search_all(&client, "memory", json!({"vector": axis(0, 2, 0.1), "mode": "vector", "limit": 1}))
                    .await;
                assert!(ids_of(&v).iter().all(|id| listed.contains(id)), "{scope}: vector within list");
                assert!(!ids_of(&v).contains(&others));
            }
        }
        // The row cap binds search as it binds list.
        let (status, page) = pair.search(&client, "tasks", json!({"query": "task", "limit": 500})).await;
        if status == 200 {
            let cap = scope["max_rows_per_query"].as_u64().unwrap_or(100) as usize;
            assert!(page["items"].as_array().unwrap().len() <= cap);
        }
    }

    // Denied resources: the same generic 403 as list, whatever the reason.
    let (_, narrow) =
        pair.enroll_with(json!({"resources": ["tasks", "credentials"], "excluded_resources": ["memory"]})).await;
    let mut bodies = Vec::new();
    for resource in ["credentials", "notes", "memory", "api_keys"] {
        let (status, body) = pair.search(&narrow, resource, json!({"query": "x"})).await;
        assert_eq!(status, 403, "{resource}: {body}");
        let (_, listed) = pair.list(&narrow, resource, json!({})).await;
        assert_eq!(body, listed, "{resource}: search's 403 is list's");
        bodies.push(body.to_string());
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]), "{bodies:?}");
    assert!(bodies[0].contains("scope_violation") && bodies[0].contains("Access denied"));
}

#[tokio::test(flavor = "multi_thread")]
async fn search_ranks_text_vector_and_hybrid_on_known_data() {
    let pair = Pair::new(vec![("TESSERA_EMBEDDING_MODEL".into(), "test-model".into())]).await;
    let (a, b, c, p, _) = memory_world(&pair).await;
    let pool = &pair.b_db.pool;
    let project = Uuid::new_v4();
    sqlx::query("insert into projects (id, name, owner_user_id) values ($1, 'p', $2)")
        .bind(project)
        .bind(pair.subject)
        .execute(pool)
        .await
        .unwrap();
    let (t_twice, t_once, t_none) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    for (id, title, description) in [
        (t_once, "alpha release", Some("notes on gamma")),
        (t_twice, "alpha alpha", Some("the alpha plan")),
        (t_none, "beta", None),
    ] {
        sqlx::query("insert into tasks (id, title, description, project_id) values ($1, $2, $3, $4)")
            .bind(id)
            .bind(title)
            .bind(description)
            .bind(project)
            .execute(pool)
            .await
            .unwrap();
    }
    let (_, client) = pair.enroll_with(json!({"resources": ["tasks", "notes", "memory"]})).await;

    let caps: Value =
        client.get(pair.b.url("/api/federation/v1/capabilities")).send().await.unwrap().json().await.unwrap();
    assert_eq!(caps["search"]["modes"]["memory"], json!(["text", "vector", "hybrid"]), "{caps}");
    assert_eq!(caps["search"]["modes"]["tasks"], json!(["text"]));
    assert_eq!(
        (caps["search"]["embedding_model"].as_str(), caps["search"]["embedding_dimension"].as_u64()),
        (Some("test-model"), Some(384))
    );
    assert!(caps["supported_verbs"].as_array().unwrap().contains(&json!("search")));

    // Text: more occurrences rank higher, title and description both count; no match, no row.
    let found = pair.search_all(&client, "tasks", json!({"query": "alpha"})).await;
    assert_eq!(ids_of(&found), vec![t_twice, t_once]);
    assert!(found[0]["_score"].as_f64().unwrap() > found[1]["_score"].as_f64().unwrap());
    // Items have list's shape, plus `_score`.
    let listed = pair.list(&client, "tasks", json!({})).await.1;
    let same = listed["items"].as_array().unwrap().iter().find(|i| i["id"] == found[0]["id"]).unwrap();
    let mut with_score = same.clone();
    with_score["_score"] = found[0]["_score"].clone();
    assert_eq!(found[0], with_score);
    assert_eq!(ids_of(&pair.search_all(&client, "tasks", json!({"query": "gamma"})).await), vec![t_once]);
    let memory = pair.search_all(&client, "memory", json!({"query": "deploy"})).await;
    assert_eq!(ids_of(&memory), vec![b, a], "three deploys before one; never another user's");
    let friday = pair.search_all(&client, "memory", json!({"query": "friday"})).await;
    assert_eq!(sorted(ids_of(&friday)), sorted(vec![a, p]), "preferences' values are searched");
    let pref = friday.iter().find(|i| i["id"] == json!(p)).unwrap();
    assert_eq!(pref["key"], "release day");
    assert!(pref["mutable"].is_boolean() && pref.get("content").is_none(), "a preference's row shape: {pref}");

    // Vector: cosine similarity, nearest first.
    let near_a = axis(0, 2, 0.1);
    let v = pair.search_all(&client, "memory", json!({"vector": near_a, "mode": "vector"})).await;
    assert_eq!(ids_of(&v), vec![a, c, b]);
    assert!((v[0]["_score"].as_f64().unwrap() - 0.995).abs() < 0.001, "{}", v[0]);
    assert!(v[0]["relevanceScore"].is_number() && v[0].get("key").is_none(), "an insight's row shape: {}", v[0]);
    // Hybrid (the default with a vector): A is second by text and first by vector, B first by
    // text and last by vector, C found by vector only: A, B, C by reciprocal rank fusion.
    let h = pair.search_all(&client, "memory", json!({"query": "deploy", "vector": near_a})).await;
    assert_eq!(ids_of(&h), vec![a, b, c]);
    let rrf = |ranks: &[f64]| ranks.iter().map(|r| 1.0 / (60.0 + r)).sum::<f64>();
    assert!((h[0]["_score"].as_f64().unwrap() - rrf(&[2.0, 1.0])).abs() < 1e-9, "{}", h[0]);
    assert!((h[2]["_score"].as_f64().unwrap() - rrf(&[2.0])).abs() < 1e-9, "{}", h[2]);
    // A vector alone is hybrid by default: the vector ranking fused on its own.
    let alone = pair.search_all(&client, "memory", json!({"vector": near_a})).await;
    assert_eq!(ids_of(&alone), vec![a, c, b]);
    assert!((alone[0]["_score"].as_f64().unwrap() - rrf(&[1.0])).abs() < 1e-9, "{}", alone[0]);
    // Paging keeps the order: one row a page gives the same sequence.
    let paged = pair.search_all(&client, "memory", json!({"query": "deploy", "vector": near_a, "limit": 1})).await;
    assert_eq!(ids_of(&paged), vec![a, b, c]);
}

#[tokio::test(flavor = "multi_thread")]
async fn search_refuses_bad_input_naming_the_field_and_audits_only_a_hash() {
    let pair = Pair::new(vec![("TESSERA_EMBEDDING_MODEL".into(), "test-model".into())]).await;
    memory_world(&pair).await;
    let (grant, client) = pair.enroll_with(json!({"resources": ["tasks", "memory"], "max_rows_per_query": 1})).await;
    let field = |body: &Value| body["error"]["details"]["field"].as_str().unwrap_or("").to_string();
    let long = "x".repeat(1001);
    for (resource, body, want) in [
        ("memory", json!({"vector": vec![0.5; 383]}), "vector"),
        ("memory", json!({"query": "x", "vector": vec![0.5; 385], "mode": "vector"}), "vector"),
        ("memory", json!({"vector": [1, "a"]}), "vector"),
        ("memory", json!({"query": ""}), "query"),
        ("memory", json!({}), "query"),
        ("memory", json!({"query": long}), "query"),
        ("memory", json!({"query": "x", "mode": "fuzzy"}), "mode"),
        ("tasks", json!({"query": "x", "vector": vec![0.5; 384]}), "mode"),
        ("memory", json!({"query": "x", "mode": "vector"}), "vector"),
        ("memory", json!({"query": "x", "limit": 0}), "limit"),
        ("memory", json!({"query": "x", "limit": "ten"}), "limit"),
        ("memory", json!({"query": "x", "cursor": "forged.cursor"}), "cursor"),
    ] {
        let (status, answer) = pair.search(&client, resource, body.clone()).await;
        assert_eq!((status, field(&answer)), (400, want.to_string()), "{body}: {answer}");
        assert_eq!(answer["error"]["code"], "invalid_request");
    }
    // Unknown fields are ignored; a numeric string limit works, and a limit over the cap is
    // reported in the header.
    let r = client
        .post(pair.b.url("/api/federation/v1/search/memory"))
        .json(&json!({"query": "deploy", "limit": "50", "extra": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-tessera-limit-capped"], "1");
    let page: Value = r.json().await.unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    assert_eq!(page["_truncated"], true);
    // A cursor continues its own search only: another query, grant or resource is a 400.
    let cursor = page["nextCursor"].as_str().unwrap();
    let (status, _) = pair.search(&client, "memory", json!({"query": "deploy", "cursor": cursor})).await;
    assert_eq!(status, 200);
    let (status, answer) = pair.search(&client, "memory", json!({"query": "coffee", "cursor": cursor})).await;
    assert_eq!((status, field(&answer)), (400, "cursor".into()));
    let (status, _) = pair.search(&client, "tasks", json!({"query": "deploy", "cursor": cursor})).await;
    assert_eq!(status, 400);
    let (status, _) = pair.list(&client, "memory", json!({"cursor": cursor})).await;
    assert_eq!(status, 400, "a search cursor is no list cursor");

    // Audit: one row per search, with the SHA-256 of the query, never its text.
    wait_for_count(
        &pair.b_db.pool,
        "select count(*) from federation_audit_log where grant_id = $1 and verb = 'search' and outcome = 'allowed'",
        grant,
        2,
    )
    .await;
    let hashes: Vec<Option<String>> = sqlx::query_scalar(
        "select query_hash from federation_audit_log where grant_id = $1 and verb = 'search' and outcome = 'allowed'",
    )
    .bind(grant)
    .fetch_all(&pair.b_db.pool)
    .await
    .unwrap();
    let expected = tessera::federation::verbs::search::Search {
        mode: tessera::federation::verbs::search::SearchMode::Text,
        query: "deploy".into(),
        vector: None,
    }
    .hash();
    assert!(hashes.iter().all(|h| h.as_deref() == Some(expected.as_str())), "{hashes:?} vs {expected}");
    let leaked: i64 = sqlx::query_scalar(
        "select count(*) from federation_audit_log a where a.grant_id = $1 and (a::text like '%deploy%' or a::text like '%coffee%')",
    )
    .bind(grant)
    .fetch_one(&pair.b_db.pool)
    .await
    .unwrap();
    assert_eq!(leaked, 0, "no audit row holds the query text");
    let denied: Vec<String> = sqlx::query_scalar(
        "select deny_code from federation_audit_log where grant_id = $1 and verb = 'search' and outcome = 'denied'",
    )
    .bind(grant)
    .fetch_all(&pair.b_db.pool)
    .await
    .unwrap();
    assert!(denied.iter().any(|c| c == "invalid_cursor") && denied.iter().any(|c| c == "invalid_limit"), "{denied:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn search_sees_a_revocation_or_scope_edit_on_the_next_request() {
    let pair = Pair::new(vec![]).await;
    memory_world(&pair).await;
    let (grant, client) = pair.enroll_with(json!({"resources": ["memory"]})).await;
    let (status, page) = pair.search(&client, "memory", json!({"query": "deploy"})).await;
    assert_eq!((status, page["items"].as_array().unwrap().len()), (200, 2));
    // Without an embedding model, the vector modes are off.
    let (status, answer) = pair.search(&client, "memory", json!({"vector": axis(0, 0, 0.0)})).await;
    assert_eq!((status, answer["error"]["details"]["field"].as_str()), (400, Some("mode")));
    // Personal off: no memory row, on the very next request.
    let (status, _) =
        patch_scope(&pair, grant, json!({"resources": ["memory"], "filters": {"memory": {"include_personal": false}}}))
            .await;
    assert_eq!(status, 200);
    let (status, page) = pair.search(&client, "memory", json!({"query": "deploy"})).await;
    assert_eq!((status, page["items"].as_array().unwrap().len()), (200, 0), "{page}");
    let (status, _) = patch_scope(&pair, grant, json!({"resources": ["tasks"]})).await;
    assert_eq!(status, 200);
    let (status, _) = pair.search(&client, "memory", json!({"query": "deploy"})).await;
    assert_eq!(status, 403);
    let (status, _) = pair.admin_post(&format!("/api/admin/grants/{grant}/revoke"), json!({"reason": "test"})).await;
    assert_eq!(status, 200);
    let (status, _) = pair.search(&client, "tasks", json!({"query": "task"})).await;
    assert_eq!(status, 403, "revoked: refused on the next request");
}

/// A stand-in for an embedding provider (`POST /v1/embeddings`): text mentioning coffee lies on
/// axis 2, anything else on axis 0. Returns its base URL and the number of calls it served.
async fn stand_in_embeddings() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let calls = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let app = axum::Router::new().route(
        "/v1/embeddings",
        axum::routing::post(move |headers: axum::http::HeaderMap, axum::Json(body): axum::Json<Value>| {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                assert_eq!(headers["authorization"], "Bearer stand-in-key");
                let data: Vec<Value> = body["input"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .enumerate()
                    .map(|(i, t)| {
                        let at = if t.as_str().unwrap().contains("coffee") { 2 } else { 0 };
                        json!({"index": i, "embedding": axis(at, at, 0.0), "object": "embedding"})
                    })
                    .collect();
                axum::Json(json!({"object": "list", "data": data, "model": body["model"]}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, calls)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_embedding_provider_embeds_queries_and_fills_missing_insights_through_the_queue() {
    let (url, calls) = stand_in_embeddings().await;
    let pair = Pair::new(vec![
        ("TESSERA_EMBEDDING_MODEL".into(), "stand-in".into()),
        ("TESSERA_EMBEDDINGS_URL".into(), url),
        ("TESSERA_EMBEDDINGS_API_KEY".into(), "stand-in-key".into()),
        ("TESSERA_SCHEDULE_TICK_MS".into(), "200".into()),
    ])
    .await;
    let (_, _, c, _, _) = memory_world(&pair).await;
    let missing = Uuid::new_v4();
    sqlx::query("insert into insights (id, user_id, content) values ($1, $2, 'more coffee please')")
        .bind(missing)
        .bind(pair.subject)
        .execute(&pair.b_db.pool)
        .await
        .unwrap();
    let (_, client) = pair.enroll_with(json!({"resources": ["memory"]})).await;
    // The query text is embedded by the provider: vector mode without a vector.
    let (status, page) = pair.search(&client, "memory", json!({"query": "coffee", "mode": "vector"})).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["items"][0]["id"], json!(c), "{page}");
    assert!(calls.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    // The periodic job fills the insight stored without an embedding.
    let filled = wait_count(
        &pair.b_db.pool,
        "select count(*) from insights where embedding is not null",
        5,
        Duration::from_secs(40),
    )
    .await;
    assert_eq!(filled, 5, "the job runs every 10 s");
    let v: Vec<Value> =
        pair.search_all(&client, "memory", json!({"vector": axis(2, 2, 0.0), "mode": "vector", "limit": 2})).await;
    assert_eq!(sorted(ids_of(&v[..2])), sorted(vec![c, missing]));
}

#[tokio::test(flavor = "multi_thread")]
async fn merged_search_fuses_local_and_peer_results_and_lists_a_peer_that_is_down() {
    let pair = Pair::new(vec![]).await;
    let w = world(&pair).await;
    let (_, _) = pair.enroll_with(json!({"resources": ["tasks", "notes"]})).await;
    // CLI on A: search B.
    let (code, out, err) = run_cli(
        &["federation", "search", "--peer", "gateway-b", "tasks", "task", "--limit", "3", "--json"],
        &pair.a_env(),
    );
    assert_eq!(code, 0, "{err}");
    let page: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 3);
    assert!(page["items"].as_array().unwrap().iter().all(|i| i["_source"] == "gateway-b" && i["_score"].is_number()));
    assert!(page["nextCursor"].is_string());
    let (code, _, err) =
        run_cli(&["federation", "search", "--peer", "gateway-b", "tasks", "task", "--mode", "fuzzy"], &pair.a_env());
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("mode"), "{err}");

    // Two more peers on A, copies of B's row: one down (a closed port), one that accepts the
    // connection and never answers (held by the test until it ends).
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let hanging = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hanging_port = hanging.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = hanging.accept().await {
            open.push(socket);
        }
    });
    for (name, port) in [("gateway-down", closed_port), ("gateway-hangs", hanging_port)] {
        let mut tx = pair.a_db.pool.begin().await.unwrap();
        sqlx::query("create temp table copy on commit drop as select * from federation_peers where name = 'gateway-b'")
            .execute(&mut *tx)
            .await
            .unwrap();
        sqlx::query("update copy set id = gen_random_uuid(), name = $1, endpoint_url = $2")
            .bind(name)
            .bind(format!("https://127.0.0.1:{port}"))
            .execute(&mut *tx)
            .await
            .unwrap();
        sqlx::query("insert into federation_peers select * from copy").execute(&mut *tx).await.unwrap();
        tx.commit().await.unwrap();
    }

    let (a, a_token) = start_a(&pair, &[("TESSERA_SEARCH_PEER_TIMEOUT_MS", "700")]).await;
    let owner = local_owner(&pair.a_db.pool).await;
    let local = tasks_in(&pair.a_db.pool, owner, 2).await;
    let search = |body: Value| {
        let req = a.client.post(a.url("/api/admin/federation/search")).bearer_auth(&a_token).json(&body);
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let started = std::time::Instant::now();
    let (status, all) = search(json!({"resource": "tasks", "query": "task", "source": "all", "limit": 6})).await;
    assert_eq!(status, 200, "{all}");
    assert!(started.elapsed() < Duration::from_secs(5), "the hanging peer is given up after its timeout");
    let items = all["items"].as_array().unwrap();
    assert_eq!(items.len(), 6);
    // Fusion interleaves the sources by rank: local #1, B #1, local #2, B #2, then B only.
    let sources: Vec<&str> = items.iter().map(|i| i["_source"].as_str().unwrap()).collect();
    assert_eq!(sources, ["local", "gateway-b", "local", "gateway-b", "gateway-b", "gateway-b"]);
    let local_ids: Vec<Uuid> = ids_of(&items.iter().filter(|i| i["_source"] == "local").cloned().collect::<Vec<_>>());
    assert_eq!(sorted(local_ids), sorted(local));
    let visible = [w.personal_tasks.clone(), w.t1_tasks.clone(), w.t2_tasks.clone()].concat();
    for i in items.iter().filter(|i| i["_source"] == "gateway-b") {
        assert!(visible.contains(&i["id"].as_str().unwrap().parse().unwrap()));
        assert!(i["_sourceScore"].is_number());
    }
    let errors = all["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 2, "{all}");
    assert_eq!(
        (errors[0]["source"].as_str(), errors[0]["code"].as_str()),
        (Some("peer:gateway-down"), Some("network"))
    );
    assert_eq!(
        (errors[1]["source"].as_str(), errors[1]["code"].as_str()),
        (Some("peer:gateway-hangs"), Some("timeout"))
    );
    // Only peers, only local, and bad input.
    let (_, peers) = search(json!({"resource": "tasks", "query": "task", "source": "peer"})).await;
    assert!(peers["items"].as_array().unwrap().iter().all(|i| i["_source"] == "gateway-b"));
    let (_, mine) = search(json!({"resource": "tasks", "query": "task", "source": "local"})).await;
    assert_eq!(mine["items"].as_array().unwrap().len(), 2);
    assert!(mine["errors"].as_array().unwrap().is_empty());
    for (body, want) in [
        (json!({"resource": "tasks", "query": "task", "source": "nowhere"}), "source"),
        (json!({"resource": "tasks", "query": "task", "limit": 0}), "limit"),
        (json!({"resource": "tasks", "vector": [1.0]}), "vector"),
        (json!({"resource": "tasks"}), "query"),
        (json!({"resource": "secrets", "query": "x"}), "resource"),
    ] {
        let (status, answer) = search(body.clone()).await;
        assert_eq!((status, answer["error"]["details"]["field"].as_str()), (400, Some(want)), "{body}: {answer}");
    }
    held.abort();
}

/// `tessera bench search` end to end on a small data set: every phase drives the real router
/// over mTLS (the bench fails on any answer but 2xx) and prints its figures; the searches reach
/// the verb and its audit. The figures themselves are never asserted here.
#[tokio::test(flavor = "multi_thread")]
async fn bench_search_runs_every_phase_over_mtls() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let dd = dir.path().to_str().unwrap();
    let args = [
        "bench",
        "search",
        "--tasks",
        "2000",
        "--insights",
        "300",
        "--seconds",
        "1",
        "--concurrency",
        "2",
        "--recall-queries",
        "10",
    ];
    let (code, stdout, stderr) = run_cli_blocking(&args, &[("DATABASE_URL", &db.url), ("TESSERA_DATA_DIR", dd)]).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    for line in [
        "text search over mTLS",
        "text search at half load",
        "text search SQL ceiling",
        "text search / ceiling =",
        "vector top-20 recall (HNSW vs exact, 10 queries) =",
        "vector top-20 over mTLS",
        "hybrid top-20 over mTLS",
        "index insights_embedding_hnsw",
        "index tasks_search",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
    common::assert_bench_audited(&db.pool, "search").await;
    let insights: i64 = sqlx::query_scalar("select count(*) from insights where embedding is not null")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(insights, 300);
}

/// One side of the runbook test: its gateway (while running) and what its shell blocks see.
struct RunbookSide {
    name: &'static str,
    gateway: Option<Gateway>,
    options: GatewayOptions,
    env: Vec<(String, String)>,
    workdir: std::path::PathBuf,
}

impl RunbookSide {
    async fn new(name: &'static str, root: &std::path::Path) -> Self {
        let data_dir = root.join(name).join("data");
        let workdir = root.join(name).join("work");
        std::fs::create_dir_all(&workdir).unwrap();
        let port = common::free_port();
        let options = GatewayOptions { data_dir: Some(data_dir.clone()), port: Some(port), ..Default::default() };
        let bin = common::tessera_bin();
        let path = format!("{}:{}", bin.parent().unwrap().display(), std::env::var("PATH").unwrap_or_default());
        let pg_bin = concat!(env!("CARGO_MANIFEST_DIR"), "/.bundles/pgserver/pginstall/bin");
        let env = vec![
            ("PATH".into(), path),
            ("TESSERA_DATA_DIR".into(), data_dir.display().to_string()),
            ("TESSERA_LISTEN".into(), format!("127.0.0.1:{port}")),
            ("TESSERA_CONFIG_DIR".into(), root.join(name).join("config").display().to_string()),
            ("TESSERA_PG_BIN".into(), pg_bin.into()),
            ("TESSERA_LOG".into(), "warn".into()),
        ];
        let gateway = Some(Gateway::start(options.clone()).await);
        Self { name, gateway, options, env, workdir }
    }

    fn stop(&mut self) {
        if let Some(mut gw) = self.gateway.take() {
            assert!(gw.terminate().success(), "gateway {} stops cleanly", self.name);
        }
    }

    /// Runs one block with bash (`-euo pipefail`), returning stdout and stderr together.
    fn run(&self, script: &str) -> String {
        let mut cmd = common::hermetic(std::process::Command::new("bash"));
        cmd.args(["-euo", "pipefail", "-c", script]).current_dir(&self.workdir).stdin(std::process::Stdio::null());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run bash");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(
            out.status.success(),
            "runbook block on {} failed ({}):\n{script}\n--- output:\n{text}",
            self.name,
            out.status
        );
        text
    }
}

/// docs/runbook.md, followed as written: every `sh on-a` / `sh on-b` block runs in order on that
/// side (two gateways on loopback, tier local), `<placeholders>` filled from the output of
/// earlier blocks (`<!-- capture: name = regex -->`), gateways stopped and started where the
/// text says so (`<!-- test: stop b -->`). Covers onboarding both sides, rotation, rejoin, token
/// recovery and the bootstrap hint, CA expiry checks, backup and restore of the embedded cluster
/// with the sealing key, revocation, and the move to an external Postgres.
#[tokio::test(flavor = "multi_thread")]
async fn runbook_runs_as_written_on_two_gateways() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/runbook.md")).unwrap();
    let root = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mut a = RunbookSide::new("a", root.path()).await;
    let mut b = RunbookSide::new("b", root.path()).await;
    let external = TestDb::empty().await;
    let mut values: std::collections::HashMap<String, String> = [
        ("admin-password".to_string(), "correct-horse-battery-staple".to_string()),
        ("external-database-url".to_string(), external.url.clone()),
    ]
    .into();
    let capture = regex::Regex::new(r"^<!-- capture: ([a-z-]+) = (.+) -->$").unwrap();
    let directive = regex::Regex::new(r"^<!-- test: (stop|start|restart) b -->$").unwrap();
    let placeholder = regex::Regex::new(r"<[a-z][a-z0-9-]*>").unwrap();
    let (mut block, mut side, mut last_output, mut blocks) = (None::<String>, "", String::new(), 0);
    for line in text.lines() {
        if let Some(script) = &mut block {
            if line == "```" {
                let mut script = std::mem::take(script);
                for (key, value) in &values {
                    script = script.replace(&format!("<{key}>"), value);
                }
                assert!(!placeholder.is_match(&script), "a placeholder no earlier block filled:\n{script}");
                last_output = if side == "a" { a.run(&script) } else { b.run(&script) };
                block = None;
                blocks += 1;
            } else {
                script.push_str(line);
                script.push('\n');
            }
        } else if let Some(tag) = line.strip_prefix("```sh") {
            side = match tag.trim() {
                "on-a" => "a",
                "on-b" => "b",
                other => panic!("every shell block says where it runs (on-a or on-b), not {other:?}"),
            };
            block = Some(String::new());
        } else if let Some(c) = capture.captures(line) {
            let re = regex::Regex::new(&c[2]).unwrap();
            let found = re.captures(&last_output).unwrap_or_else(|| panic!("{} not in:\n{last_output}", &c[1]));
            values.insert(c[1].to_string(), found[1].to_string());
        } else if let Some(d) = directive.captures(line) {
            if &d[1] != "start" {
                b.stop();
            }
            if &d[1] != "stop" {
                b.gateway = Some(Gateway::start(b.options.clone()).await);
            }
        }
    }
    assert!(block.is_none(), "an unclosed shell block");
    assert!(blocks >= 15, "{blocks} blocks ran");
    // What the last blocks showed: the grant, revoked before the move, is on the external database.
    assert!(last_output.contains("gateway-a"), "{last_output}");
    let revoked: String =
        sqlx::query_scalar("select status from federation_grants").fetch_one(&external.pool).await.unwrap();
    assert_eq!(revoked, "revoked");
    a.stop();
}

/// A CLI command whose domain call hits a database failure prints the database's cause and exits
/// 1 (the command could not run), never the HTTP envelope's "Internal server error" with the
/// refusal code 3; a refusal from the same command still exits 3 with the domain's message.
#[tokio::test]
async fn cli_grant_create_prints_the_database_cause_of_a_failure() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let (user, peer) = (Uuid::now_v7(), Uuid::now_v7());
    sqlx::query("insert into users (id, email, name, role) values ($1, 'subject@cli.test', 'Subject', 'member')")
        .bind(user)
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("insert into federation_peers (id, name) values ($1, 'cli-peer')")
        .bind(peer)
        .execute(&db.pool)
        .await
        .unwrap();
    let scope = dir.path().join("scope.json");
    std::fs::write(&scope, json!({"resources": ["tasks"]}).to_string()).unwrap();
    let env = [("DATABASE_URL", db.url.as_str()), ("TESSERA_DATA_DIR", dir.path().to_str().unwrap())];
    let create =
        ["grant", "create", "--peer", "cli-peer", "--user", "subject@cli.test", "--scope", scope.to_str().unwrap()];

    // Refusals: the domain's message, exit 3.
    let (code, _, err) = run_cli(&["peer", "create", "CLI-peer"], &env);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("a peer named 'CLI-peer' already exists (field name)"), "{err}");
    let (code, _, err) = run_cli(
        &["grant", "create", "--peer", "nobody", "--user", "subject@cli.test", "--scope", scope.to_str().unwrap()],
        &env,
    );
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("no peer 'nobody'"), "{err}");

    // The database breaks under the grant insert.
    sqlx::raw_sql(
        "create function cli_test_fire() returns trigger language plpgsql as $$
         begin raise exception 'disk on fire'; end $$;
         create trigger cli_test_fire before insert on federation_grants for each row execute function cli_test_fire();",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let (code, out, err) = run_cli(&create, &env);
    assert_eq!(code, 1, "a database failure is 'could not run': {out}{err}");
    assert!(err.contains("disk on fire"), "the cause is printed: {err}");
    assert!(!err.contains("Internal server error"), "{err}");
    let grants: i64 = sqlx::query_scalar("select count(*) from federation_grants").fetch_one(&db.pool).await.unwrap();
    assert_eq!(grants, 0);

    // Repaired, the same command works.
    sqlx::raw_sql("drop trigger cli_test_fire on federation_grants").execute(&db.pool).await.unwrap();
    let (code, out, err) = run_cli(&create, &env);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("peer=cli-peer") && out.contains("status=pending"), "{out}");
}
