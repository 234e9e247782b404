//! Plumbing: what the hub needs from the operating system and its peers, knowing nothing of
//! backups, VMs or repositories — the data dir and its lock, the space reserve, the API token,
//! TLS credentials, log formatting, systemd's readiness notice, size parsing, the credential key
//! and its sealing (`secrets`), what of a peer's text may be repeated when it was sent a secret
//! (`echo`), and the HTTP client of the SNA's API (`sna`: transport and bounds,
//! not what its answers mean), the bound on the process's threads (`threads`), and an object in a
//! bucket read as qcow2 storage through a bounded cache (`objects`).
//!
//! These sit below every room because `Hub` holds them (the key, the SNA client, the reserve) and
//! `Config` reads them; nothing here imports a room of the hub, only `error`.

pub mod datadir;
pub mod echo;
pub mod logfmt;
pub(crate) mod notify;
pub mod objects;
pub(crate) mod reserve;
pub mod secrets;
pub mod size;
pub mod sna;
pub mod threads;
pub mod tls;
pub mod token;
