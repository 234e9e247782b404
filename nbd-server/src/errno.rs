//! The one place where an export's error becomes an NBD error number.

use crate::ExportError;
use crate::proto::{EINVAL, EIO, ENOSPC, ENOTSUP, EPERM, ESHUTDOWN, request::Command};

/// The NBD errno for `err`, raised while executing `command`.
pub(crate) fn from_export_error(err: &ExportError, command: Command) -> u32 {
    match err {
        ExportError::Io(_) => EIO,
        ExportError::NoSpace => ENOSPC,
        ExportError::Invalid(_) => EINVAL,
        // ENOTSUP is what the spec asks for when a FAST_ZERO request cannot be fast; for other
        // commands clients only know EINVAL.
        ExportError::NotSupported if command == Command::WriteZeroes => ENOTSUP,
        ExportError::NotSupported => EINVAL,
        ExportError::ReadOnly => EPERM,
        ExportError::Shutdown => ESHUTDOWN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping() {
        let w = Command::Write;
        assert_eq!(from_export_error(&ExportError::Io("x".into()), w), EIO);
        assert_eq!(from_export_error(&ExportError::NoSpace, w), ENOSPC);
        assert_eq!(
            from_export_error(&ExportError::Invalid("x".into()), w),
            EINVAL
        );
        assert_eq!(from_export_error(&ExportError::NotSupported, w), EINVAL);
        assert_eq!(
            from_export_error(&ExportError::NotSupported, Command::WriteZeroes),
            ENOTSUP
        );
        assert_eq!(from_export_error(&ExportError::ReadOnly, w), EPERM);
        assert_eq!(from_export_error(&ExportError::Shutdown, w), ESHUTDOWN);
    }
}
