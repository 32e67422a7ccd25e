//! The admin API (Bearer admin token): list, detail, reinstall.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use landfall_proto::admin::{MachineDetail, MachineSummary};

use super::{AdminAuth, ApiError, AppState, Json};
use crate::store::{now, MachineRow};

pub async fn list(
    State(app): State<AppState>,
    _auth: AdminAuth,
) -> Result<Json<Vec<MachineSummary>>, ApiError> {
    Ok(Json(app.store.summaries()?))
}

fn find(app: &AppState, key: Result<Path<String>, PathRejection>) -> Result<MachineRow, ApiError> {
    let Path(key) = key.map_err(ApiError::from_rejection)?;
    app.store.find_machine(&key)?.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no machine with MAC or hostname {key:?}"),
        )
    })
}

pub async fn detail(
    State(app): State<AppState>,
    _auth: AdminAuth,
    key: Result<Path<String>, PathRejection>,
) -> Result<Json<MachineDetail>, ApiError> {
    let row = find(&app, key)?;
    let detail = app.store.detail(&row.mac)?.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("machine {} vanished", row.mac),
        )
    })?;
    Ok(Json(detail))
}

pub async fn reinstall(
    State(app): State<AppState>,
    _auth: AdminAuth,
    key: Result<Path<String>, PathRejection>,
) -> Result<Json<MachineSummary>, ApiError> {
    let row = find(&app, key)?;
    if row.assignment().is_none() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "machine {} has no hostname and role to install; list it in [[machines]] of landfall.toml",
                row.mac
            ),
        ));
    }
    app.store.request_reinstall(&row.mac, now())?;
    tracing::info!(mac = %row.mac, from = %row.state, "reinstall requested");
    let detail = app.store.detail(&row.mac)?.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("machine {} vanished", row.mac),
        )
    })?;
    Ok(Json(detail.summary))
}
