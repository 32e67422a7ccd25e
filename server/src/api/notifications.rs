//! `GET /api/v1/notifications?status=pending|delivered|failed&limit=N`
//! (admin token): the webhook deliveries, newest first (`landfall
//! notifications`).

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use landfall_proto::notify::{Delivery, DeliveryStatus};

use super::{AdminAuth, ApiError, AppState, Json};
use crate::store::DeliveryFilter;

/// Most deliveries in one answer (and the default).
pub const MAX_LIST: u64 = 1000;

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    pub status: Option<DeliveryStatus>,
    pub limit: Option<u64>,
}

pub async fn list(
    State(app): State<AppState>,
    _auth: AdminAuth,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Vec<Delivery>>, ApiError> {
    let Query(q) = query.map_err(ApiError::from_rejection)?;
    if q.status == Some(DeliveryStatus::Unknown) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "status must be pending, delivered or failed",
        ));
    }
    let filter = DeliveryFilter {
        status: q.status,
        limit: q.limit.unwrap_or(MAX_LIST).min(MAX_LIST),
    };
    Ok(Json(
        app.store.read(move |tx| tx.deliveries(&filter)).await?,
    ))
}
