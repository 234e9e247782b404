//! A hostile guest disk: partition tables and filesystems read from arbitrary bytes. Any panic,
//! hang or huge allocation is a bug: damaged disks must give errors.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    guestfs::fuzzing::fuzz_one(data);
});
