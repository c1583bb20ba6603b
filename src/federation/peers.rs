//! Peers: remote gateways, in both roles (they call us; we call them). Admin API under
//! `/api/admin/peers`.

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgExecutor;
use utoipa::ToSchema;
use uuid::Uuid;

use super::peer_status::{READER_COLUMNS, ReaderRow, ReaderView};
use crate::admin::guard::AdminUser;
use crate::app::AppState;
use crate::http::error::{ApiError, ErrorEnvelope};
use crate::http::extract::{Json, Path};

/// A peer as the admin API shows it. Certificates are public; the sealed key never leaves.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Peer {
    pub id: Uuid,
    pub name: String,
    /// pending, active, degraded, suspended, revoked (the stored state; for a peer we call,
    /// `reader.status` says whether calls can work now).
    pub state: String,
    /// Role "calls us": the serial of its current client certificate.
    pub current_serial: Option<String>,
    pub cert_not_after: Option<DateTime<Utc>>,
    /// Role "we call it".
    pub endpoint_url: Option<String>,
    pub remote_grant_id: Option<Uuid>,
    pub ca_fingerprint: Option<String>,
    pub client_cert_not_after: Option<DateTime<Utc>>,
    /// Role "we call it": our client certificate, its renewals and how our calls go. Null for a
    /// peer we do not call.
    pub reader: Option<ReaderView>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A `federation_peers` row as the views read it.
#[derive(Debug, sqlx::FromRow)]
struct PeerRow {
    id: Uuid,
    name: String,
    state: String,
    current_serial: Option<String>,
    cert_not_after: Option<DateTime<Utc>>,
    endpoint_url: Option<String>,
    remote_grant_id: Option<Uuid>,
    ca_fingerprint: Option<String>,
    client_cert_not_after: Option<DateTime<Utc>>,
    #[sqlx(flatten)]
    reader: ReaderRow,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<PeerRow> for Peer {
    fn from(r: PeerRow) -> Self {
        let reader = ReaderView::from_row(&r.reader, r.client_cert_not_after, Utc::now());
        Self {
            id: r.id,
            name: r.name,
            state: r.state,
            current_serial: r.current_serial,
            cert_not_after: r.cert_not_after,
            endpoint_url: r.endpoint_url,
            remote_grant_id: r.remote_grant_id,
            ca_fingerprint: r.ca_fingerprint,
            client_cert_not_after: r.client_cert_not_after,
            reader,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

fn peer_columns() -> String {
    format!(
        "id, name, state, current_serial, cert_not_after, endpoint_url, remote_grant_id, ca_fingerprint, \
         client_cert_not_after, created_at, updated_at, {READER_COLUMNS}"
    )
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreatePeer {
    /// Unique (case-insensitive) name; becomes the CN of the peer's client certificate.
    #[schema(pattern = r"^[A-Za-z0-9._-]{1,64}$")]
    pub name: String,
    /// Where the peer is reached, when we call it.
    #[schema(max_length = 2000, pattern = r"^https://[\x21-\x7e]*$")]
    pub endpoint_url: Option<String>,
}

/// Validates a peer name: 1..=64 chars of letters, digits, `.`, `-`, `_`.
///
/// # Errors
/// A 400 naming `name`.
pub fn validate_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if ok { Ok(()) } else { Err(ApiError::invalid_field("name", "name must be 1-64 letters, digits, '.', '-' or '_'")) }
}

/// Inserts a peer in state `pending`.
///
/// # Errors
/// 409 when the name is taken.
pub async fn insert(db: impl PgExecutor<'_>, name: &str, endpoint_url: Option<&str>) -> Result<Peer, ApiError> {
    let sql = format!(
        "insert into federation_peers (id, name, endpoint_url) values ($1, $2, $3) returning {}",
        peer_columns()
    );
    sqlx::query_as::<_, PeerRow>(sqlx::AssertSqlSafe(sql))
        .bind(Uuid::now_v7())
        .bind(name)
        .bind(endpoint_url)
        .fetch_one(db)
        .await
        .map(Peer::from)
        .map_err(|e| match e {
            sqlx::Error::Database(d) if d.constraint() == Some("federation_peers_name_key") => {
                ApiError::conflict(format!("a peer named '{name}' already exists"))
                    .with_details(serde_json::json!({"field": "name"}))
            }
            other => other.into(),
        })
}

/// # Errors
/// Database errors.
pub async fn find(db: impl PgExecutor<'_>, id: Uuid) -> Result<Option<Peer>, sqlx::Error> {
    let sql = format!("select {} from federation_peers where id = $1", peer_columns());
    Ok(sqlx::query_as::<_, PeerRow>(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(db).await?.map(Peer::from))
}

/// # Errors
/// Database errors.
pub async fn find_by_name(db: impl PgExecutor<'_>, name: &str) -> Result<Option<Peer>, sqlx::Error> {
    let sql = format!("select {} from federation_peers where lower(name) = lower($1)", peer_columns());
    Ok(sqlx::query_as::<_, PeerRow>(sqlx::AssertSqlSafe(sql)).bind(name).fetch_optional(db).await?.map(Peer::from))
}

/// # Errors
/// Database errors.
pub async fn list(db: impl PgExecutor<'_>) -> Result<Vec<Peer>, sqlx::Error> {
    let sql = format!("select {} from federation_peers order by created_at, id", peer_columns());
    Ok(sqlx::query_as::<_, PeerRow>(sqlx::AssertSqlSafe(sql))
        .fetch_all(db)
        .await?
        .into_iter()
        .map(Peer::from)
        .collect())
}

/// Register a peer.
#[utoipa::path(post, path = "/api/admin/peers", tag = "admin", request_body = CreatePeer,
    responses(
        (status = 201, body = Peer),
        (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope), (status = 409, body = ErrorEnvelope),
    ))]
pub async fn create_peer(
    _admin: AdminUser,
    State(state): State<AppState>,
    Json(body): Json<CreatePeer>,
) -> Result<(StatusCode, Json<Peer>), ApiError> {
    validate_name(&body.name)?;
    if let Some(url) = &body.endpoint_url
        && (!url.starts_with("https://") || url.len() > 2000)
    {
        return Err(ApiError::invalid_field(
            "endpointUrl",
            "endpointUrl must start with https:// and have at most 2000 characters",
        ));
    }
    let peer = insert(&state.pool, &body.name, body.endpoint_url.as_deref()).await?;
    Ok((StatusCode::CREATED, Json(peer)))
}

/// List peers.
#[utoipa::path(get, path = "/api/admin/peers", tag = "admin",
    responses((status = 200, body = Vec<Peer>), (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope)))]
pub async fn list_peers(_admin: AdminUser, State(state): State<AppState>) -> Result<Json<Vec<Peer>>, ApiError> {
    Ok(Json(list(&state.pool).await?))
}

/// Show one peer.
#[utoipa::path(get, path = "/api/admin/peers/{id}", tag = "admin", params(("id" = Uuid, Path)),
    responses((status = 200, body = Peer), (status = 404, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope)))]
pub async fn show_peer(
    _admin: AdminUser,
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<Json<Peer>, ApiError> {
    find(&state.pool, id).await?.map(Json).ok_or_else(|| ApiError::not_found("No such peer"))
}
