//! The benchmark client against a real server (nbdkit's memory plugin), read back with nbdcopy.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use benches::client::{WriteJob, write_file};
use benches::sys;
use rand::RngCore as _;

struct Nbdkit(u32);

impl Drop for Nbdkit {
    fn drop(&mut self) {
        let _ = sys::terminate(self.0);
        let _ = sys::reap_within(self.0, Duration::from_secs(10));
    }
}

fn nbdkit_memory(socket: &Path, size: u64) -> Nbdkit {
    let pid = sys::spawn(
        Command::new("nbdkit")
            .args(["-f", "-U"])
            .arg(socket)
            .arg("memory")
            .arg(format!("size={size}"))
            .stdin(Stdio::null())
            // The readiness probe connects and hangs up; nbdkit logs that.
            .stderr(Stdio::null()),
    )
    .expect("nbdkit (apt-get install nbdkit)");
    let server = Nbdkit(pid);
    let deadline = Instant::now() + Duration::from_secs(10);
    while UnixStream::connect(socket).is_err() {
        assert!(sys::try_reap(pid).unwrap().is_none(), "nbdkit exited");
        assert!(Instant::now() < deadline, "nbdkit did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    server
}

#[test]
fn pipelined_writes_over_several_connections_land_intact() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("s");
    let source = dir.path().join("src.raw");
    // Not a multiple of the request size: the last request is short.
    let size = (3 << 20) + 4096;
    let mut data = vec![0u8; size];
    rand::rng().fill_bytes(&mut data);
    std::fs::write(&source, &data).unwrap();
    let _server = nbdkit_memory(&socket, 4 << 20);

    let mut job = WriteJob::new(socket.clone(), source.clone(), size as u64);
    job.connections = 3;
    job.request_size = 64 << 10;
    job.in_flight = 8;
    let report = write_file(&job).unwrap();
    assert_eq!(report.requests, 49);
    assert_eq!(report.bytes, size as u64);

    let back = dir.path().join("back.raw");
    let st = Command::new("nbdcopy")
        .arg(format!("nbd+unix:///?socket={}", socket.display()))
        .arg(&back)
        .status()
        .unwrap();
    assert!(st.success());
    let back = std::fs::read(&back).unwrap();
    assert_eq!(back.len(), 4 << 20);
    assert!(back[..size] == data[..], "data read back differs");
    assert!(back[size..].iter().all(|&b| b == 0));
}

#[test]
fn export_smaller_than_the_job_is_refused_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("s");
    let source = dir.path().join("src.raw");
    std::fs::write(&source, vec![1u8; 2 << 20]).unwrap();
    let _server = nbdkit_memory(&socket, 1 << 20);
    let err = write_file(&WriteJob::new(socket, source, 2 << 20)).unwrap_err();
    assert!(
        err.to_string().contains("export has 1048576 bytes"),
        "{err}"
    );
}
