//! The Sendense hub: REST API, catalog and backup lifecycle over the embedded NBD server, and the
//! adapter that serves QCOW2 images as NBD exports.
#![forbid(unsafe_code)]

pub mod export;
pub mod size;
