//! Creating, opening and closing the images of backups and restores, off the async threads.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use qcow2::{CreateOptions, Image, OpenOptions};

use crate::error::{Error, Result};

pub(crate) async fn create_image(
    path: PathBuf,
    size: u64,
    backing: Option<PathBuf>,
    storage_io: qcow2::StorageIo,
) -> Result<()> {
    let opts = CreateOptions {
        size,
        storage_io,
        backing_format: backing.as_ref().map(|_| "qcow2".to_owned()),
        backing_file: backing,
        ..CreateOptions::default()
    };
    blocking(move || {
        Image::create(&path, &opts).map_err(Error::image(&path))?;
        // Backups are copies of whole VM disks: for the hub's user only, whatever the umask.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(Error::io(
            format!("making {} private (mode 0600)", path.display()),
        ))
    })
    .await
}

/// Open an image the hub created itself, with its backing chain.
pub(crate) async fn open_image(
    path: PathBuf,
    writable: bool,
    storage_io: qcow2::StorageIo,
) -> Result<Arc<Image>> {
    let opts = OpenOptions {
        writable,
        storage_io,
        open_backing: true,
        ..OpenOptions::default()
    };
    blocking(move || {
        Image::open(&path, &opts)
            .map(Arc::new)
            .map_err(Error::image(&path))
    })
    .await
}

/// Close the image if nothing else holds it; otherwise flush it, and the last holder releases it.
pub(crate) async fn close_image(image: Arc<Image>) -> Result<()> {
    blocking(move || match Arc::try_unwrap(image) {
        Ok(image) => image.close().map_err(Error::image("(closing)")),
        Err(shared) => shared.flush().map_err(Error::image("(flushing)")),
    })
    .await
}

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("blocking task: {e}")))?
}
