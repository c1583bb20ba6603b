//! Peer health, both ways: `GET /api/admin/peers/{id}/health` and `tessera peer health <name>`.
//!
//! - **Inbound** (this gateway holds the data, the peer calls us): the last request, requests
//!   and denials by deny code over the last hour and rate-limit hits, all from the audit log,
//!   and each grant's certificate (serial, expiry, last renewal).
//! - **Outbound** (we call the peer): the reader status of [`super::peer_status`] (certificate,
//!   renewals, last success, last error and its cause, refusals), plus what only the serving
//!   process knows: its circuit breaker and the latency p50/p99 of its calls in the last hour.

use std::collections::BTreeMap;

use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::admin::guard::AdminUser;
use crate::app::AppState;
use crate::http::error::{ApiError, ErrorEnvelope};
use crate::http::extract::{Json, Path};
pub use crate::store::grants::GrantCertificate;

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PeerHealth {
    pub peer_id: Uuid,
    pub name: String,
    pub inbound: InboundHealth,
    /// Absent for a peer we do not call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outbound: Option<OutboundHealth>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InboundHealth {
    pub last_request_at: Option<DateTime<Utc>>,
    pub requests_last_hour: i64,
    pub denied_last_hour: i64,
    /// Denials of the last hour by deny code.
    pub denials_by_code: BTreeMap<String, i64>,
    pub rate_limited_last_hour: i64,
    pub certificates: Vec<GrantCertificate>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutboundHealth {
    /// `closed`, `open` or `half_open`, in the process that answered.
    pub circuit: String,
    pub calls_last_hour: usize,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    /// Certificate, renewals, last success and last error with its cause, refusals.
    #[schema(value_type = Object)]
    pub reader: serde_json::Value,
}

/// The inbound half, from the audit log and the grants.
///
/// # Errors
/// Database errors.
pub async fn inbound(pool: &sqlx::PgPool, peer_id: Uuid) -> Result<InboundHealth, sqlx::Error> {
    let traffic = crate::store::audit::peer_traffic(pool, peer_id).await?;
    let certificates = crate::store::grants::certificates_of_peer(pool, peer_id).await?;
    Ok(InboundHealth {
        last_request_at: traffic.last_request_at,
        requests_last_hour: traffic.requests_last_hour,
        denied_last_hour: traffic.denied_last_hour,
        denials_by_code: traffic.denials_by_code,
        rate_limited_last_hour: traffic.rate_limited_last_hour,
        certificates,
    })
}

/// A peer's health, both ways.
#[utoipa::path(get, path = "/api/admin/peers/{id}/health", tag = "admin", params(("id" = Uuid, Path)),
    responses(
        (status = 200, body = PeerHealth), (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope),
    ))]
pub async fn peer_health(
    _admin: AdminUser,
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<Json<PeerHealth>, ApiError> {
    let peer = super::peers::find(&state.pool, id).await?.ok_or(super::peers::PeerError::NotFound)?;
    let inbound = inbound(&state.pool, id).await?;
    let outbound = match &peer.reader {
        Some(reader) => {
            let (calls, p50, p99) = state.breakers.latency(&peer.name);
            Some(OutboundHealth {
                circuit: state.breakers.state(&peer.name).to_string(),
                calls_last_hour: calls,
                latency_p50_ms: p50,
                latency_p99_ms: p99,
                reader: serde_json::to_value(reader).map_err(anyhow::Error::from)?,
            })
        }
        None => None,
    };
    Ok(Json(PeerHealth { peer_id: id, name: peer.name, inbound, outbound }))
}
