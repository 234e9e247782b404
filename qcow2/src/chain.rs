//! Backing chains: the layer below an image (another qcow2 image or a raw file) and the path
//! rules (relative names resolve against the overlay's directory).

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::image::Image;
use crate::storage::Storage;
use crate::{Extent, ExtentKind};

pub(crate) enum Backing {
    Qcow2(Box<Image>),
    Raw {
        st: Arc<dyn Storage>,
        size: u64,
        path: PathBuf,
        format: String,
    },
}

impl Backing {
    pub fn size(&self) -> u64 {
        match self {
            Backing::Qcow2(img) => img.virtual_size(),
            Backing::Raw { size, .. } => *size,
        }
    }

    /// Reads guest bytes of the backing layer; beyond its end everything reads as zeros.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let size = self.size();
        let inside = if offset >= size {
            0
        } else {
            (size - offset).min(buf.len() as u64) as usize
        };
        let (head, tail) = buf.split_at_mut(inside);
        tail.fill(0);
        if head.is_empty() {
            return Ok(());
        }
        match self {
            Backing::Qcow2(img) => img.read_at(offset, head),
            Backing::Raw { st, path, .. } => st.read_at(head, offset).map_err(|e| {
                Error::io(
                    e,
                    format!("reading backing file {} at {offset}", path.display()),
                )
            }),
        }
    }

    /// Block status of `[offset, offset + len)` with this layer at `depth`.
    pub fn status(&self, offset: u64, len: u64, depth: u32, out: &mut Vec<Extent>) -> Result<()> {
        let size = self.size();
        let inside = if offset >= size {
            0
        } else {
            (size - offset).min(len)
        };
        if inside > 0 {
            match self {
                Backing::Qcow2(img) => img.status_into(offset, inside, depth, out)?,
                Backing::Raw { .. } => push_extent(out, offset, inside, ExtentKind::Data, depth),
            }
        }
        if inside < len {
            push_extent(
                out,
                offset + inside,
                len - inside,
                ExtentKind::Unallocated,
                0,
            );
        }
        Ok(())
    }

    pub fn info(&self, out: &mut Vec<crate::ImageInfo>) {
        match self {
            Backing::Qcow2(img) => out.extend(img.info_chain()),
            Backing::Raw {
                st,
                size,
                path,
                format,
            } => {
                let len = st.len().unwrap_or(0);
                out.push(crate::ImageInfo {
                    path: path.clone(),
                    format: format.clone(),
                    virtual_size: *size,
                    cluster_size: 0,
                    backing_file: None,
                    backing_format: None,
                    allocated_bytes: len,
                    file_size: len,
                })
            }
        }
    }

    pub fn format(&self) -> &str {
        match self {
            Backing::Qcow2(_) => "qcow2",
            Backing::Raw { format, .. } => format,
        }
    }
}

/// Appends an extent, merging it with the last one when kind and depth match.
pub(crate) fn push_extent(
    out: &mut Vec<Extent>,
    offset: u64,
    length: u64,
    kind: ExtentKind,
    depth: u32,
) {
    if length == 0 {
        return;
    }
    if let Some(last) = out.last_mut()
        && last.kind == kind
        && last.depth == depth
        && last.offset + last.length == offset
    {
        last.length += length;
        return;
    }
    out.push(Extent {
        offset,
        length,
        kind,
        depth,
    });
}

/// Where a backing name found in the image at `image` points.
pub(crate) fn resolve_backing(image: &Path, name: &str) -> PathBuf {
    let p = Path::new(name);
    if p.is_absolute() {
        return p.to_path_buf();
    }
    match image.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(p),
        _ => p.to_path_buf(),
    }
}

/// Refuses a backing file outside `dir` (both with symlinks resolved): an untrusted image must
/// not make us read files it names elsewhere (`/etc/passwd` as a raw backing file).
pub(crate) fn check_within(backing: &Path, dir: &Path) -> Result<()> {
    let resolve = |p: &Path| {
        p.canonicalize()
            .map_err(|e| Error::io(e, format!("backing file {}", p.display())))
    };
    let (file, dir) = (resolve(backing)?, resolve(dir)?);
    if file.starts_with(&dir) {
        Ok(())
    } else {
        Err(Error::new(
            crate::ErrorKind::Refused,
            format!(
                "backing file {} is outside {}; open its chain only if you trust the image",
                file.display(),
                dir.display()
            ),
        ))
    }
}

/// The name to store for `backing` in a new image at `image`: relative to the image's directory
/// when both live in one tree (they share an ancestor below the root), else absolute.
pub(crate) fn backing_name(image: &Path, backing: &Path) -> Result<String> {
    let dir = match image.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let dir = dir
        .canonicalize()
        .map_err(|e| Error::io(e, format!("resolving directory of {}", image.display())))?;
    let target = backing
        .canonicalize()
        .map_err(|e| Error::io(e, format!("backing file {}", backing.display())))?;
    let dc: Vec<Component> = dir.components().collect();
    let tc: Vec<Component> = target.components().collect();
    let common = dc.iter().zip(&tc).take_while(|(a, b)| a == b).count();
    let name = if common > 1 {
        let mut rel = PathBuf::new();
        for _ in common..dc.len() {
            rel.push("..");
        }
        for c in &tc[common..] {
            rel.push(c.as_os_str());
        }
        rel
    } else {
        target
    };
    name.to_str().map(str::to_owned).ok_or_else(|| {
        Error::invalid_argument(format!("backing path {} is not UTF-8", name.display()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_relative_within_a_tree() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("a/b")).unwrap();
        std::fs::create_dir_all(t.path().join("a/c")).unwrap();
        std::fs::write(t.path().join("a/c/base"), b"x").unwrap();
        std::fs::write(t.path().join("a/b/same"), b"x").unwrap();
        let img = t.path().join("a/b/top");
        assert_eq!(
            backing_name(&img, &t.path().join("a/c/base")).unwrap(),
            "../c/base"
        );
        assert_eq!(
            backing_name(&img, &t.path().join("a/b/same")).unwrap(),
            "same"
        );
        assert_eq!(
            resolve_backing(&img, "../c/base"),
            t.path().join("a/b/../c/base")
        );
        assert_eq!(
            resolve_backing(Path::new("top"), "base"),
            PathBuf::from("base")
        );
        assert_eq!(resolve_backing(&img, "/abs"), PathBuf::from("/abs"));
    }

    #[test]
    fn extents_merge() {
        let mut v = Vec::new();
        push_extent(&mut v, 0, 10, ExtentKind::Data, 1);
        push_extent(&mut v, 10, 5, ExtentKind::Data, 1);
        push_extent(&mut v, 15, 5, ExtentKind::Data, 2);
        push_extent(&mut v, 20, 0, ExtentKind::Zero, 2);
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].length, 15);
    }
}
