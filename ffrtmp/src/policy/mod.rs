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
//! Without `--policy`, [`Policy::embedded`] governs `ffmpeg` and
//! `gst-launch-1.0` (default.toml, documented in docs/POLICY.md): a live
//! input makes a job `live`, anything else `batch`.
pub(crate) mod template;

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt, fs,
    ops::Range,
    path::{Path, PathBuf},
};

use globset::{Glob, GlobMatcher};
use regex::Regex;
use serde::{Deserialize, de};

use crate::limits::{JobId, LimitName, Limits, Tier};
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
        // Lines are found by binary search in one index: a scan from the
        // start per rule made 100 000 rules take over 10 s.
        let lines = Lines::new(text);
        let invalid = |span: Option<Range<usize>>, message: String| PolicyError::Invalid {
            origin: origin.to_string(),
            line: span.map_or(1, |s| lines.line(s.start)),
            message,
        };
        let file: RawFile =
            toml::from_str(text).map_err(|e| invalid(e.span(), e.message().into()))?;
        if file.rule.is_empty() {
            return Err(invalid(None, "the policy has no [[rule]]".into()));
        }
        let mut tiers: BTreeMap<Tier, Limits> =
            Tier::ALL.into_iter().map(|t| (t, t.defaults())).collect();
        for (name, table) in file.tier {
            let tier = name
                .get_ref()
                .parse::<Tier>()
                .map_err(|m| invalid(Some(name.span()), m.to_string()))?;
            let limits =
                tier_limits(table).map_err(|(span, message)| invalid(Some(span), message))?;
            tiers.insert(tier, limits);
        }
        let mut rules = Vec::with_capacity(file.rule.len());
        // Rule names are cgroup names too (staging): they must differ as such.
        let mut names = std::collections::HashMap::new();
        for (i, raw) in file.rule.into_iter().enumerate() {
            let span = raw.span();
            let rule = raw
                .into_inner()
                .validate(i + 1, lines.line(span.start), span.clone(), &tiers)
                .map_err(|(span, message)| invalid(Some(span), message))?;
            let as_cgroup = template::sanitise(&rule.name);
            if let Some((other, line)) =
                names.insert(as_cgroup.clone(), (rule.name.clone(), rule.line))
            {
                return Err(invalid(
                    Some(span),
                    format!(
                        "rule {:?} has the same name as rule {other:?} (line {line}) once made a cgroup name ({as_cgroup}): rule names must differ in letters, digits, '.', '_' and '-'",
                        rule.name
                    ),
                ));
            }
            rules.push(rule);
        }
        Ok(Policy {
            origin: origin.to_string(),
            rules,
            tiers,
            warnings: Vec::new(),
        })
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

/// Where each line of a text starts, to turn byte offsets into lines.
struct Lines(Vec<usize>);

impl Lines {
    fn new(text: &str) -> Self {
        Lines(
            text.bytes()
                .enumerate()
                .filter(|&(_, b)| b == b'\n')
                .map(|(i, _)| i)
                .collect(),
        )
    }

    /// The 1-based line of byte `offset`.
    fn line(&self, offset: usize) -> usize {
        self.0.partition_point(|&nl| nl < offset) + 1
    }
}

// ---- The file as written, before validation. ----

type Spanned<T> = toml::Spanned<T>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    rule: Vec<Spanned<RawRule>>,
    /// `[tier.NAME]`: limit keys replacing that tier's limits.
    #[serde(default)]
    tier: BTreeMap<Spanned<String>, BTreeMap<Spanned<String>, Spanned<RawLimit>>>,
}

/// A string or a list of strings.
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// A limit's value as written: a string, an integer (`memory_max =
/// 4294967296`), or, for a repeatable limit (`io_max`), a list.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawLimit {
    Text(String),
    Int(i64),
    List(Vec<String>),
}

/// The keys of a rule that are not limits.
const RULE_KEYS: &[&str] = &[
    "name",
    "comm",
    "exe",
    "argv",
    "user",
    "uid",
    "parent_comm",
    "action",
    "job_id",
    "tier",
];

/// One `[[rule]]` as written. Its limit keys are the limits table's names
/// (`crate::limits`), so a new limit is a new policy key with no change
/// here; any other key is refused with its line.
#[derive(Default)]
struct RawRule {
    name: Option<Spanned<String>>,
    comm: Option<Spanned<OneOrMany>>,
    exe: Option<Spanned<String>>,
    argv: Option<Spanned<String>>,
    user: Option<Spanned<String>>,
    uid: Option<Spanned<u32>>,
    parent_comm: Option<Spanned<OneOrMany>>,
    action: Option<Spanned<String>>,
    job_id: Option<Spanned<String>>,
    tier: Option<Spanned<String>>,
    /// The limits, in file order.
    limits: Vec<(LimitName, Spanned<RawLimit>)>,
    /// The first key that is neither, for the error (with its line).
    unknown: Option<Spanned<String>>,
}

impl<'de> Deserialize<'de> for RawRule {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Keys;
        impl<'de> de::Visitor<'de> for Keys {
            type Value = RawRule;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a [[rule]] table")
            }

            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<RawRule, A::Error> {
                let mut r = RawRule::default();
                while let Some(key) = map.next_key::<Spanned<String>>()? {
                    match key.get_ref().as_str() {
                        "name" => r.name = Some(map.next_value()?),
                        "comm" => r.comm = Some(map.next_value()?),
                        "exe" => r.exe = Some(map.next_value()?),
                        "argv" => r.argv = Some(map.next_value()?),
                        "user" => r.user = Some(map.next_value()?),
                        "uid" => r.uid = Some(map.next_value()?),
                        "parent_comm" => r.parent_comm = Some(map.next_value()?),
                        "action" => r.action = Some(map.next_value()?),
                        "job_id" => r.job_id = Some(map.next_value()?),
                        "tier" => r.tier = Some(map.next_value()?),
                        other => {
                            if let Some(limit) = LimitName::from_key(other) {
                                r.limits.push((limit, map.next_value()?));
                            } else {
                                map.next_value::<de::IgnoredAny>()?;
                                r.unknown.get_or_insert(key);
                            }
                        }
                    }
                }
                Ok(r)
            }
        }
        d.deserialize_map(Keys)
    }
}

type Invalid = (Range<usize>, String);

/// The limits of a rule, each parsed by the limits table.
fn limits_of(raw: &[(LimitName, Spanned<RawLimit>)]) -> Result<Limits, Invalid> {
    let mut limits = Limits::default();
    for (name, value) in raw {
        let span = value.span();
        let texts = match value.get_ref() {
            RawLimit::Text(s) => vec![s.clone()],
            RawLimit::Int(n) => vec![n.to_string()],
            RawLimit::List(l) if name.row().repeatable => l.clone(),
            RawLimit::List(_) => return Err((span, format!("{name} takes one value, not a list"))),
        };
        for text in texts {
            limits
                .set(*name, &text)
                .map_err(|e| (span.clone(), e.to_string()))?;
        }
    }
    limits.validate().map_err(|e| {
        let span = raw.last().map_or(0..0, |(_, v)| v.span());
        (span, e.to_string())
    })?;
    Ok(limits)
}

/// A `[tier.NAME]` table: limit keys only, each parsed by the limits table.
fn tier_limits(table: BTreeMap<Spanned<String>, Spanned<RawLimit>>) -> Result<Limits, Invalid> {
    let mut raw = Vec::with_capacity(table.len());
    for (key, value) in table {
        let Some(name) = LimitName::from_key(key.get_ref()) else {
            let expected: Vec<String> = LimitName::ALL.iter().map(|n| format!("`{n}`")).collect();
            return Err((
                key.span(),
                format!(
                    "unknown limit `{}` in a tier, expected one of {}",
                    key.get_ref(),
                    expected.join(", ")
                ),
            ));
        };
        raw.push((name, value));
    }
    limits_of(&raw)
}

fn comm_list(value: Option<Spanned<OneOrMany>>, key: &str) -> Result<Option<Vec<String>>, Invalid> {
    let Some(value) = value else {
        return Ok(None);
    };
    let span = value.span();
    let names = value.into_inner().into_vec();
    if names.is_empty() {
        return Err((span, format!("{key} is an empty list")));
    }
    for name in &names {
        if name.is_empty() || name.len() > COMM_MAX {
            return Err((
                span,
                format!(
                    "{key} {name:?} must be 1 to {COMM_MAX} bytes: the kernel keeps only the first {COMM_MAX} bytes of a process name"
                ),
            ));
        }
    }
    Ok(Some(names))
}

impl RawRule {
    /// `line`/`span`: where the rule is, for errors about the whole rule.
    /// `tiers`: each tier's limits, for a rule that names one.
    fn validate(
        self,
        index: usize,
        line: usize,
        span: Range<usize>,
        tiers: &BTreeMap<Tier, Limits>,
    ) -> Result<Rule, Invalid> {
        let name = self
            .name
            .as_ref()
            .map_or_else(|| format!("rule-{index}"), |n| n.get_ref().clone());
        let argv = self
            .argv
            .as_ref()
            .map(|a| {
                Regex::new(a.get_ref())
                    .map_err(|e| (a.span(), format!("argv is not a valid regex: {e}")))
            })
            .transpose()?;
        let exe = self
            .exe
            .as_ref()
            .map(|g| {
                Glob::new(g.get_ref())
                    .map(|g| g.compile_matcher())
                    .map_err(|e| (g.span(), format!("exe is not a valid glob: {e}")))
            })
            .transpose()?;
        let uid = match (&self.uid, &self.user) {
            (Some(_), Some(u)) => return Err((u.span(), "give user or uid, not both".into())),
            (Some(uid), None) => Some(*uid.get_ref()),
            (None, Some(user)) => Some(uid_of(user.get_ref()).map_err(|m| (user.span(), m))?),
            (None, None) => None,
        };
        self.refuse_unknown()?;
        let action = self.action(argv.as_ref(), tiers)?;
        let has_condition = self.comm.is_some()
            || exe.is_some()
            || argv.is_some()
            || uid.is_some()
            || self.parent_comm.is_some();
        let comm = comm_list(self.comm, "comm")?;
        let parent_comm = comm_list(self.parent_comm, "parent_comm")?;
        if !has_condition {
            // A rule without conditions would govern every process.
            return Err((
                span,
                format!(
                    "rule {name:?} has no condition (comm, exe, argv, user/uid or parent_comm): it would match every process"
                ),
            ));
        }
        Ok(Rule {
            name,
            line,
            comm,
            exe,
            argv,
            uid,
            parent_comm,
            action,
        })
    }

    /// A key no rule has: refused, naming the keys there are.
    fn refuse_unknown(&self) -> Result<(), Invalid> {
        let Some(key) = &self.unknown else {
            return Ok(());
        };
        let mut expected: Vec<&str> = RULE_KEYS.to_vec();
        expected.extend(LimitName::ALL.iter().map(|n| n.as_str()));
        let expected: Vec<String> = expected.iter().map(|k| format!("`{k}`")).collect();
        Err((
            key.span(),
            format!(
                "unknown field `{}`, expected one of {}",
                key.get_ref(),
                expected.join(", ")
            ),
        ))
    }

    /// What the rule does: ignore (and then set nothing), or govern with
    /// its job id template (whose captures come from `argv`) and its
    /// limits over its tier's.
    fn action(
        &self,
        argv: Option<&Regex>,
        tiers: &BTreeMap<Tier, Limits>,
    ) -> Result<Action, Invalid> {
        let ignore = match &self.action {
            None => false,
            Some(a) => match a.get_ref().as_str() {
                "govern" => false,
                "ignore" => true,
                other => {
                    return Err((
                        a.span(),
                        format!("action {other:?} must be \"govern\" or \"ignore\""),
                    ));
                }
            },
        };
        let explicit = limits_of(&self.limits)?;
        let tier = self
            .tier
            .as_ref()
            .map(|t| {
                t.get_ref()
                    .parse::<Tier>()
                    .map_err(|m| (t.span(), m.to_string()))
            })
            .transpose()?;
        if ignore {
            let settings = [
                self.job_id.as_ref().map(toml::Spanned::span),
                self.tier.as_ref().map(toml::Spanned::span),
                self.limits.first().map(|(_, v)| v.span()),
            ];
            if let Some(span) = settings.into_iter().flatten().next() {
                return Err((span, "an ignore rule sets no job_id, tier or limits".into()));
            }
            return Ok(Action::Ignore);
        }
        let captures: BTreeSet<String> = argv
            .map(|re| re.capture_names().flatten().map(String::from).collect())
            .unwrap_or_default();
        let (text, span) = match &self.job_id {
            Some(t) => (t.get_ref().as_str(), t.span()),
            None => (DEFAULT_JOB_ID, 0..0),
        };
        let job_id = Template::parse(text, &captures).map_err(|e| (span, e.to_string()))?;
        let limits = match tier {
            Some(t) => {
                let limits = Tier::resolve(&tiers[&t], &explicit);
                limits.validate().map_err(|e| {
                    let at = self.tier.as_ref().map_or(0..0, toml::Spanned::span);
                    (at, format!("with tier {t}: {e}"))
                })?;
                limits
            }
            None => explicit,
        };
        Ok(Action::Govern {
            job_id,
            limits,
            tier,
        })
    }
}

/// A user name's uid, from the system's user database.
fn uid_of(user: &str) -> Result<u32, String> {
    match nix::unistd::User::from_name(user) {
        Ok(Some(u)) => Ok(u.uid.as_raw()),
        Ok(None) => Err(format!("no user {user:?} on this system")),
        Err(e) => Err(format!("looking up user {user:?}: {e}")),
    }
}

#[cfg(test)]
mod tests;
