//! Jobs as transient systemd scopes: where a privileged ffrtmp puts the
//! processes it governs on a host whose cgroup tree systemd manages.
//!
//! systemd owns every cgroup it did not delegate (systemd.io/
//! CGROUP_DELEGATION), so ffrtmp does not make job cgroups of its own
//! there: it asks systemd, through `StartTransientUnit` on the system bus,
//! for a scope `ffrtmp-<job>.scope` holding the process, with the
//! job's limits as unit properties ([`crate::limits::Limit::systemd`]).
//! systemd makes the cgroup, writes the limits, moves the process and, when
//! the last process has left, removes the scope — nothing of it is
//! ffrtmp's to write or remove. The limits are then read back from the
//! cgroup's files and checked against what ffrtmp would have written, as
//! for any job; a limit systemd has no property for is reported, not
//! pretended (`degraded`).
//!
//! Where the scope goes, and what it is bound to, follows the unit the
//! process came from (its *origin*, read before anything moved it):
//! - the scope sits in the origin's slice, beside it (`systemd-cgls` shows
//!   it there, `systemctl status ffrtmp-<job>.scope` shows the process);
//! - it is `BindsTo=` the origin (while that runs), so that `systemctl stop` of
//!   the unit that started a transcoder stops the transcoder, as it would
//!   have without ffrtmp — unless the origin's `KillMode=` is `process` or
//!   `none`: that unit asked for its children to outlive it, and they do;
//! - `run`'s scope holds the wrapper itself (moved first, as `systemd-run
//!   --scope` moves itself: its workload, started with `CLONE_VFORK`, has
//!   no pid to hand over before its first instruction) and is `PartOf=`
//!   its unit instead ([`Tie`]): a stop or restart of that unit stops the
//!   stream, but kill -9 of a wrapper that is the unit's main process ends
//!   the unit without stopping the stream;
//! - a process inside a user manager's tree (`user@UID.service`) is never
//!   given a scope: that tree is its user's, and the system manager's
//!   scope would take the process out of its user's control. Such a process
//!   is not moved at all (the governor checks [`Origin::movable`] first).
//!
//! Why scopes and not `SetUnitProperties` on the origin: an origin unit
//! usually holds more than the transcoder (the agent that started it, its
//! siblings), and its limits are its operator's. Why limits as properties
//! and not a delegated scope with a leaf of ffrtmp's: systemd re-applies a
//! unit's own attributes on `daemon-reload`, so its properties are the one
//! place a scope's limits survive, and `systemctl show` reports them.
//!
//! Talking to systemd never happens on the governing path: the daemon's
//! new processes are first moved into their rule's staging cgroup in its
//! own delegated subtree (fast, limits in force), and the job maker thread
//! makes the scope afterwards. Every call has a timeout ([`CALL_TIMEOUT`]);
//! a systemd that does not answer leaves the process in staging, under its
//! rule's limits, to be tried again.
#![allow(
    clippy::case_sensitive_file_extension_comparisons,
    reason = "unit suffixes are lower case by definition (systemd.unit(5))"
)]

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use zbus::zvariant::Value;

use super::{
    GovernError,
    bus::{CallError, Manager, Which},
    layout::CgroupPath,
    pid_in_cgroup, systemd,
};
use crate::limits::{Applied, FileError, Files, JobId, Limit, Limits, Visit};

/// How long one call to systemd may take before the job is given up for
/// now (it stays in staging and is tried again).
pub(crate) const CALL_TIMEOUT: Duration = super::bus::CALL_TIMEOUT;
/// How long systemd may take to move the process after accepting the job.
const MOVE_TIMEOUT: Duration = Duration::from_secs(5);
/// The prefix and suffix of a job's scope name.
const PREFIX: &str = "ffrtmp-";
/// systemd's error for a unit name in use.
const UNIT_EXISTS: &str = "org.freedesktop.systemd1.UnitExists";
const SUFFIX: &str = ".scope";

/// The unit of job `job`: `ffrtmp-<job>.scope`. Job ids are
/// `[A-Za-z0-9._-]`, all of it valid in unit names.
pub(crate) fn unit_name(job: &str) -> String {
    format!("{PREFIX}{job}{SUFFIX}")
}

/// The job a cgroup path is the scope of, if it is one.
pub(crate) fn job_of_cgroup(path: &str) -> Option<&str> {
    let last = path.rsplit('/').next()?;
    let job = last.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    job.parse::<JobId>().ok().map(|_| job)
}

/// What systemd is asked for: a scope holding `pids` (the first is the
/// process whose move is waited for), beside `origin`, tied to its unit.
#[derive(Debug)]
pub(crate) struct Request<'a> {
    pub pids: &'a [u32],
    pub origin: &'a Origin,
    /// `systemctl status` shows it beside the unit name.
    pub description: String,
    pub tie: Tie,
}

/// How a job's scope follows the unit its process came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tie {
    /// `BindsTo=`: stopped whenever that unit stops, also when its main
    /// process dies. For processes ffrtmp finds (`watch`, `attach`): had
    /// they stayed in the unit, its end would have ended them.
    Bound,
    /// `PartOf=`: stopped when that unit is stopped or restarted, not when
    /// it merely goes inactive. For `run`: when the wrapper is its unit's
    /// main process, its kill -9 ends the unit, and must not end the stream.
    Part,
}

impl Tie {
    fn property(self) -> &'static str {
        match self {
            Tie::Bound => "BindsTo",
            Tie::Part => "PartOf",
        }
    }
}

/// Where a process came from: its cgroup before ffrtmp moved it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Origin {
    pub cgroup: CgroupPath,
}

impl Origin {
    /// The origin of a process whose v2 cgroup paths (from
    /// `/proc/PID/cgroup`) are `paths`: one path, or none is known.
    pub(crate) fn of(paths: &[String]) -> Option<Self> {
        let [path] = paths else { return None };
        CgroupPath::new(path).ok().map(|cgroup| Origin { cgroup })
    }

    /// Its unit (the nearest `.service` or `.scope`), if it is in one.
    pub(crate) fn unit(&self) -> Option<String> {
        systemd::unit_of(&self.cgroup).map(|u| last(&u).to_string())
    }

    /// The slice a scope beside it goes into, and that slice's cgroup.
    fn slice(&self) -> (String, CgroupPath) {
        let slice = self
            .cgroup
            .lineage()
            .into_iter()
            .rev()
            .find(|cg| last(cg).ends_with(".slice"));
        match slice {
            Some(cg) => (last(&cg).to_string(), cg),
            None => (
                "system.slice".into(),
                CgroupPath::new("/system.slice").unwrap_or_else(|_| self.cgroup.clone()),
            ),
        }
    }

    /// Whether a system scope may take it: not inside a user manager's
    /// tree (`user@UID.service`), which is its user's.
    pub(crate) fn movable(&self) -> bool {
        !systemd::in_user_manager(&self.cgroup)
    }
}

fn last(cg: &CgroupPath) -> &str {
    cg.as_str().rsplit('/').next().unwrap_or_default()
}

/// The system manager, asked for job scopes. Used from one thread (the job
/// maker's, or `run`'s and `attach`'s).
#[derive(Debug)]
pub(crate) struct Systemd(Manager);

/// Why a scope was not made.
#[derive(Debug, thiserror::Error)]
pub enum ScopeError {
    #[error(transparent)]
    Bus(CallError),
    #[error("systemd refused scope {unit}: {reason}")]
    Refused { unit: String, reason: String },
    #[error("unit {0} already exists: another job uses this job id")]
    Exists(String),
    #[error("systemd did not move process {pid} into {unit} within {MOVE_TIMEOUT:?}")]
    NotMoved { pid: u32, unit: String },
}

impl Systemd {
    /// A client; it connects at its first call.
    pub(crate) fn new() -> Result<Self, GovernError> {
        Manager::new(Which::System, CALL_TIMEOUT).map(Systemd)
    }

    /// Calls a method of systemd's manager object; a refusal names `unit`.
    fn call<B>(&mut self, method: &str, unit: &str, body: &B) -> Result<zbus::Message, ScopeError>
    where
        B: serde::Serialize + zbus::zvariant::DynamicType,
    {
        self.0.call_manager(method, body).map_err(|e| match e {
            CallError::Refused(reason) => ScopeError::Refused {
                unit: unit.to_string(),
                reason,
            },
            bus @ CallError::Bus(..) => ScopeError::Bus(bus),
        })
    }

    /// Whether a scope may be tied to `unit`: it is loaded and running
    /// (active, or still starting, as a oneshot is), and its `KillMode=`
    /// is not `process` or `none` (it asked for its children to outlive
    /// it). Binding to an inactive unit would start it.
    fn may_tie_to(&mut self, unit: &str) -> bool {
        let state = self
            .0
            .string(unit, "org.freedesktop.systemd1.Unit", "ActiveState");
        if !matches!(
            state.as_deref(),
            Some("active" | "activating" | "reloading")
        ) {
            return false;
        }
        let Some(iface) = Manager::type_interface(unit) else {
            return false;
        };
        let mode = self.0.string(unit, iface, "KillMode");
        mode.is_some() && !matches!(mode.as_deref(), Some("process" | "none"))
    }

    /// What a loaded job scope is tied to, and how (empty: nothing, or
    /// unknown).
    fn tied_to(&mut self, unit: &str) -> (&'static str, Vec<String>) {
        for tie in [Tie::Bound, Tie::Part] {
            let units = self
                .0
                .value(unit, "org.freedesktop.systemd1.Unit", tie.property())
                .and_then(|v| Vec::<String>::try_from(v).ok())
                .unwrap_or_default();
            if !units.is_empty() {
                return (tie.property(), units);
            }
        }
        (Tie::Bound.property(), Vec::new())
    }

    /// Whether `unit`, whose cgroup `dir` holds no process, is collected
    /// within [`MOVE_TIMEOUT`]; false at once if it holds one (a live job).
    fn collected(&mut self, unit: &str, dir: &Path) -> bool {
        let empty = || {
            std::fs::read_to_string(dir.join("cgroup.procs"))
                .map_or(true, |procs| procs.trim().is_empty())
        };
        let deadline = Instant::now() + MOVE_TIMEOUT;
        while empty() && Instant::now() < deadline {
            if self
                .0
                .value(unit, "org.freedesktop.systemd1.Unit", "Id")
                .is_none()
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// Asks systemd for job `job`'s scope as `request` says, with
    /// `limits`; waits until the process is in it and reads the limits
    /// back. Limits systemd has no property for are in `Applied`'s failures
    /// (see [`unsupported`] to ask before). `mount`: the v2 hierarchy.
    pub(crate) fn start_scope(
        &mut self,
        mount: &super::layout::Mount,
        job: &JobId,
        request: &Request<'_>,
        limits: &Limits,
    ) -> Result<(CgroupPath, PathBuf, Applied), ScopeError> {
        let Request {
            pids,
            origin,
            description,
            tie,
        } = request;
        let pid = pids.first().copied().unwrap_or_default();
        let unit = unit_name(job.as_str());
        let (slice, slice_cg) = origin.slice();
        let path = slice_cg.child(&unit);
        let mut props: Vec<(&str, Value<'_>)> = vec![
            ("Description", Value::from(description.as_str())),
            ("PIDs", Value::from(pids.to_vec())),
            ("Slice", Value::from(slice.as_str())),
            // The exit report reads memory.peak, memory.events and cpu.stat.
            ("MemoryAccounting", Value::from(true)),
            ("CPUAccounting", Value::from(true)),
            ("TasksAccounting", Value::from(true)),
            // Gone once empty, failed or not: a node runs thousands of jobs,
            // and each one's end is in the event stream.
            ("CollectMode", Value::from("inactive-or-failed")),
            // An OOM kill under the job's memory.max ends the process the
            // kernel chose, as on any other host; systemd's default (`stop`)
            // then also killed the rest of the scope — `run`'s wrapper, which
            // reported a detach instead of the OOM kill (measured, 252).
            ("OOMPolicy", Value::from("continue")),
        ];
        // Tied, not ordered: `After=` would make the scope's start wait
        // for a unit still starting (measured: a oneshot's transcoder was
        // not moved in 5 s), and stopping needs no order. From another
        // job's scope (attached again under a new id), the tie is that
        // scope's: bound to the old scope, the new one was stopped — and
        // the process killed — as soon as the move emptied the old one.
        let (property, units) = match origin.unit() {
            Some(u) if job_of_cgroup(&u).is_some() => self.tied_to(&u),
            Some(u) if self.may_tie_to(&u) => (tie.property(), vec![u]),
            _ => (tie.property(), Vec::new()),
        };
        if !units.is_empty() {
            props.push((property, Value::from(units)));
        }
        let mut props_of = Properties(Vec::new());
        limits.visit(&mut props_of);
        for p in &props_of.0 {
            props.push((p.name, dbus_value(&p.value)));
        }
        let aux: Vec<(&str, Vec<(&str, Value<'_>)>)> = Vec::new();
        let body = (unit.as_str(), "fail", props, aux);
        let start = |this: &mut Self| this.call("StartTransientUnit", &unit, &body);
        let mut started = start(self);
        // The same job id's last scope, emptied a moment ago and not yet
        // collected (a job started again at once): once it is gone, the
        // name is free.
        if matches!(&started, Err(ScopeError::Refused { reason, .. }) if reason.starts_with(UNIT_EXISTS))
            && !pid_in_cgroup(pid, &path)
            && self.collected(&unit, &mount.dir_of(&path))
        {
            started = start(self);
        }
        match started {
            Ok(_) => {}
            // Its scope already, holding it (attached again): its limits are
            // changed in place, as `systemctl set-property --runtime` does.
            Err(ScopeError::Refused { reason, .. })
                if reason.starts_with(UNIT_EXISTS) && pid_in_cgroup(pid, &path) =>
            {
                let props: Vec<(&str, Value<'_>)> = props_of
                    .0
                    .iter()
                    .map(|p| (p.name, dbus_value(&p.value)))
                    .collect();
                self.call("SetUnitProperties", &unit, &(unit.as_str(), true, props))?;
            }
            Err(ScopeError::Refused { reason, .. }) if reason.starts_with(UNIT_EXISTS) => {
                return Err(ScopeError::Exists(unit));
            }
            Err(e) => return Err(e),
        }
        // The job runs in systemd's next loop iteration; its end is the
        // process in the scope's cgroup.
        let deadline = Instant::now() + MOVE_TIMEOUT;
        let mut pause = Duration::from_micros(200);
        while !pid_in_cgroup(pid, &path) {
            if Instant::now() > deadline || !Path::new(&format!("/proc/{pid}")).exists() {
                return Err(ScopeError::NotMoved { pid, unit });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(10));
        }
        let dir = mount.dir_of(&path);
        let mut check = ReadBack {
            dir: &dir,
            applied: Applied::default(),
        };
        limits.visit(&mut check);
        let applied = check.applied;
        Ok((path, dir, applied))
    }
}

/// The limits of `limits` systemd has no property for, and why: a process
/// that must keep them (a staged one) is not given a scope.
pub(crate) fn unsupported(limits: &Limits) -> Vec<(crate::limits::LimitName, String)> {
    struct Unsupported(Vec<(crate::limits::LimitName, String)>);
    impl Visit for Unsupported {
        fn visit<L: Limit>(&mut self, limit: &L) {
            if L::CGROUP.is_some()
                && let Err(why) = limit.systemd()
            {
                self.0.push((L::NAME, why.to_string()));
            }
        }
    }
    let mut u = Unsupported(Vec::new());
    limits.visit(&mut u);
    u.0
}

/// A limit property's value as D-Bus carries it.
fn dbus_value(value: &crate::limits::PropertyValue) -> Value<'_> {
    match value {
        crate::limits::PropertyValue::Number(n) => Value::from(*n),
        crate::limits::PropertyValue::Devices(devices) => Value::from(devices.clone()),
    }
}

/// The unit properties of the cgroup limits that have them.
struct Properties(Vec<crate::limits::Property>);

impl Visit for Properties {
    fn visit<L: Limit>(&mut self, limit: &L) {
        if L::CGROUP.is_some()
            && let Ok(props) = limit.systemd()
        {
            self.0.extend(props);
        }
    }
}

/// Reads back what systemd wrote, through the same code that writes a
/// job's limits elsewhere: each "write" reads the file and must find the
/// value ffrtmp would have written — in a line whose first word is the
/// value's first word, with every other word of the value (a file such as
/// `io.max` spells out keys ffrtmp left alone: `1:0 rbps=max wbps=1048576
/// riops=max wiops=max` holds `1:0 wbps=1048576`).
struct ReadBack<'a> {
    dir: &'a Path,
    applied: Applied,
}

impl Files for ReadBack<'_> {
    fn write(&self, file: &str, value: &str) -> Result<String, FileError> {
        let path = self.dir.join(file);
        let back = crate::observe::proc::read_text(&path)
            .map(|s| s.trim().to_string())
            .map_err(|source| FileError::ReadBack {
                path: path.clone(),
                source,
            })?;
        let mut wanted = value.split_whitespace();
        let first = wanted.next().unwrap_or_default();
        let holds = back.lines().any(|line| {
            let mut words = line.split_whitespace();
            words.next() == Some(first) && {
                let rest: Vec<&str> = words.collect();
                wanted.clone().all(|w| rest.contains(&w))
            }
        });
        if holds {
            Ok(back)
        } else {
            Err(FileError::Differs {
                path,
                back,
                value: value.to_string(),
            })
        }
    }
}

impl Visit for ReadBack<'_> {
    fn visit<L: Limit>(&mut self, limit: &L) {
        if L::CGROUP.is_none() {
            return;
        }
        match limit.systemd() {
            Ok(_) => {
                let outcome = limit.apply_v2(&*self);
                self.applied.record::<L>(outcome);
            }
            Err(why) => self.applied.fail(L::NAME, why.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn scope_names_round_trip_and_nothing_else_is_a_job() {
        assert_eq!(unit_name("cam-1"), "ffrtmp-cam-1.scope");
        assert_eq!(
            job_of_cgroup("/system.slice/ffrtmp-cam-1.scope"),
            Some("cam-1")
        );
        assert_eq!(job_of_cgroup("/system.slice/ffrtmp-watch.service"), None);
        assert_eq!(job_of_cgroup("/system.slice/run-u7.scope"), None);
        assert_eq!(job_of_cgroup("/system.slice/ffrtmp-.scope"), None);
    }

    #[test]
    fn a_scope_goes_beside_its_origin_and_never_into_a_user_manager() {
        let o = |p: &str| Origin {
            cgroup: CgroupPath::new(p).unwrap(),
        };
        let worker = o("/system.slice/worker.service");
        assert_eq!(worker.unit().as_deref(), Some("worker.service"));
        assert_eq!(worker.slice().0, "system.slice");
        assert!(worker.movable());
        let session = o("/user.slice/user-1000.slice/session-3.scope");
        assert_eq!(session.slice().0, "user-1000.slice");
        assert_eq!(session.slice().1.as_str(), "/user.slice/user-1000.slice");
        assert!(!o("/user.slice/user-1000.slice/user@1000.service/app.slice/a.service").movable());
        let nowhere = o("/");
        assert_eq!(nowhere.unit(), None);
        assert_eq!(nowhere.slice().0, "system.slice");
    }

    #[test]
    fn limits_without_a_property_are_named() {
        let mut l = Limits::default();
        l.set(crate::limits::LimitName::CpuWeight, "200").unwrap();
        l.set(crate::limits::LimitName::CpuMaxBurst, "1000")
            .unwrap();
        l.set(crate::limits::LimitName::Nice, "5").unwrap();
        let u = unsupported(&l);
        assert_eq!(u.len(), 1, "{u:?}");
        assert_eq!(u[0].0, crate::limits::LimitName::CpuMaxBurst);
        let mut p = Properties(Vec::new());
        l.visit(&mut p);
        assert_eq!(p.0, vec![crate::limits::Property::number("CPUWeight", 200)]);
    }

    /// io limits go to systemd by the device's node, one property per key
    /// (`max` is no limit: left out), and are read back from a kernel
    /// `io.max` that spells out every key.
    #[test]
    fn io_limits_become_device_properties_and_read_back_from_full_lines() {
        let Some(dev) = std::fs::read_dir("/sys/dev/block")
            .ok()
            .and_then(|mut d| d.next())
            .and_then(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
        else {
            eprintln!("SKIP: no block device here");
            return;
        };
        let mut l = Limits::default();
        l.set(
            crate::limits::LimitName::IoMax,
            &format!("{dev} wbps=1048576 riops=max"),
        )
        .unwrap();
        let mut p = Properties(Vec::new());
        l.visit(&mut p);
        assert_eq!(p.0.len(), 1, "{:?}", p.0);
        assert_eq!(p.0[0].name, "IOWriteBandwidthMax");
        let crate::limits::PropertyValue::Devices(devices) = &p.0[0].value else {
            panic!("{:?}", p.0[0]);
        };
        assert!(devices[0].0.starts_with("/dev/"), "{devices:?}");
        assert_eq!(devices[0].1, 1_048_576);

        let dir = std::env::temp_dir().join(format!("ffrtmp-readback-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let read_back = |io_max: &str| {
            std::fs::write(dir.join("io.max"), io_max).unwrap();
            let mut check = ReadBack {
                dir: &dir,
                applied: Applied::default(),
            };
            l.visit(&mut check);
            check.applied
        };
        let full = format!("{dev} rbps=max wbps=1048576 riops=max wiops=max\n");
        assert!(read_back(&full).failures.is_empty());
        let other = format!("{dev} rbps=max wbps=2097152 riops=max wiops=max\n");
        assert_eq!(read_back(&other).failures.len(), 1);
        assert_eq!(read_back("").failures.len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
