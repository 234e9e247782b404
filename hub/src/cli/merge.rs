//! `sendense-hub merge CHILD`: a chain merge of image files (`qcow2::merge::merge_into_child`),
//! outside the hub's catalog.

use std::path::PathBuf;

use anyhow::Context;
use qcow2::merge::{self, MergeOptions};

/// `sendense-hub merge --help`.
pub const LONG_ABOUT: &str = "Merge CHILD's backing file into it: CHILD's own clusters are \
    committed into its backing file, which is then renamed over CHILD (the backing file's path is \
    gone, CHILD's path holds the merged image, and images whose backing file is CHILD read the \
    same bytes). The cost follows the data CHILD holds, not the disk's size. CHILD must be its \
    backing file's only child.\n\n\
    For images outside the hub's catalog: the catalog is not updated, so do not use it on a \
    repository's backups (remove a backup through the API instead). Image locks refuse the merge \
    while either image is open elsewhere.\n\n\
    If interrupted (killed, disk full), CHILD still reads as before: run the same command again \
    while the backing file exists.";

#[derive(Debug, clap::Args)]
pub struct MergeArgs {
    /// The child image; its backing file is merged into it.
    child: PathBuf,
    /// The backing file and its whole chain must lie inside DIR (symlinks refused).
    #[arg(long, value_name = "DIR")]
    backing_dir: Option<PathBuf>,
}

pub fn run(args: &MergeArgs) -> anyhow::Result<()> {
    let opts = MergeOptions {
        backing_dir: args.backing_dir.clone(),
        no_symlinks: args.backing_dir.is_some(),
        ..MergeOptions::default()
    };
    let report = merge::merge_into_child(&args.child, &opts)
        .with_context(|| format!("merging into {}", args.child.display()))?;
    println!(
        "merged {} into {}: {} bytes of data committed, {} bytes zeroed; {} is gone",
        report.parent.display(),
        report.child.display(),
        report.bytes_written,
        report.zeroed_bytes,
        report.parent.display()
    );
    Ok(())
}
