//! Peers: remote gateways, in both roles (they call us; we call them). Admin API under
//! `/api/admin/peers`.

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgExecutor;
use utoipa::ToSchema;
use uuid::Uuid;

use super::peer_status::{ReaderRow, ReaderView};
use crate::admin::guard::AdminUser;
use crate::app::AppState;
use crate::error::{DomainError, Fault};
use crate::http::error::{ApiError, ErrorEnvelope};
use crate::http::extract::{Json, Path};
use crate::store;
use crate::store::constraint::Violation;
pub use crate::store::peers::PeerState;

/// A peer as the admin API shows it. Certificates are public; the sealed key never leaves.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Peer {
    pub id: Uuid,
    pub name: String,
    /// The stored state; for a peer we call, `reader.status` says whether calls can work now.
    pub state: PeerState,
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

impl From<store::peers::PeerRow> for Peer {
    fn from(r: store::peers::PeerRow) -> Self {
        let reader_row = ReaderRow {
            client_cert_pem: r.client_cert_pem,
            client_cert_received_at: r.client_cert_received_at,
            renew_at: r.renew_at,
            renewal_failures: r.renewal_failures,
            last_renewed_at: r.last_renewed_at,
            last_success_at: r.last_success_at,
            last_error: r.last_error,
            last_error_at: r.last_error_at,
            refusing_since: r.refusing_since,
        };
        let reader = ReaderView::from_row(&reader_row, r.client_cert_not_after, Utc::now());
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

/// Why a peer operation was refused, or could not be done.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("No such peer")]
    NotFound,
    /// A peer named on the command line (by name or id) that does not exist.
    #[error("no peer '{0}'")]
    Unknown(String),
    #[error("name must be 1-64 letters, digits, '.', '-' or '_'")]
    InvalidName,
    #[error("endpointUrl must start with https:// and have at most 2000 characters")]
    InvalidEndpoint,
    #[error("a peer named '{0}' already exists")]
    NameTaken(String),
    #[error("the peer store failed")]
    Database(#[from] sqlx::Error),
}

impl DomainError for PeerError {
    fn fault(&self) -> Fault {
        match self {
            Self::NotFound | Self::Unknown(_) => Fault::NotFound { field: None },
            Self::InvalidName => Fault::invalid("name"),
            Self::InvalidEndpoint => Fault::invalid("endpointUrl"),
            Self::NameTaken(_) => Fault::conflict("name"),
            Self::Database(_) => Fault::Internal,
        }
    }
}

/// Validates a peer name: 1..=64 chars of letters, digits, `.`, `-`, `_`.
///
/// # Errors
/// [`PeerError::InvalidName`].
pub fn validate_name(name: &str) -> Result<(), PeerError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if ok { Ok(()) } else { Err(PeerError::InvalidName) }
}

/// Validates the name and registers the peer in state `pending`.
///
/// # Errors
/// An invalid name or endpoint; the name is taken; database errors.
pub async fn create(db: impl PgExecutor<'_>, name: &str, endpoint_url: Option<&str>) -> Result<Peer, PeerError> {
    validate_name(name)?;
    if let Some(url) = endpoint_url
        && (!url.starts_with("https://") || url.len() > 2000)
    {
        return Err(PeerError::InvalidEndpoint);
    }
    match store::peers::insert(db, name, endpoint_url).await {
        Ok(row) => Ok(row.into()),
        Err(e) => match store::constraint::violation(&e) {
            Some(Violation::Taken { field, .. }) if field == "name" => Err(PeerError::NameTaken(name.to_string())),
            _ => Err(e.into()),
        },
    }
}

/// # Errors
/// Database errors.
pub async fn find(db: impl PgExecutor<'_>, id: Uuid) -> Result<Option<Peer>, PeerError> {
    Ok(store::peers::find(db, id).await?.map(Peer::from))
}

/// The peer `peer` names: an id, else a name (case-insensitively).
///
/// # Errors
/// [`PeerError::Unknown`] when there is none; database errors.
pub async fn resolve(db: impl PgExecutor<'_>, peer: &str) -> Result<Peer, PeerError> {
    let row = match Uuid::parse_str(peer) {
        Ok(id) => store::peers::find(db, id).await?,
        Err(_) => store::peers::find_by_name(db, peer).await?,
    };
    row.map(Peer::from).ok_or_else(|| PeerError::Unknown(peer.to_string()))
}

/// # Errors
/// Database errors.
pub async fn list(db: impl PgExecutor<'_>) -> Result<Vec<Peer>, PeerError> {
    Ok(store::peers::list(db).await?.into_iter().map(Peer::from).collect())
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
    let peer = create(&state.pool, &body.name, body.endpoint_url.as_deref()).await?;
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
    Ok(Json(find(&state.pool, id).await?.ok_or(PeerError::NotFound)?))
}
