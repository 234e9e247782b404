//! What the file-restore tests share: the API client with curl, paths quoted for a query,
//! and listings of a source tree and of the API's answers, compared as guest paths.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::process::Command;

use serde_json::Value;

use super::{ChildGuard, http, read_token, run_ok, start_hub};

pub const MIB: u64 = 1 << 20;
/// The big file of [`guest_tree`].
pub const BIG: usize = 100 << 20;

/// Whether a tool is installed (sbin included, where mke2fs and sfdisk live).
pub fn have(tool: &str) -> bool {
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .any(|d| Path::new(d).join(tool).exists())
}

#[macro_export]
macro_rules! require {
    ($($tool:literal from $pkg:literal),+) => {
        $(if !$crate::common::restore::have($tool) {
            eprintln!("SKIPPED: `{}` not found (apt-get install {})", $tool, $pkg);
            return;
        })+
    };
}

pub struct Api {
    pub api: String,
    pub token: String,
}

impl Api {
    /// The hub at its defaults on `data`, and a client of its API with the hub's own token.
    pub fn start(data: &Path) -> (ChildGuard, Api) {
        let (hub, api, _nbd) = start_hub(data);
        let token = read_token(data);
        (hub, Api { api, token })
    }

    /// Mounts disk `disk` of `backup`, as the GUI does: the answer.
    pub fn mount(&self, backup: &str, disk: u32) -> Value {
        super::ok(http(
            "POST",
            &self.api,
            "/api/v1/restore/mount",
            Some(&self.token),
            Some(&serde_json::json!({"backup_id": backup, "disk_index": disk})),
        ))
    }

    /// Downloads the directory `path` of mount `mid` as `format` (zip or tar.gz) and unpacks
    /// it with unzip or tar into the new directory `dest`.
    pub fn unpacked(&self, mid: &str, path: &str, format: &str, dest: &Path) {
        let archive = dest.with_extension(format);
        let (status, headers) = self.curl(
            &format!("/api/v1/restore/{mid}/download-directory?path={path}&format={format}"),
            &archive,
            &[],
        );
        assert_eq!(status, 200, "{path} as {format}");
        let want_type = if format == "zip" {
            "application/zip"
        } else {
            "application/gzip"
        };
        assert_eq!(headers["content-type"], want_type);
        fs::create_dir_all(dest).unwrap();
        if format == "zip" {
            run_ok(
                Command::new("unzip")
                    .arg("-q")
                    .arg(&archive)
                    .arg("-d")
                    .arg(dest),
            );
        } else {
            run_ok(
                Command::new("tar")
                    .arg("-xzf")
                    .arg(&archive)
                    .arg("-C")
                    .arg(dest),
            );
        }
    }

    /// Each of `paths` (traversal attempts) is refused (4xx) or reads the guest's own
    /// `passwd`, never a byte of the host's.
    pub fn never_leaves_the_guest(
        &self,
        mid: &str,
        paths: &[&str],
        guest_passwd: &[u8],
        scratch: &Path,
    ) {
        let host_line = fs::read_to_string("/etc/passwd")
            .ok()
            .and_then(|t| t.lines().next().map(str::to_owned))
            .unwrap_or_else(|| "root:x:0:0:".to_owned());
        for path in paths {
            let _ = fs::remove_file(scratch);
            let (status, _) = self.curl(
                &format!("/api/v1/restore/{mid}/download?path={path}"),
                scratch,
                &[],
            );
            let body = fs::read(scratch).unwrap_or_default();
            assert!(
                !String::from_utf8_lossy(&body).contains(&host_line),
                "{path}: answered with the host's /etc/passwd"
            );
            assert!(
                status == 200 && body == guest_passwd || (400..500).contains(&status),
                "{path}: {status} {}",
                String::from_utf8_lossy(&body)
            );
        }
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        http("GET", &self.api, path, Some(&self.token), None)
    }

    /// `curl` of `path` into `out`: the status, and the response headers (lowercase names).
    pub fn curl(&self, path: &str, out: &Path, extra: &[&str]) -> (u16, BTreeMap<String, String>) {
        let headers = out.with_extension("headers");
        let o = run_ok(
            Command::new("curl")
                .args(["-sS", "--path-as-is", "-o"])
                .arg(out)
                .arg("-D")
                .arg(&headers)
                .args(["-w", "%{http_code}", "-H"])
                .arg(format!("Authorization: Bearer {}", self.token))
                .args(extra)
                .arg(format!("http://{}{path}", self.api)),
        );
        let status = String::from_utf8_lossy(&o.stdout).trim().parse().unwrap();
        let text = fs::read_to_string(&headers).unwrap();
        let map = text
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        (status, map)
    }
}

pub fn q(path: &str) -> String {
    let mut s = String::new();
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

/// Every file, directory and symlink below `root`, as guest paths, with what it is.
pub fn source_listing(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = format!("/{}", p.strip_prefix(root).unwrap().to_str().unwrap());
            let t = e.file_type().unwrap();
            let kind = if t.is_symlink() {
                format!("symlink {}", fs::read_link(&p).unwrap().display())
            } else if t.is_dir() {
                todo.push(p);
                "directory".to_owned()
            } else {
                format!("file {}", e.metadata().unwrap().len())
            };
            out.insert(rel, kind);
        }
    }
    out
}

pub fn listing_of(files: &Value, prefix: &str) -> BTreeMap<String, String> {
    files
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| !f["path"].as_str().unwrap().contains("lost+found"))
        .map(|f| {
            let path = f["path"]
                .as_str()
                .unwrap()
                .strip_prefix(prefix)
                .unwrap()
                .to_owned();
            let kind = if f["is_symlink"] == true {
                format!("symlink {}", f["symlink_target"].as_str().unwrap())
            } else if f["type"] == "directory" {
                "directory".to_owned()
            } else {
                format!("file {}", f["size"])
            };
            (path, kind)
        })
        .collect()
}

/// `diff -r` that compares symlinks as links.
pub fn same_tree(a: &Path, b: &Path) {
    let o = Command::new("diff")
        .args(["-r", "--no-dereference"])
        .arg(a)
        .arg(b)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "trees differ:\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The guest's tree: names with spaces and unicode, a 100 MiB file, deep and empty folders,
/// relative and absolute symlinks (one to `/etc/passwd`, which the guest has its own of), a
/// hard link and a sparse file.
pub fn guest_tree(root: &Path, hello: &[u8]) {
    let w = |p: &str, data: &[u8], mode: u32| {
        let path = root.join(p);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, data).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    };
    w("hello.txt", hello, 0o644);
    w(
        "etc/passwd",
        b"guest-root:x:0:0:guest:/root:/bin/sh\n",
        0o644,
    );
    w("etc/nginx/nginx.conf", b"worker_processes 4;\n", 0o640);
    w(
        "docs/with space/r\u{e9}sum\u{e9} \u{1f600}.txt",
        "unicode \u{2713}\n".as_bytes(),
        0o600,
    );
    w("a/b/c/d/e/f/g/h/deep.txt", b"deep down\n", 0o644);
    let big: Vec<u8> = (0..BIG)
        .map(|i| ((i * 31 + i / 4096 * 7) % 251) as u8)
        .collect();
    w("big.bin", &big, 0o644);
    fs::create_dir_all(root.join("empty/nested-empty")).unwrap();
    symlink("/etc/passwd", root.join("passwd-link")).unwrap();
    symlink("nginx/nginx.conf", root.join("etc/conf-link")).unwrap();
    symlink(
        "../../../../../../../../etc/passwd",
        root.join("docs/up-link"),
    )
    .unwrap();
    fs::hard_link(root.join("hello.txt"), root.join("docs/hello-hardlink.txt")).unwrap();
    let sparse = fs::File::create(root.join("sparse.img")).unwrap();
    sparse.set_len(8 * MIB).unwrap();
    drop(sparse);
    let f = fs::OpenOptions::new()
        .write(true)
        .open(root.join("sparse.img"))
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"middle", 4 * MIB).unwrap();
}

/// A sparse disk of `mib` MiB partitioned by the sfdisk `script`, with each image written in
/// at its byte offset.
pub fn partitioned_disk(disk: &Path, mib: u64, script: &str, images: &[(&Path, u64)]) {
    fs::File::create(disk).unwrap().set_len(mib * MIB).unwrap();
    let mut child = Command::new("sfdisk")
        .arg("-q")
        .arg(disk)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), script.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success());
    let out = fs::OpenOptions::new().write(true).open(disk).unwrap();
    for (img, at) in images {
        let data = fs::read(img).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&out, &data, *at).unwrap();
    }
}
