//! Reloading the policy (SIGHUP, `systemctl reload`) while `watch` runs:
//! the file is loaded and checked first; the backend's name list (new
//! names into the kernel's map before old ones leave it), the stream's
//! filter and the governor's rules change together, so every exec after
//! the `policy` event is decided by the new rules. A file that does not
//! load, or that would need the kernel's name filter widened, is refused
//! and the running policy stays.
use std::collections::BTreeSet;

use super::{Govern, Stream};
use crate::{
    errors::chain,
    events::{Event, Reloaded, Sink, Source, Timestamp},
    observe::{self, ObserveError},
    policy::Policy,
};

/// From the names a policy governs (`None`: any), the names the stream
/// passes (`None`: all, with `--all`) and those the backend wakes at once
/// for (and, when filtering, the only ones the kernel passes): with
/// `--observe-only` and `--all`, none is urgent.
pub(crate) fn names(
    comms: Option<BTreeSet<String>>,
    all: bool,
    governs: bool,
) -> (Option<BTreeSet<String>>, BTreeSet<String>) {
    let filter = if all { None } else { comms.clone() };
    let urgent = filter
        .clone()
        .or(comms.filter(|_| governs))
        .unwrap_or_default();
    (filter, urgent)
}

/// What a reload needs to know of how `watch` started.
pub(super) struct Reloader {
    /// `--policy`; `None`: the embedded policy, which a reload re-applies.
    pub(super) path: Option<std::path::PathBuf>,
    pub(super) all: bool,
    pub(super) governs: bool,
    /// The kernel passes only the policy's names (no `--all`, and every
    /// governing rule named its comm at start).
    pub(super) kernel_filters: bool,
    /// Rules governing now.
    pub(super) rules: usize,
}

impl Reloader {
    /// Reads the policy again and, if it is valid and can be applied while
    /// running, puts it in force for processes that start from now on: the
    /// names the kernel passes first, then the stream's filter and the
    /// governor's rules. A `policy` event says what happened; a bad file
    /// keeps the running policy (and `watch` running).
    pub(super) fn reload<G: Govern, S: Sink>(
        &mut self,
        stream: &mut Stream<G, S>,
        observer: &mut dyn observe::Observer,
    ) -> Result<(), ObserveError> {
        let loaded = match &self.path {
            Some(path) => Policy::load(path).map_err(|e| chain(&e).to_string()),
            None => Ok(Policy::embedded()),
        };
        let checked = loaded.and_then(|policy| {
            let comms = policy.comm_filter();
            if self.kernel_filters && comms.is_none() {
                return Err("a governing rule names no comm, so every exec would have to reach user space: the kernel's pre-filter cannot be widened while running; restart `watch` to apply this policy".to_string());
            }
            let (filter, urgent) = names(comms, self.all, self.governs);
            observer
                .set_comms(&urgent)
                .map_err(|e| chain(&e).to_string())?;
            Ok((policy, filter))
        });
        let path = self.path.as_ref().map(|p| p.display().to_string());
        let event = match checked {
            Ok((policy, filter)) => {
                for w in &policy.warnings {
                    tracing::warn!("{w}");
                }
                self.rules = policy.governing_rules();
                stream.reload(policy, filter)?;
                tracing::info!("policy reloaded: {} governing rules", self.rules);
                Reloaded {
                    path,
                    applied: true,
                    rules: self.rules,
                    error: None,
                }
            }
            Err(error) => {
                tracing::warn!("policy not reloaded, the running one stays: {error}");
                Reloaded {
                    path,
                    applied: false,
                    rules: self.rules,
                    error: Some(error),
                }
            }
        };
        stream.emit(&Event::new(Timestamp::now(), Source::Ffrtmp, event))
    }
}
