//! Benchmark support for the throughput harness (`src/bin/throughput.rs`) and the criterion benches
//! (`benches/*.rs`): the project's own pipelined NBD client, an in-process hub (`inproc`), process figures, and the pure pieces
//! (size suffixes, statistics, the result table) that have unit tests.

pub mod client;
pub mod inproc;
pub mod report;
pub mod size;
pub mod stats;
pub mod sys;
pub mod zero;

/// What the benchmark client can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("protocol error: {0}")]
    Proto(#[from] nbd_server::proto::ProtoError),
    #[error("server refused option {option}: reply type {reply:#x} {message:?}")]
    OptionRefused {
        option: u32,
        reply: u32,
        message: String,
    },
    #[error("server answered request {cookie} with errno {errno}")]
    Request { cookie: u64, errno: u32 },
    #[error("export unsuitable: {0}")]
    Export(String),
}

pub type Result<T> = std::result::Result<T, Error>;
