//! The event types' round trips, their JSON and text forms, and the
//! samples other modules' tests use (`samples`).
use std::time::{Duration, UNIX_EPOCH};

use super::*;

pub(super) fn ts() -> Timestamp {
    Timestamp(UNIX_EPOCH + Duration::new(1_790_000_000, 123_456_789))
}

pub(super) fn samples() -> Vec<Event> {
    vec![
        Event::new(
            ts(),
            Source::Ffrtmp,
            Started {
                schema: SCHEMA_VERSION,
                version: "0.1.0".into(),
                pid: 7,
                process_key: Some("8ad1f4a3-3f5e-4c8e-9a61-2b1f0c9d7e21:987:42".into()),
                backend: "ebpf".into(),
                mode: Some(crate::events::Mode::Privileged),
                layout: Some(crate::events::CgroupLayout::Hybrid),
            },
        ),
        Event::new(
            ts(),
            Source::Ebpf,
            Exec {
                pid: 42,
                process_key: None,
                tid: 43,
                ppid: Some(1),
                uid: 1000,
                comm: "ffmpeg".into(),
                filename: "/usr/bin/ffmpeg".into(),
                argv: Some(vec!["ffmpeg".into(), "-i".into(), "rtmp://x/y z".into()]),
                argv_truncated: false,
                adopted: false,
            },
        ),
        Event::new(
            ts(),
            Source::Procfs,
            Exec {
                pid: 42,
                process_key: None,
                tid: 42,
                ppid: None,
                uid: 0,
                comm: "x".into(),
                filename: String::new(),
                argv: None,
                argv_truncated: true,
                adopted: true,
            },
        ),
        Event::new(
            ts(),
            Source::Ebpf,
            Exit {
                pid: 42,
                process_key: None,
                comm: "ffmpeg".into(),
                exit_code: None,
                signal: Some(9),
                duration_us: Some(12_500),
                job: None,
            },
        ),
        Event::new(
            ts(),
            Source::Ebpf,
            Lost {
                count: 3,
                reason: LostReason::Ring,
            },
        ),
        Event::new(
            ts(),
            Source::Ffrtmp,
            Governed {
                pid: 42,
                process_key: None,
                job_id: "ffmpeg-42".into(),
                cgroup: Some("/ffrtmp/ffmpeg-42".into()),
                mode: crate::events::Mode::Privileged,
                limits: serde_json::from_str(r#"{"cpu_max":"20000 100000","nice":5}"#).unwrap(),
                tier: None,
                rule: Some("ffmpeg".into()),
                adopted: true,
                latency_us: Some(180),
            },
        ),
        Event::new(
            ts(),
            Source::Ffrtmp,
            Tracked {
                pid: 43,
                process_key: None,
                comm: "ffmpeg".into(),
                job_id: "run-40".into(),
                cgroup: "/ffrtmp/run-40".into(),
                tier: Some(Tier::Batch),
            },
        ),
        Event::new(
            ts(),
            Source::Ffrtmp,
            Detached {
                pid: 42,
                process_key: None,
                job_id: "ffmpeg-42".into(),
                reason: "SIGTERM".into(),
            },
        ),
        Event::new(
            ts(),
            Source::Ffrtmp,
            Reloaded {
                path: Some("/etc/ffrtmp/policy.toml".into()),
                applied: false,
                rules: 2,
                error: Some("line 3: unknown key".into()),
            },
        ),
        Event::new(
            ts(),
            Source::Ffrtmp,
            Reloaded {
                path: None,
                applied: true,
                rules: 2,
                error: None,
            },
        ),
        Event::new(
            ts(),
            Source::Ebpf,
            Exit {
                pid: 42,
                process_key: None,
                comm: "ffmpeg".into(),
                exit_code: Some(0),
                signal: None,
                duration_us: Some(1_500),
                job: Some(JobReport {
                    job_id: "ffmpeg-42".into(),
                    oom_killed: Some(false),
                    cpu_usage_us: Some(10),
                    memory_peak_bytes: None,
                    recovered: false,
                }),
            },
        ),
        Event::new(
            ts(),
            Source::Ffrtmp,
            Degraded {
                limit: None,
                reason: "eBPF unavailable: permission denied".into(),
                fallback: crate::events::Fallback::Procfs,
            },
        ),
        Event::new(
            ts(),
            Source::Ffrtmp,
            Pressure {
                job_id: "ffmpeg-42".into(),
                cgroup: "/ffrtmp/ffmpeg-42".into(),
                tier: Tier::Live,
                waiting: 0.625,
                usage_cpus: 0.25,
                window_us: 1_000_000,
                cause: Cause::Contended,
                signal: Signal::Psi,
                cleared: false,
            },
        ),
    ]
}

#[test]
fn every_event_round_trips_through_json() {
    for event in samples() {
        let json = serde_json::to_string(&event).unwrap();
        let back: Event = serde_json::from_str(&json).unwrap();
        assert_eq!(back, event, "{json}");
    }
}

#[test]
fn json_is_header_first_with_nanosecond_utc_timestamps() {
    let json = serde_json::to_string(&samples()[1]).unwrap();
    assert!(
        json.starts_with(r#"{"event":"exec","ts":"2026-09-21T"#),
        "{json}"
    );
    let node = node::node();
    assert!(
        json.contains(&format!(
            r#".123456789Z","source":"ebpf","host":"{}","boot_id":"{}","pid":42,"#,
            node.host, node.boot_id
        )),
        "{json}"
    );
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(v["process_key"].is_null(), "{v}");
    assert_eq!(v["argv"][2], "rtmp://x/y z");
    let exit = serde_json::to_value(&samples()[3]).unwrap();
    assert!(
        exit["exit_code"].is_null(),
        "unknown values are null, not absent"
    );
}

#[test]
fn governed_events_of_run_and_attach_have_null_watch_fields() {
    let g = Governed {
        pid: 1,
        process_key: None,
        job_id: "j".into(),
        cgroup: None,
        mode: crate::events::Mode::Unprivileged,
        limits: Default::default(),
        tier: None,
        rule: None,
        adopted: false,
        latency_us: None,
    };
    let v = serde_json::to_value(Event::new(ts(), Source::Ffrtmp, g)).unwrap();
    assert!(v["rule"].is_null() && v["latency_us"].is_null(), "{v}");
    assert_eq!(v["adopted"], false);
}

#[test]
fn rejects_an_unknown_event_kind() {
    let line = r#"{"event":"teleport","ts":"2026-01-01T00:00:00Z","source":"ebpf"}"#;
    assert!(serde_json::from_str::<Event>(line).is_err());
}
