//! The stand-in SNA (`tests/sna_standin.py`) as a child process: started with a JSON config the
//! test may rewrite between backups, and the log of what the hub asked it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::ChildGuard;

pub struct StandIn {
    _child: ChildGuard,
    config_path: PathBuf,
    pub config: Value,
}

impl StandIn {
    pub fn start(dir: &Path, config: Value) -> StandIn {
        let config_path = dir.join("sna.json");
        std::fs::write(&config_path, config.to_string()).unwrap();
        let port_file = dir.join("sna.port");
        let child = Command::new("/usr/bin/python3")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sna_standin.py"))
            .arg("--config")
            .arg(&config_path)
            .arg("--port-file")
            .arg(&port_file)
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("/usr/bin/python3 runs the stand-in SNA");
        let mut child = ChildGuard(Some(child));
        for _ in 0..200 {
            if port_file.exists() {
                break;
            }
            if let Some(status) = child.child().try_wait().unwrap() {
                panic!("stand-in SNA exited: {status}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(port_file.exists(), "stand-in SNA did not start");
        StandIn {
            _child: child,
            config_path,
            config,
        }
    }

    pub fn port(dir: &Path) -> u16 {
        std::fs::read_to_string(dir.join("sna.port"))
            .unwrap()
            .parse()
            .unwrap()
    }

    pub fn set(&mut self, key: &str, value: Value) {
        self.config[key] = value;
        std::fs::write(&self.config_path, self.config.to_string()).unwrap();
    }

    pub fn lines(&self, key: &str) -> Vec<Value> {
        let path = self.config[key].as_str().unwrap();
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    pub fn assert_no_errors(&self) {
        let errors = self.lines("errors");
        assert!(errors.is_empty(), "stand-in SNA: {errors:#?}");
    }

    /// The last `POST /api/v1/backup/start` body (password replaced by `password_ok`).
    pub fn last_start(&self) -> Value {
        self.lines("log")
            .into_iter()
            .rev()
            .find(|r| r["path"] == "/api/v1/backup/start")
            .expect("backup/start was called")["body"]
            .clone()
    }
}
