//! Policies: which new processes `ffrtmp watch` governs, and how.
//!
//! A policy is an ordered list of rules in TOML (docs/POLICY.md). A rule
//! matches on any of `comm` (exact, one name or a list), `exe` (a glob on
//! the executable's path), `argv` (a regex on the arguments joined by
//! spaces), `user`/`uid` and `parent_comm`; every condition given must hold,
//! and the first matching rule wins. It then either governs the process —
//! a job id from its `job_id` template and the same limits as `ffrtmp run`
//! — or, with `action = "ignore"`, leaves it alone.
//!
//! Everything is validated when the policy loads, and an error names the
//! file and line, so a bad policy stops the daemon before it starts (exit
//! 2) instead of misgoverning at the first match. [`Policy::comm_filter`]
//! gives the names the kernel-side pre-filter passes; with a rule that does
//! not name its `comm`, no such filter is possible and every exec goes to
//! user space.
//!
//! A governing rule may name a `tier` (`live`, `standard`, `batch`,
//! `limits::Tier`): its jobs get the tier's limits, under the rule's own
//! (which win). A policy may replace a tier's limits with a `[tier.NAME]`
//! table of limit keys.
//!
//! `file.rs` reads the TOML into validated rules; this module is the rules
//! and the decision ([`Policy::decide`]), `template.rs` the job id
//! templates.
//!
//! Without `--policy`, [`Policy::embedded`] governs `ffmpeg` and
//! `gst-launch-1.0` (default.toml, documented in docs/POLICY.md): a live
//! input makes a job `live`, anything else `batch`.
mod file;
pub(crate) mod template;

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt, fs,
    path::{Path, PathBuf},
};

use globset::GlobMatcher;
use regex::Regex;

use crate::limits::{JobId, Limits, Tier};
use template::Template;

/// The policy used without `--policy`.
pub const EMBEDDED: &str = include_str!("default.toml");
/// Name of the embedded policy in messages.
pub const EMBEDDED_NAME: &str = "<embedded default policy>";
/// The largest policy file read: a policy is a few dozen rules (the
/// embedded one is 2 KiB); `policy check /dev/zero` read until out of
/// memory before this cap.
pub const MAX_POLICY_BYTES: u64 = 1 << 20;
/// Longest `comm` the kernel keeps (TASK_COMM_LEN - 1).
pub const COMM_MAX: usize = 15;
/// Job-id template of a rule that gives none.
pub const DEFAULT_JOB_ID: &str = "{comm}-{pid}";

/// Errors while loading a policy.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("reading policy file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("policy file {path} is larger than {} KiB: not a policy", MAX_POLICY_BYTES >> 10)]
    TooLarge { path: PathBuf },
    #[error("policy file {path} is not a regular file")]
    NotAFile { path: PathBuf },
    #[error("{origin}:{line}: {message}")]
    Invalid {
        origin: String,
        line: usize,
        message: String,
    },
}

/// What a matching rule does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// `limits`: the rule's own over its tier's, resolved at load.
    Govern {
        job_id: Template,
        limits: Limits,
        tier: Option<Tier>,
    },
    Ignore,
}

/// One validated rule.
#[derive(Clone, Debug)]
pub struct Rule {
    /// Its `name`, or `rule-N` (1-based, in file order).
    pub name: String,
    /// Line of its `[[rule]]` header, for messages.
    pub line: usize,
    comm: Option<Vec<String>>,
    exe: Option<GlobMatcher>,
    argv: Option<Regex>,
    uid: Option<u32>,
    parent_comm: Option<Vec<String>>,
    pub action: Action,
}

/// What is known of a process when the policy decides about it. `exe`,
/// `argv` and `parent_comm` are only read when some rule needs them
/// ([`Policy::needs`]).
#[derive(Clone, Debug, Default)]
pub struct Candidate {
    pub pid: u32,
    pub comm: String,
    pub uid: u32,
    pub exe: Option<String>,
    pub argv: Option<Vec<String>>,
    pub parent_comm: Option<String>,
}

/// The facts a policy's rules look at beyond comm and uid.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Needs {
    pub exe: bool,
    pub argv: bool,
    pub parent_comm: bool,
}

/// The policy's decision about one process.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision<'p> {
    Govern {
        rule: &'p Rule,
        job_id: JobId,
        limits: &'p Limits,
        tier: Option<Tier>,
    },
    Ignore {
        rule: &'p Rule,
    },
}

/// An ordered list of rules.
#[derive(Clone, Debug)]
pub struct Policy {
    /// Where it came from (a path, or [`EMBEDDED_NAME`]).
    pub origin: String,
    pub rules: Vec<Rule>,
    /// Each tier's limits: its defaults, or the policy's `[tier.NAME]`.
    pub tiers: BTreeMap<Tier, Limits>,
    /// What is risky about the file itself (who may write it), to be said.
    pub warnings: Vec<String>,
}

impl Policy {
    /// Reads and validates a policy file (at most [`MAX_POLICY_BYTES`],
    /// UTF-8). A file that others may write is loaded with a warning.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        use std::io::Read as _;
        use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
        let read_err = |source| PolicyError::Read {
            path: path.to_path_buf(),
            source,
        };
        // Non-blocking: a FIFO or device put in its place must not hold up
        // `watch` (at a reload, governing waits for this); then refused.
        let file = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(read_err)?;
        let meta = file.metadata().map_err(read_err)?;
        if !meta.is_file() {
            return Err(PolicyError::NotAFile {
                path: path.to_path_buf(),
            });
        }
        let mut bytes = Vec::new();
        file.take(MAX_POLICY_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(read_err)?;
        if bytes.len() as u64 > MAX_POLICY_BYTES {
            return Err(PolicyError::TooLarge {
                path: path.to_path_buf(),
            });
        }
        let origin = path.display().to_string();
        let text = String::from_utf8(bytes).map_err(|e| {
            let at = e.utf8_error().valid_up_to();
            PolicyError::Invalid {
                line: e.as_bytes()[..at].split(|&b| b == b'\n').count(),
                origin: origin.clone(),
                message: format!("not UTF-8 text (byte {} is invalid)", at + 1),
            }
        })?;
        let mut policy = Self::parse(&text, &origin)?;
        if meta.mode() & 0o002 != 0 {
            policy.warnings.push(format!(
                "{origin} is writable by every user: anyone can change what is governed (chmod o-w)"
            ));
        } else if meta.mode() & 0o020 != 0 && meta.gid() != 0 {
            policy.warnings.push(format!(
                "{origin} is writable by group {}: its members can change what is governed",
                meta.gid()
            ));
        }
        Ok(policy)
    }

    /// The built-in policy.
    pub fn embedded() -> Self {
        Self::parse(EMBEDDED, EMBEDDED_NAME).expect("the embedded policy is valid (unit-tested)")
    }

    /// Parses and validates policy `text`; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, PolicyError> {
        file::parse(text, origin)
    }

    /// The first rule that matches `c`, and what it says.
    pub fn decide(&self, c: &Candidate) -> Option<Decision<'_>> {
        self.rules.iter().find_map(|rule| {
            let captures = rule.matches(c)?;
            Some(match &rule.action {
                Action::Ignore => Decision::Ignore { rule },
                Action::Govern {
                    job_id,
                    limits,
                    tier,
                } => Decision::Govern {
                    rule,
                    job_id: job_id.expand(|field| match field {
                        "comm" => Some(c.comm.clone()),
                        "pid" => Some(c.pid.to_string()),
                        "uid" => Some(c.uid.to_string()),
                        "rule" => Some(rule.name.clone()),
                        name => captures
                            .iter()
                            .find(|(n, _)| n == name)
                            .map(|(_, v)| v.clone()),
                    }),
                    limits,
                    tier: *tier,
                },
            })
        })
    }

    /// The comms of processes that some rule may govern, for the kernel's
    /// pre-filter; `None` when a governing rule does not restrict `comm`
    /// (then any exec may match). Ignore rules only ever narrow this set.
    pub fn comm_filter(&self) -> Option<BTreeSet<String>> {
        let mut comms = BTreeSet::new();
        for rule in &self.rules {
            if rule.action == Action::Ignore {
                continue;
            }
            comms.extend(rule.comm.as_ref()?.iter().cloned());
        }
        Some(comms)
    }

    /// How many rules govern (not `ignore`).
    pub fn governing_rules(&self) -> usize {
        self.rules
            .iter()
            .filter(|r| r.action != Action::Ignore)
            .count()
    }

    /// What the rules look at beyond comm and uid.
    pub fn needs(&self) -> Needs {
        let mut n = Needs::default();
        for r in &self.rules {
            n.exe |= r.exe.is_some();
            n.argv |= r.argv.is_some();
            n.parent_comm |= r.parent_comm.is_some();
        }
        n
    }
}

impl Rule {
    /// `Some(named argv captures)` when every condition holds.
    fn matches(&self, c: &Candidate) -> Option<Vec<(String, String)>> {
        if let Some(comms) = &self.comm
            && !comms.contains(&c.comm)
        {
            return None;
        }
        if self.uid.is_some_and(|uid| uid != c.uid) {
            return None;
        }
        if let Some(glob) = &self.exe
            && !c.exe.as_deref().is_some_and(|e| glob.is_match(e))
        {
            return None;
        }
        if let Some(parents) = &self.parent_comm
            && !c.parent_comm.as_ref().is_some_and(|p| parents.contains(p))
        {
            return None;
        }
        let mut captured = Vec::new();
        if let Some(re) = &self.argv {
            let joined = c.argv.as_ref()?.join(" ");
            let caps = re.captures(&joined)?;
            for name in re.capture_names().flatten() {
                let value = caps.name(name).map_or("", |m| m.as_str());
                captured.push((name.to_string(), value.to_string()));
            }
        }
        Some(captured)
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (line {})", self.name, self.line)
    }
}

impl PartialEq for Rule {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.line == other.line
    }
}

impl Eq for Rule {}

#[cfg(test)]
mod tests;
