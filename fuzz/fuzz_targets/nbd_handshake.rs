//! Handshake messages from arbitrary bytes: options as the server reads them, option replies as a
//! client reads them; everything that decodes must re-encode to the same value. Then the same bytes
//! as a client's side of a whole handshake with TLS offered or required, through STARTTLS into
//! rustls: no export may be reached in clear when TLS is required.
#![no_main]

use std::sync::{Arc, LazyLock};

use libfuzzer_sys::fuzz_target;
use nbd_server::tls::rustls;

/// A throwaway self-signed certificate: the fuzzer's "client" never verifies it.
static TLS: LazyLock<Arc<rustls::ServerConfig>> = LazyLock::new(|| {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    nbd_server::fuzzing::tls_config(&cert.cert.pem(), &cert.signing_key.serialize_pem())
});

fuzz_target!(|data: &[u8]| {
    nbd_server::fuzzing::handshake(data);
    nbd_server::fuzzing::handshake_session(data, &TLS);
});
