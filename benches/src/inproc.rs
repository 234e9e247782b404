//! An in-process hub in a directory, for the benches that measure the hub itself
//! (`protection_scale`, `discovery_scale`): NBD on 127.0.0.1:0, the API as a `Router` to call
//! with `tower::ServiceExt::oneshot`.

use std::path::Path;

use axum::Router;
use hub::{Config, Hub};
use tokio_util::sync::CancellationToken;

pub struct InProcessHub {
    pub hub: Hub,
    pub app: Router,
    /// Cancel it, then `hub.shutdown()`, to stop.
    pub shutdown: CancellationToken,
    /// The API token the hub made.
    pub token: String,
}

/// A hub on `data_dir` at its default settings, changed by `configure`.
pub async fn start_hub(data_dir: &Path, configure: impl FnOnce(&mut Config)) -> InProcessHub {
    let mut config = Config {
        data_dir: data_dir.to_owned(),
        ..Config::default()
    };
    configure(&mut config);
    let nbd = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("NBD listener");
    let shutdown = CancellationToken::new();
    let hub = hub::start(config, nbd, shutdown.clone())
        .await
        .expect("hub starts");
    let token = std::fs::read_to_string(data_dir.join("api-token"))
        .expect("api-token")
        .trim()
        .to_owned();
    InProcessHub {
        app: hub::api::app(hub.clone()),
        hub,
        shutdown,
        token,
    }
}
