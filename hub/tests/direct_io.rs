//! Alignment end to end: WRITE payloads arrive in buffers aligned for direct I/O, so 2 MiB writes
//! reach a direct-I/O image without being copied into bounce buffers; READ replies are aligned
//! too, so reads (restores) of a direct image do not bounce either.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use hub::export::ImageExport;
use nbd_server::{Server, ServerConfig, ServerError};
use qcow2::{CreateOptions, DirectStorage, FileStorage, Image, OpenOptions, Storage};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const SIZE: usize = 16 << 20;

/// Metadata (L2 tables, refblocks, 512-byte L1 sectors, the header) may go through bounce
/// buffers; the 16 MiB of data must not.
const METADATA_BOUNCE: u64 = 1 << 20;

/// A new writable image opened with direct I/O, or `None` (and a message) where the filesystem
/// offers none.
fn direct_image(path: &Path) -> Option<(Arc<DirectStorage>, Arc<Image>)> {
    Image::create(
        path,
        &CreateOptions {
            size: SIZE as u64,
            ..Default::default()
        },
    )
    .unwrap();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let st = match DirectStorage::new(FileStorage::new(file)) {
        Ok(st) => Arc::new(st),
        Err((e, _)) => {
            eprintln!("skipping: no direct I/O in {}: {e}", path.display());
            return None;
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
    Some((st, Arc::new(image)))
}

fn pattern() -> Vec<u8> {
    (0..SIZE).map(|i| (i / 4096 % 251) as u8 + 1).collect()
}

/// The image served as export "d" on a Unix socket in `dir`.
struct Serving {
    server: Server,
    uri: String,
    stop: CancellationToken,
    task: JoinHandle<Result<(), ServerError>>,
}

impl Serving {
    fn start(dir: &Path, image: &Arc<Image>) -> Self {
        let server = Server::new(ServerConfig::default());
        server
            .add_export("d", Arc::new(ImageExport::new(image.clone())))
            .unwrap();
        let socket = dir.join("nbd.sock");
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let stop = CancellationToken::new();
        let task = {
            let (server, stop) = (server.clone(), stop.clone());
            tokio::spawn(async move { server.serve_unix(listener, stop).await })
        };
        let uri = format!("nbd+unix:///d?socket={}", socket.display());
        Serving {
            server,
            uri,
            stop,
            task,
        }
    }

    async fn stop(self) {
        self.stop.cancel();
        self.server
            .shutdown(std::time::Duration::from_secs(5))
            .await;
        self.task.await.unwrap().unwrap();
    }
}

/// `nbdcopy --request-size=2097152 --connections=2 FROM TO`, which must succeed.
async fn nbdcopy(from: String, to: String) {
    let out: Output = tokio::task::spawn_blocking(move || {
        Command::new("nbdcopy")
            .args(["--request-size=2097152", "--connections=2"])
            .arg(from)
            .arg(to)
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
}

fn path_str(p: &Path) -> String {
    p.to_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_mib_writes_reach_a_direct_image_without_a_copy() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let Some((st, image)) = direct_image(&dir.path().join("disk.qcow2")) else {
        return;
    };
    let serving = Serving::start(dir.path(), &image);
    let src = dir.path().join("src.raw");
    let data = pattern();
    std::fs::write(&src, &data).unwrap();
    let before = st.bounced_bytes();
    nbdcopy(path_str(&src), serving.uri.clone()).await;
    let bounced = st.bounced_bytes() - before;
    assert!(
        bounced < METADATA_BOUNCE,
        "{bounced} bytes went through bounce buffers"
    );
    serving.stop().await;
    let image = Arc::try_unwrap(image)
        .ok()
        .expect("the server let go of the image");
    let mut back = vec![0u8; SIZE];
    image.read_at(0, &mut back).unwrap();
    assert!(back == data, "image differs from what was written");
    image.close().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_of_a_direct_image_reach_the_client_without_a_copy() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("disk.qcow2");
    let Some((st, image)) = direct_image(&path) else {
        return;
    };
    let data = pattern();
    // Half the image written, half left unallocated (read as zeros without touching the file).
    image.write_at(0, &data[..SIZE / 2]).unwrap();
    image.flush().unwrap();
    let serving = Serving::start(dir.path(), &image);
    let out = dir.path().join("out.raw");
    let before = st.bounced_bytes();
    nbdcopy(serving.uri.clone(), path_str(&out)).await;
    let bounced = st.bounced_bytes() - before;
    assert!(
        bounced < METADATA_BOUNCE,
        "{bounced} bytes read through bounce buffers"
    );
    serving.stop().await;
    let back = std::fs::read(&out).unwrap();
    assert_eq!(back.len(), SIZE);
    assert!(
        back[..SIZE / 2] == data[..SIZE / 2],
        "data read back differs"
    );
    assert!(back[SIZE / 2..].iter().all(|&b| b == 0), "unwritten half");
    Arc::try_unwrap(image)
        .ok()
        .expect("the server let go of the image")
        .close()
        .unwrap();
    let cmp = Command::new("qemu-img")
        .args(["compare", "-f", "qcow2", "-F", "raw"])
        .arg(&path)
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        cmp.status.success(),
        "qemu-img compare: {}{}",
        String::from_utf8_lossy(&cmp.stdout),
        String::from_utf8_lossy(&cmp.stderr)
    );
}
