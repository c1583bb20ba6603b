//! Federation: the gateway CA and, as they land, identity, guard, scope, verbs and enrollment.

pub mod ca;
pub mod ca_routes;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::AppState;

/// Routes under `/api/federation`.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(ca_routes::get_ca))
}
