//! Test support: an in-memory export with a fake backing file, and a server on a private runtime
//! that the real clients (nbdinfo, nbdcopy, qemu-img, qemu-io, python3-libnbd) talk to.
#![allow(dead_code)]

pub mod certs;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use nbd_server::{Export, ExportError, Extent, Server, ServerConfig};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

pub const BLOCK: u64 = 4096;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    /// Never written here; reads from the backing layer if that has it, else zeroes.
    Unallocated,
    Data,
    /// Allocated, reads as zeroes.
    Zero,
}

struct Inner {
    data: Vec<u8>,
    state: Vec<State>,
    /// Blocks the (fake) backing layer supplies, at depth 2.
    backing: Vec<bool>,
}

/// A sparse in-memory disk with 4 KiB blocks. Blocks can be marked as coming from a backing layer,
/// so `qemu:allocation-depth` has something to report.
pub struct MemExport {
    inner: Mutex<Inner>,
    size: u64,
    read_only: bool,
    pub flushes: AtomicU64,
    pub writes: AtomicU64,
    /// When set, writes never complete (until the server drops them).
    pub stall_writes: std::sync::atomic::AtomicBool,
}

impl MemExport {
    pub fn new(size: u64) -> Self {
        let blocks = size.div_ceil(BLOCK) as usize;
        Self {
            inner: Mutex::new(Inner {
                data: vec![0; size as usize],
                state: vec![State::Unallocated; blocks],
                backing: vec![false; blocks],
            }),
            size,
            read_only: false,
            flushes: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            stall_writes: Default::default(),
        }
    }

    pub fn read_only(mut self) -> Self {
        self.read_only = true;
        self
    }

    /// Fills `[offset, offset+len)` (block-aligned) with `byte` as top-layer data.
    pub fn fill(self, offset: u64, len: u64, byte: u8) -> Self {
        {
            let mut g = self.inner.lock();
            g.data[offset as usize..(offset + len) as usize].fill(byte);
            for b in offset / BLOCK..(offset + len).div_ceil(BLOCK) {
                g.state[b as usize] = State::Data;
            }
        }
        self
    }

    /// Marks `[offset, offset+len)` as supplied by the backing layer, filled with `byte`.
    pub fn backing(self, offset: u64, len: u64, byte: u8) -> Self {
        {
            let mut g = self.inner.lock();
            g.data[offset as usize..(offset + len) as usize].fill(byte);
            for b in offset / BLOCK..(offset + len).div_ceil(BLOCK) {
                g.backing[b as usize] = true;
            }
        }
        self
    }

    pub fn contents(&self) -> Vec<u8> {
        self.inner.lock().data.clone()
    }

    fn check(&self, offset: u64, len: u64) -> Result<(), ExportError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(ExportError::Invalid("out of range".into())),
        }
    }

    fn zero(&self, offset: u64, len: u64, may_trim: bool) {
        let mut g = self.inner.lock();
        g.data[offset as usize..(offset + len) as usize].fill(0);
        let first = offset.div_ceil(BLOCK);
        let last = (offset + len) / BLOCK;
        for b in first..last {
            let backed = g.backing[b as usize];
            g.state[b as usize] = if may_trim && !backed {
                State::Unallocated
            } else {
                State::Zero
            };
        }
        // Partial blocks at the edges stay data.
        for b in [offset / BLOCK, (offset + len).saturating_sub(1) / BLOCK] {
            if b < first || b >= last {
                let i = b as usize;
                if i < g.state.len() && g.state[i] == State::Unallocated {
                    g.state[i] = State::Data;
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl Export for MemExport {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    async fn read(&self, offset: u64, len: u32) -> Result<Bytes, ExportError> {
        self.check(offset, len.into())?;
        let g = self.inner.lock();
        Ok(Bytes::copy_from_slice(
            &g.data[offset as usize..offset as usize + len as usize],
        ))
    }
    async fn write(&self, offset: u64, data: Bytes, _fua: bool) -> Result<(), ExportError> {
        if self.read_only {
            return Err(ExportError::ReadOnly);
        }
        self.check(offset, data.len() as u64)?;
        self.writes.fetch_add(1, Ordering::Relaxed);
        if self.stall_writes.load(Ordering::Relaxed) {
            std::future::pending::<()>().await;
        }
        let mut g = self.inner.lock();
        g.data[offset as usize..offset as usize + data.len()].copy_from_slice(&data);
        for b in offset / BLOCK..(offset + data.len() as u64).div_ceil(BLOCK) {
            g.state[b as usize] = State::Data;
        }
        Ok(())
    }
    async fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        may_trim: bool,
        _fast_only: bool,
        _fua: bool,
    ) -> Result<(), ExportError> {
        self.check(offset, len)?;
        self.zero(offset, len, may_trim);
        Ok(())
    }
    async fn trim(&self, offset: u64, len: u64, _fua: bool) -> Result<(), ExportError> {
        self.check(offset, len)?;
        self.zero(offset, len, true);
        Ok(())
    }
    async fn flush(&self) -> Result<(), ExportError> {
        self.flushes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    async fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>, ExportError> {
        self.check(offset, len)?;
        let g = self.inner.lock();
        let mut out: Vec<Extent> = Vec::new();
        let end = offset + len;
        let mut pos = offset;
        while pos < end {
            let b = (pos / BLOCK) as usize;
            let block_end = ((b as u64 + 1) * BLOCK).min(end);
            let e = match (g.state[b], g.backing[b]) {
                (State::Data, _) => (false, false, 1),
                (State::Zero, _) => (false, true, 1),
                (State::Unallocated, true) => (false, false, 2),
                (State::Unallocated, false) => (true, true, 0),
            };
            let ext = Extent {
                length: block_end - pos,
                hole: e.0,
                zero: e.1,
                depth: e.2,
            };
            match out.last_mut() {
                Some(l) if (l.hole, l.zero, l.depth) == (ext.hole, ext.zero, ext.depth) => {
                    l.length += ext.length
                }
                _ => out.push(ext),
            }
            pos = block_end;
        }
        Ok(out)
    }
}

/// A server with its own runtime, listening on 127.0.0.1:0 and on a unix socket in a temp dir.
pub struct TestServer {
    pub server: Server,
    pub addr: SocketAddr,
    pub socket: PathBuf,
    pub rt: tokio::runtime::Runtime,
    stop: CancellationToken,
    pub dir: tempfile::TempDir,
}

impl TestServer {
    pub fn start(config: ServerConfig) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("nbd.sock");
        let server = Server::new(config);
        let stop = CancellationToken::new();
        let (tcp, unix) = rt.block_on(async {
            (
                tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
                tokio::net::UnixListener::bind(&socket).unwrap(),
            )
        });
        let addr = tcp.local_addr().unwrap();
        let (s1, s2) = (server.clone(), server.clone());
        let (t1, t2) = (stop.clone(), stop.clone());
        rt.spawn(async move { s1.serve_tcp(tcp, t1).await.unwrap() });
        rt.spawn(async move { s2.serve_unix(unix, t2).await.unwrap() });
        Self {
            server,
            addr,
            socket,
            rt,
            stop,
            dir,
        }
    }

    pub fn with_export(config: ServerConfig, name: &str, export: Arc<MemExport>) -> Self {
        let t = Self::start(config);
        t.server.add_export(name, export).unwrap();
        t
    }

    pub fn uri(&self, name: &str) -> String {
        format!("nbd://{}/{}", self.addr, name)
    }

    pub fn unix_uri(&self, name: &str) -> String {
        format!("nbd+unix:///{}?socket={}", name, self.socket.display())
    }

    /// Waits until every connection to `name` has gone (and so its last-connection flush ran).
    pub fn wait_idle(&self, name: &str) {
        let server = self.server.clone();
        let name = name.to_owned();
        self.rt.block_on(async move {
            // Bounded so a connection that never ends fails the test instead of hanging it.
            for _ in 0..12_000 {
                match server.export_stats(&name) {
                    Some(s) if s.connections > 0 => {}
                    _ => return,
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            panic!("connections to {name:?} did not end");
        });
    }

    pub fn shutdown(self) {
        self.stop.cancel();
        let server = self.server.clone();
        self.rt
            .block_on(async move { server.shutdown(Duration::from_secs(5)).await });
    }
}

pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed: {}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

pub fn stdout(cmd: &mut Command) -> String {
    String::from_utf8(run(cmd).stdout).unwrap()
}

/// Runs a python3-libnbd script from `tests/py` with `args`.
pub fn python(script: &str, args: &[&str]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/py")
        .join(script);
    let out = stdout(Command::new("/usr/bin/python3").arg(path).args(args));
    assert!(out.ends_with("ok\n"), "{script} {args:?} said: {out}");
    out
}

/// Starts `edge.py hold URI`: connected and ready once this returns; `release` makes it read.
pub struct Holder {
    child: std::process::Child,
    lines: std::io::BufReader<std::process::ChildStdout>,
}

impl Holder {
    pub fn start(uri: &str) -> Self {
        use std::io::BufRead;
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/edge.py");
        let mut child = Command::new("/usr/bin/python3")
            .arg(path)
            .args(["hold", uri])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        lines.read_line(&mut line).unwrap();
        assert_eq!(line, "ready\n");
        Self { child, lines }
    }

    /// Lets the client issue one more read; returns what it printed ("read ok"/"read failed").
    pub fn release(mut self) -> String {
        use std::io::{BufRead, Write};
        let mut stdin = self.child.stdin.take().unwrap();
        stdin.write_all(b"go\n").unwrap();
        drop(stdin);
        let mut line = String::new();
        self.lines.read_line(&mut line).unwrap();
        assert!(self.child.wait().unwrap().success());
        line.trim().to_owned()
    }
}

/// Deterministic pseudo-random bytes with some all-zero stretches.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len);
    for i in 0..len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // A zero run in every fourth 64 KiB.
        v.push(if (i >> 16) % 4 == 3 { 0 } else { x as u8 });
    }
    v
}
