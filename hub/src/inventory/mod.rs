//! The VMware side: vCenter credentials (sealed with the credential key of `sys::secrets`, and the
//! key's rotation), discovery of VMs through the SNA, and the VM contexts it records.
//!
//! It knows the catalog's inventory tables and the SNA's inventory answers; it knows nothing of
//! images, exports or how a backup runs.

pub mod credentials;
pub mod discovery;
