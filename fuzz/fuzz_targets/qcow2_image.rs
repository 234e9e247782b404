//! Opens a hostile image from memory, reads it, asks for block status, checks it, and writes to
//! it. Any panic, hang or huge allocation is a bug: bad images must give errors.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    qcow2::fuzz_one(data);
});
