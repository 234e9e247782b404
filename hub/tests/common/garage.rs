//! A Garage cluster for the tests (crates.io `garage` 2.5, which `.ci/run` installs with `cargo
//! install --locked`): three nodes on loopback, replication factor 3, one zone each, a key and a
//! bucket the key owns. Nodes can be killed and started again.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{ChildGuard, run_ok};

pub struct Node {
    guard: Option<ChildGuard>,
    config: PathBuf,
    pub rpc_port: u16,
    pub s3_port: u16,
}

pub struct Cluster {
    bin: PathBuf,
    pub nodes: Vec<Node>,
    pub key_id: String,
    pub secret: String,
    pub bucket: String,
}

/// The garage binary from `GARAGE`, PATH or `~/.cargo/bin`; `None` (with a message) when it is
/// missing outside CI; under `CI=true` a missing binary fails the test.
pub fn garage_bin() -> Option<PathBuf> {
    let from_path = || {
        let out = Command::new("sh")
            .args(["-c", "command -v garage"])
            .output()
            .ok()?;
        let path = String::from_utf8(out.stdout).ok()?.trim().to_owned();
        (!path.is_empty()).then(|| PathBuf::from(path))
    };
    let cargo_bin = || {
        let home = std::env::var_os("HOME")?;
        Some(Path::new(&home).join(".cargo/bin/garage")).filter(|p| p.exists())
    };
    let found = std::env::var_os("GARAGE")
        .map(PathBuf::from)
        .or_else(from_path)
        .or_else(cargo_bin);
    match found {
        Some(p) if p.exists() => Some(p),
        _ if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("garage is missing (cargo install garage --locked; .ci/run does)")
        }
        _ => {
            eprintln!("skipped: garage not installed (cargo install garage --locked)");
            None
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_listening(port: u16) {
    for _ in 0..300 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("garage did not listen on {port}");
}

/// `Name:   value` in garage's CLI output.
fn field(text: &str, name: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|| panic!("no {name:?} in {text}"))
}

impl Cluster {
    pub fn start(dir: &Path) -> Option<Cluster> {
        let bin = garage_bin()?;
        let secret: String = (0..32)
            .map(|i| format!("{:02x}", (i * 37 + 11) % 256))
            .collect();
        let mut nodes = Vec::new();
        for i in 0..3 {
            let root = dir.join(format!("garage{i}"));
            std::fs::create_dir_all(&root).unwrap();
            let (rpc_port, s3_port) = (free_port(), free_port());
            let config = root.join("garage.toml");
            std::fs::write(
                &config,
                format!(
                    "metadata_dir = \"{root}/meta\"\ndata_dir = \"{root}/data\"\n\
                     db_engine = \"sqlite\"\nreplication_factor = 3\n\
                     rpc_bind_addr = \"127.0.0.1:{rpc_port}\"\n\
                     rpc_public_addr = \"127.0.0.1:{rpc_port}\"\nrpc_secret = \"{secret}\"\n\n\
                     [s3_api]\ns3_region = \"garage\"\napi_bind_addr = \"127.0.0.1:{s3_port}\"\n\
                     root_domain = \".s3.garage.localhost\"\n",
                    root = root.display()
                ),
            )
            .unwrap();
            let mut node = Node {
                guard: None,
                config,
                rpc_port,
                s3_port,
            };
            start_node(&bin, &mut node);
            nodes.push(node);
        }
        let mut cluster = Cluster {
            bin,
            nodes,
            key_id: String::new(),
            secret: String::new(),
            bucket: "offsite".into(),
        };
        cluster.form();
        Some(cluster)
    }

    fn garage(&self, args: &[&str]) -> String {
        let out = run_ok(
            Command::new(&self.bin)
                .arg("-c")
                .arg(&self.nodes[0].config)
                .args(args),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn node_id(&self, i: usize) -> String {
        let out = run_ok(
            Command::new(&self.bin)
                .arg("-c")
                .arg(&self.nodes[i].config)
                .args(["node", "id", "-q"]),
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// The nodes connected, one per zone in the layout, then a key and a bucket.
    fn form(&mut self) {
        let ids: Vec<String> = (0..3).map(|i| self.node_id(i)).collect();
        for id in &ids[1..] {
            self.garage(&["node", "connect", id]);
        }
        for (i, id) in ids.iter().enumerate() {
            let short = &id.split('@').next().unwrap()[..16];
            self.garage(&[
                "layout",
                "assign",
                "-z",
                &format!("dc{i}"),
                "-c",
                "1G",
                short,
            ]);
        }
        self.garage(&["layout", "apply", "--version", "1"]);
        let key = self.garage(&["key", "create", "hub-key"]);
        self.key_id = field(&key, "Key ID:");
        self.secret = field(&key, "Secret key:");
        self.garage(&["bucket", "create", &self.bucket]);
        self.garage(&[
            "bucket",
            "allow",
            "--read",
            "--write",
            "--owner",
            &self.bucket,
            "--key",
            "hub-key",
        ]);
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.nodes[0].s3_port)
    }

    /// The repository body the hub takes for the cluster's bucket, reached through node 0.
    pub fn repository(&self, id: &str, secret: &str) -> serde_json::Value {
        serde_json::json!({
            "id": id,
            "type": "s3",
            "config": {
                "endpoint": self.endpoint(),
                "region": "garage",
                "bucket": self.bucket,
                "access_key_id": self.key_id,
                "secret_access_key": secret,
                "path_style": true,
            },
        })
    }

    /// SIGKILL to node `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut g) = self.nodes[i].guard.take() {
            let child = g.child();
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    pub fn restart(&mut self, i: usize) {
        let bin = self.bin.clone();
        start_node(&bin, &mut self.nodes[i]);
    }
}

fn start_node(bin: &Path, node: &mut Node) {
    let child = Command::new(bin)
        .arg("-c")
        .arg(&node.config)
        .arg("server")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    node.guard = Some(ChildGuard(Some(child)));
    wait_listening(node.rpc_port);
    wait_listening(node.s3_port);
}
