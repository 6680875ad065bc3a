//! The daemon (`ffrtmp watch`): governing every new transcoder by policy.
//!
//! Each exec the observer reports goes to the governor (`governor.rs`) and its
//! [`Policy`](crate::policy::Policy); a process a rule governs is placed in
//! its job cgroup the way `attach` does it (`govern::place`) — held by a
//! pidfd whose start time was checked, the cgroup made and its limits read
//! back, the whole thread group moved, nice and oom_score_adj set — and a
//! `governed` event says what is in force and how long after the exec it
//! took (`latency_us`). A new exec gets there in two moves: at once, on the
//! thread that reads the kernel's ring, into its rule's pre-made staging
//! cgroup (its limits are in force from then on); then, on the job maker
//! thread (`daemon/maker.rs`), into its own job. Processes found by a /proc
//! scan take the same two moves. Ended jobs' cgroups are removed by the reaper
//! thread (`daemon/reaper.rs`), which never competes with governing.
//!
//! State is only a cache of the cgroup tree: which processes of which jobs
//! the daemon follows, so that their exits carry the job's report and empty
//! job cgroups are removed. At start it is rebuilt from the tree — jobs of
//! `run`, `attach` or an earlier daemon are followed where they are
//! (`tracked`), never moved — and matching processes already running are
//! governed (`adopted`); the same scan runs again after the kernel lost
//! events. The daemon never signals, stops or kills a workload: killing it
//! changes nothing for its jobs. A process already inside an ffrtmp job (a
//! child of a governed one, or a `run` workload) is never governed again:
//! children stay in their parent's job by kernel semantics.
//!
//! The order of the stream ([`stream`]): each `governed` follows its
//! `exec`; an exit whose job is still being made is held until its
//! `governed` is out, and then carries the job's report; a batch's execs are
//! governed before the exits queued ahead of them are reported. The stream
//! talks to the governor through [`Govern`], so that order is unit-tested
//! against a fake governor, without root.
//!
//! The governor asks everything of the machine through one seam,
//! `host.rs` (`Host`: a process's facts, holding it, the jobs in the tree,
//! staging, moving a pid, the clock; `MakeJobs`: the second move), whose
//! real implementation is `machine.rs`. Its decisions are split along
//! their own seams — `staging.rs` (each rule's staging cgroup and its
//! name), `follow.rs` (followed processes, recovery at start, lost exits),
//! `retry.rs` (what waits in staging, and for how long) — and `tests.rs`
//! drives the whole governor against a machine of the tests' own: no root,
//! every `cargo test`.
mod follow;
mod governor;
mod host;
mod machine;
mod maker;
pub(crate) mod notify;
pub(crate) mod pressure;
mod reaper;
pub(crate) mod reload;
mod retry;
pub(crate) mod run;
mod seen;
mod staging;
pub(crate) mod stream;
#[cfg(test)]
mod tests;

use crate::{
    events::{Degraded, Event, Exec, Exit, KernelStamp, Source, Timestamp},
    observe::proc::ProcError,
};

pub(crate) use governor::Governor;
pub(crate) use machine::Machine;
pub(crate) use stream::Stream;

/// What happened to one process, for the stream to emit.
pub(crate) type Events = Vec<Event>;

/// The receiving end of the jobs made on the maker thread: the event loop
/// waits on it beside the observer.
pub(crate) type MadeJobs<M> = tokio::sync::mpsc::UnboundedReceiver<M>;

/// What the stream needs of a governor.
pub(crate) trait Govern {
    /// A job made on the maker thread, as it comes back.
    type Made;

    /// Before `started`: the staging cgroups, the state rebuilt from the
    /// cgroup tree, and the running matches governed.
    fn start_up(&mut self) -> Result<Events, ProcError>;
    /// An exec: the events that follow it (`governed`, `degraded`), unless
    /// its job is being made elsewhere ([`Govern::is_in_flight`]).
    fn on_exec(&mut self, kernel: Option<KernelStamp>, exec: &Exec) -> Events;
    /// An exit: adds the job's report when the process was followed.
    fn on_exit(&mut self, exit: &mut Exit);
    /// Whether `pid`'s job is being made elsewhere.
    fn is_in_flight(&self, pid: u32) -> bool;
    /// How many jobs are being made elsewhere.
    fn in_flight(&self) -> usize;
    /// How many processes are followed in their jobs (for `STATUS=`).
    fn followed(&self) -> usize;
    /// Where made jobs come back (once); `None` when jobs are made inline.
    fn take_made_jobs(&mut self) -> Option<MadeJobs<Self::Made>>;
    /// A made job, now followed: its events.
    fn made(&mut self, made: Self::Made) -> Events;
    /// The maker thread stopped: nothing is in flight any more.
    fn maker_stopped(&mut self) -> Events;
    /// The kernel lost events: scan /proc at the next flush.
    fn request_rescan(&mut self);
    /// The scan asked for, if it was: its events.
    fn rescan(&mut self) -> Result<Events, ProcError>;
    /// Processes followed since the last call, for the kernel's exit filter.
    fn take_newly_followed(&mut self) -> Vec<u32>;
    /// Of `pids` (just added to the exit filter), those that ended before
    /// they were in it — the kernel dropped their exit: their `exit` events.
    fn ended_unseen(&mut self, pids: &[u32]) -> Events;
    /// When a process left in its staging cgroup (its job could not be
    /// made) is next due for another try.
    fn next_retry(&self) -> Option<std::time::Instant>;
    /// Tries again for those due: their events.
    fn retry(&mut self) -> Events;
    /// A reloaded policy, for processes that start from now on (those
    /// governed keep their jobs and limits): its events.
    fn reload(&mut self, policy: crate::policy::Policy) -> Events;
}

/// A `degraded` event about governing as a whole (no single limit).
fn note(reason: String) -> Event {
    Event::new(Timestamp::now(), Source::Ffrtmp, Degraded::note(reason))
}
