//! `sendense-hub`: the binary's edge (CLI parsing, logging setup, exit codes).
#![forbid(unsafe_code)]

fn main() -> anyhow::Result<()> {
    anyhow::bail!("not yet implemented")
}
