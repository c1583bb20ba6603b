//! The admin plane (issue 3) from outside: the real `tessera serve` binary over TLS on a fresh
//! Postgres database per test, and the real `tessera` CLI as a separate process.

mod common;

use std::time::Duration;

use common::http::Auth;
use common::{Gateway, GatewayOptions, TestDb, run_cli, seed_admin};
use reqwest::StatusCode;
use serde_json::{Value, json};

const PASSWORD: &str = "correct horse battery";

async fn gateway(db: &TestDb) -> Gateway {
    gateway_with(db, vec![]).await
}

async fn gateway_with(db: &TestDb, env: Vec<(String, String)>) -> Gateway {
    Gateway::start(GatewayOptions { database_url: Some(db.url.clone()), env, ..Default::default() }).await
}

/// A request with an optional `Bearer` token or session cookie; returns status, body and headers.
async fn call(
    gw: &Gateway,
    method: reqwest::Method,
    path: &str,
    auth: Auth<'_>,
    body: Option<Value>,
) -> (StatusCode, Value, reqwest::header::HeaderMap) {
    let r = gw.api().with(auth).send(method, path, body.as_ref()).await;
    (r.status, r.body, r.headers)
}

async fn get(gw: &Gateway, path: &str, auth: Auth<'_>) -> (StatusCode, Value) {
    let (s, b, _) = call(gw, reqwest::Method::GET, path, auth, None).await;
    (s, b)
}

async fn post(gw: &Gateway, path: &str, auth: Auth<'_>, body: Value) -> (StatusCode, Value) {
    let (s, b, _) = call(gw, reqwest::Method::POST, path, auth, Some(body)).await;
    (s, b)
}

/// Runs setup and returns the first admin's token.
async fn setup(gw: &Gateway, email: &str) -> String {
    let (s, body) =
        post(gw, "/api/bootstrap/setup", Auth::None, json!({"email": email, "name": "Ada", "password": PASSWORD}))
            .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    body["token"]["plaintext"].as_str().unwrap().to_string()
}

/// Signs in; returns status, the session cookie value and the whole Set-Cookie header.
async fn sign_in(gw: &Gateway, email: &str, password: &str) -> (StatusCode, Option<String>, String, Value) {
    let (s, body, headers) = call(
        gw,
        reqwest::Method::POST,
        "/api/auth/sign-in",
        Auth::None,
        Some(json!({"email": email, "password": password})),
    )
    .await;
    let set_cookie = headers.get("set-cookie").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    let cookie = set_cookie
        .split(';')
        .next()
        .and_then(|kv| kv.strip_prefix("tessera_session="))
        .filter(|v| !v.is_empty())
        .map(str::to_string);
    (s, cookie, set_cookie, body)
}

fn assert_error(status: StatusCode, body: &Value, want: StatusCode, code: &str) {
    assert_eq!(status, want, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
}

fn assert_field(status: StatusCode, body: &Value, want: StatusCode, field: &str) {
    assert_eq!(status, want, "{body}");
    assert_eq!(body["error"]["details"]["field"], field, "{body}");
}

// ------------------------------------------------------------------ bootstrap and tokens

#[tokio::test]
async fn concurrent_setups_create_one_admin_and_the_token_is_shown_once() {
    let db = TestDb::new().await;
    let gw = gateway(&db).await;
    let (s, body) = get(&gw, "/api/bootstrap/status", Auth::None).await;
    assert_eq!((s, body["needsSetup"].clone()), (StatusCode::OK, json!(true)));

    // Make the race real: hold the users table so that all ten setups reach the critical section
    // and wait there together, then let them go at once.
    let mut blocker = db.pool.begin().await.unwrap();
    sqlx::query("lock table users in access exclusive mode").execute(&mut *blocker).await.unwrap();
    let mut handles = Vec::new();
    for i in 0..10 {
        let client = gw.client.clone();
        let url = gw.url("/api/bootstrap/setup");
        handles.push(tokio::spawn(async move {
            let body = json!({"email": format!("admin{i}@example.org"), "name": "Ada", "password": PASSWORD});
            let r = client.post(url).json(&body).send().await.unwrap();
            (r.status(), r.text().await.unwrap())
        }));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "select count(*) from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        if waiting >= 10 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "only {waiting} setups reached the database");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    blocker.rollback().await.unwrap();
    let mut created = Vec::new();
    let mut responses = Vec::new();
    for h in handles {
        let (status, text) = h.await.unwrap();
        if status == StatusCode::CREATED {
            created.push(text.clone());
        } else {
            assert_eq!(status, StatusCode::CONFLICT, "{text}");
            assert!(text.contains("\"conflict\""), "{text}");
        }
        responses.push(text);
    }
    assert_eq!(created.len(), 1, "exactly one setup succeeds: {responses:?}");
    let users: i64 = sqlx::query_scalar("select count(*) from users").fetch_one(&db.pool).await.unwrap();
    assert_eq!(users, 1);
    let role: String = sqlx::query_scalar("select role from users").fetch_one(&db.pool).await.unwrap();
    assert_eq!(role, "admin");

    let body: Value = serde_json::from_str(&created[0]).unwrap();
    let plaintext = body["token"]["plaintext"].as_str().unwrap().to_string();
    assert!(plaintext.starts_with("tsr_"), "{plaintext}");
    for key in ["id", "label", "scope", "expiresAt", "lastUsedAt", "createdAt", "plaintext"] {
        assert!(body["token"].get(key).is_some(), "token lacks {key}: {body}");
    }

    // After setup: status says so, and setup always answers 409.
    let (_, body) = get(&gw, "/api/bootstrap/status", Auth::None).await;
    assert_eq!(body["needsSetup"], false);
    let (s, body) = post(
        &gw,
        "/api/bootstrap/setup",
        Auth::None,
        json!({"email": "late@example.org", "name": "Late", "password": PASSWORD}),
    )
    .await;
    assert_error(s, &body, StatusCode::CONFLICT, "conflict");

    // The token works, and no other response carries its plaintext.
    let mut later = Vec::new();
    let (s, body) = get(&gw, "/api/admin/tokens", Auth::Token(&plaintext)).await;
    assert_eq!(s, StatusCode::OK);
    later.push(body.to_string());
    later.push(get(&gw, "/api/auth/session", Auth::Token(&plaintext)).await.1.to_string());
    later.push(get(&gw, "/api/admin/users", Auth::Token(&plaintext)).await.1.to_string());
    let (s, created2) = post(&gw, "/api/admin/tokens", Auth::Token(&plaintext), json!({"label": "ci"})).await;
    assert_eq!(s, StatusCode::CREATED);
    let second = created2["plaintext"].as_str().unwrap().to_string();
    later.push(get(&gw, "/api/admin/tokens", Auth::Token(&second)).await.1.to_string());
    let secret_part = &plaintext[4..];
    assert_eq!(responses.iter().filter(|r| r.contains(secret_part)).count(), 1, "only the winning setup shows it");
    for r in &later {
        assert!(!r.contains(secret_part) && !r.contains(&second[4..]), "plaintext leaked in {r}");
    }
    assert!(later[0].contains("bootstrap"), "the listing shows the token: {}", later[0]);

    // A raw read of the tokens table shows neither plaintext nor any reversible form of it.
    let rows: Vec<String> =
        sqlx::query_scalar("select row_to_json(t)::text from admin_tokens t").fetch_all(&db.pool).await.unwrap();
    assert_eq!(rows.len(), 2);
    let raw: Vec<u8> = sqlx::query_scalar("select token_hash from admin_tokens where label = 'bootstrap'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    use base64::Engine as _;
    let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(secret_part).unwrap();
    for row in &rows {
        assert!(!row.contains("tsr_") && !row.contains(secret_part) && !row.contains(&hex::encode(&decoded)), "{row}");
    }
    assert_eq!(raw.len(), 32, "a SHA-256 digest, not the 32 random bytes themselves");
    assert_ne!(raw, decoded);
}

#[tokio::test]
async fn revoked_and_expired_tokens_get_401_and_last_used_is_throttled() {
    let db = TestDb::new().await;
    let gw = gateway(&db).await;
    let admin = setup(&gw, "ada@example.org").await;

    let (s, t) =
        post(&gw, "/api/admin/tokens", Auth::Token(&admin), json!({"label": "short", "expiresInDays": 1})).await;
    assert_eq!(s, StatusCode::CREATED, "{t}");
    let short = t["plaintext"].as_str().unwrap().to_string();
    assert!(t["expiresAt"].is_string());
    assert_eq!(get(&gw, "/api/admin/tokens", Auth::Token(&short)).await.0, StatusCode::OK);

    // Expired (moved into the past in the database) → 401 on the next request.
    sqlx::query("update admin_tokens set expires_at = now() - interval '1 second' where label = 'short'")
        .execute(&db.pool)
        .await
        .unwrap();
    let (s, body) = get(&gw, "/api/admin/tokens", Auth::Token(&short)).await;
    assert_error(s, &body, StatusCode::UNAUTHORIZED, "unauthorized");

    // Revoked → 401 at once; revoking again → 404.
    let (_, t) = post(&gw, "/api/admin/tokens", Auth::Token(&admin), json!({"label": "doomed"})).await;
    let doomed = t["plaintext"].as_str().unwrap().to_string();
    let id = t["id"].as_str().unwrap().to_string();
    assert_eq!(get(&gw, "/api/admin/users", Auth::Token(&doomed)).await.0, StatusCode::OK);
    let path = format!("/api/admin/tokens/{id}");
    let (s, _, _) = call(&gw, reqwest::Method::DELETE, &path, Auth::Token(&admin), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, body) = get(&gw, "/api/admin/users", Auth::Token(&doomed)).await;
    assert_error(s, &body, StatusCode::UNAUTHORIZED, "unauthorized");
    let (s, body, _) = call(&gw, reqwest::Method::DELETE, &path, Auth::Token(&admin), None).await;
    assert_error(s, &body, StatusCode::NOT_FOUND, "not_found");
    let (_, list) = get(&gw, "/api/admin/tokens", Auth::Token(&admin)).await;
    let labels: Vec<&str> = list["items"].as_array().unwrap().iter().map(|t| t["label"].as_str().unwrap()).collect();
    assert!(!labels.contains(&"doomed"), "revoked tokens are not listed: {labels:?}");

    // Bad bodies name the field.
    let (s, body) = post(&gw, "/api/admin/tokens", Auth::Token(&admin), json!({"label": " "})).await;
    assert_field(s, &body, StatusCode::BAD_REQUEST, "label");
    let (s, body) =
        post(&gw, "/api/admin/tokens", Auth::Token(&admin), json!({"label": "x", "expiresInDays": 0})).await;
    assert_field(s, &body, StatusCode::BAD_REQUEST, "expiresInDays");

    // lastUsedAt is written on use, but not again within the minute.
    let first: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("select last_used_at from admin_tokens where label = 'bootstrap'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    let first = first.expect("lastUsedAt set after use");
    for _ in 0..3 {
        get(&gw, "/api/admin/tokens", Auth::Token(&admin)).await;
    }
    let again: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("select last_used_at from admin_tokens where label = 'bootstrap'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(again, Some(first), "not rewritten on every request");
}

#[tokio::test]
async fn the_guard_refuses_missing_bad_and_disabled_credentials_and_non_admins() {
    let db = TestDb::new().await;
    let gw = gateway(&db).await;
    let admin = setup(&gw, "ada@example.org").await;

    for path in ["/api/admin/tokens", "/api/admin/users", "/api/admin/tasks", "/api/auth/session"] {
        let (s, body) = get(&gw, path, Auth::None).await;
        assert_error(s, &body, StatusCode::UNAUTHORIZED, "unauthorized");
        let (s, body) = get(&gw, path, Auth::Token("tsr_not-a-real-token")).await;
        assert_error(s, &body, StatusCode::UNAUTHORIZED, "unauthorized");
        let (s, body) = get(&gw, path, Auth::Cookie("tss_forged")).await;
        assert_error(s, &body, StatusCode::UNAUTHORIZED, "unauthorized");
    }
    let (s, body) =
        post(&gw, "/api/admin/users", Auth::None, json!({"email": "x@y", "name": "x", "role": "admin"})).await;
    assert_error(s, &body, StatusCode::UNAUTHORIZED, "unauthorized");

    // A member with a password can sign in, but not use admin routes.
    let (s, member) = post(
        &gw,
        "/api/admin/users",
        Auth::Token(&admin),
        json!({"email": "bob@example.org", "name": "Bob", "role": "member", "password": PASSWORD}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{member}");
    let (s, cookie, _, _) = sign_in(&gw, "bob@example.org", PASSWORD).await;
    assert_eq!(s, StatusCode::OK);
    let cookie = cookie.unwrap();
    let (s, body) = get(&gw, "/api/admin/tokens", Auth::Cookie(&cookie)).await;
    assert_error(s, &body, StatusCode::FORBIDDEN, "forbidden");
    assert_eq!(body["error"]["message"], "User is not an admin");
    let (s, body) = post(&gw, "/api/admin/tokens", Auth::Cookie(&cookie), json!({"label": "sneaky"})).await;
    assert_eq!((s, body["error"]["message"].as_str()), (StatusCode::FORBIDDEN, Some("User is not an admin")));
    let (s, body) = get(&gw, "/api/auth/session", Auth::Cookie(&cookie)).await;
    assert_eq!((s, body["user"]["role"].as_str()), (StatusCode::OK, Some("member")));

    // Disabling the member revokes their session at once.
    let member_id = member["id"].as_str().unwrap();
    let (s, body) = post(&gw, &format!("/api/admin/users/{member_id}/disable"), Auth::Token(&admin), json!({})).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert!(body["disabledAt"].is_string());
    let (s, body) = get(&gw, "/api/auth/session", Auth::Cookie(&cookie)).await;
    assert_error(s, &body, StatusCode::UNAUTHORIZED, "unauthorized");
    let (s, _, _, _) = sign_in(&gw, "bob@example.org", PASSWORD).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "a disabled user cannot sign in");

    // The last enabled admin cannot be disabled; a second admin can be, and their token dies.
    let (_, me) = get(&gw, "/api/auth/session", Auth::Token(&admin)).await;
    let my_id = me["user"]["id"].as_str().unwrap();
    let (s, body) = post(&gw, &format!("/api/admin/users/{my_id}/disable"), Auth::Token(&admin), json!({})).await;
    assert_error(s, &body, StatusCode::CONFLICT, "conflict");
    let (other_id, other_token) = seed_admin(&db.pool, "carol@example.org").await;
    assert_eq!(get(&gw, "/api/admin/users", Auth::Token(&other_token)).await.0, StatusCode::OK);
    let (s, _) = post(&gw, &format!("/api/admin/users/{other_id}/disable"), Auth::Token(&admin), json!({})).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = get(&gw, "/api/admin/users", Auth::Token(&other_token)).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, body) =
        post(&gw, &format!("/api/admin/users/{}/disable", uuid::Uuid::now_v7()), Auth::Token(&admin), json!({})).await;
    assert_error(s, &body, StatusCode::NOT_FOUND, "not_found");
}

// ------------------------------------------------------------------ sessions

#[tokio::test]
async fn sessions_are_cookies_stored_hashed_listed_revoked_and_signed_out() {
    let db = TestDb::new().await;
    let gw = gateway(&db).await;
    setup(&gw, "Ada@Example.org").await;

    // Wrong password and unknown email fail alike.
    let (s, cookie, set_cookie, body) = sign_in(&gw, "ada@example.org", "wrong password").await;
    assert_error(s, &body, StatusCode::UNAUTHORIZED, "unauthorized");
    assert!(cookie.is_none() && set_cookie.is_empty());
    let (s, _, _, body2) = sign_in(&gw, "nobody@example.org", PASSWORD).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["message"], body2["error"]["message"], "no account oracle");

    // Emails compare case-insensitively.
    let (s, cookie, set_cookie, body) = sign_in(&gw, "ADA@example.ORG", PASSWORD).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let cookie = cookie.unwrap();
    assert!(cookie.starts_with("tss_"));
    for attr in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/", "Max-Age=604800"] {
        assert!(set_cookie.contains(attr), "{set_cookie} lacks {attr}");
    }
    assert_eq!(body["user"]["role"], "admin");
    assert!(!body.to_string().contains(&cookie), "the secret travels only in the cookie");
    let expires = chrono::DateTime::parse_from_rfc3339(body["session"]["expiresAt"].as_str().unwrap()).unwrap();
    let days = (expires.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_hours();
    assert!((7 * 24 - 1..=7 * 24).contains(&days), "7-day expiry, got {days} h");

    // Stored hashed.
    let rows: Vec<String> =
        sqlx::query_scalar("select row_to_json(s)::text from sessions s").fetch_all(&db.pool).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert!(!rows[0].contains(&cookie[4..]), "{}", rows[0]);

    // The cookie authenticates admin routes and the session endpoint.
    assert_eq!(get(&gw, "/api/admin/users", Auth::Cookie(&cookie)).await.0, StatusCode::OK);
    let (s, me) = get(&gw, "/api/auth/session", Auth::Cookie(&cookie)).await;
    assert_eq!((s, me["credential"]["kind"].as_str()), (StatusCode::OK, Some("session")));

    // A second session; listing shows both; revoking one kills only it.
    let (_, second, _, second_body) = sign_in(&gw, "ada@example.org", PASSWORD).await;
    let second = second.unwrap();
    let (_, list) = get(&gw, "/api/auth/sessions", Auth::Cookie(&cookie)).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 2, "{list}");
    let second_id = second_body["session"]["id"].as_str().unwrap();
    let (s, _, _) =
        call(&gw, reqwest::Method::DELETE, &format!("/api/auth/sessions/{second_id}"), Auth::Cookie(&cookie), None)
            .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(get(&gw, "/api/auth/session", Auth::Cookie(&second)).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(get(&gw, "/api/auth/session", Auth::Cookie(&cookie)).await.0, StatusCode::OK);

    // An expired session is refused.
    let (_, third, _, _) = sign_in(&gw, "ada@example.org", PASSWORD).await;
    sqlx::query("update sessions set expires_at = now() - interval '1 second' where revoked_at is null and id <> $1")
        .bind(me["credential"]["id"].as_str().unwrap().parse::<uuid::Uuid>().unwrap())
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(get(&gw, "/api/auth/session", Auth::Cookie(&third.unwrap())).await.0, StatusCode::UNAUTHORIZED);

    // Sign-out revokes and clears the cookie.
    let (s, _, headers) = call(&gw, reqwest::Method::POST, "/api/auth/sign-out", Auth::Cookie(&cookie), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert!(headers.get("set-cookie").unwrap().to_str().unwrap().contains("Max-Age=0"));
    let (s, body) = get(&gw, "/api/admin/users", Auth::Cookie(&cookie)).await;
    assert_error(s, &body, StatusCode::UNAUTHORIZED, "unauthorized");
}

#[tokio::test]
async fn twenty_wrong_passwords_get_429_until_the_window_passes() {
    let db = TestDb::new().await;
    let window = 4;
    let gw = gateway_with(&db, vec![("TESSERA_SIGNIN_WINDOW_SECS".into(), window.to_string())]).await;
    setup(&gw, "ada@example.org").await;

    let mut statuses = Vec::new();
    let mut last = (StatusCode::OK, Value::Null, reqwest::header::HeaderMap::new());
    for _ in 0..20 {
        last = call(
            &gw,
            reqwest::Method::POST,
            "/api/auth/sign-in",
            Auth::None,
            Some(json!({"email": "ada@example.org", "password": "not it"})),
        )
        .await;
        statuses.push(last.0.as_u16());
    }
    assert_eq!(statuses[0], 401, "{statuses:?}");
    assert_eq!(last.0, StatusCode::TOO_MANY_REQUESTS, "{statuses:?}");
    assert_eq!(last.1["error"]["code"], "rate_limited");
    let retry: u64 = last.2.get("retry-after").expect("Retry-After").to_str().unwrap().parse().unwrap();
    assert!((1..=window).contains(&retry), "Retry-After {retry}");

    // Throttled means throttled: the right password waits too (or the guessing would go on).
    let (s, cookie, _, body) = sign_in(&gw, "ada@example.org", PASSWORD).await;
    assert_error(s, &body, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    assert!(cookie.is_none());

    // A bad setting stops start-up with a message naming it.
    let dd = tempfile::tempdir().unwrap();
    let (code, _, err) = run_cli(
        &["serve"],
        &[
            ("DATABASE_URL", &db.url),
            ("TESSERA_DATA_DIR", dd.path().to_str().unwrap()),
            ("TESSERA_LISTEN", "127.0.0.1:0"),
            ("TESSERA_SIGNIN_WINDOW_SECS", "soon"),
        ],
    );
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("TESSERA_SIGNIN_WINDOW_SECS"), "{err}");

    tokio::time::sleep(Duration::from_secs(window) + Duration::from_millis(300)).await;
    let (s, cookie, _, body) = sign_in(&gw, "ada@example.org", PASSWORD).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert!(cookie.is_some());
}

/// The attack that was reported: 30 wrong guesses in parallel against a budget of 10 (the
/// default), and the right password 50 ms later, while the guesses are still being verified.
/// At most 10 attempts may reach the password hash between them; the rest get 429 without one.
/// Then a successful sign-in hands back only its own slot: it neither costs the owner budget
/// nor clears the failures already counted.
async fn the_sign_in_budget_holds_against_parallel_guesses(gw: &Gateway) {
    let token = setup(gw, "ada@example.org").await;
    let mut guesses = Vec::new();
    for i in 0..30 {
        let (client, url) = (gw.client.clone(), gw.url("/api/auth/sign-in"));
        guesses.push(tokio::spawn(async move {
            let body = json!({"email": "ada@example.org", "password": format!("guess number {i}")});
            let r = client.post(url).json(&body).send().await.unwrap();
            let retry_after = r.headers().get("retry-after").map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
            (r.status(), retry_after, r.json::<Value>().await.unwrap())
        }));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (right_status, _, _, right_body) = sign_in(gw, "ada@example.org", PASSWORD).await;
    let (mut wrong, mut limited) = (0, 0);
    for g in guesses {
        match g.await.unwrap() {
            (StatusCode::UNAUTHORIZED, _, _) => wrong += 1,
            (StatusCode::TOO_MANY_REQUESTS, retry_after, body) => {
                limited += 1;
                assert_eq!(body["error"]["code"], "rate_limited", "{body}");
                assert!(retry_after.is_some_and(|s| (1..=900).contains(&s)), "Retry-After {retry_after:?}");
            }
            other => panic!("unexpected answer to a wrong guess: {other:?}"),
        }
    }
    let right_verified = match right_status {
        StatusCode::OK => true,
        StatusCode::TOO_MANY_REQUESTS => false,
        other => panic!("right password: {other} {right_body}"),
    };
    // The budget is 10 attempts, the right one included if it got a slot; all of it is usable.
    assert_eq!(wrong + usize::from(right_verified), 10, "{wrong} wrong guesses verified");
    assert_eq!(wrong + limited, 30);
    // Each verification logs one line; a 429 logs none at info level. This is the proof that
    // the 429s were decided before the hash, not after it.
    let log = gw.log();
    let verified = log.matches("sign-in failed").count() + log.matches("signed in").count();
    assert_eq!(verified, 10, "passwords verified:\n{log}");

    // Budget spent: the right password waits for the window too.
    let (s, cookie, _, body) = sign_in(gw, "ada@example.org", PASSWORD).await;
    assert_error(s, &body, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    assert!(cookie.is_none());

    // Refunds, on another account (its own budget of 10 at this address): 9 failures, a success,
    // then the 10th failure still fits (the success cost nothing) and the 11th does not (the
    // success cleared nothing).
    let (s, b) = post(
        gw,
        "/api/admin/users",
        Auth::Token(&token),
        json!({"email": "bob@example.org", "name": "Bob", "role": "member", "password": PASSWORD}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let mut statuses = Vec::new();
    for _ in 0..9 {
        statuses.push(sign_in(gw, "bob@example.org", "not it").await.0.as_u16());
    }
    statuses.push(sign_in(gw, "bob@example.org", PASSWORD).await.0.as_u16());
    for _ in 0..2 {
        statuses.push(sign_in(gw, "bob@example.org", "not it").await.0.as_u16());
    }
    statuses.push(sign_in(gw, "bob@example.org", PASSWORD).await.0.as_u16());
    let want: Vec<u16> = [[401; 9].as_slice(), &[200, 401, 429, 429]].concat();
    assert_eq!(statuses, want);
}

/// The rate limiter the gateway says it uses (its start-up log line).
fn limiter_backend(gw: &Gateway) -> &'static str {
    let log = gw.log();
    let line = log.lines().find(|l| l.contains("rate limiter")).unwrap_or_else(|| panic!("no limiter line:\n{log}"));
    ["memory", "valkey"].into_iter().find(|b| line.contains(&format!("\"{b}\""))).unwrap_or("unknown")
}

#[tokio::test(flavor = "multi_thread")]
async fn parallel_guesses_get_at_most_the_budget_in_process() {
    let db = TestDb::new().await;
    let gw = gateway(&db).await;
    assert_eq!(limiter_backend(&gw), "memory");
    the_sign_in_budget_holds_against_parallel_guesses(&gw).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn parallel_guesses_get_at_most_the_budget_in_valkey() {
    let db = TestDb::new().await;
    let (valkey, _dir) = common::replicas::start_valkey(None).await;
    let gw = gateway_with(&db, vec![("VALKEY_URL".into(), valkey.url())]).await;
    assert_eq!(limiter_backend(&gw), "valkey");
    the_sign_in_budget_holds_against_parallel_guesses(&gw).await;
}

/// The shared test cluster's server log (appended to by every test of the run).
fn postgres_log() -> Vec<u8> {
    let path = common::cluster_dir().join("postgres.log");
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[tokio::test]
async fn a_nul_character_is_refused_by_name_before_the_database() {
    let db = TestDb::new().await;
    let gw = gateway_with(&db, vec![("TESSERA_SIGNIN_MAX_FAILURES".into(), "3".into())]).await;
    let pg_log_from = postgres_log().len();
    let t = setup(&gw, "ada@example.org").await;
    let a = Auth::Token(&t);
    let nul = |s: StatusCode, b: &Value, field: &str| {
        assert_field(s, b, StatusCode::BAD_REQUEST, field);
        assert_eq!(b["error"]["code"], "invalid_request", "{b}");
        assert!(b["error"]["message"].as_str().unwrap().contains(field), "{b}");
    };

    // Sign-in, unauthenticated: refused before the throttle, so twice the budget of them costs
    // nothing, and the message never echoes the password.
    for _ in 0..3 {
        let (s, _, _, b) = sign_in(&gw, "ada@example.org\u{0}", PASSWORD).await;
        nul(s, &b, "email");
        let (s, _, _, b) = sign_in(&gw, "ada@example.org", "correct horse\u{0}battery").await;
        nul(s, &b, "password");
        assert!(!b.to_string().contains("horse"), "{b}");
    }
    let statuses: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(sign_in(&gw, "ada@example.org", "not it").await.0.as_u16());
        }
        v
    };
    assert_eq!(statuses, [401, 401, 401, 429], "the whole budget was left for real attempts");

    // Every kind of JSON body, at any depth, keys too.
    let user = uuid::Uuid::now_v7();
    let (s, b) =
        post(&gw, "/api/admin/users", a, json!({"email": "x@example.org", "name": "a\u{0}b", "role": "member"})).await;
    nul(s, &b, "name");
    let (s, b) = post(&gw, "/api/admin/tasks", a, json!({"title": "\u{0}", "projectId": user})).await;
    nul(s, &b, "title");
    let (s, b) =
        post(&gw, "/api/admin/tasks", a, json!({"title": "t", "description": "d\u{0}", "projectId": user})).await;
    nul(s, &b, "description");
    let (s, b) = post(
        &gw,
        "/api/admin/preferences",
        a,
        json!({"userId": user, "key": "k", "value": {"notes": ["fine", "bad\u{0}"]}}),
    )
    .await;
    nul(s, &b, "value.notes[1]");
    let (s, b) =
        post(&gw, "/api/admin/preferences", a, json!({"userId": user, "key": "k", "value": {"a\u{0}": 1}})).await;
    nul(s, &b, "value[\"a\\u0000\"]");
    let (s, b) = post(&gw, "/api/admin/preferences", a, json!({"userId": user, "key": "k\u{0}", "value": 1})).await;
    nul(s, &b, "key");

    // Path and query parameters (`%00`).
    let (s, b) =
        post(&gw, "/api/federation/enrollment/tsr_enroll%00x", Auth::None, json!({"csrPem": "not a csr"})).await;
    nul(s, &b, "token");
    let (s, b) = get(&gw, "/api/admin/queues/q%00", a).await;
    nul(s, &b, "name");
    let (s, b) = get(&gw, "/api/admin/grants?status=active%00", a).await;
    nul(s, &b, "status");
    let (s, b) = get(&gw, "/api/admin/users?limit=5&cursor=%00", a).await;
    nul(s, &b, "cursor");

    // Without a NUL the same requests get past the check (and to their own answers).
    let (s, b) = get(&gw, "/api/admin/grants?status=active", a).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, b) =
        post(&gw, "/api/admin/users", a, json!({"email": "x@example.org", "name": "a\\u0000b", "role": "member"}))
            .await;
    assert_eq!((s, b["name"].as_str()), (StatusCode::CREATED, Some("a\\u0000b")), "{b}");

    // Nothing reached Postgres: no 500 logged by the gateway, no encoding error in Postgres.
    let log = gw.log();
    assert!(!log.contains("ERROR") && !log.contains("request failed"), "{log}");
    let pg = String::from_utf8_lossy(&postgres_log()[pg_log_from..]).into_owned();
    for needle in ["invalid byte sequence for encoding \"UTF8\": 0x00", "unsupported Unicode escape sequence"] {
        assert!(!pg.contains(needle), "Postgres saw a NUL: {needle}");
    }

    // The import file follows the same rule, by line and field.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("nul.jsonl");
    let line = json!({"kind": "team", "name": "Ops\u{0}"}).to_string();
    std::fs::write(&file, format!("{}\n{line}\n", json!({"kind": "team", "name": "Fine"}))).unwrap();
    let env = [("DATABASE_URL", db.url.as_str()), ("TESSERA_CONFIG_DIR", dir.path().to_str().unwrap())];
    let (code, _, err) = run_cli(&["import", file.to_str().unwrap()], &env);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("line 2") && err.contains("name must not contain the NUL"), "{err}");
    let teams: i64 = sqlx::query_scalar("select count(*) from teams").fetch_one(&db.pool).await.unwrap();
    assert_eq!(teams, 0);
}

#[tokio::test]
async fn over_long_free_text_is_refused_by_name_before_the_database() {
    let db = TestDb::new().await;
    let gw = gateway_with(&db, vec![("TESSERA_SIGNIN_MAX_FAILURES".into(), "2".into())]).await;
    let t = setup(&gw, "ada@example.org").await;
    let a = Auth::Token(&t);

    // Longer than any account can have: 400, and not counted by the throttle.
    for _ in 0..3 {
        let (s, _, _, b) = sign_in(&gw, &format!("{}@example.org", "a".repeat(250)), PASSWORD).await;
        assert_field(s, &b, StatusCode::BAD_REQUEST, "email");
        let (s, _, _, b) = sign_in(&gw, "ada@example.org", &"p".repeat(1025)).await;
        assert_field(s, &b, StatusCode::BAD_REQUEST, "password");
    }
    assert_eq!(sign_in(&gw, "ada@example.org", "not it").await.0, StatusCode::UNAUTHORIZED);

    let (s, b) =
        post(&gw, "/api/admin/users", a, json!({"email": "m@example.org", "name": "M", "role": "member"})).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let member = b["id"].as_str().unwrap().to_string();
    let (s, b) = post(&gw, "/api/admin/teams", a, json!({"name": "Ops"})).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let (s, b) = post(&gw, "/api/admin/projects", a, json!({"name": "P", "teamId": b["id"]})).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let project = b["id"].clone();
    let long = "d".repeat(100_001);
    let (s, b) =
        post(&gw, "/api/admin/tasks", a, json!({"title": "t", "description": long, "projectId": project})).await;
    assert_field(s, &b, StatusCode::BAD_REQUEST, "description");
    let (s, b) = post(
        &gw,
        "/api/admin/tasks",
        a,
        json!({"title": "t", "description": "d".repeat(100_000), "projectId": project}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "the limit itself is allowed: {}", b["error"]);

    let url = format!("https://peer.example/{}", "x".repeat(2000));
    let (s, b) = post(&gw, "/api/admin/peers", a, json!({"name": "p1", "endpointUrl": url})).await;
    assert_field(s, &b, StatusCode::BAD_REQUEST, "endpointUrl");
    let (s, b) = post(&gw, "/api/admin/peers", a, json!({"name": "p1"})).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let grant = json!({"peerId": b["id"], "subjectUserId": member, "scope": {"resources": ["tasks"]}});
    let (s, b) = post(&gw, "/api/admin/grants", a, grant).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let revoke = format!("/api/admin/grants/{}/revoke", b["id"].as_str().unwrap());
    let (s, b) = post(&gw, &revoke, a, json!({"reason": "r".repeat(1001)})).await;
    assert_field(s, &b, StatusCode::BAD_REQUEST, "reason");
    let (s, b) = post(&gw, &revoke, a, json!({"reason": "done"})).await;
    assert_eq!(s, StatusCode::OK, "{b}");
}

// ------------------------------------------------------------------ local data API

#[tokio::test]
async fn the_data_api_creates_every_record_kind_and_pages_with_opaque_cursors() {
    let db = TestDb::new().await;
    let gw = gateway(&db).await;
    let t = setup(&gw, "ada@example.org").await;
    let a = Auth::Token(&t);
    let created = |s: StatusCode, b: &Value| {
        assert_eq!(s, StatusCode::CREATED, "{b}");
        b["id"].as_str().map(str::to_string).unwrap_or_default()
    };

    let (s, u) =
        post(&gw, "/api/admin/users", a, json!({"email": "bob@example.org", "name": "Bob", "role": "member"})).await;
    let bob = created(s, &u);
    assert!(u.get("passwordHash").is_none() && u.get("password").is_none());
    let (s, team) = post(&gw, "/api/admin/teams", a, json!({"name": "Ops"})).await;
    let team = created(s, &team);
    let (s, m) = post(&gw, &format!("/api/admin/teams/{team}/members"), a, json!({"userId": bob})).await;
    assert_eq!((s, m["userId"].as_str()), (StatusCode::CREATED, Some(bob.as_str())), "{m}");
    let (s, p) = post(&gw, "/api/admin/projects", a, json!({"name": "Mine", "ownerUserId": bob})).await;
    let personal = created(s, &p);
    let (s, p) = post(&gw, "/api/admin/projects", a, json!({"name": "Ours", "teamId": team})).await;
    let team_project = created(s, &p);
    let (s, mi) =
        post(&gw, "/api/admin/missions", a, json!({"name": "Launch", "projectId": team_project, "userId": bob})).await;
    let mission = created(s, &mi);
    // A task given only its mission joins the mission's project.
    let (s, task) = post(&gw, "/api/admin/tasks", a, json!({"title": "Write docs", "missionId": mission})).await;
    let task_id = created(s, &task);
    assert_eq!(task["projectId"], team_project.as_str());
    assert_eq!((task["status"].as_str(), task["priority"].as_str()), (Some("todo"), Some("medium")));
    let (s, task2) = post(
        &gw,
        "/api/admin/tasks",
        a,
        json!({"title": "Old", "projectId": personal, "status": "done", "createdAt": "2024-01-02T03:04:05Z"}),
    )
    .await;
    created(s, &task2);
    assert_eq!(task2["createdAt"], "2024-01-02T03:04:05Z");
    let (s, note) = post(
        &gw,
        "/api/admin/mission-tasks",
        a,
        json!({"missionId": mission, "userId": bob, "notes": "remember the rollback", "taskId": task_id}),
    )
    .await;
    created(s, &note);
    let embedding: Vec<f32> = (0..384).map(|i| i as f32 / 384.0).collect();
    let (s, ins) = post(
        &gw,
        "/api/admin/insights",
        a,
        json!({"userId": bob, "content": "prefers mornings", "embedding": embedding}),
    )
    .await;
    let insight = created(s, &ins);
    assert_eq!(ins["hasEmbedding"], true);
    let dims: i32 = sqlx::query_scalar("select vector_dims(embedding) from insights where id = $1")
        .bind(insight.parse::<uuid::Uuid>().unwrap())
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(dims, 384);
    let (s, ins) = post(&gw, "/api/admin/insights", a, json!({"userId": bob, "content": "no vector"})).await;
    created(s, &ins);
    assert_eq!(ins["hasEmbedding"], false);
    let (s, pref) =
        post(&gw, "/api/admin/preferences", a, json!({"userId": bob, "key": "theme", "value": {"dark": true}})).await;
    created(s, &pref);
    assert_eq!(pref["value"]["dark"], true);

    for (path, n) in [
        ("/api/admin/users", 2),
        ("/api/admin/teams", 1),
        ("/api/admin/projects", 2),
        ("/api/admin/missions", 1),
        ("/api/admin/tasks", 2),
        ("/api/admin/mission-tasks", 1),
        ("/api/admin/insights", 2),
        ("/api/admin/preferences", 1),
    ] {
        let (s, page) = get(&gw, path, a).await;
        assert_eq!(s, StatusCode::OK, "{path}: {page}");
        assert_eq!(page["items"].as_array().unwrap().len(), n, "{path}: {page}");
        assert!(page.get("nextCursor").is_none(), "{path}: a single page has no cursor");
    }
    let (_, members) = get(&gw, &format!("/api/admin/teams/{team}/members"), a).await;
    assert_eq!(members["items"][0]["userId"], bob.as_str());

    // Keyset pages: 7 teams in pages of 3 → 3, 3, 1; no duplicates; newest first; the last page
    // has no nextCursor.
    for i in 0..6 {
        let (s, _) = post(&gw, "/api/admin/teams", a, json!({"name": format!("Team {i}")})).await;
        assert_eq!(s, StatusCode::CREATED);
    }
    let mut seen = Vec::new();
    let mut sizes = Vec::new();
    let mut cursor: Option<String> = None;
    let mut first_cursor = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/admin/teams?limit=3&cursor={c}"),
            None => "/api/admin/teams?limit=3".to_string(),
        };
        let (s, page) = get(&gw, &path, a).await;
        assert_eq!(s, StatusCode::OK, "{page}");
        let items = page["items"].as_array().unwrap();
        sizes.push(items.len());
        seen.extend(items.iter().map(|t| t["name"].as_str().unwrap().to_string()));
        match page.get("nextCursor").and_then(Value::as_str) {
            Some(c) => {
                assert!(!c.is_empty());
                first_cursor.get_or_insert_with(|| c.to_string());
                cursor = Some(c.to_string());
            }
            None => break,
        }
    }
    assert_eq!(sizes, vec![3, 3, 1]);
    let mut dedup = seen.clone();
    dedup.sort();
    dedup.dedup();
    assert_eq!(dedup.len(), 7, "{seen:?}");
    assert_eq!(seen[0], "Team 5", "newest first: {seen:?}");

    // A cursor from another list, or garbage, is a 400 naming `cursor`, never a first page.
    let teams_cursor = first_cursor.unwrap();
    let (s, body) = get(&gw, &format!("/api/admin/users?cursor={teams_cursor}"), a).await;
    assert_field(s, &body, StatusCode::BAD_REQUEST, "cursor");
    let (s, body) = get(&gw, "/api/admin/teams?cursor=bm9wZQ", a).await;
    assert_field(s, &body, StatusCode::BAD_REQUEST, "cursor");
    let (s, body) = get(&gw, "/api/admin/teams?limit=0", a).await;
    assert_field(s, &body, StatusCode::BAD_REQUEST, "limit");
    let (s, body) = get(&gw, "/api/admin/teams?limit=many", a).await;
    assert_error(s, &body, StatusCode::BAD_REQUEST, "invalid_request");
}

#[tokio::test]
async fn the_data_api_names_the_field_of_bad_unknown_and_duplicate_values() {
    let db = TestDb::new().await;
    let gw = gateway(&db).await;
    let t = setup(&gw, "ada@example.org").await;
    let a = Auth::Token(&t);
    let nobody = uuid::Uuid::now_v7().to_string();

    // 400: validation, naming the field.
    for (body, field) in [
        (json!({"email": "not-an-email", "name": "X", "role": "member"}), "email"),
        (json!({"email": "x@example.org", "name": "  ", "role": "member"}), "name"),
        (json!({"email": "x@example.org", "name": "X", "role": "root"}), "role"),
        (json!({"email": "x@example.org", "name": "X", "role": "member", "password": "short"}), "password"),
    ] {
        let (s, b) = post(&gw, "/api/admin/users", a, body).await;
        assert_field(s, &b, StatusCode::BAD_REQUEST, field);
    }
    let (s, b) = post(&gw, "/api/admin/users", a, json!({"name": "X", "role": "member"})).await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "invalid_request");
    assert!(b["error"]["message"].as_str().unwrap().contains("email"), "{b}");
    let (s, b) = post(
        &gw,
        "/api/admin/users",
        a,
        json!({"email": "x@example.org", "name": "X", "role": "member", "admin": true}),
    )
    .await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "invalid_request");

    // 409: unique values, case-insensitive email.
    let (s, b) =
        post(&gw, "/api/admin/users", a, json!({"email": "bob@example.org", "name": "Bob", "role": "member"})).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let bob = b["id"].as_str().unwrap().to_string();
    let (s, b) =
        post(&gw, "/api/admin/users", a, json!({"email": "BOB@example.org", "name": "Bob 2", "role": "member"})).await;
    assert_field(s, &b, StatusCode::CONFLICT, "email");
    assert_eq!(b["error"]["code"], "conflict");
    let (s, b) = post(
        &gw,
        "/api/admin/users",
        a,
        json!({"id": bob, "email": "bob3@example.org", "name": "B", "role": "member"}),
    )
    .await;
    assert_field(s, &b, StatusCode::CONFLICT, "id");
    let (_, team) = post(&gw, "/api/admin/teams", a, json!({"name": "Ops"})).await;
    let team = team["id"].as_str().unwrap().to_string();
    let (s, b) = post(&gw, "/api/admin/teams", a, json!({"name": "ops"})).await;
    assert_field(s, &b, StatusCode::CONFLICT, "name");
    let members = format!("/api/admin/teams/{team}/members");
    assert_eq!(post(&gw, &members, a, json!({"userId": bob})).await.0, StatusCode::CREATED);
    let (s, b) = post(&gw, &members, a, json!({"userId": bob})).await;
    assert_field(s, &b, StatusCode::CONFLICT, "userId");
    let pref = json!({"userId": bob, "key": "theme", "value": "dark"});
    assert_eq!(post(&gw, "/api/admin/preferences", a, pref.clone()).await.0, StatusCode::CREATED);
    let (s, b) = post(&gw, "/api/admin/preferences", a, pref).await;
    assert_field(s, &b, StatusCode::CONFLICT, "key");

    // 404: unknown references, naming the field.
    let (s, b) = post(&gw, &format!("/api/admin/teams/{nobody}/members"), a, json!({"userId": bob})).await;
    assert_field(s, &b, StatusCode::NOT_FOUND, "teamId");
    let (s, b) = post(&gw, &members, a, json!({"userId": nobody})).await;
    assert_field(s, &b, StatusCode::NOT_FOUND, "userId");
    let (s, b) = get(&gw, &format!("/api/admin/teams/{nobody}/members"), a).await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "not_found");
    let (s, b) = post(&gw, "/api/admin/projects", a, json!({"name": "P", "ownerUserId": nobody})).await;
    assert_field(s, &b, StatusCode::NOT_FOUND, "ownerUserId");
    let (s, b) = post(&gw, "/api/admin/projects", a, json!({"name": "P", "teamId": nobody})).await;
    assert_field(s, &b, StatusCode::NOT_FOUND, "teamId");
    let (s, b) = post(&gw, "/api/admin/missions", a, json!({"name": "M", "projectId": nobody})).await;
    assert_field(s, &b, StatusCode::NOT_FOUND, "projectId");
    let (s, b) = post(&gw, "/api/admin/tasks", a, json!({"title": "T", "missionId": nobody})).await;
    assert_field(s, &b, StatusCode::NOT_FOUND, "missionId");
    let (s, b) = post(&gw, "/api/admin/tasks", a, json!({"title": "T", "projectId": nobody})).await;
    assert_field(s, &b, StatusCode::NOT_FOUND, "projectId");
    let (s, b) = post(&gw, "/api/admin/insights", a, json!({"userId": nobody, "content": "c"})).await;
    assert_field(s, &b, StatusCode::NOT_FOUND, "userId");

    // 400: shape rules across fields.
    let (s, b) = post(&gw, "/api/admin/projects", a, json!({"name": "P", "ownerUserId": bob, "teamId": team})).await;
    assert_field(s, &b, StatusCode::BAD_REQUEST, "ownerUserId");
    let (s, b) = post(&gw, "/api/admin/projects", a, json!({"name": "P"})).await;
    assert_field(s, &b, StatusCode::BAD_REQUEST, "ownerUserId");
    let (_, p1) = post(&gw, "/api/admin/projects", a, json!({"name": "P1", "ownerUserId": bob})).await;
    let (_, p2) = post(&gw, "/api/admin/projects", a, json!({"name": "P2", "teamId": team})).await;
    let (_, m) = post(&gw, "/api/admin/missions", a, json!({"name": "M", "projectId": p2["id"]})).await;
    let (s, b) =
        post(&gw, "/api/admin/tasks", a, json!({"title": "T", "missionId": m["id"], "projectId": p1["id"]})).await;
    // Both ids are well formed and exist; they disagree as stored: a conflict, not a bad request.
    assert_field(s, &b, StatusCode::CONFLICT, "projectId");
    let (s, b) = post(&gw, "/api/admin/tasks", a, json!({"title": "T"})).await;
    assert_field(s, &b, StatusCode::BAD_REQUEST, "projectId");
    let (s, b) = post(&gw, "/api/admin/tasks", a, json!({"title": "", "projectId": p1["id"]})).await;
    assert_field(s, &b, StatusCode::BAD_REQUEST, "title");
    let (s, b) =
        post(&gw, "/api/admin/insights", a, json!({"userId": bob, "content": "c", "embedding": [0.1, 0.2]})).await;
    assert_field(s, &b, StatusCode::BAD_REQUEST, "embedding");
    let (s, b) = post(&gw, "/api/admin/preferences", a, json!({"userId": bob, "key": "", "value": 1})).await;
    assert_field(s, &b, StatusCode::BAD_REQUEST, "key");

    // Nothing rejected was stored.
    let tasks: i64 = sqlx::query_scalar("select count(*) from tasks").fetch_one(&db.pool).await.unwrap();
    let users: i64 = sqlx::query_scalar("select count(*) from users").fetch_one(&db.pool).await.unwrap();
    assert_eq!((tasks, users), (0, 2));
}

// ------------------------------------------------------------------ CLI

struct CliEnv {
    dir: tempfile::TempDir,
    vars: Vec<(String, String)>,
}

impl CliEnv {
    /// The environment of an operator on the gateway's machine: data dir and listen address
    /// (so the CLI finds the local gateway and its CA), and a private config dir.
    fn local(gw: &Gateway) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let vars = vec![
            ("TESSERA_DATA_DIR".to_string(), gw.data_dir.to_str().unwrap().to_string()),
            ("TESSERA_LISTEN".to_string(), format!("127.0.0.1:{}", gw.port)),
            ("TESSERA_CONFIG_DIR".to_string(), dir.path().join("tessera").to_str().unwrap().to_string()),
        ];
        Self { dir, vars }
    }

    fn state_file(&self) -> std::path::PathBuf {
        self.dir.path().join("tessera/credentials.json")
    }

    fn run(&self, args: &[&str], extra: &[(&str, &str)]) -> (i32, String, String) {
        let mut env: Vec<(&str, &str)> = self.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        env.extend_from_slice(extra);
        run_cli(args, &env)
    }

    fn saved_token(&self) -> String {
        let state: Value = serde_json::from_slice(&std::fs::read(self.state_file()).unwrap()).unwrap();
        state["token"].as_str().unwrap().to_string()
    }
}

#[tokio::test]
async fn the_stranded_operator_recovers_a_token_with_email_and_password() {
    let db = TestDb::new().await;
    let mut gw = gateway(&db).await;
    setup(&gw, "ada@example.org").await;
    let cli = CliEnv::local(&gw);
    assert!(!cli.state_file().exists(), "the config dir is gone");
    let pw = [("TESSERA_PASSWORD", PASSWORD)];

    // No TTY and no password: no prompt, the exact next command, exit 2.
    let (code, out, err) = cli.run(&["token", "recover", "--email", "ada@example.org"], &[]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("TESSERA_PASSWORD=<password> tessera token recover --email ada@example.org"), "{err}");

    // Wrong password → 2.
    let (code, _, err) =
        cli.run(&["token", "recover", "--email", "ada@example.org"], &[("TESSERA_PASSWORD", "nope nope")]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("Sign-in failed: "), "{err}");
    assert!(!cli.state_file().exists() || !std::fs::read_to_string(cli.state_file()).unwrap().contains("tsr_"));

    // Email and password through the environment → exit 0 and a saved token.
    let (code, out, err) = cli.run(&["token", "recover"], &[("TESSERA_EMAIL", "ada@example.org"), pw[0]]);
    assert_eq!(code, 0, "{out}{err}");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(cli.state_file()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let token = cli.saved_token();
    assert!(token.starts_with("tsr_"));
    assert!(!out.contains(&token) && !err.contains(&token), "the secret is saved, not printed");
    let label: String = sqlx::query_scalar("select label from admin_tokens order by created_at desc limit 1")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(label.starts_with("recovered 20"), "labelled with the time: {label}");

    // The saved token lists tokens over the API, through the CLI and directly.
    let (code, out, err) = cli.run(&["token", "list"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&label) && out.contains("bootstrap"), "{out}");
    assert_eq!(get(&gw, "/api/admin/tokens", Auth::Token(&token)).await.0, StatusCode::OK);

    // TESSERA_TOKEN overrides the saved token.
    let (code, _, err) = cli.run(&["token", "list"], &[("TESSERA_TOKEN", "tsr_bogus")]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("Authentication failed"), "{err}");

    // A 403 from the server → 2 with "User is not an admin".
    let member = json!({"email": "bob@example.org", "name": "Bob", "role": "member", "password": PASSWORD});
    assert_eq!(post(&gw, "/api/admin/users", Auth::Token(&token), member).await.0, StatusCode::CREATED);
    let bob = CliEnv::local(&gw);
    let (code, _, err) = bob.run(&["token", "recover", "--email", "bob@example.org"], &pw);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("User is not an admin"), "{err}");

    // A stopped gateway → 1.
    let gateway_url = format!("https://127.0.0.1:{}", gw.port);
    gw.terminate();
    let (code, _, err) = cli.run(&["token", "recover", "--email", "ada@example.org"], &pw);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&format!("Could not reach gateway at {gateway_url}")), "{err}");
    assert!(err.contains("connection refused") && err.contains("tessera serve"), "cause and fix: {err}");
}

/// Exit codes of the one table (README): a gateway whose certificate another CA signed is a trust
/// failure (2) that names the CA file; a wrong host name too; a closed port is unreachable (1)
/// with "connection refused"; a server rejection carries the envelope's code (3); a usage error
/// is 64, never clap's 2.
#[tokio::test]
async fn cli_errors_name_the_cause_and_follow_the_exit_code_table() {
    let db = TestDb::new().await;
    // The server certificate names only localhost, so 127.0.0.1 is a name it does not carry.
    let gw = gateway_with(&db, vec![("TESSERA_TLS_SANS".into(), "localhost".into())]).await;
    let (_, token) = common::seed_admin(&db.pool, "ada@example.org").await;
    let dir = tempfile::tempdir().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let other_ca = params.self_signed(&rcgen::KeyPair::generate().unwrap()).unwrap();
    let wrong_ca = dir.path().join("wrong-ca.pem");
    std::fs::write(&wrong_ca, other_ca.pem()).unwrap();
    let right_ca = gw.data_dir.join("ca.pem");
    let cfg = dir.path().join("cfg");
    let run = |gateway: &str, ca: &std::path::Path, args: &[&str]| {
        run_cli(
            args,
            &[
                ("TESSERA_GATEWAY", gateway),
                ("TESSERA_CA_FILE", ca.to_str().unwrap()),
                ("TESSERA_TOKEN", token.as_str()),
                ("TESSERA_CONFIG_DIR", cfg.to_str().unwrap()),
            ],
        )
    };

    let (code, _, err) = run(&gw.base, &right_ca, &["token", "list", "--json"]);
    assert_eq!(code, 0, "{err}");

    let (code, _, err) = run(&gw.base, &wrong_ca, &["token", "list"]);
    assert_eq!(code, 2, "a CA that did not sign the gateway's certificate is a trust failure: {err}");
    assert!(err.contains("not signed by the CA we trust"), "{err}");
    assert!(err.contains("--ca-file") && err.contains("wrong-ca.pem"), "names the setting to fix: {err}");
    assert!(!err.contains("client error (Connect)"), "{err}");

    // The right CA, but a name the certificate does not carry.
    let by_other_name = format!("https://127.0.0.1:{}", gw.port);
    let (code, _, err) = run(&by_other_name, &right_ca, &["token", "list"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("does not name this host") && err.contains("TESSERA_TLS_SANS"), "{err}");

    let closed = format!("https://127.0.0.1:{}", common::free_port());
    let (code, _, err) = run(&closed, &right_ca, &["token", "list"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("connection refused"), "{err}");

    let (code, _, err) = run(&gw.base, &right_ca, &["token", "revoke", &uuid::Uuid::now_v7().to_string()]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("HTTP 404 not_found"), "the envelope's code and message: {err}");

    // Usage errors: clap's own, a bad flag value, and bad configuration.
    let (code, _, err) = run_cli(&["token", "--no-such-flag"], &[]);
    assert_eq!(code, 64, "{err}");
    let (code, _, err) = run_cli(&["grant", "show", "not-a-uuid"], &[]);
    assert_eq!(code, 64, "{err}");
    let (code, _, err) = run_cli(&["token", "list"], &[("TESSERA_GATEWAY", "not a url")]);
    assert_eq!(code, 64, "{err}");
    let (code, _, err) = run_cli(&["queue", "list"], &[("TESSERA_TIER", "cloud")]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("TESSERA_TIER"), "{err}");
    // --help and --version are not errors.
    let (code, out, _) = run_cli(&["grant", "--help"], &[]);
    assert_eq!(code, 0);
    assert!(out.contains("token"), "{out}");
    assert_eq!(run_cli(&["--version"], &[]).0, 0);
}

#[tokio::test]
async fn login_rotate_create_and_revoke_over_the_cli() {
    let db = TestDb::new().await;
    let gw = gateway(&db).await;
    setup(&gw, "ada@example.org").await;
    // A remote-style invocation: explicit gateway URL and CA file.
    let mut cli = CliEnv::local(&gw);
    cli.vars.retain(|(k, _)| k == "TESSERA_CONFIG_DIR");
    let ca = gw.data_dir.join("ca.pem");
    cli.vars.push(("TESSERA_GATEWAY".into(), gw.base.clone()));

    // Without the CA the gateway's certificate is not trusted: a trust failure (2), not "unreachable".
    let (code, _, err) = cli.run(&["login", "--email", "ada@example.org"], &[("TESSERA_PASSWORD", PASSWORD)]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("Cannot trust the gateway") && err.contains("--ca-file"), "{err}");
    cli.vars.push(("TESSERA_CA_FILE".into(), ca.to_str().unwrap().to_string()));

    // login without a password and no TTY prints the next command.
    let (code, _, err) = cli.run(&["login", "--email", "ada@example.org"], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("TESSERA_PASSWORD=<password> tessera login --email ada@example.org"), "{err}");
    let (code, _, err) = cli.run(&["login", "--email", "ada@example.org"], &[("TESSERA_PASSWORD", PASSWORD)]);
    assert_eq!(code, 0, "{err}");
    let state: Value = serde_json::from_slice(&std::fs::read(cli.state_file()).unwrap()).unwrap();
    assert!(state["session"].as_str().unwrap().starts_with("tss_"));

    // With only a session, token list works; rotate mints and saves a token.
    let (code, out, err) = cli.run(&["token", "list", "--json"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(serde_json::from_str::<Value>(&out).unwrap()["items"].is_array());
    // recover with a still-valid saved session needs no password at all.
    let (code, _, err) = cli.run(&["token", "recover"], &[]);
    assert_eq!(code, 0, "{err}");
    let recovered = cli.saved_token();
    assert_eq!(get(&gw, "/api/admin/tokens", Auth::Token(&recovered)).await.0, StatusCode::OK);
    let (code, _, err) = cli.run(&["token", "rotate"], &[]);
    assert_eq!(code, 0, "{err}");
    let first = cli.saved_token();
    assert_ne!(first, recovered);

    // rotate --revoke-old: the old token is dead at once, the new one works.
    let (code, _, err) = cli.run(&["token", "rotate", "--revoke-old"], &[]);
    assert_eq!(code, 0, "{err}");
    let second = cli.saved_token();
    assert_ne!(first, second);
    assert_eq!(get(&gw, "/api/admin/tokens", Auth::Token(&first)).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(get(&gw, "/api/admin/tokens", Auth::Token(&second)).await.0, StatusCode::OK);

    // create prints the secret once; revoke kills it; revoking again is a server rejection (3).
    let (code, out, err) = cli.run(&["token", "create", "--label", "ci", "--json"], &[]);
    assert_eq!(code, 0, "{err}");
    let created: Value = serde_json::from_str(&out).unwrap();
    let ci = created["plaintext"].as_str().unwrap();
    assert_eq!(get(&gw, "/api/admin/tokens", Auth::Token(ci)).await.0, StatusCode::OK);
    let id = created["id"].as_str().unwrap();
    assert_eq!(cli.run(&["token", "revoke", id], &[]).0, 0);
    assert_eq!(get(&gw, "/api/admin/tokens", Auth::Token(ci)).await.0, StatusCode::UNAUTHORIZED);
    let (code, _, err) = cli.run(&["token", "revoke", id], &[]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("HTTP 404"), "{err}");
    let (code, _, err) = cli.run(&["token", "create", "--label", " "], &[]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("HTTP 400") && err.contains("label"), "{err}");
}

#[tokio::test]
async fn headless_bootstrap_and_import_work_on_the_database() {
    let db = TestDb::new().await;
    let config_dir = tempfile::tempdir().unwrap();
    let cfg = config_dir.path().to_str().unwrap();
    let base = [("DATABASE_URL", db.url.as_str()), ("TESSERA_CONFIG_DIR", cfg)];

    let (code, _, err) = run_cli(&["admin", "bootstrap", "--email", "ada@example.org", "--name", "Ada"], &base);
    assert_eq!(code, 2, "no password → the next command: {err}");
    assert!(err.contains("TESSERA_PASSWORD=<password> tessera admin bootstrap"), "{err}");
    let pw_file = config_dir.path().join("pw");
    std::fs::write(&pw_file, format!("{PASSWORD}\n")).unwrap();
    let (code, out, err) = run_cli(
        &[
            "admin",
            "bootstrap",
            "--email",
            "ada@example.org",
            "--name",
            "Ada",
            "--password-file",
            pw_file.to_str().unwrap(),
        ],
        &base,
    );
    assert_eq!(code, 0, "{err}");
    let token = out.trim();
    assert!(token.starts_with("tsr_"), "{out}");
    let (code, _, err) = run_cli(
        &["admin", "bootstrap", "--email", "eve@example.org", "--name", "Eve"],
        &[base[0], base[1], ("TESSERA_PASSWORD", PASSWORD)],
    );
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("already done"), "{err}");
    // Without a terminal it does not prompt: it names the way back in, with this email.
    assert!(
        err.contains("TESSERA_PASSWORD=<password> tessera token recover --email eve@example.org --gateway https://"),
        "the exact recover command: {err}"
    );

    // The bootstrapped admin can sign in with that password and use the token.
    let gw = gateway(&db).await;
    assert_eq!(get(&gw, "/api/admin/users", Auth::Token(token)).await.0, StatusCode::OK);
    assert_eq!(sign_in(&gw, "ada@example.org", PASSWORD).await.0, StatusCode::OK);

    // Import: records refer to earlier lines; a bad line rolls the whole file back.
    let user = uuid::Uuid::now_v7();
    let team = uuid::Uuid::now_v7();
    let project = uuid::Uuid::now_v7();
    let mission = uuid::Uuid::now_v7();
    let good = [
        json!({"kind": "user", "id": user, "email": "bob@example.org", "name": "Bob", "role": "member"}),
        json!({"kind": "team", "id": team, "name": "Ops"}),
        json!({"kind": "team_member", "teamId": team, "userId": user}),
        json!({"kind": "project", "id": project, "name": "Ours", "teamId": team}),
        json!({"kind": "mission", "id": mission, "name": "Launch", "projectId": project}),
        json!({"kind": "task", "title": "Docs", "missionId": mission, "createdAt": "2025-05-05T05:05:05Z"}),
        json!({"kind": "mission_task", "missionId": mission, "userId": user, "notes": "n"}),
        json!({"kind": "insight", "userId": user, "content": "c", "embedding": vec![0.5f32; 384]}),
        json!({"kind": "preference", "userId": user, "key": "k", "value": [1, 2]}),
    ];
    let mut bad = good.iter().map(Value::to_string).collect::<Vec<_>>();
    bad.push(json!({"kind": "task", "title": "Orphan", "projectId": uuid::Uuid::now_v7()}).to_string());
    let file = config_dir.path().join("bad.jsonl");
    std::fs::write(&file, bad.join("\n")).unwrap();
    let (code, _, err) = run_cli(&["import", file.to_str().unwrap()], &base);
    assert_eq!(code, 64, "an invalid line is a usage error: {err}");
    assert!(err.contains("line 10") && err.contains("projectId"), "{err}");
    let users: i64 = sqlx::query_scalar("select count(*) from users").fetch_one(&db.pool).await.unwrap();
    assert_eq!(users, 1, "nothing of a failed import is kept");

    let file = config_dir.path().join("good.jsonl");
    std::fs::write(&file, good.iter().map(Value::to_string).collect::<Vec<_>>().join("\n") + "\n\n").unwrap();
    let (code, _, err) = run_cli(&["import", file.to_str().unwrap()], &base);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("Imported 9 records"), "{err}");
    let project_of_task: uuid::Uuid =
        sqlx::query_scalar("select project_id from tasks").fetch_one(&db.pool).await.unwrap();
    assert_eq!(project_of_task, project, "an imported mission task joins the mission's project");
    let (_, page) = get(&gw, "/api/admin/tasks", Auth::Token(token)).await;
    assert_eq!(page["items"][0]["createdAt"], "2025-05-05T05:05:05Z");
}

/// A database that fails under an import is not the input's fault: the CLI exits 1 and prints
/// the database's own cause, instead of blaming the line with "Internal server error".
#[tokio::test]
async fn an_import_the_database_fails_prints_the_cause() {
    let db = TestDb::new().await;
    sqlx::query(
        "create function refuse_teams() returns trigger language plpgsql as $$
         begin raise exception 'the disk is on fire'; end $$",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query("create trigger refuse_teams before insert on teams for each row execute function refuse_teams()")
        .execute(&db.pool)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("teams.jsonl");
    std::fs::write(&file, json!({"kind": "team", "name": "Ops"}).to_string()).unwrap();
    let env = [("DATABASE_URL", db.url.as_str()), ("TESSERA_CONFIG_DIR", dir.path().to_str().unwrap())];
    let (code, _, err) = run_cli(&["import", file.to_str().unwrap()], &env);
    assert_eq!(code, 1, "a failing database is no usage error: {err}");
    assert!(err.contains("the disk is on fire"), "the cause is printed: {err}");
    assert!(!err.contains("Internal server error"), "{err}");
}
