//! Symlink resolution inside the guest, shared by every backend.
//!
//! Walks a path one component at a time, the way the kernel does under a chroot: a symlink
//! met on the way is replaced by its target's components (an absolute target restarts at the
//! guest's root, never the host's), `..` pops but not above the root, and more than
//! [`MAX_SYMLINKS`] hops is a loop. Backends then only see paths whose parents are real
//! directories.

use super::{Entry, EntryKind, FileReader, Filesystem};
use crate::error::{Error, Result};
use crate::path::{self, Component};

/// Linux's limit (`MAXSYMLINKS`).
pub const MAX_SYMLINKS: u32 = 40;

/// What a backend provides: lookups on already-resolved paths.
pub(crate) trait Tree {
    fn kind(&self) -> &'static str;
    /// The entry at `parts`, not following a final symlink. The parents are directories.
    fn lstat(&self, parts: &[String]) -> Result<Entry>;
    /// The entries of the directory at `parts`, without `.` and `..`.
    /// At most `limit` entries; the flag says there were more.
    fn list_dir(&self, parts: &[String], limit: usize) -> Result<(Vec<Entry>, bool)>;
    fn info(&self) -> super::VolumeInfo;
    /// The regular file at `parts`, described by `entry`.
    fn open_file(&self, parts: &[String], entry: &Entry) -> Result<Box<dyn FileReader + '_>>;
}

enum Step {
    Parent,
    Name(String),
}

fn steps(p: &str) -> Result<Vec<Step>> {
    Ok(path::components(p)?
        .into_iter()
        .map(|c| match c {
            Component::Parent => Step::Parent,
            Component::Name(n) => Step::Name(n.to_owned()),
        })
        .collect())
}

/// Resolves `p` to the components of a real entry and that entry. `follow_last` decides
/// whether a final symlink is followed (list, open) or returned (stat).
pub(crate) fn resolve<T: Tree + ?Sized>(
    tree: &T,
    p: &str,
    follow_last: bool,
) -> Result<(Vec<String>, Entry)> {
    let mut pending = steps(p)?;
    pending.reverse(); // a stack: the next step is at the end
    let mut done: Vec<String> = Vec::new();
    let mut current = tree.lstat(&done)?;
    let mut hops = 0u32;
    while let Some(step) = pending.pop() {
        let name = match step {
            Step::Parent => {
                done.pop();
                current = tree.lstat(&done)?;
                continue;
            }
            Step::Name(n) => n,
        };
        if current.kind != EntryKind::Directory {
            return Err(Error::NotADirectory(path::join(&done)));
        }
        done.push(name);
        let entry = tree.lstat(&done)?;
        if entry.kind == EntryKind::Symlink && (follow_last || !pending.is_empty()) {
            hops += 1;
            if hops > MAX_SYMLINKS {
                return Err(Error::SymlinkLoop(p.to_owned()));
            }
            let target = entry.symlink_target.ok_or_else(|| {
                Error::Corrupt(format!("symlink {} without a target", path::join(&done)))
            })?;
            done.pop();
            if target.starts_with('/') {
                done.clear();
            }
            let mut more = steps(&target)?;
            more.reverse();
            pending.extend(more);
            current = tree.lstat(&done)?;
            continue;
        }
        current = entry;
    }
    Ok((done, current))
}

/// A name no sound filesystem stores (a `/` or a NUL inside it, or `.`/`..` as an entry the
/// backend did not skip) is shown with U+FFFD in their place: as it stands it would name some
/// other path, inside the guest or, in an archive someone extracts, outside the folder it lands in.
fn sanitize(parent: &[String], e: &mut Entry) {
    if e.name.contains(['/', '\0']) || e.name == "." || e.name == ".." || e.name.is_empty() {
        let clean = match e.name.replace(['/', '\0'], "\u{FFFD}") {
            n if n.is_empty() || n == "." || n == ".." => format!("{n}\u{FFFD}"),
            n => n,
        };
        let mut parts = parent.to_vec();
        parts.push(clean.clone());
        e.name = clean;
        e.path = path::join(&parts);
    }
}

/// Runs a call into a filesystem crate, turning a panic in it into `Corrupt`. The crates are
/// meant not to panic on any input, but one that computes with the image's numbers unchecked
/// (fatfs takes 2 from a cluster number, which a damaged FAT can make 0 or 1) panics on
/// overflow in a debug build and reads from a wrapped offset in a release one, where our
/// bounds checks refuse it. Either way the caller gets an error, not a dead thread.
pub(crate) fn guarded<R>(kind: &str, what: &str, f: impl FnOnce() -> Result<R>) -> Result<R> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|_| {
        Err(Error::Corrupt(format!(
            "{kind}: the filesystem's structures make no sense ({what})"
        )))
    })
}

/// A file reader whose calls are [`guarded`].
struct Guarded<'a> {
    inner: Box<dyn FileReader + 'a>,
    kind: &'static str,
    path: String,
}

impl FileReader for Guarded<'_> {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read(&mut self, buf: &mut [u8]) -> Result<usize> {
        let (kind, path) = (self.kind, &self.path);
        let inner = &mut self.inner;
        guarded(kind, path, || inner.read(buf))
    }
    fn seek(&mut self, pos: u64) -> Result<()> {
        let (kind, path) = (self.kind, &self.path);
        let inner = &mut self.inner;
        guarded(kind, path, || inner.seek(pos))
    }
}

impl<T: Tree> Filesystem for T {
    fn kind(&self) -> &'static str {
        Tree::kind(self)
    }

    fn list_limited(&self, p: &str, limit: usize) -> Result<super::Listing> {
        guarded(Tree::kind(self), p, || list_limited(self, p, limit))
    }

    fn info(&self) -> super::VolumeInfo {
        guarded(Tree::kind(self), "volume info", || Ok(Tree::info(self))).unwrap_or_default()
    }

    fn stat(&self, p: &str) -> Result<Entry> {
        guarded(Tree::kind(self), p, || Ok(resolve(self, p, false)?.1))
    }

    fn open(&self, p: &str) -> Result<Box<dyn FileReader + '_>> {
        let kind = Tree::kind(self);
        let inner = guarded(kind, p, || open(self, p))?;
        Ok(Box::new(Guarded {
            inner,
            kind,
            path: p.to_owned(),
        }))
    }
}

fn list_limited<T: Tree + ?Sized>(tree: &T, p: &str, limit: usize) -> Result<super::Listing> {
    let (parts, entry) = resolve(tree, p, true)?;
    if entry.kind != EntryKind::Directory {
        return Err(Error::NotADirectory(entry.path));
    }
    let (mut entries, truncated) = tree.list_dir(&parts, limit)?;
    for e in &mut entries {
        sanitize(&parts, e);
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(super::Listing { entries, truncated })
}

fn open<'a, T: Tree + ?Sized>(tree: &'a T, p: &str) -> Result<Box<dyn FileReader + 'a>> {
    let (parts, entry) = resolve(tree, p, true)?;
    match entry.kind {
        EntryKind::File => tree.open_file(&parts, &entry),
        EntryKind::Directory => Err(Error::IsADirectory(entry.path)),
        _ => Err(Error::Unsupported(format!(
            "{} is not a regular file",
            entry.path
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// An in-memory tree: path -> (kind, link target).
    struct Fake(BTreeMap<String, (EntryKind, Option<String>)>);

    impl Fake {
        fn new(items: &[(&str, EntryKind, Option<&str>)]) -> Self {
            let mut m = BTreeMap::new();
            m.insert("/".to_owned(), (EntryKind::Directory, None));
            for (p, k, t) in items {
                m.insert((*p).to_owned(), (*k, t.map(str::to_owned)));
            }
            Fake(m)
        }
    }

    impl Tree for Fake {
        fn kind(&self) -> &'static str {
            "fake"
        }
        fn lstat(&self, parts: &[String]) -> Result<Entry> {
            let p = path::join(parts);
            let (kind, target) = self.0.get(&p).cloned().ok_or(Error::NotFound(p.clone()))?;
            Ok(Entry {
                name: parts.last().cloned().unwrap_or_default(),
                path: p,
                kind,
                size: 0,
                mode: 0o644,
                modified: None,
                symlink_target: target,
            })
        }
        fn info(&self) -> crate::fs::VolumeInfo {
            crate::fs::VolumeInfo::default()
        }
        /// The entries whose parent is `parts`, names as stored (the hostile ones too).
        fn list_dir(&self, parts: &[String], _limit: usize) -> Result<(Vec<Entry>, bool)> {
            let dir = path::join(parts);
            let mut out = Vec::new();
            for (p, (kind, target)) in &self.0 {
                let Some(name) = p
                    .strip_prefix(dir.as_str())
                    .map(|n| n.trim_start_matches('/'))
                else {
                    continue;
                };
                let inside = !name.is_empty() && (dir == "/" || p.as_bytes()[dir.len()] == b'/');
                if inside && (!name.contains('/') || name.starts_with("evil")) {
                    out.push(Entry {
                        name: name.to_owned(),
                        path: p.clone(),
                        kind: *kind,
                        size: 0,
                        mode: 0o644,
                        modified: None,
                        symlink_target: target.clone(),
                    });
                }
            }
            Ok((out, false))
        }
        fn open_file(&self, _: &[String], _: &Entry) -> Result<Box<dyn FileReader + '_>> {
            Err(Error::Unsupported("fake".into()))
        }
    }

    fn fake() -> Fake {
        use EntryKind::*;
        Fake::new(&[
            ("/etc", Directory, None),
            ("/etc/passwd", File, None),
            ("/abs", Symlink, Some("/etc/passwd")),
            ("/up", Symlink, Some("../../../../etc")),
            ("/dir", Directory, None),
            ("/dir/rel", Symlink, Some("../etc/passwd")),
            ("/loop1", Symlink, Some("/loop2")),
            ("/loop2", Symlink, Some("loop1")),
            ("/file", File, None),
        ])
    }

    fn resolved(p: &str, follow: bool) -> Result<String> {
        resolve(&fake(), p, follow).map(|(parts, _)| path::join(&parts))
    }

    #[test]
    fn links_resolve_inside_the_guest() {
        assert_eq!(resolved("/abs", true).unwrap(), "/etc/passwd");
        assert_eq!(resolved("/abs", false).unwrap(), "/abs");
        assert_eq!(resolved("/dir/rel", true).unwrap(), "/etc/passwd");
        assert_eq!(resolved("/up/passwd", true).unwrap(), "/etc/passwd");
        assert_eq!(
            resolved("/../../../etc/./passwd", true).unwrap(),
            "/etc/passwd"
        );
    }

    #[test]
    fn hostile_names_cannot_name_another_path() {
        let mut t = fake();
        // As a damaged directory would return them: one name holding slashes, one a NUL.
        t.0.insert("/dir/evil/../../x".into(), (EntryKind::File, None));
        t.0.insert("/dir/a\0b".into(), (EntryKind::File, None));
        let names: Vec<(String, String)> = t
            .list("/dir")
            .unwrap()
            .into_iter()
            .map(|e| (e.name, e.path))
            .collect();
        assert_eq!(
            names,
            [
                ("a\u{FFFD}b".to_owned(), "/dir/a\u{FFFD}b".to_owned()),
                (
                    "evil\u{FFFD}..\u{FFFD}..\u{FFFD}x".to_owned(),
                    "/dir/evil\u{FFFD}..\u{FFFD}..\u{FFFD}x".to_owned()
                ),
                ("rel".to_owned(), "/dir/rel".to_owned()),
            ]
        );
    }

    #[test]
    fn loops_and_bad_parents_are_errors() {
        assert!(matches!(
            resolved("/loop1", true),
            Err(Error::SymlinkLoop(_))
        ));
        assert!(resolved("/loop1", false).is_ok());
        assert!(matches!(
            resolved("/file/x", true),
            Err(Error::NotADirectory(_))
        ));
        assert!(matches!(resolved("/nope/x", true), Err(Error::NotFound(_))));
    }
}
