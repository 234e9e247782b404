//! Request streams (compact or extended, chosen by the first byte) from arbitrary bytes: each
//! request round-trips, is validated, and every kind of reply to it encodes into a clean stream.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    nbd_server::fuzzing::requests(data);
});
