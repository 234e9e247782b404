//! A hostile guest disk: partition tables and filesystems read from arbitrary bytes. Any panic
//! that escapes, hang or huge allocation is a bug: damaged disks must give errors.
//!
//! guestfs turns a panic inside a filesystem crate into an error (`fs::guarded`); libfuzzer-sys's
//! panic hook would abort on it all the same, so the hook is made quiet. A panic that escapes
//! `fuzz_one` still aborts: libfuzzer-sys catches it around each input and aborts there.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    static QUIET: std::sync::Once = std::sync::Once::new();
    QUIET.call_once(|| std::panic::set_hook(Box::new(|_| {})));
    guestfs::fuzzing::fuzz_one(data);
});
