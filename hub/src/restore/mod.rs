//! Restores: a backup's disk served read-only over NBD, through its backing chain, until it is
//! deleted or its time runs out (`disk`); the same from a copy in an S3 repository, its chain of
//! objects read in place (`bucket`); and file-level restore, its filesystems browsed and
//! downloaded over the API (`files`), from either.
//!
//! It opens images (through `repo`) and registers exports; it knows nothing of how backups are
//! made, and never writes to an image.

mod bucket;
pub mod disk;
pub mod files;
