//! ffrtmp observes and governs live-transcoding workloads on edge nodes.
//!
//! Layout (see docs/ARCHITECTURE.md):
//! - [`observe`]: where process events come from (eBPF tracepoints, /proc).
//! - [`events`]: the event types and their JSON-lines/text encoding.
//! - [`limits`]: the limits a job can ask for, one table row each.
//! - [`govern`]: cgroups (v1/v2), nice and oom_score_adj for a job.
//! - [`daemon`]: `watch`'s governor, job maker, reaper and event order.
//! - [`policy`]: which processes `watch` governs, and how.
//! - [`pressure`]: whether live jobs get the CPU they need; each tier's demand.
//! - [`cli`]: the `ffrtmp` command line.
//! - [`alloc`]: the shipped binary's allocator, chosen per command.
//! - [`errors`]: one way to print an error and its causes.
pub mod alloc;
pub mod cli;
pub mod daemon;
pub mod errors;
pub mod events;
pub mod govern;
pub mod limits;
pub mod observe;
pub mod policy;
pub mod pressure;
