//! The admin plane (DESIGN §6): credentials, the admin guard, and (as they land) bootstrap,
//! sessions, token management and the local data API.

pub mod credentials;
pub mod guard;

use utoipa_axum::router::OpenApiRouter;

use crate::app::AppState;

/// Routes under `/api/bootstrap`, `/api/auth` and `/api/admin`.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
}
