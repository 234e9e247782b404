//! systemd readiness (`Type=notify`): one datagram to `$NOTIFY_SOCKET`, no dependency needed.

use std::os::unix::net::UnixDatagram;

pub fn ready() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let send = || -> std::io::Result<()> {
        let socket = UnixDatagram::unbound()?;
        let bytes = path.as_encoded_bytes();
        if let Some(name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            socket.send_to_addr(b"READY=1", &addr)?;
        } else {
            socket.send_to(b"READY=1", &path)?;
        }
        Ok(())
    };
    if let Err(err) = send() {
        tracing::warn!(%err, "could not notify systemd");
    }
}
