//! Public CA endpoint: peers fetch this gateway's CA certificate and compare it with the pin
//! from their enrollment URL before sending anything else.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use crate::app::AppState;

/// The gateway CA certificate (PEM).
#[utoipa::path(get, path = "/api/federation/ca", tag = "federation",
    responses((status = 200, description = "PEM certificate of this gateway's CA", content_type = "application/x-pem-file", body = String)))]
pub async fn get_ca(State(state): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/x-pem-file")], state.ca.cert_pem().to_string())
}
