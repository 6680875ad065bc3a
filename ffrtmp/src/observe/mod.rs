//! Observation backends: where `exec` and `exit` events come from.
//!
//! - [`ebpf`]: kernel programs on the `sched_process_exec`/`sched_process_exit`
//!   tracepoints; sees every process the instant it starts. Needs privilege
//!   and BTF.
//! - [`procfs`]: polling /proc; works anywhere, sees less (see its docs).
//! - [`proc`]: /proc readers shared by procfs polling and adoption.
//!
//! `watch` (in [`crate::cli`]) picks the backend: `auto` tries eBPF and falls
//! back to procfs with a `degraded` event that says why.
pub mod ebpf;
pub mod proc;
pub mod procfs;

/// Which backend `watch` uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// eBPF when it can be loaded, else procfs (with a `degraded` event).
    Auto,
    /// eBPF only; fail if it cannot be loaded.
    Ebpf,
    /// Poll /proc.
    Procfs,
}
