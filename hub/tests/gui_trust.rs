//! The way in for the Sendense GUI's server, which sends no token: off by default (loopback is
//! trusted on the SNA's routes only), on with `gui_trust_loopback` / `--trust-loopback-gui` for
//! loopback peers on every route, and never widened by a header.

mod common;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use common::hub::*;
use tower::ServiceExt;

/// A tokenless GET from `peer`, with an `X-Forwarded-For` claiming loopback.
async fn get_from(h: &TestHub, peer: &str, uri: &str) -> StatusCode {
    let mut req = Request::get(uri)
        .header("x-forwarded-for", "127.0.0.1")
        .header("x-real-ip", "127.0.0.1")
        .header("forwarded", "for=127.0.0.1")
        .body(Body::empty())
        .unwrap();
    let peer: std::net::SocketAddr = peer.parse().unwrap();
    req.extensions_mut().insert(ConnectInfo(peer));
    h.app.clone().oneshot(req).await.unwrap().status()
}

const GUI_ROUTES: [&str; 4] = [
    "/api/v1/repositories",
    "/api/v1/vm-contexts",
    "/api/v1/vmware-credentials",
    "/api/v1/discovery/ungrouped-vms",
];

/// With the defaults a tokenless loopback caller gets 401 on the GUI's routes, as a remote one
/// does whatever its headers say.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defaults_trust_loopback_on_the_sna_routes_only() {
    let dir = tempfile::tempdir().unwrap();
    let h = TestHub::start(test_config(dir.path().join("data"))).await;
    for uri in GUI_ROUTES {
        assert_eq!(
            get_from(&h, "127.0.0.1:40000", uri).await,
            StatusCode::UNAUTHORIZED,
            "{uri}"
        );
        assert_eq!(
            get_from(&h, "[::1]:40000", uri).await,
            StatusCode::UNAUTHORIZED,
            "{uri}"
        );
        assert_eq!(
            get_from(&h, "192.0.2.7:40000", uri).await,
            StatusCode::UNAUTHORIZED,
            "{uri}"
        );
    }
    // The SNA's routes still take loopback: not 401 (404 for an unknown backup).
    let sna = get_from(
        &h,
        "127.0.0.1:40000",
        "/api/v1/backups/changeid?vm_name=x&disk_id=0",
    )
    .await;
    assert_ne!(sna, StatusCode::UNAUTHORIZED);
    h.stop().await;
}

/// `gui_trust_loopback = true`: tokenless loopback callers (IPv4, IPv6, IPv4-mapped) are served
/// on every route; a remote caller is still 401 whatever it forwards in headers, and served with
/// the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_loopback_gui_serves_loopback_and_nobody_else() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path().join("data"));
    config.gui_trust_loopback = true;
    let h = TestHub::start(config).await;
    for uri in GUI_ROUTES {
        for peer in ["127.0.0.1:40000", "[::1]:40000", "[::ffff:127.0.0.1]:40000"] {
            assert_eq!(
                get_from(&h, peer, uri).await,
                StatusCode::OK,
                "{peer} {uri}"
            );
        }
        for peer in [
            "192.0.2.7:40000",
            "[2001:db8::1]:40000",
            "[::ffff:10.0.0.1]:40000",
        ] {
            assert_eq!(
                get_from(&h, peer, uri).await,
                StatusCode::UNAUTHORIZED,
                "{peer} {uri}"
            );
        }
        let (s, _) = h.get(uri).await;
        assert_eq!(s, StatusCode::OK, "token {uri}");
    }
    h.stop().await;
}

/// The config key and the flag both turn it on; neither given leaves it off.
#[test]
fn the_key_and_the_flag_turn_it_on() {
    use ::hub::config::{Config, FileConfig, Overrides};
    let off = Config::resolve(FileConfig::default(), Overrides::default()).unwrap();
    assert!(!off.gui_trust_loopback);
    let file: FileConfig = toml::from_str("gui_trust_loopback = true").unwrap();
    assert!(
        Config::resolve(file, Overrides::default())
            .unwrap()
            .gui_trust_loopback
    );
    let flag = Overrides {
        trust_loopback_gui: true,
        ..Overrides::default()
    };
    assert!(
        Config::resolve(FileConfig::default(), flag)
            .unwrap()
            .gui_trust_loopback
    );
}
