//! Who may call: the bearer token on operator routes; on the SNA client's routes, the token or a
//! loopback peer (the client reaches us through the SSH tunnel whose end is on this host). With
//! `gui_trust_loopback` on, a loopback peer needs no token on any route (the Sendense GUI's
//! server proxies from this host without one). The peer is the socket's, never a header's
//! (`X-Forwarded-For` and the like widen nothing).

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;

use super::error::ApiError;
use crate::state::Hub;

fn bearer_ok(hub: &Hub, parts: &Parts) -> bool {
    parts
        .headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|token| hub.token_matches(token.trim()))
}

pub(super) async fn require_token(
    State(hub): State<Hub>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let trusted = hub.config.gui_trust_loopback && from_loopback(&parts);
    if !trusted && !bearer_ok(&hub, &parts) {
        return Err(ApiError::Unauthorized);
    }
    Ok(next.run(Request::from_parts(parts, body)).await)
}

fn from_loopback(parts: &Parts) -> bool {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .is_some_and(|ConnectInfo(peer)| is_loopback(peer.ip()))
}

pub(super) async fn require_token_or_loopback(
    State(hub): State<Hub>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    if !from_loopback(&parts) && !bearer_ok(&hub, &parts) {
        return Err(ApiError::Unauthorized);
    }
    Ok(next.run(Request::from_parts(parts, body)).await)
}

/// Loopback, also as an IPv4-mapped IPv6 address (an API listening on `[::]`).
fn is_loopback(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => v4.is_loopback(),
        std::net::IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(v6.is_loopback(), |v4| v4.is_loopback()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn loopback_peers() {
        for ip in ["127.0.0.1", "127.3.2.1", "::1", "::ffff:127.0.0.1"] {
            assert!(super::is_loopback(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["10.0.0.1", "::ffff:10.0.0.1", "2001:db8::1"] {
            assert!(!super::is_loopback(ip.parse().unwrap()), "{ip}");
        }
    }
}
