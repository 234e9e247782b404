//! Handshake messages from arbitrary bytes: options as the server reads them, option replies as a
//! client reads them; everything that decodes must re-encode to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    nbd_server::fuzzing::handshake(data);
});
