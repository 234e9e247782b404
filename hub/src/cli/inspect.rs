//! `sendense-hub check` and `sendense-hub info`.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use qcow2::{Image, ImageInfo, OpenOptions};

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Reclaim leaked clusters and rebuild refcounts.
    #[arg(long)]
    repair: bool,
    image: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct InfoArgs {
    #[arg(long)]
    json: bool,
    image: PathBuf,
}

pub fn check(args: &CheckArgs) -> anyhow::Result<ExitCode> {
    let report = match qcow2::check::check(&args.image, args.repair) {
        Ok(report) => report,
        Err(err) => {
            // Like qemu-img: 1 means the check itself could not be done.
            eprintln!("sendense-hub: checking {}: {err}", args.image.display());
            return Ok(ExitCode::from(1));
        }
    };
    let mut out = String::new();
    for line in &report.messages {
        let _ = writeln!(out, "{line}");
    }
    if report.leaks_fixed > 0 || report.corruptions_fixed > 0 {
        let _ = writeln!(
            out,
            "The following inconsistencies were found and repaired:\n"
        );
        let _ = writeln!(out, "    {} leaked clusters", report.leaks_fixed);
        let _ = writeln!(out, "    {} corruptions\n", report.corruptions_fixed);
    }
    let corrupt = report.corruptions.saturating_sub(report.corruptions_fixed);
    let leaks = report.leaks.saturating_sub(report.leaks_fixed);
    if corrupt == 0 && leaks == 0 {
        let _ = writeln!(out, "No errors were found on the image.");
    }
    if corrupt > 0 {
        let _ = writeln!(out, "\n{corrupt} errors were found on the image.");
        let _ = writeln!(
            out,
            "Data may be corrupted, or further writes to the image may corrupt it."
        );
    }
    if leaks > 0 {
        let _ = writeln!(out, "\n{leaks} leaked clusters were found on the image.");
        let _ = writeln!(out, "This means waste of disk space, but no harm to data.");
    }
    emit(&out);
    Ok(ExitCode::from(report.exit_code() as u8))
}

pub fn info(args: &InfoArgs) -> anyhow::Result<()> {
    // An open stuck in the kernel must not hang `info`: the thread is abandoned at exit.
    let (tx, rx) = std::sync::mpsc::channel();
    let path = args.image.clone();
    std::thread::spawn(move || tx.send(open_chain(&path)));
    let timeout = super::serve_image::OPEN_TIMEOUT;
    let chain = rx.recv_timeout(timeout).map_err(|_| {
        anyhow::anyhow!(
            "opening {} took longer than {timeout:?}",
            args.image.display()
        )
    })??;
    let mut out = String::new();
    if args.json {
        let items: Vec<_> = chain.iter().map(info_json).collect();
        let mut top = items.first().cloned().unwrap_or_default();
        top["backing-chain"] = serde_json::Value::Array(items);
        let _ = writeln!(out, "{}", serde_json::to_string_pretty(&top)?);
    } else {
        for (i, info) in chain.iter().enumerate() {
            if i > 0 {
                let _ = writeln!(out);
            }
            print_info(&mut out, info);
        }
    }
    emit(&out);
    Ok(())
}

/// The image and its backing chain; when a backing file cannot be opened, just the image.
fn open_chain(path: &std::path::Path) -> anyhow::Result<Vec<ImageInfo>> {
    let with_backing = OpenOptions {
        open_backing: true,
        ..OpenOptions::default()
    };
    let image = match Image::open(path, &with_backing) {
        Ok(image) => image,
        Err(err) => {
            tracing::warn!(%err, "opening with backing chain failed; showing the image alone");
            Image::open(path, &OpenOptions::default())
                .with_context(|| format!("opening {}", path.display()))?
        }
    };
    Ok(image.info_chain())
}

fn info_json(info: &ImageInfo) -> serde_json::Value {
    let mut v = serde_json::json!({
        "filename": info.path,
        "format": info.format,
        "virtual-size": info.virtual_size,
        "cluster-size": info.cluster_size,
        "backing-filename": info.backing_file,
        "backing-filename-format": info.backing_format,
        "allocated-size": info.allocated_bytes,
        "actual-size": info.file_size,
    });
    // Like qemu-img, a raw file has no cluster size.
    if info.format != "qcow2" {
        v.as_object_mut().map(|o| o.remove("cluster-size"));
    }
    v
}

fn print_info(out: &mut String, info: &ImageInfo) {
    let _ = writeln!(out, "image: {}", info.path.display());
    let _ = writeln!(out, "file format: {}", info.format);
    let _ = writeln!(
        out,
        "virtual size: {} ({} bytes)",
        human(info.virtual_size),
        info.virtual_size
    );
    let _ = writeln!(
        out,
        "allocated size: {} ({} bytes)",
        human(info.allocated_bytes),
        info.allocated_bytes
    );
    let _ = writeln!(
        out,
        "file size: {} ({} bytes)",
        human(info.file_size),
        info.file_size
    );
    if info.format == "qcow2" {
        let _ = writeln!(out, "cluster_size: {}", info.cluster_size);
    }
    if let Some(backing) = &info.backing_file {
        let _ = writeln!(out, "backing file: {backing}");
        if let Some(format) = &info.backing_format {
            let _ = writeln!(out, "backing file format: {format}");
        }
    }
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.3} {}", UNITS[unit])
    }
}

/// Write the report; a closed pipe (`| head`) is not an error worth a panic.
fn emit(text: &str) {
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}
