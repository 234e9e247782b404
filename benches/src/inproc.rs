//! An in-process hub in a directory, for the benches that measure the hub itself
//! (`protection_scale`, `discovery_scale`): NBD on 127.0.0.1:0, the API as a `Router` to call
//! with `tower::ServiceExt::oneshot`.

use std::net::SocketAddr;
use std::path::Path;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use hub::{Config, Hub};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

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

impl InProcessHub {
    /// One request as the operator (loopback, with the token); the status and the JSON body
    /// (`Null` when it is not JSON).
    pub async fn call(
        &self,
        method: Method,
        uri: &str,
        body: Option<&Value>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", "application/json")
            .body(Body::from(body.map(Value::to_string).unwrap_or_default()))
            .expect("request");
        let peer: SocketAddr = "127.0.0.1:40000".parse().expect("address");
        req.extensions_mut().insert(ConnectInfo(peer));
        let resp = self.app.clone().oneshot(req).await.expect("infallible");
        let status = resp.status();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, value)
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.hub.shutdown().await;
    }
}
