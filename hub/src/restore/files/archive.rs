//! Directories as archives, written into a download's [`Sink`]: zip (streamed, ZIP64 past
//! 4 GiB, deflate level 1) or tar.gz (GNU long names), empty directories and symlinks kept, and
//! every entry that could not be read whole named in `RESTORE-ERRORS.txt` at the archive's root
//! and in the log.

use std::io::{self, Read, Write};

use tokio::sync::oneshot;

use super::fs_error;
use super::mount::Mount;
use super::stream::{Format, Head, Sink, base_name};
use super::volumes::{self, Volume};
use crate::error::Result;

/// A walk stops descending this deep, and after this many entries, and says so in the report.
const MAX_DEPTH: usize = 256;
const MAX_ENTRIES: u64 = 10_000_000;

/// What an archive holds: every readable volume (the disk's root), or one directory.
pub(super) enum Target<'a> {
    Disk,
    Dir(&'a Volume, String),
}

pub(super) fn target<'a>(m: &'a Mount, path: &str) -> Result<Target<'a>> {
    match volumes::split(path).map_err(fs_error)? {
        None => Ok(Target::Disk),
        Some((volume, inner)) => Ok(Target::Dir(m.volume(&volume)?, inner)),
    }
}

pub(super) fn send_archive(
    m: &Mount,
    t: Target<'_>,
    format: Format,
    head_tx: oneshot::Sender<Result<Head>>,
    sink: &mut Sink,
) -> std::result::Result<(), String> {
    // Everything that can be refused is checked before the head: a wrong path is a 4xx, not
    // an archive with one error in it.
    let (top, parts): (String, Vec<(&Volume, String, String)>) = match &t {
        Target::Disk => (
            format!("disk{}", m.disk_id),
            m.volumes
                .iter()
                .filter(|v| v.readable)
                .map(|v| (v, "/".to_owned(), v.name.clone()))
                .collect(),
        ),
        Target::Dir(v, inner) => {
            let checked = v.open(m.disk()).and_then(|fs| fs.list_limited(inner, 1));
            if let Err(e) = checked {
                let _ = head_tx.send(Err(fs_error(e)));
                return Ok(());
            }
            let name = match base_name(inner, "") {
                n if n.is_empty() || n == ".." => v.name.clone(),
                n => n,
            };
            (name.clone(), vec![(v, inner.clone(), name)])
        }
    };
    if head_tx
        .send(Ok(Head::Archive {
            name: top.clone(),
            format,
        }))
        .is_err()
    {
        return Ok(());
    }
    let mut out = match format {
        Format::Zip => Archive::zip(&mut *sink),
        Format::TarGz => Archive::tar(&mut *sink),
    };
    let mut report = Report::default();
    let single = matches!(t, Target::Dir(..));
    if !single {
        out.dir(&top, None).map_err(|e| e.to_string())?;
    }
    for (v, inner, name) in parts {
        let at = if single {
            name
        } else {
            format!("{top}/{name}")
        };
        walk(m, v, &inner, &at, &mut out, &mut report).map_err(|e| e.to_string())?;
    }
    if !report.lines.is_empty() {
        for line in &report.lines {
            tracing::warn!(mount_id = %m.id, "{line}");
        }
        let text = format!(
            "These entries could not be restored whole from backup {} disk {}:\n{}\n",
            m.backup_id,
            m.disk_id,
            report.lines.join("\n")
        );
        let root = if single { top.clone() } else { top };
        out.note(&format!("{root}/RESTORE-ERRORS.txt"), text.as_bytes())
            .map_err(|e| e.to_string())?;
    }
    out.finish().map_err(|e| e.to_string())
}

#[derive(Default)]
struct Report {
    lines: Vec<String>,
    entries: u64,
}

/// Writes the tree below `inner` of volume `v` at archive path `at` (directories first, each
/// with its entries in name order).
fn walk(
    m: &Mount,
    v: &Volume,
    inner: &str,
    at: &str,
    out: &mut Archive<'_>,
    report: &mut Report,
) -> io::Result<()> {
    let fs = match v.open(m.disk()) {
        Ok(fs) => fs,
        Err(e) => {
            report.lines.push(format!("{at}/: {e}"));
            return Ok(());
        }
    };
    let top = fs.stat(inner).ok();
    out.dir(at, top.as_ref())?;
    let mut todo = vec![(inner.to_owned(), at.to_owned(), 0usize)];
    while let Some((dir, dir_at, depth)) = todo.pop() {
        let listing = match fs.list(&dir) {
            Ok(l) => l,
            Err(e) => {
                report.lines.push(format!("{dir_at}/: {e}"));
                continue;
            }
        };
        let mut below = Vec::new();
        for e in listing {
            report.entries += 1;
            if report.entries > MAX_ENTRIES {
                report.lines.push(format!(
                    "{dir_at}: the archive stopped after {MAX_ENTRIES} entries"
                ));
                return Ok(());
            }
            let name = format!("{dir_at}/{}", e.name);
            match e.kind {
                guestfs::EntryKind::Directory => {
                    out.dir(&name, Some(&e))?;
                    if depth + 1 < MAX_DEPTH {
                        below.push((e.path.clone(), name, depth + 1));
                    } else {
                        report
                            .lines
                            .push(format!("{name}/: deeper than {MAX_DEPTH} levels, left out"));
                    }
                }
                guestfs::EntryKind::Symlink => {
                    let target = e.symlink_target.clone().unwrap_or_default();
                    out.symlink(&name, &e, &target)?;
                }
                guestfs::EntryKind::File => match fs.open(&e.path) {
                    Ok(mut r) => {
                        if let Some(err) = out.file(&name, &e, &mut *r)? {
                            report.lines.push(format!("{name}: {err}"));
                        }
                    }
                    Err(err) => report.lines.push(format!("{name}: {err}")),
                },
                guestfs::EntryKind::Other => report
                    .lines
                    .push(format!("{name}: a device, FIFO or socket, not restored")),
            }
        }
        todo.extend(below.into_iter().rev());
    }
    Ok(())
}

/// A guest file as `Read` of exactly `size` bytes: a read error is kept, and the rest of the
/// size is zeros, so a tar entry keeps the length its header declares.
struct Exactly<'a> {
    file: &'a mut dyn guestfs::FileReader,
    left: u64,
    error: Option<String>,
}

impl Read for Exactly<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = (self.left.min(buf.len() as u64)) as usize;
        if want == 0 {
            return Ok(0);
        }
        let n = if self.error.is_some() {
            0
        } else {
            match self.file.read(&mut buf[..want]) {
                Ok(0) => {
                    self.error = Some(format!("ended {} bytes before its size", self.left));
                    0
                }
                Ok(n) => n,
                Err(e) => {
                    self.error = Some(format!("{e} (the rest is zeros)"));
                    0
                }
            }
        };
        let n = if n == 0 {
            buf[..want].fill(0);
            want
        } else {
            n
        };
        self.left -= n as u64;
        Ok(n)
    }
}

enum Archive<'a> {
    Zip(zip::ZipWriter<zip::write::StreamWriter<&'a mut Sink>>),
    Tar(tar::Builder<flate2::write::GzEncoder<&'a mut Sink>>),
}

fn zip_time(secs: Option<i64>) -> zip::DateTime {
    secs.and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| {
            zip::DateTime::from_date_and_time(
                u16::try_from(t.year()).ok()?,
                t.month() as u8,
                t.day(),
                t.hour(),
                t.minute(),
                t.second(),
            )
            .ok()
        })
        .unwrap_or_default()
}

fn zip_opts(e: Option<&guestfs::Entry>, default_mode: u32) -> zip::write::SimpleFileOptions {
    zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        // Level 1: most of deflate's gain on text, at several times level 6's speed.
        .compression_level(Some(1))
        .unix_permissions(e.map_or(default_mode, |e| e.mode & 0o7777))
        .last_modified_time(zip_time(e.and_then(|e| e.modified)))
        .large_file(e.is_some_and(|e| e.size >= u64::from(u32::MAX)))
}

fn tar_header(e: Option<&guestfs::Entry>, kind: tar::EntryType, default_mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(e.map_or(default_mode, |e| e.mode & 0o7777));
    h.set_mtime(e.and_then(|e| e.modified).map_or(0, |s| s.max(0) as u64));
    h.set_size(0);
    h
}

fn zip_err(e: zip::result::ZipError) -> io::Error {
    match e {
        zip::result::ZipError::Io(e) => e,
        other => io::Error::other(other),
    }
}

impl<'a> Archive<'a> {
    fn zip(sink: &'a mut Sink) -> Self {
        Archive::Zip(zip::ZipWriter::new_stream(sink))
    }

    fn tar(sink: &'a mut Sink) -> Self {
        let gz = flate2::write::GzEncoder::new(sink, flate2::Compression::fast());
        let mut b = tar::Builder::new(gz);
        b.mode(tar::HeaderMode::Complete);
        Archive::Tar(b)
    }

    fn dir(&mut self, name: &str, e: Option<&guestfs::Entry>) -> io::Result<()> {
        match self {
            Archive::Zip(z) => z
                .add_directory(format!("{name}/"), zip_opts(e, 0o755))
                .map_err(zip_err),
            Archive::Tar(t) => {
                let mut h = tar_header(e, tar::EntryType::Directory, 0o755);
                t.append_data(&mut h, format!("{name}/"), io::empty())
            }
        }
    }

    fn symlink(&mut self, name: &str, e: &guestfs::Entry, target: &str) -> io::Result<()> {
        match self {
            Archive::Zip(z) => z
                .add_symlink(name, target, zip_opts(Some(e), 0o777))
                .map_err(zip_err),
            Archive::Tar(t) => {
                let mut h = tar_header(Some(e), tar::EntryType::Symlink, 0o777);
                t.append_link(&mut h, name, target)
            }
        }
    }

    /// `Ok(Some(why))` when the file could not be read whole (its entry is then short in a zip,
    /// zero-filled in a tar); `Err` when the archive itself cannot be written.
    fn file(
        &mut self,
        name: &str,
        e: &guestfs::Entry,
        file: &mut dyn guestfs::FileReader,
    ) -> io::Result<Option<String>> {
        let size = file.size();
        let mut src = Exactly {
            file,
            left: size,
            error: None,
        };
        match self {
            Archive::Zip(z) => {
                z.start_file(name, zip_opts(Some(e), 0o644))
                    .map_err(zip_err)?;
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = src.read(&mut buf)?;
                    if n == 0 || src.error.is_some() {
                        break;
                    }
                    z.write_all(&buf[..n])?;
                }
            }
            Archive::Tar(t) => {
                let mut h = tar_header(Some(e), tar::EntryType::Regular, 0o644);
                h.set_size(size);
                t.append_data(&mut h, name, &mut src)?;
            }
        }
        Ok(src.error)
    }

    fn note(&mut self, name: &str, text: &[u8]) -> io::Result<()> {
        match self {
            Archive::Zip(z) => {
                z.start_file(name, zip_opts(None, 0o644)).map_err(zip_err)?;
                z.write_all(text)
            }
            Archive::Tar(t) => {
                let mut h = tar_header(None, tar::EntryType::Regular, 0o644);
                h.set_size(text.len() as u64);
                h.set_mtime(time::OffsetDateTime::now_utc().unix_timestamp().max(0) as u64);
                t.append_data(&mut h, name, text)
            }
        }
    }

    fn finish(self) -> io::Result<()> {
        match self {
            Archive::Zip(z) => {
                let sink = z.finish().map_err(zip_err)?.into_inner();
                sink.flush()
            }
            Archive::Tar(t) => {
                let gz = t.into_inner()?;
                let sink = gz.finish()?;
                sink.flush()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::restore::files::stream::QUEUE;
    use tokio::sync::mpsc;

    /// Reads `good` bytes, then fails.
    struct Failing {
        size: u64,
        good: u64,
        at: u64,
    }

    impl guestfs::FileReader for Failing {
        fn size(&self) -> u64 {
            self.size
        }
        fn read(&mut self, buf: &mut [u8]) -> guestfs::Result<usize> {
            if self.at >= self.good {
                return Err(guestfs::Error::Corrupt("extent tree damaged".into()));
            }
            let n = (self.good - self.at).min(buf.len() as u64) as usize;
            buf[..n].fill(b'x');
            self.at += n as u64;
            Ok(n)
        }
        fn seek(&mut self, pos: u64) -> guestfs::Result<()> {
            self.at = pos;
            Ok(())
        }
    }

    fn entry(name: &str, size: u64) -> guestfs::Entry {
        guestfs::Entry {
            name: name.into(),
            path: format!("/{name}"),
            kind: guestfs::EntryKind::File,
            size,
            mode: 0o640,
            modified: Some(1_600_000_000),
            symlink_target: None,
        }
    }

    /// Writes one archive through a `Sink` on a thread, as a download does; returns its bytes.
    fn archive_of(
        format: Format,
        write: impl FnOnce(&mut Archive<'_>) + Send + 'static,
    ) -> Vec<u8> {
        let (tx, mut rx) = mpsc::channel(QUEUE);
        let writer = std::thread::spawn(move || {
            let mut sink = Sink::new(tx);
            let mut out = match format {
                Format::Zip => Archive::zip(&mut sink),
                Format::TarGz => Archive::tar(&mut sink),
            };
            write(&mut out);
            out.finish().unwrap();
        });
        let mut bytes = Vec::new();
        while let Some(chunk) = rx.blocking_recv() {
            bytes.extend_from_slice(&chunk.unwrap());
        }
        writer.join().unwrap();
        bytes
    }

    #[test]
    fn an_unreadable_file_keeps_its_tar_entry_length_and_is_reported() {
        let bytes = archive_of(Format::TarGz, |out| {
            out.dir("top", None).unwrap();
            let mut f = Failing {
                size: 300_000,
                good: 100_000,
                at: 0,
            };
            let why = out
                .file("top/bad.bin", &entry("bad.bin", 300_000), &mut f)
                .unwrap();
            assert!(why.unwrap().contains("extent tree damaged"));
            out.note("top/RESTORE-ERRORS.txt", b"top/bad.bin: damaged\n")
                .unwrap();
        });
        let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]));
        let mut seen = Vec::new();
        for e in tar.entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path().unwrap().display().to_string();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut data).unwrap();
            if path == "top/bad.bin" {
                assert_eq!(data.len(), 300_000);
                assert!(data[..100_000].iter().all(|b| *b == b'x'));
                assert!(data[100_000..].iter().all(|b| *b == 0));
                assert_eq!(e.header().mode().unwrap(), 0o640);
            }
            seen.push(path);
        }
        assert_eq!(seen, ["top/", "top/bad.bin", "top/RESTORE-ERRORS.txt"]);
    }

    #[test]
    fn zips_stream_and_open() {
        let bytes = archive_of(Format::Zip, |out| {
            out.dir("top", None).unwrap();
            out.dir("top/empty", None).unwrap();
            let mut f = Failing {
                size: 5000,
                good: 5000,
                at: 0,
            };
            assert_eq!(
                out.file("top/a.txt", &entry("a.txt", 5000), &mut f)
                    .unwrap(),
                None
            );
            let link = guestfs::Entry {
                kind: guestfs::EntryKind::Symlink,
                mode: 0o777,
                ..entry("l", 3)
            };
            out.symlink("top/l", &link, "a.txt").unwrap();
        });
        let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
        let names: Vec<String> = zip.file_names().map(str::to_owned).collect();
        assert_eq!(names, ["top/", "top/empty/", "top/a.txt", "top/l"]);
        let mut a = zip.by_name("top/a.txt").unwrap();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut a, &mut data).unwrap();
        assert_eq!(data, vec![b'x'; 5000]);
        drop(a);
        assert!(zip.by_name("top/l").unwrap().is_symlink());
    }
}
