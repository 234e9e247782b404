//! A real S3 server for the tests: moto_server (PyPI `moto[server]`, which `.ci/run` installs) on
//! a loopback port, spoken to with curl (path-style, signed with curl's SigV4; moto accepts any
//! credentials by default, so the hub's requests and these reach the same buckets).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{ChildGuard, run_ok};

pub struct Moto {
    _guard: ChildGuard,
    pub endpoint: String,
}

/// moto_server from `MOTO_SERVER`, else from PATH. `None` (with a message) when it is missing
/// outside CI; under `CI=true` a missing server fails the test.
pub fn moto_server() -> Option<PathBuf> {
    let candidate = std::env::var_os("MOTO_SERVER")
        .map(PathBuf::from)
        .or_else(|| {
            let out = Command::new("sh")
                .args(["-c", "command -v moto_server"])
                .output()
                .ok()?;
            let path = String::from_utf8(out.stdout).ok()?.trim().to_owned();
            (!path.is_empty()).then(|| PathBuf::from(path))
        });
    match candidate {
        Some(p) if p.exists() => Some(p),
        _ if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("moto_server is missing (pip install 'moto[server]'; .ci/run does)")
        }
        _ => {
            eprintln!("skipped: moto_server not installed (pip install 'moto[server]')");
            None
        }
    }
}

impl Moto {
    pub fn start() -> Option<Moto> {
        let bin = moto_server()?;
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let moto = Moto {
            _guard: ChildGuard(Some(child)),
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        for _ in 0..300 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(moto);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("moto_server did not listen on {port}");
    }

    fn curl(&self, args: &[&str]) -> Vec<u8> {
        // Signed: moto refuses anonymous reads (403) and stores anonymous bodies oddly.
        let user = format!("{KEY_ID}:{SECRET}");
        run_ok(
            Command::new("curl")
                .args([
                    "-sSf",
                    "--aws-sigv4",
                    "aws:amz:us-east-1:s3",
                    "--user",
                    &user,
                ])
                .args(args),
        )
        .stdout
    }

    pub fn create_bucket(&self, name: &str, object_lock: bool) {
        let url = format!("{}/{name}", self.endpoint);
        if object_lock {
            self.curl(&[
                "-X",
                "PUT",
                "-H",
                "x-amz-bucket-object-lock-enabled: true",
                &url,
            ]);
        } else {
            self.curl(&["-X", "PUT", &url]);
        }
    }

    /// Every key in the bucket (one listing page: tests keep under 1,000).
    pub fn keys(&self, bucket: &str) -> Vec<String> {
        let xml = self.curl(&[&format!("{}/{bucket}?list-type=2", self.endpoint)]);
        let xml = String::from_utf8(xml).unwrap();
        xml.split("<Key>")
            .skip(1)
            .map(|s| s.split("</Key>").next().unwrap().to_owned())
            .collect()
    }

    /// The object's Object Lock headers as a HEAD answers them (`x-amz-object-lock-mode`,
    /// `x-amz-object-lock-retain-until-date`; moto answers `GET ?retention` with the object).
    pub fn retention(&self, bucket: &str, key: &str) -> String {
        let head = self.curl(&["-I", &format!("{}/{bucket}/{key}", self.endpoint)]);
        String::from_utf8_lossy(&head)
            .lines()
            .filter(|l| l.to_ascii_lowercase().starts_with("x-amz-object-lock"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn get(&self, bucket: &str, key: &str) -> Vec<u8> {
        self.curl(&[&format!("{}/{bucket}/{key}", self.endpoint)])
    }

    pub fn put(&self, bucket: &str, key: &str, body: &std::path::Path) {
        let url = format!("{}/{bucket}/{key}", self.endpoint);
        // Not curl's default form type: moto's web layer would parse the body as a form.
        self.curl(&[
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/octet-stream",
            "--data-binary",
            &format!("@{}", body.display()),
            &url,
        ]);
    }

    /// The repository body the hub takes for `bucket` here.
    pub fn repository(&self, id: &str, bucket: &str, prefix: &str) -> serde_json::Value {
        serde_json::json!({
            "id": id,
            "name": format!("offsite {bucket}"),
            "type": "s3",
            "config": {
                "endpoint": self.endpoint,
                "region": "us-east-1",
                "bucket": bucket,
                "prefix": prefix,
                "access_key_id": KEY_ID,
                "secret_access_key": SECRET,
                "path_style": true,
            },
        })
    }
}

pub const KEY_ID: &str = "AKIATESTKEY";

/// The secret access key the tests give; it must never appear in an answer or a file.
pub const SECRET: &str = "s3cr3t-Never-Shown-9f2c";
