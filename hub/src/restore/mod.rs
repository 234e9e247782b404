//! Restores: a backup's disk served read-only over NBD, through its backing chain, until it is
//! deleted or its time runs out (`disk`); and file-level restore, its filesystems browsed and
//! downloaded over the API (`files`).
//!
//! It opens images (through `repo`) and registers exports; it knows nothing of how backups are
//! made, and never writes to an image.

pub mod disk;
pub mod files;
