//! A connection to a systemd manager over D-Bus: the system's (jobs as
//! transient scopes, [`super::scope`]) or the calling user's (whether our
//! own unit in a user manager was delegated to us, [`super::systemd`]).
//!
//! Each connection has a small current-thread runtime of its own, so no
//! call waits on `watch`'s event loop, and every call has a timeout
//! ([`CALL_TIMEOUT`]): a manager or bus that does not answer costs at most
//! that, never a stalled governor. A connection that broke or timed out is
//! made again at the next call.
//!
//! The buses, not systemd's private sockets (`/run/systemd/private`, which
//! systemctl uses as root): measured on systemd 252 with zbus 5 in
//! peer-to-peer mode there, systemd carried out the calls (a scope was
//! made) but no reply reached zbus within 5 s.
use std::{path::Path, time::Duration};

use zbus::zvariant::{OwnedObjectPath, OwnedValue};

use super::GovernError;

const SYSTEMD: &str = "org.freedesktop.systemd1";
const MANAGER_PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";
/// How long one call may take before it is given up.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Which manager: the system's, or the calling user's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Which {
    System,
    /// Reached on the user's own bus (`$DBUS_SESSION_BUS_ADDRESS`, else
    /// `$XDG_RUNTIME_DIR/bus`: Debian's `dbus-user-session`).
    User,
}

impl Which {
    pub(crate) fn bus(self) -> &'static str {
        match self {
            Which::System => "the system bus",
            Which::User => "the user's bus",
        }
    }
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No bus, or no answer in time.
    #[error("talking to systemd on {0}: {1}")]
    Bus(&'static str, String),
    /// The manager answered with an error: its D-Bus name, then its text.
    #[error("{0}")]
    Refused(String),
}

/// A manager, connected at its first call.
pub(crate) struct Manager {
    which: Which,
    timeout: Duration,
    runtime: tokio::runtime::Runtime,
    conn: Option<zbus::Connection>,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("which", &self.which)
            .field("connected", &self.conn.is_some())
            .finish_non_exhaustive()
    }
}

impl Manager {
    /// A client of `which` manager whose calls give up after `timeout`.
    pub(crate) fn new(which: Which, timeout: Duration) -> Result<Self, GovernError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| {
                GovernError::io("starting the D-Bus runtime for", Path::new(which.bus()), e)
            })?;
        Ok(Manager {
            which,
            timeout,
            runtime,
            conn: None,
        })
    }

    fn connection(&mut self) -> Result<zbus::Connection, CallError> {
        if let Some(c) = &self.conn {
            return Ok(c.clone());
        }
        let (which, timeout) = (self.which, self.timeout);
        let bus = |e: &dyn std::fmt::Display| CallError::Bus(which.bus(), e.to_string());
        let conn = self.runtime.block_on(async {
            let builder = match which {
                Which::System => zbus::connection::Builder::system(),
                Which::User => zbus::connection::Builder::session(),
            }
            .map_err(|e| bus(&e))?
            .method_timeout(timeout);
            tokio::time::timeout(timeout, builder.build())
                .await
                .map_err(|_| bus(&"connecting timed out"))?
                .map_err(|e| bus(&e))
        })?;
        self.conn = Some(conn.clone());
        Ok(conn)
    }

    /// Calls `method` of `iface` on object `path` of the manager.
    pub(crate) fn call<B>(
        &mut self,
        path: &str,
        iface: &str,
        method: &str,
        body: &B,
    ) -> Result<zbus::Message, CallError>
    where
        B: serde::Serialize + zbus::zvariant::DynamicType,
    {
        let conn = self.connection()?;
        let reply =
            self.runtime
                .block_on(conn.call_method(Some(SYSTEMD), path, Some(iface), method, body));
        if let Err(e) = &reply
            && !matches!(e, zbus::Error::MethodError(..))
        {
            self.conn = None; // broken or timed out: a new one next time
        }
        reply.map_err(|e| match e {
            zbus::Error::MethodError(name, text, _) => {
                CallError::Refused(format!("{}: {}", name.as_str(), text.unwrap_or_default()))
            }
            other => CallError::Bus(self.which.bus(), other.to_string()),
        })
    }

    /// Calls `method` of the manager object itself.
    pub(crate) fn call_manager<B>(
        &mut self,
        method: &str,
        body: &B,
    ) -> Result<zbus::Message, CallError>
    where
        B: serde::Serialize + zbus::zvariant::DynamicType,
    {
        self.call(MANAGER_PATH, MANAGER, method, body)
    }

    /// A property of a loaded unit (`None`: not loaded, or unknown).
    pub(crate) fn value(&mut self, unit: &str, iface: &str, name: &str) -> Option<OwnedValue> {
        let reply = self.call_manager("GetUnit", &(unit,)).ok()?;
        let path: OwnedObjectPath = reply.body().deserialize().ok()?;
        let reply = self
            .call(
                path.as_str(),
                "org.freedesktop.DBus.Properties",
                "Get",
                &(iface, name),
            )
            .ok()?;
        reply.body().deserialize().ok()
    }

    /// A string property of a loaded unit (`None`: not loaded, or unknown).
    pub(crate) fn string(&mut self, unit: &str, iface: &str, name: &str) -> Option<String> {
        self.value(unit, iface, name)
            .and_then(|v| String::try_from(v).ok())
    }

    /// The interface of a unit's type (`Service`, `Scope`, …) by its name.
    pub(crate) fn type_interface(unit: &str) -> Option<&'static str> {
        let kind = unit.rsplit('.').next()?;
        Some(match kind {
            "service" => "org.freedesktop.systemd1.Service",
            "scope" => "org.freedesktop.systemd1.Scope",
            "slice" => "org.freedesktop.systemd1.Slice",
            _ => return None,
        })
    }
}
