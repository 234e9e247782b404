//! Retention: which of a VM's backups a policy keeps (`select`, pure), and the prune that
//! removes the rest.

pub mod select;
