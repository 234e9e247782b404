//! An in-process hub on 127.0.0.1:0 in a temp dir, driven through `tower::ServiceExt::oneshot`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use hub::{Config, Hub};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::run_ok;

pub struct TestHub {
    pub data_dir: PathBuf,
    pub hub: Hub,
    pub app: Router,
    pub shutdown: CancellationToken,
    pub token: String,
}

/// Who is calling: the operator with the token, the SNA through the tunnel (loopback, no token),
/// or someone remote without a token.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    Operator,
    Sna,
    Remote,
    WrongToken,
}

pub fn test_config(data_dir: PathBuf) -> Config {
    Config {
        data_dir,
        monitor_interval: Duration::from_millis(50),
        drain_grace: Duration::from_secs(5),
        shutdown_grace: Duration::from_secs(5),
        ..Config::default()
    }
}

/// The hub as a user runs it: every setting at its default but the data dir.
pub fn default_config(data_dir: PathBuf) -> Config {
    Config {
        data_dir,
        ..Config::default()
    }
}

impl TestHub {
    pub async fn start(config: Config) -> TestHub {
        let data_dir = config.data_dir.clone();
        let nbd = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let shutdown = CancellationToken::new();
        let hub = hub::start(config, nbd, shutdown.clone())
            .await
            .expect("hub starts");
        let token = std::fs::read_to_string(data_dir.join("api-token"))
            .unwrap()
            .trim()
            .to_owned();
        let app = hub::api::app(hub.clone());
        TestHub {
            data_dir,
            hub,
            app,
            shutdown,
            token,
        }
    }

    /// Serve the API on a real socket (127.0.0.1:0) until the hub stops, for clients in other
    /// processes; returns its `http://` base URL.
    pub async fn serve_api(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = self.app.clone();
        let stop = self.shutdown.clone();
        tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
            .unwrap();
        });
        format!("http://{addr}")
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.hub.shutdown().await;
    }

    pub async fn call(
        &self,
        method: Method,
        uri: &str,
        body: Option<&str>,
        caller: Caller,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(uri);
        match caller {
            Caller::Operator => req = req.header("authorization", format!("Bearer {}", self.token)),
            Caller::WrongToken => req = req.header("authorization", "Bearer not-the-token"),
            Caller::Sna | Caller::Remote => {}
        }
        let peer: SocketAddr = if caller == Caller::Remote {
            "192.0.2.7:40000".parse().unwrap()
        } else {
            "127.0.0.1:40000".parse().unwrap()
        };
        let mut req = req.body(Body::from(body.unwrap_or("").to_owned())).unwrap();
        req.extensions_mut().insert(ConnectInfo(peer));
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        (status, value)
    }

    pub async fn post(&self, uri: &str, body: &Value) -> (StatusCode, Value) {
        self.call(Method::POST, uri, Some(&body.to_string()), Caller::Operator)
            .await
    }

    pub async fn get(&self, uri: &str) -> (StatusCode, Value) {
        self.call(Method::GET, uri, None, Caller::Operator).await
    }

    /// `complete` as the SNA sends it (loopback, no token).
    pub async fn complete(&self, id: &str, body: &str) -> (StatusCode, Value) {
        let uri = format!("/api/v1/backups/{id}/complete");
        self.call(Method::POST, &uri, Some(body), Caller::Sna).await
    }

    pub async fn delete(&self, id: &str) -> (StatusCode, Value) {
        let uri = format!("/api/v1/backups/{id}");
        self.call(Method::DELETE, &uri, None, Caller::Operator)
            .await
    }

    /// Poll a backup until its status is `want` (the lifecycle runs in the background).
    pub async fn wait_status(&self, id: &str, want: &str) -> Value {
        let mut last = Value::Null;
        for _ in 0..600 {
            let (status, body) = self.get(&format!("/api/v1/backups/{id}")).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            if body["status"] == want {
                return body;
            }
            last = body;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("backup {id} never became {want}: {last:#}");
    }
}

/// Check the `{"error", "details", "code", "timestamp"}` shape and the status.
pub fn assert_error(resp: &(StatusCode, Value), status: StatusCode, code: &str) {
    assert_eq!(resp.0, status, "{}", resp.1);
    assert_eq!(resp.1["code"], code, "{}", resp.1);
    assert!(
        resp.1["error"].as_str().is_some_and(|m| !m.is_empty()),
        "{}",
        resp.1
    );
    assert!(resp.1["details"].is_string(), "{}", resp.1);
    let timestamp = resp.1["timestamp"].as_str().unwrap_or_default();
    assert!(
        time::OffsetDateTime::parse(timestamp, &time::format_description::well_known::Rfc3339)
            .is_ok(),
        "{}",
        resp.1
    );
}

/// Run a blocking command (a real NBD client) off the runtime's threads.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

pub const MIB: u64 = 1 << 20;

pub fn disk(disk_id: u32, key: i64, capacity: u64) -> Value {
    json!({ "disk_id": disk_id, "vmware_disk_key": key, "capacity_bytes": capacity })
}

pub fn full(vm: &str, disks: Vec<Value>) -> Value {
    json!({ "vm_name": vm, "backup_type": "full", "disks": disks })
}

pub async fn nbdcopy(args: Vec<String>) {
    blocking(move || {
        run_ok(Command::new("nbdcopy").args(&args));
    })
    .await
}

/// Create a one-disk full backup, write `src` into it, complete it; returns the backup body.
pub async fn completed_full(h: &TestHub, vm: &str, src: &std::path::Path, capacity: u64) -> Value {
    let req = full(vm, vec![disk(0, 2000, capacity)]);
    fill_and_complete(h, &req, src, "c0").await
}

/// An incremental of `vm` on its latest completed backup, `src` written into its one disk,
/// completed with change id `change_id`; returns the backup body.
pub async fn completed_incremental(
    h: &TestHub,
    vm: &str,
    src: &std::path::Path,
    capacity: u64,
    change_id: &str,
) -> Value {
    let req =
        json!({"vm_name": vm, "backup_type": "incremental", "disks": [disk(0, 2000, capacity)]});
    fill_and_complete(h, &req, src, change_id).await
}

/// Create the one-disk backup `req`, write `src` into it with nbdcopy, complete it with
/// `change_id`, wait until it is completed; returns the backup body.
async fn fill_and_complete(
    h: &TestHub,
    req: &Value,
    src: &std::path::Path,
    change_id: &str,
) -> Value {
    let (status, body) = h.post("/api/v1/backups", req).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let uri = body["disk_results"][0]["nbd_uri"]
        .as_str()
        .unwrap()
        .to_owned();
    nbdcopy(vec![src.display().to_string(), uri]).await;
    let id = body["backup_id"].as_str().unwrap().to_owned();
    let done = json!({ "change_id": change_id }).to_string();
    let r = h.complete(&id, &done).await;
    assert_eq!(r.0, StatusCode::OK, "{}", r.1);
    h.wait_status(&id, "completed").await
}

/// The ids of the backups `GET /api/v1/backups` lists, newest first.
pub async fn backup_ids(h: &TestHub) -> Vec<String> {
    let (s, list) = h.get("/api/v1/backups").await;
    assert_eq!(s, StatusCode::OK, "{list}");
    list["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["backup_id"].as_str().unwrap().to_owned())
        .collect()
}
