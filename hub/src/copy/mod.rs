//! Copies: a backup's whole chain put into an S3 repository, so that the copy restores on its
//! own. A copy job takes the backup's chain from the top down to the first layer the
//! destination already holds (`plan`), then sends the missing layers bottom up (`run`): each
//! disk's image and digests file, then the layer's manifest, each object written once and never
//! over another (`upload`). A layer is `completed` only when every object is in the bucket (and,
//! with verify, read back equal to what was sent); the layer above waits for the one below.
//!
//! Copies outlive the local chain: a prune never deletes them (their rows do not hang on the
//! backups' rows). It reads the catalog and the files and writes objects; it knows nothing of
//! HTTP or NBD.

mod adopt;
mod after;
mod bring;
mod due;
mod layer;
mod plan;
mod remove;
mod run;
mod start;
pub mod upload;

pub use start::CopyRequest;

/// The job target of copies of one chain: one copy job per chain at a time, whatever the
/// destination, and a prune of the chain waits for it.
pub(crate) fn chain_key(vm_name: &str, repository_id: &str) -> String {
    format!("chain:{vm_name}@{repository_id}")
}

/// `<safe vm>/<backup id>/<name>`: where a layer's object is under the repository's prefix (the
/// local layout's names, so a copy reads like a backup directory).
pub(crate) fn object_name(vm_name: &str, backup_id: &str, name: &str) -> String {
    format!(
        "{}/{backup_id}/{name}",
        crate::repo::layout::safe_name(vm_name)
    )
}
