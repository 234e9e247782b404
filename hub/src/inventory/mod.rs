//! The VMware side: vCenter credentials (sealed with the credential key of `sys::secrets`, and the
//! key's rotation), discovery of VMs through the SNA (`answer`: what the SNA says), and the VM contexts it records (`vetting`:
//! which VMs of an answer get one).
//!
//! It knows the catalog's inventory tables, the SNA's inventory answers and what a backup of a VM
//! may be (`repo::limits`); it knows nothing of images, exports or how a backup runs.

pub mod answer;
pub mod credentials;
pub mod discovery;
pub(crate) mod vetting;
