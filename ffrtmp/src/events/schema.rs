//! The JSON Schema of an event line (draft 2020-12), generated from the
//! event types and published as docs/events.schema.json (and in the
//! package, /usr/share/ffrtmp/events.schema.json). The test below fails
//! when the published file is not what the types generate; run it with
//! `FFRTMP_BLESS=1` to write it again (and review the diff: it is a
//! contract, docs/EVENTS.md).
use schemars::JsonSchema;

use super::{Body, Source, Timestamp};

/// What a line holds: the header, then the body's fields. Only for the
/// schema: `Event`'s own `Serialize` writes the same shape.
#[derive(JsonSchema)]
#[schemars(
    title = "ffrtmp event",
    description = "One line of ffrtmp's event stream (docs/EVENTS.md). Consumers ignore fields they do not know."
)]
#[allow(dead_code, reason = "the shape of a line, for the schema only")]
struct Line {
    /// When it happened.
    ts: Timestamp,
    /// Who saw it.
    source: Source,
    /// The node's hostname, read when ffrtmp started.
    host: String,
    /// This boot of the node (/proc/sys/kernel/random/boot_id).
    boot_id: String,
    #[serde(flatten)]
    body: Body,
}

/// The fields a line may leave out, by type. Every other field is always
/// there, `null` when unknown (docs/EVENTS.md): schemars would make every
/// `Option` and defaulted field optional, so `required` is set here.
const MAY_BE_ABSENT: &[(&str, &[&str])] = &[
    ("Degraded", &["limit"]),
    ("Reloaded", &["error"]),
    // A governed job's report: all of it, or none of it.
    ("Exit", JOB_REPORT),
];
const JOB_REPORT: &[&str] = &[
    "job_id",
    "oom_killed",
    "cpu_usage_us",
    "memory_peak_bytes",
    "recovered",
];

/// The schema, as published.
pub(super) fn schema() -> serde_json::Value {
    let mut schema = serde_json::to_value(schemars::schema_for!(Line)).expect("a schema is JSON");
    schema["$id"] = "https://github.com/ffrtmp/ffrtmp/docs/events.schema.json".into();
    schema["x-ffrtmp-schema-version"] = super::SCHEMA_VERSION.into();
    let defs = schema["$defs"].as_object_mut().expect("definitions");
    for (name, def) in defs.iter_mut() {
        let Some(properties) = def["properties"].as_object() else {
            continue;
        };
        let absent = MAY_BE_ABSENT
            .iter()
            .find(|(n, _)| n == name)
            .map_or(&[][..], |(_, a)| a);
        // `governed.limits` holds only the limits in force.
        let in_force = name == "InForce";
        let required: Vec<String> = properties
            .keys()
            .filter(|k| !in_force && !absent.contains(&k.as_str()))
            .cloned()
            .collect();
        def["required"] = required.into();
    }
    schema["$defs"]["Exit"]["dependentRequired"] = serde_json::json!({ "job_id": JOB_REPORT });
    never_null(&mut schema["$defs"]["InForce"]["properties"]);
    schema
}

/// A limit in `governed.limits` is absent when it is not in force, never
/// `null` (its field is skipped): its schema drops the `null` schemars
/// gives an `Option`.
fn never_null(properties: &mut serde_json::Value) {
    let Some(properties) = properties.as_object_mut() else {
        return;
    };
    for property in properties.values_mut() {
        if let Some(types) = property["type"].as_array_mut() {
            types.retain(|t| t != "null");
            if let [only] = &types[..] {
                property["type"] = only.clone();
            }
        }
        if let Some(any_of) = property["anyOf"].as_array() {
            let kept: Vec<_> = any_of
                .iter()
                .filter(|s| s["type"] != "null")
                .cloned()
                .collect();
            if let [only] = &kept[..] {
                *property = only.clone();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn published() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/events.schema.json")
    }

    #[test]
    fn the_published_schema_is_what_the_types_generate() {
        let generated = serde_json::to_string_pretty(&schema()).unwrap() + "\n";
        if std::env::var_os("FFRTMP_BLESS").is_some() {
            std::fs::write(published(), &generated).unwrap();
        }
        let file = std::fs::read_to_string(published()).unwrap_or_default();
        assert!(
            file == generated,
            "docs/events.schema.json is not what the event types generate: run this test with FFRTMP_BLESS=1 and review the diff"
        );
    }

    #[test]
    fn every_kind_of_event_is_valid_and_a_broken_one_is_not() {
        let validator = jsonschema::draft202012::new(&schema()).unwrap();
        let samples = crate::events::tests::samples();
        let mut kinds: Vec<&str> = samples.iter().map(|e| e.body.name()).collect();
        kinds.sort_unstable();
        kinds.dedup();
        assert_eq!(kinds.len(), 10, "a sample of every kind: {kinds:?}");
        for event in &samples {
            let v = serde_json::to_value(event).unwrap();
            let errors: Vec<String> = validator.iter_errors(&v).map(|e| e.to_string()).collect();
            assert!(errors.is_empty(), "{v}: {errors:?}");
        }
        let mut v = serde_json::to_value(&samples[1]).unwrap();
        for (field, bad) in [
            ("pid", serde_json::json!("42")),
            ("event", serde_json::json!("teleport")),
            ("ts", serde_json::json!("yesterday")),
            ("host", serde_json::Value::Null),
        ] {
            let good = v[field].take();
            v[field] = bad;
            assert!(!validator.is_valid(&v), "{field} {v}");
            v[field] = good;
        }
        assert!(validator.is_valid(&v));
        v.as_object_mut().unwrap().remove("process_key");
        assert!(!validator.is_valid(&v), "a documented field left out");
        // A job's report comes whole.
        let job_exit = samples
            .iter()
            .find(|e| matches!(&e.body, Body::Exit(x) if x.job.is_some()));
        let mut v = serde_json::to_value(job_exit.unwrap()).unwrap();
        assert!(validator.is_valid(&v));
        v.as_object_mut().unwrap().remove("cpu_usage_us");
        assert!(!validator.is_valid(&v), "half a job report");
    }
}
