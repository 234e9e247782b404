//! Newtypes for the numbers the allocator and the L2 lookup pass around that are easy to confuse:
//! the index of a guest cluster and a byte offset in the image file. Both are plain `u64`s at run
//! time (`repr(transparent)`); the types keep one from being passed where the other belongs.

/// Index of a guest cluster: guest byte offset >> cluster bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(transparent)]
pub(crate) struct GuestCluster(pub u64);

impl GuestCluster {
    /// The guest byte offset where this cluster starts.
    pub fn offset(self, cluster_bits: u32) -> u64 {
        self.0 << cluster_bits
    }
}

/// A byte offset in the image file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(transparent)]
pub(crate) struct HostOffset(pub u64);

impl HostOffset {
    /// `bytes` further into the file.
    pub fn add(self, bytes: u64) -> Self {
        Self(self.0 + bytes)
    }
}
