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

/// An HTTP proxy of the test's own in front of an S3 server that answers every `every`-th
/// request `503 SlowDown` (as S3 does under load) and passes the others through, one request per
/// connection. Counts what it refused.
pub struct SlowDown {
    pub endpoint: String,
    pub refused: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl SlowDown {
    pub fn start(upstream: &str, every: usize) -> SlowDown {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let upstream = upstream.trim_start_matches("http://").to_owned();
        let refused = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(AtomicUsize::new(0));
        let counter = refused.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (upstream, seen, counter) = (upstream.clone(), seen.clone(), counter.clone());
                std::thread::spawn(move || {
                    let n = seen.fetch_add(1, Ordering::SeqCst) + 1;
                    let slow = n % every == 0;
                    if slow {
                        counter.fetch_add(1, Ordering::SeqCst);
                    }
                    let _ = relay(conn, &upstream, slow);
                });
            }
        });
        SlowDown { endpoint, refused }
    }
}

/// The head of an HTTP message (up to the blank line), and what came after it.
fn read_head(r: &mut impl std::io::Read) -> std::io::Result<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(at + 4);
            return Ok((String::from_utf8_lossy(&buf).into_owned(), rest));
        }
        let n = r.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The head with its `Connection` header replaced by `close`.
fn closing(head: &str) -> String {
    let mut lines: Vec<&str> = head
        .trim_end()
        .lines()
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
        .collect();
    lines.push("Connection: close");
    format!("{}\r\n\r\n", lines.join("\r\n"))
}

fn relay(mut client: std::net::TcpStream, upstream: &str, slow: bool) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let (head, mut body) = read_head(&mut client)?;
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while body.len() < length {
        let mut chunk = vec![0u8; (length - body.len()).min(1 << 20)];
        let n = client.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        body.extend_from_slice(&chunk[..n]);
    }
    if slow {
        let xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code>\
                   <Message>Please reduce your request rate.</Message></Error>";
        write!(
            client,
            "HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{xml}",
            xml.len()
        )?;
        return Ok(());
    }
    let mut up = std::net::TcpStream::connect(upstream)?;
    up.write_all(closing(&head).as_bytes())?;
    up.write_all(&body)?;
    let (rhead, rest) = read_head(&mut up)?;
    client.write_all(closing(&rhead).as_bytes())?;
    client.write_all(&rest)?;
    std::io::copy(&mut up, &mut client)?;
    Ok(())
}
