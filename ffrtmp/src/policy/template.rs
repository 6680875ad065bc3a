//! Job-id templates: `{comm}-{pid}`, or a named capture of the rule's argv
//! regex such as `live-{stream}`. Placeholders are checked when the policy
//! loads; the expanded text is sanitised to the job-id alphabet, so whatever
//! a process's arguments contain, the result names one directory under the
//! cgroup root and nothing else.
use std::collections::BTreeSet;

use crate::limits::JobId;

/// Placeholders every rule may use.
pub(crate) const BUILTIN: &[&str] = &["comm", "pid", "uid", "rule"];

/// A parsed template: literal text and placeholders, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template(Vec<Part>);

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Text(String),
    Field(String),
}

/// Why a template is invalid.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TemplateError {
    #[error("unclosed '{{' in job_id template {0:?}")]
    Unclosed(String),
    #[error("unmatched '}}' in job_id template {0:?}")]
    Unmatched(String),
    #[error(
        "job_id template {template:?} uses {{{name}}}, which is neither one of {{comm}}, {{pid}}, {{uid}}, {{rule}} nor a named group of this rule's argv regex"
    )]
    Unknown { template: String, name: String },
    #[error("job_id template is empty")]
    Empty,
}

impl Template {
    /// Parses `text`; `captures` are the names the rule's argv regex defines.
    pub fn parse(text: &str, captures: &BTreeSet<String>) -> Result<Self, TemplateError> {
        if text.is_empty() {
            return Err(TemplateError::Empty);
        }
        let mut parts = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            let brace = rest.find(['{', '}']).unwrap_or(rest.len());
            if brace > 0 {
                parts.push(Part::Text(rest[..brace].to_string()));
            }
            rest = &rest[brace..];
            if rest.starts_with('}') {
                return Err(TemplateError::Unmatched(text.into()));
            }
            if let Some(open) = rest.strip_prefix('{') {
                let close = open
                    .find('}')
                    .ok_or_else(|| TemplateError::Unclosed(text.into()))?;
                let name = &open[..close];
                if !BUILTIN.contains(&name) && !captures.contains(name) {
                    return Err(TemplateError::Unknown {
                        template: text.into(),
                        name: name.into(),
                    });
                }
                parts.push(Part::Field(name.to_string()));
                rest = &open[close + 1..];
            }
        }
        Ok(Template(parts))
    }

    /// Expands the template; `field` gives each placeholder's value (an
    /// argv capture that did not take part in the match is empty).
    pub fn expand(&self, field: impl Fn(&str) -> Option<String>) -> JobId {
        let raw: String = self
            .0
            .iter()
            .map(|p| match p {
                Part::Text(t) => t.clone(),
                Part::Field(name) => field(name).unwrap_or_default(),
            })
            .collect();
        sanitise(&raw)
    }
}

/// Maps any text to a valid job id: characters outside `[A-Za-z0-9._-]`
/// become `_`, the length is cut to [`JobId::MAX_LEN`], and `.`/`..` or an
/// empty result get a `_` prefix.
pub(crate) fn sanitise(raw: &str) -> JobId {
    let mut id: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(JobId::MAX_LEN)
        .collect();
    if id.is_empty() || id == "." || id == ".." || id == JobId::STAGING {
        id.insert(0, '_');
    }
    // Valid by construction; the parse is the proof.
    id.parse().unwrap_or_else(|_| sanitise_fallback())
}

fn sanitise_fallback() -> JobId {
    "_".parse().expect("\"_\" is a valid job id")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(std::string::ToString::to_string).collect()
    }

    #[test]
    fn expands_builtins_and_captures() {
        let t = Template::parse("live-{stream}-{pid}", &caps(&["stream"])).unwrap();
        let id = t.expand(|f| match f {
            "stream" => Some("cam1".into()),
            "pid" => Some("42".into()),
            _ => None,
        });
        assert_eq!(id.as_str(), "live-cam1-42");
    }

    #[test]
    fn rejects_bad_templates() {
        let none = caps(&[]);
        assert_eq!(Template::parse("", &none), Err(TemplateError::Empty));
        assert!(matches!(
            Template::parse("a-{comm", &none),
            Err(TemplateError::Unclosed(_))
        ));
        assert!(matches!(
            Template::parse("a}", &none),
            Err(TemplateError::Unmatched(_))
        ));
        assert!(matches!(
            Template::parse("{stream}", &none),
            Err(TemplateError::Unknown { name, .. }) if name == "stream"
        ));
    }

    #[test]
    fn hostile_values_become_one_safe_directory_name() {
        let t = Template::parse("{x}", &caps(&["x"])).unwrap();
        for (raw, want) in [
            ("../../etc", ".._.._etc"),
            ("/abs/path", "_abs_path"),
            ("a\nb\0c", "a_b_c"),
            ("..", "_.."),
            (".", "_."),
            ("", "_"),
            (".staging", "_.staging"),
            ("ключ", "____"),
        ] {
            let id = t.expand(|_| Some(raw.to_string()));
            assert_eq!(id.as_str(), want, "{raw:?}");
        }
        let long = "x".repeat(200);
        assert_eq!(t.expand(|_| Some(long.clone())).as_str().len(), 64);
    }
}
