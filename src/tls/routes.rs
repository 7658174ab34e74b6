//! The public certificate pages: `GET /ca.crt` (the CA, DER), `GET /ca` (fingerprint, QR code of
//! the HTTPS address, how to trust it on Android and iOS) and `GET /ca/qr.svg`. Served on the plain
//! listener too: that is how a phone gets the CA before it can use HTTPS.

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::LanTls;
use crate::app::AppState;
use crate::http::problem::ApiError;

pub fn routes(r: crate::http::routes::Routes) -> crate::http::routes::Routes {
    r.get("/ca.crt", ca_certificate)
        .get("/ca", trust_page)
        .get("/ca/qr.svg", qr_code)
}

fn lan(state: &AppState) -> Result<&LanTls, ApiError> {
    state.lan_tls().ok_or(ApiError::NotFound)
}

async fn ca_certificate(State(state): State<AppState>) -> Result<Response, ApiError> {
    let certs = lan(&state)?.certs();
    let mut response = certs.ca_der.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-x509-ca-cert"),
    );
    headers.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"township-node-ca.crt\""),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(response)
}

/// The host part of the request's `Host` header (already checked against the node's names).
fn request_host(headers: &HeaderMap) -> Option<String> {
    let host = headers.get(header::HOST)?.to_str().ok()?;
    let host = if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        format!("[{}]", rest.split(']').next()?)
    } else {
        host.rsplit_once(':')
            .map_or(host, |(h, port)| {
                if port.chars().all(|c| c.is_ascii_digit()) {
                    h
                } else {
                    host
                }
            })
            .to_string()
    };
    Some(host.to_ascii_lowercase())
}

/// The HTTPS addresses a phone can use: the one it came by first (unless that is this machine
/// itself), then the certificate's other LAN names and addresses.
fn https_addresses(tls: &LanTls, headers: &HeaderMap) -> Vec<String> {
    let Some(port) = tls.port() else {
        return Vec::new();
    };
    let certs = tls.certs();
    let suffix = if port == 443 {
        String::new()
    } else {
        format!(":{port}")
    };
    let local = |h: &str| h == "localhost" || h.starts_with("127.") || h == "[::1]" || h == "::1";
    let mut out = Vec::new();
    if let Some(host) = request_host(headers).filter(|h| !local(h)) {
        out.push(format!("https://{host}{suffix}/"));
    }
    for name in &certs.issued.server_names {
        let shown = match name.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V6(v6)) if v6.segments()[0] & 0xffc0 == 0xfe80 => continue,
            Ok(std::net::IpAddr::V6(_)) => format!("[{name}]"),
            _ => name.clone(),
        };
        if local(&shown) {
            continue;
        }
        let url = format!("https://{shown}{suffix}/");
        if !out.contains(&url) {
            out.push(url);
        }
    }
    out
}

#[derive(Deserialize)]
struct QrQuery {
    #[serde(default)]
    url: Option<String>,
}

async fn qr_code(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<QrQuery>,
) -> Result<Response, ApiError> {
    let tls = lan(&state)?;
    let addresses = https_addresses(tls, &headers);
    // Only an address of this node is drawn: the page is public, and a QR code of any URL a
    // stranger chooses would make the node vouch for it.
    let url = match query.url {
        Some(u) if addresses.contains(&u) => u,
        Some(_) => return Err(ApiError::invalid("url", "not an address of this node")),
        None => addresses.first().cloned().ok_or(ApiError::NotFound)?,
    };
    let code = qrcode::QrCode::new(url.as_bytes())
        .map_err(|e| ApiError::Internal(format!("QR code: {e}")))?;
    let svg = code
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(240, 240)
        .quiet_zone(true)
        .build();
    let mut response = svg.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("image/svg+xml"),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(response)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn trust_page(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let tls = lan(&state)?;
    let certs = tls.certs();
    let addresses = https_addresses(tls, &headers);
    let fingerprint = certs.ca_fingerprint();
    let expires = crate::clock::rfc3339_china(certs.issued.ca_not_after_ms);
    let version = state.ui.version();
    let first = addresses.first().cloned().unwrap_or_default();
    let qr = if first.is_empty() {
        String::from("<p>HTTPS 尚未监听 · HTTPS is not listening.</p>")
    } else {
        format!(
            "<img class=\"qr\" src=\"/ca/qr.svg?url={}\" width=\"240\" height=\"240\" alt=\"{}\">",
            percent_encode(&first),
            escape(&first)
        )
    };
    let links: String = addresses
        .iter()
        .map(|a| format!("<li><a href=\"{0}\">{0}</a></li>", escape(a)))
        .collect();
    let html = format!(
        r#"<!doctype html>
<html lang="zh-CN">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>信任本节点的证书 · Trust this node's certificate</title>
<link rel="stylesheet" href="/assets/{version}/css/app.css">
</head>
<body>
<main id="main" class="trust-page">
<h1>使用加密连接（HTTPS）</h1>
<p>手机需要先信任本节点的证书，才能在局域网里使用定位、拍照和离线功能。只需做一次。</p>
<section class="card">
<h2>1. 下载证书</h2>
<p><a class="button" id="ca-download" href="/ca.crt" download="township-node-ca.crt">下载证书 township-node-ca.crt</a></p>
<p>安装时核对证书指纹（SHA-256），必须与下面一致：</p>
<p><code id="ca-fingerprint" class="fingerprint">{fingerprint}</code></p>
<p class="muted small">证书名称：{name}；有效期至 {expires}。</p>
</section>
<section class="card">
<h2>2. 安装并信任</h2>
<h3>安卓（Android）</h3>
<ol>
<li>点击上面的“下载证书”。</li>
<li>打开 设置 → 安全（或“安全与隐私”）→ 更多安全设置 → 加密与凭据 → 安装证书 → CA 证书。</li>
<li>选择下载的 township-node-ca.crt，确认安装（可能需要输入锁屏密码）。</li>
</ol>
<h3>苹果（iPhone / iPad）</h3>
<ol>
<li>用 Safari 打开本页，点击“下载证书”，允许下载描述文件。</li>
<li>打开 设置 → 已下载描述文件 → 安装。</li>
<li>打开 设置 → 通用 → 关于本机 → 证书信任设置，打开本证书的“完全信任”。</li>
</ol>
</section>
<section class="card">
<h2>3. 打开加密地址</h2>
<p>扫描二维码或点击地址：</p>
{qr}
<ul id="https-addresses">{links}</ul>
</section>
<section class="card" lang="en">
<h2>In English</h2>
<p>Download the certificate above, check that its SHA-256 fingerprint matches, install it as a CA certificate
(Android: Settings → Security → Encryption &amp; credentials → Install a certificate → CA certificate; iOS: open this
page in Safari, download, install it under Settings → Profile Downloaded, then enable full trust under Settings → General →
About → Certificate Trust Settings), then open the HTTPS address. The certificate is only valid for this node's local
names and private addresses.</p>
</section>
</main>
</body>
</html>
"#,
        name = escape(&certs.issued.ca_common_name),
    );
    let mut response = (StatusCode::OK, html).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(response)
}
