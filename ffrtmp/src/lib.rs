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
//!
//! `pub` is only what the binary, the integration tests and the fuzz
//! targets use; the rest is `pub(crate)` (`unreachable_pub` is on), and
//! the docs are built with the private items, which they link to.
#![allow(
    rustdoc::private_intra_doc_links,
    reason = "built with --document-private-items: the module docs are the design"
)]
pub mod alloc;
pub mod cli;
pub(crate) mod daemon;
pub(crate) mod errors;
pub mod events;
pub mod govern;
pub mod limits;
pub mod observe;
pub mod policy;
pub(crate) mod pressure;
