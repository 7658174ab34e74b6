//! Maps for the report form and the incident list: where the base map comes from (`[map]`: an
//! MBTiles file the node serves itself, since villages have no internet, or a tile URL), the
//! start view, and the area outlines from `[[areas]]`. With no base map the UI draws a plain map:
//! the outlines and the points.
//!
//! MBTiles is SQLite; the file is opened read-only per request (tiles are immutable files, so no
//! connection is kept that would pin an old inode after the operator replaces the file).

pub mod routes;

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, OptionalExtension};
use serde::{Deserialize, Serialize};

/// `[map]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MapConfig {
    /// An MBTiles file of raster tiles (png, jpg or webp) the node serves at
    /// /api/v1/map/tiles/{z}/{x}/{y}. Takes precedence over `tile_url`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mbtiles: Option<PathBuf>,
    /// A tile server's URL template with {z}, {x} and {y}, for hubs that can reach one
    /// (https:// only; its origin is allowed in the UI's Content-Security-Policy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tile_url: Option<String>,
    /// Credit shown on the map for the tiles.
    pub attribution: String,
    /// Where the map opens when there are no points or outlines to fit: [lat, lon].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub center: Option<[f64; 2]>,
    /// The zoom it opens at.
    pub zoom: u8,
    /// The highest zoom the tiles have.
    pub max_zoom: u8,
}

impl Default for MapConfig {
    fn default() -> Self {
        MapConfig {
            mbtiles: None,
            tile_url: None,
            attribution: String::new(),
            center: None,
            zoom: 13,
            max_zoom: 18,
        }
    }
}

impl MapConfig {
    /// Checks what types cannot; the error names the key.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if let Some(url) = &self.tile_url {
            let ok = url.starts_with("https://")
                && ["{z}", "{x}", "{y}"].iter().all(|p| url.contains(p))
                && !url
                    .chars()
                    .any(|c| c.is_whitespace() || c == '"' || c == '\'' || c == ';')
                && tile_origin(url).is_some();
            if !ok {
                return Err((
                    "tile_url",
                    "an https:// URL with {z}, {x} and {y}, e.g. https://tiles.example.cn/{z}/{x}/{y}.png".into(),
                ));
            }
        }
        if let Some([lat, lon]) = self.center
            && !((-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon))
        {
            return Err(("center", "[lat, lon] within -90..90 and -180..180".into()));
        }
        if self.zoom > 22 || self.max_zoom > 22 || self.zoom > self.max_zoom {
            return Err((
                "zoom",
                "zoom and max_zoom are 0 to 22, zoom at most max_zoom".into(),
            ));
        }
        if self.attribution.chars().count() > 200 {
            return Err(("attribution", "at most 200 characters".into()));
        }
        Ok(())
    }

    /// The tile server's origin the browser must be allowed to load images from, if any.
    pub fn external_origin(&self) -> Option<String> {
        if self.mbtiles.is_some() {
            return None;
        }
        self.tile_url.as_deref().and_then(tile_origin)
    }
}

/// `https://host[:port]` of a tile URL template.
fn tile_origin(url: &str) -> Option<String> {
    let rest = url.strip_prefix("https://")?;
    let host = rest.split('/').next()?;
    let valid = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    valid.then(|| format!("https://{host}"))
}

#[derive(Debug, thiserror::Error)]
pub enum TileError {
    #[error("the MBTiles file cannot be read: {0}")]
    Unreadable(#[from] rusqlite::Error),
    #[error("the MBTiles file holds {0} tiles; only png, jpg and webp raster tiles are served")]
    NotRaster(String),
}

/// The image type of an MBTiles file's tiles, from its metadata (png when it does not say).
pub fn tile_format(path: &Path) -> Result<&'static str, TileError> {
    let conn = open(path)?;
    let format: Option<String> = conn
        .query_row(
            "SELECT value FROM metadata WHERE name = 'format'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    match format.as_deref().unwrap_or("png") {
        "png" => Ok("image/png"),
        "jpg" | "jpeg" => Ok("image/jpeg"),
        "webp" => Ok("image/webp"),
        other => Err(TileError::NotRaster(other.chars().take(20).collect())),
    }
}

fn open(path: &Path) -> Result<Connection, rusqlite::Error> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_millis(500))?;
    Ok(conn)
}

/// One tile in XYZ addressing (MBTiles stores rows bottom-up, TMS); None when absent or out of range.
pub fn tile(path: &Path, z: u8, x: u32, y: u32) -> Result<Option<Vec<u8>>, TileError> {
    if z > 22 {
        return Ok(None);
    }
    let side = 1u32 << z;
    if x >= side || y >= side {
        return Ok(None);
    }
    let row = side - 1 - y;
    let conn = open(path)?;
    Ok(conn
        .query_row(
            "SELECT tile_data FROM tiles WHERE zoom_level = ?1 AND tile_column = ?2 AND tile_row = ?3",
            rusqlite::params![z, x, row],
            |r| r.get::<_, Vec<u8>>(0),
        )
        .optional()?)
}

/// The configured area shapes as GeoJSON polygons ([lon, lat] order), named.
pub fn outlines(areas: &[crate::config::AreaConfig]) -> serde_json::Value {
    let features: Vec<serde_json::Value> = areas
        .iter()
        .filter_map(|a| {
            let ring: Option<Vec<[f64; 2]>> = a
                .polygon
                .as_deref()?
                .split_whitespace()
                .map(|pair| {
                    let (lat, lon) = pair.split_once(',')?;
                    Some([lon.trim().parse().ok()?, lat.trim().parse().ok()?])
                })
                .collect();
            Some(serde_json::json!({
                "type": "Feature",
                "properties": {"code": a.code, "name": a.name},
                "geometry": {"type": "Polygon", "coordinates": [ring?]},
            }))
        })
        .collect();
    serde_json::json!({"type": "FeatureCollection", "features": features})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tile_urls_are_checked_and_their_origin_found() {
        let mut c = MapConfig {
            tile_url: Some("https://tiles.example.cn:8443/{z}/{x}/{y}.png".into()),
            ..MapConfig::default()
        };
        assert!(c.check().is_ok());
        assert_eq!(
            c.external_origin().as_deref(),
            Some("https://tiles.example.cn:8443")
        );
        for bad in [
            "http://tiles.example.cn/{z}/{x}/{y}.png",
            "https://tiles.example.cn/{z}/{x}.png",
            "https://tiles.example.cn/{z}/{x}/{y}.png; script-src *",
            "https:///{z}/{x}/{y}",
        ] {
            c.tile_url = Some(bad.into());
            assert!(c.check().is_err(), "{bad}");
        }
    }

    #[test]
    fn tiles_are_read_bottom_up_and_out_of_range_is_absent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.mbtiles");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE metadata (name TEXT, value TEXT);
             CREATE TABLE tiles (zoom_level INTEGER, tile_column INTEGER, tile_row INTEGER, tile_data BLOB);
             INSERT INTO metadata VALUES ('format', 'jpg');
             INSERT INTO tiles VALUES (1, 0, 1, x'01'), (1, 0, 0, x'02');",
        )
        .unwrap();
        drop(conn);
        assert_eq!(tile_format(&path).unwrap(), "image/jpeg");
        assert_eq!(
            tile(&path, 1, 0, 0).unwrap(),
            Some(vec![1]),
            "XYZ y=0 is the top row"
        );
        assert_eq!(tile(&path, 1, 0, 1).unwrap(), Some(vec![2]));
        assert_eq!(tile(&path, 1, 2, 0).unwrap(), None);
        assert_eq!(tile(&path, 30, 0, 0).unwrap(), None);
    }

    #[test]
    fn outlines_are_geojson_in_lon_lat_order() {
        let areas = vec![crate::config::AreaConfig {
            code: "330723001001".into(),
            name: "王宅村".into(),
            polygon: Some("28.90,119.80 28.91,119.82 28.89,119.83 28.90,119.80".into()),
            circle: None,
        }];
        let v = outlines(&areas);
        assert_eq!(
            v["features"][0]["geometry"]["coordinates"][0][0],
            serde_json::json!([119.80, 28.90])
        );
        assert_eq!(v["features"][0]["properties"]["name"], "王宅村");
    }
}
