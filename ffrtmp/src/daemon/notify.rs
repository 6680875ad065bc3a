//! Telling the service manager how `watch` is (sd_notify(3)): `READY=1`
//! once the kernel programs are attached and the start-up scan is done,
//! `STATUS=` with the backend and the jobs followed, `RELOADING=1` around a
//! reload, `STOPPING=1`, and `WATCHDOG=1` from the governing loop itself —
//! a loop that stops turning stops the pings, and systemd restarts the
//! daemon (`WatchdogSec=` in the unit), which leaves every job running.
//!
//! Not the `sd-notify` crate: it opens a socket per message and sends
//! blocking. Here the socket is opened once, at start (at the fd limit a
//! ping needs no new descriptor), and every send is non-blocking: a
//! service manager that does not read costs a dropped notification, never
//! a wait (second principle). Without `$NOTIFY_SOCKET` nothing is sent.
use std::{
    io,
    os::unix::net::{SocketAddr, UnixDatagram},
    time::Duration,
};

/// The socket to the service manager, held for the daemon's life.
#[derive(Debug)]
pub(crate) struct Notifier {
    socket: UnixDatagram,
    /// Half the watchdog timeout: how often to ping (`None`: no watchdog).
    ping_every: Option<Duration>,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET` (a path, or `@name` for the abstract
    /// namespace) and `$WATCHDOG_USEC`/`$WATCHDOG_PID`; `Ok(None)` when not
    /// started by a service manager that listens.
    pub(crate) fn from_env() -> io::Result<Option<Self>> {
        let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
            return Ok(None);
        };
        let addr = match path.as_encoded_bytes().strip_prefix(b"@") {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt as _;
                SocketAddr::from_abstract_name(name)?
            }
            None => SocketAddr::from_pathname(&path)?,
        };
        let socket = UnixDatagram::unbound()?;
        socket.connect_addr(&addr)?;
        socket.set_nonblocking(true)?;
        let ours = std::process::id().to_string();
        let for_us = std::env::var("WATCHDOG_PID").map_or(true, |p| p == ours);
        let ping_every = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|us| us.parse::<u64>().ok())
            .filter(|us| *us > 0 && for_us)
            .map(|us| Duration::from_micros(us / 2));
        Ok(Some(Notifier { socket, ping_every }))
    }

    /// How often the governing loop must ping (half the timeout).
    pub(crate) fn ping_every(&self) -> Option<Duration> {
        self.ping_every
    }

    /// Sends `lines` (one `KEY=value` each) as one datagram. A full or
    /// absent receiver drops it: said at debug level, never waited for.
    pub(crate) fn send(&self, lines: &[&str]) {
        let message = lines.join("\n");
        if let Err(e) = self.socket.send(message.as_bytes()) {
            tracing::debug!(error = %e, message, "notification to the service manager dropped");
        }
    }

    pub(crate) fn ready(&self, status: &str) {
        self.send(&["READY=1", &format!("STATUS={status}")]);
    }

    pub(crate) fn status(&self, status: &str) {
        self.send(&[&format!("STATUS={status}")]);
    }

    pub(crate) fn ping(&self) {
        self.send(&["WATCHDOG=1"]);
    }

    /// Around a reload (Type=notify-reload expects `MONOTONIC_USEC` too).
    pub(crate) fn reloading(&self) {
        let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
            .map(|t| t.tv_sec() * 1_000_000 + t.tv_nsec() / 1_000)
            .unwrap_or_default();
        self.send(&["RELOADING=1", &format!("MONOTONIC_USEC={now}")]);
    }

    pub(crate) fn stopping(&self) {
        self.send(&["STOPPING=1"]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A receiver that never reads: sends drop, never block.
    #[test]
    fn a_receiver_that_does_not_read_costs_dropped_notifications_not_waits() {
        let dir = std::env::temp_dir().join(format!("ffrtmp-notify-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let receiver = UnixDatagram::bind(&path).unwrap();
        let socket = UnixDatagram::unbound().unwrap();
        socket.connect(&path).unwrap();
        socket.set_nonblocking(true).unwrap();
        let n = Notifier {
            socket,
            ping_every: None,
        };
        n.ping();
        // The queue fills; then a send says WouldBlock (a blocking socket
        // would hang this test here), and a ping returns.
        let full = (0..100_000)
            .map(|_| n.socket.send(b"WATCHDOG=1"))
            .find_map(Result::err)
            .expect("the receiver's queue never filled");
        assert_eq!(full.kind(), io::ErrorKind::WouldBlock);
        n.ping();
        let mut buf = [0u8; 64];
        let len = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"WATCHDOG=1");
        n.ready("backend ebpf, 0 jobs");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
