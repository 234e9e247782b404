//! Alignment end to end: WRITE payloads arrive in buffers aligned for direct I/O, so 2 MiB writes
//! reach a direct-I/O image without being copied into bounce buffers.

use std::process::Command;
use std::sync::Arc;

use hub::export::ImageExport;
use nbd_server::{Server, ServerConfig};
use qcow2::{CreateOptions, DirectStorage, FileStorage, Image, OpenOptions, Storage};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_mib_writes_reach_a_direct_image_without_a_copy() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("disk.qcow2");
    const SIZE: usize = 16 << 20;
    Image::create(
        &path,
        &CreateOptions {
            size: SIZE as u64,
            ..Default::default()
        },
    )
    .unwrap();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let st = match DirectStorage::new(FileStorage::new(file)) {
        Ok(st) => Arc::new(st),
        Err((e, _)) => {
            eprintln!("skipping: no direct I/O in {}: {e}", dir.path().display());
            return;
        }
    };
    let image = Image::open_storage(
        st.clone() as Arc<dyn Storage>,
        &OpenOptions {
            writable: true,
            ..Default::default()
        },
    )
    .unwrap();
    let image = Arc::new(image);
    let server = Server::new(ServerConfig::default());
    server
        .add_export("d", Arc::new(ImageExport::new(image.clone())))
        .unwrap();
    let socket = dir.path().join("nbd.sock");
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    let stop = CancellationToken::new();
    let serving = {
        let (server, stop) = (server.clone(), stop.clone());
        tokio::spawn(async move { server.serve_unix(listener, stop).await })
    };
    let src = dir.path().join("src.raw");
    let data: Vec<u8> = (0..SIZE).map(|i| (i / 4096 % 251) as u8 + 1).collect();
    std::fs::write(&src, &data).unwrap();
    let before = st.bounced_bytes();
    let uri = format!("nbd+unix:///d?socket={}", socket.display());
    let out = tokio::task::spawn_blocking(move || {
        Command::new("nbdcopy")
            .args(["--request-size=2097152", "--connections=2"])
            .arg(&src)
            .arg(&uri)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "nbdcopy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bounced = st.bounced_bytes() - before;
    // Metadata (L2 tables, refblocks, 512-byte L1 sectors) may go through bounce buffers; the
    // 16 MiB of data must not.
    assert!(
        bounced < 1 << 20,
        "{bounced} bytes went through bounce buffers"
    );
    stop.cancel();
    server.shutdown(std::time::Duration::from_secs(5)).await;
    serving.await.unwrap().unwrap();
    drop(server);
    let image = Arc::try_unwrap(image)
        .ok()
        .expect("the server let go of the image");
    let mut back = vec![0u8; SIZE];
    image.read_at(0, &mut back).unwrap();
    assert!(back == data, "image differs from what was written");
    image.close().unwrap();
}
