//! Telling the service manager where the service is: systemd's notification protocol
//! (`sd_notify(3)`), for units of `Type=notify`.
//!
//! systemd passes a Unix datagram socket in `NOTIFY_SOCKET` (a path, or an abstract name
//! written with a leading `@`); a service sends `READY=1` once it serves and `STOPPING=1`
//! when it begins to stop. Outside systemd the variable is unset and nothing is sent. The
//! protocol is a few bytes on a socket, so it is written here rather than pulled in as a
//! dependency.

use std::os::unix::net::UnixDatagram;

/// The state the service reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceState {
    /// Listeners bound and the store answering: start the units that depend on this one.
    Ready,
    /// Shutting down: finishing what is in flight.
    Stopping,
}

impl ServiceState {
    fn message(self) -> &'static str {
        match self {
            ServiceState::Ready => "READY=1",
            ServiceState::Stopping => "STOPPING=1",
        }
    }
}

/// Sends `state` to the service manager if one is listening (`NOTIFY_SOCKET` set).
/// Returns whether a message was sent. A failure to send is returned to the caller, who
/// logs it: the service works the same without the notification, but a `Type=notify` unit
/// would time out starting.
pub fn notify(state: ServiceState) -> std::io::Result<bool> {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let socket = UnixDatagram::unbound()?;
    let message = state.message().as_bytes();
    match target.as_encoded_bytes().strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            socket.send_to_addr(message, &addr)?;
        }
        None => {
            socket.send_to(message, std::path::Path::new(&target))?;
        }
    }
    Ok(true)
}

/// Reports `state` to the service manager, logging a failure (WARN: the service runs, but
/// a `Type=notify` unit will not see it start).
pub fn announce(state: ServiceState) {
    if let Err(e) = notify(state) {
        tracing::warn!(error = %e, ?state, "Cannot notify the service manager.");
    }
}

/// The shutdown future of a service: [`crate::shutdown::signal`], then `STOPPING=1`.
pub async fn stop_requested() {
    crate::shutdown::signal().await;
    announce(ServiceState::Stopping);
}
