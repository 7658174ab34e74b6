//! `/api/v1/map` (what the UI's maps need to know) and `/api/v1/map/tiles/{z}/{x}/{y}` (tiles from
//! the configured MBTiles file).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use crate::app::AppState;
use crate::http::problem::ApiError;
use crate::http::routes::Routes;

pub fn routes(r: Routes) -> Routes {
    r.get("/api/v1/map", map)
        .get("/api/v1/map/tiles/{z}/{x}/{y}", tile)
}

async fn map(State(state): State<AppState>) -> Json<serde_json::Value> {
    let config = &state.config.map;
    let tiles = if config.mbtiles.is_some() {
        Some(serde_json::json!({
            "url": "/api/v1/map/tiles/{z}/{x}/{y}",
            "min_zoom": 0, "max_zoom": config.max_zoom, "attribution": config.attribution,
        }))
    } else {
        config.tile_url.as_ref().map(|url| {
            serde_json::json!({
                "url": url, "min_zoom": 0, "max_zoom": config.max_zoom,
                "attribution": config.attribution,
            })
        })
    };
    Json(serde_json::json!({
        "tiles": tiles,
        "center": config.center,
        "zoom": config.zoom,
        "outlines": super::outlines(&state.config.areas),
    }))
}

/// `y` may carry an image extension (`12.png`), as tile clients often ask.
async fn tile(
    State(state): State<AppState>,
    Path((z, x, y)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    let Some(path) = state.config.map.mbtiles.clone() else {
        return Err(ApiError::NotFound);
    };
    let y = y.split_once('.').map_or(y.as_str(), |(n, _)| n).to_string();
    let (Ok(z), Ok(x), Ok(y)) = (z.parse::<u8>(), x.parse::<u32>(), y.parse::<u32>()) else {
        return Err(ApiError::NotFound);
    };
    let found = tokio::task::spawn_blocking(move || {
        let format = super::tile_format(&path)?;
        Ok::<_, super::TileError>(super::tile(&path, z, x, y)?.map(|bytes| (format, bytes)))
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?
    .map_err(|e| {
        tracing::warn!(error = %e, "map tile not served");
        ApiError::Unavailable("the map tiles cannot be read".into())
    })?;
    let Some((format, bytes)) = found else {
        return Err(ApiError::NotFound);
    };
    let mut response = bytes.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(format));
    // Behind sign-in, so private; tiles change only when the operator replaces the file.
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=86400"),
    );
    Ok(response)
}
