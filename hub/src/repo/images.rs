//! Creating, opening and closing the images of backups and restores, off the async threads.

use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
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

/// Open an image of the repository at `repository`, with its backing chain. Images are
/// untrusted even here (`catalog rebuild` files whatever a directory holds, and anyone with
/// write access to the repository can swap a file), so the image and every file of its chain
/// must be regular files inside the repository, none a symlink: otherwise a restore would serve,
/// and an incremental copy on write, the bytes of any file on the host the hub can read.
pub(crate) async fn open_image(
    path: PathBuf,
    repository: PathBuf,
    writable: bool,
    storage_io: qcow2::StorageIo,
) -> Result<Arc<Image>> {
    // qcow2's `backing_dir` confines the chain to the repository's whole tree (a prefix check of
    // canonical paths), which is what a chain spanning `<repository>/<vm>/<backup id>/`
    // directories needs; `no_symlinks` refuses a symlink as any file of it (`O_NOFOLLOW`). The
    // image itself is the hub's to check: `backing_dir` covers the files it names.
    let opts = OpenOptions {
        writable,
        storage_io,
        open_backing: true,
        backing_dir: Some(repository.clone()),
        no_symlinks: true,
        ..OpenOptions::default()
    };
    blocking(move || {
        let refused = |cause: String| {
            Error::Conflict(format!(
                "refusing image {}: the files of a backup's chain must be regular files inside \
                 the repository {}, none a symlink and none outside the repository ({cause})",
                path.display(),
                repository.display()
            ))
        };
        check_inside(&path, &repository).map_err(refused)?;
        Image::open(&path, &opts).map(Arc::new).map_err(|e| {
            if e.kind() == qcow2::ErrorKind::Refused {
                refused(e.message)
            } else {
                Error::image(&path)(e)
            }
        })
    })
    .await
}

/// `path` names a file below `repository` through plain directories: no `..`, no symlink on
/// the way (the last component is left to `O_NOFOLLOW`). The catalog spells every image path
/// from its repository's, so anything else is a path the hub did not make.
fn check_inside(path: &Path, repository: &Path) -> std::result::Result<(), String> {
    let below = path
        .strip_prefix(repository)
        .map_err(|_| "not below the repository's path".to_owned())?;
    let mut at = repository.to_path_buf();
    let mut parts = below.components().peekable();
    while let Some(part) = parts.next() {
        let Component::Normal(name) = part else {
            return Err(format!(
                "{} in the path",
                part.as_os_str().to_string_lossy()
            ));
        };
        at.push(name);
        if parts.peek().is_none() {
            break;
        }
        let meta = std::fs::symlink_metadata(&at).map_err(|e| format!("{}: {e}", at.display()))?;
        if !meta.is_dir() {
            return Err(format!("{} is not a directory (a symlink?)", at.display()));
        }
    }
    Ok(())
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
