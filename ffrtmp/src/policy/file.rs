//! The policy file: TOML read into validated rules, every error with its
//! file and line (docs/POLICY.md). What a rule then decides is
//! `policy/mod.rs`'s.
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    ops::Range,
};

use globset::Glob;
use regex::Regex;
use serde::{Deserialize, de};

use super::{
    Action, COMM_MAX, DEFAULT_JOB_ID, Policy, PolicyError, Rule, template, template::Template,
};
use crate::limits::{LimitName, Limits, Tier};

/// Parses and validates policy `text`; `origin` names it in errors.
pub(super) fn parse(text: &str, origin: &str) -> Result<Policy, PolicyError> {
    // Lines are found by binary search in one index: a scan from the
    // start per rule made 100 000 rules take over 10 s.
    let lines = Lines::new(text);
    let invalid = |span: Option<Range<usize>>, message: String| PolicyError::Invalid {
        origin: origin.to_string(),
        line: span.map_or(1, |s| lines.line(s.start)),
        message,
    };
    let file: RawFile = toml::from_str(text).map_err(|e| invalid(e.span(), e.message().into()))?;
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
        let limits = tier_limits(table).map_err(|(span, message)| invalid(Some(span), message))?;
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
        if let Some((other, line)) = names.insert(as_cgroup.clone(), (rule.name.clone(), rule.line))
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
