use super::*;
use crate::limits::{
    CpuIdle, CpuMaxBurst, CpuWeight, MemoryHigh, MemoryMax, Nice, OomScoreAdj, Size, Tier,
};

fn candidate(comm: &str) -> Candidate {
    Candidate {
        pid: 4242,
        comm: comm.into(),
        uid: 1000,
        exe: Some(format!("/usr/bin/{comm}")),
        argv: Some(vec![comm.into()]),
        parent_comm: Some("agent".into()),
    }
}

fn error_of(text: &str) -> (usize, String) {
    match Policy::parse(text, "p.toml") {
        Err(PolicyError::Invalid {
            origin,
            line,
            message,
        }) => {
            assert_eq!(origin, "p.toml");
            (line, message)
        }
        other => panic!("expected an invalid policy, got {other:?}"),
    }
}

#[test]
fn the_embedded_policy_governs_ffmpeg_and_gstreamer_and_nothing_else() {
    let p = Policy::embedded();
    for comm in ["ffmpeg", "gst-launch-1.0"] {
        match p.decide(&candidate(comm)) {
            Some(Decision::Govern {
                job_id,
                limits,
                tier,
                ..
            }) => {
                assert_eq!(job_id.as_str(), format!("{comm}-4242"));
                assert_eq!(tier, Some(Tier::Batch));
                assert_eq!(limits.cpu_idle, Some(CpuIdle(true)));
                assert_eq!(limits.cpu_weight, None);
                assert_eq!(limits.memory_max, Some(MemoryMax(Size::Bytes(4 << 30))));
                assert_eq!(limits.oom_score_adj, Some(OomScoreAdj(500)));
            }
            other => panic!("{comm}: {other:?}"),
        }
    }
    for comm in ["bash", "nginx", "ffprobe", "ffmpeg2"] {
        assert_eq!(p.decide(&candidate(comm)), None, "{comm}");
    }
    assert_eq!(
        p.comm_filter(),
        Some(["ffmpeg", "gst-launch-1.0"].map(String::from).into())
    );
}

/// What the embedded policy makes of a command line: (rule, tier), or the
/// ignore rule's name with no tier.
fn classify(command: &str) -> (String, Option<Tier>) {
    let argv: Vec<String> = command.split(' ').map(String::from).collect();
    let c = Candidate {
        argv: Some(argv.clone()),
        ..candidate(&argv[0])
    };
    match Policy::embedded().decide(&c) {
        Some(Decision::Govern { rule, tier, .. }) => (rule.name.clone(), tier),
        Some(Decision::Ignore { rule }) => (rule.name.clone(), None),
        None => ("none".into(), None),
    }
}

#[test]
fn the_embedded_policy_knows_live_from_batch_by_the_command_line() {
    let live = [
        "ffmpeg -re -i in.mp4 -c:v libx264 -f flv rtmp://origin/live/k",
        "ffmpeg -readrate 1 -i in.mp4 -f mpegts udp://239.0.0.1:1234",
        "ffmpeg -i rtmp://ingest/live/key -c:v libx264 -f hls out.m3u8",
        "ffmpeg -i RTMPS://ingest/live/key -c copy -f flv rtmp://b/live/k",
        "ffmpeg -i srt://0.0.0.0:9000?mode=listener -c copy -f mpegts out.ts",
        "ffmpeg -i udp://239.0.0.1:1234 -c:v libx264 -f mpegts out.ts",
        "ffmpeg -i rtp://0.0.0.0:5004 -c copy out.mkv",
        "ffmpeg -rtsp_transport tcp -i rtsp://cam/stream -c copy -f segment s%d.ts",
        "ffmpeg -i https://cdn.example/live/index.m3u8 -c copy out.ts",
        "ffmpeg -i http://cdn.example/live/index.m3u8?token=x -c copy out.ts",
        "ffmpeg -f v4l2 -input_format mjpeg -i /dev/video0 -c:v libx264 -f flv rtmp://o/live/k",
        "ffmpeg -f decklink -i Intensity -c:v libx264 out.ts",
    ];
    for command in live {
        assert_eq!(
            classify(command),
            ("ffmpeg-live".into(), Some(Tier::Live)),
            "{command}"
        );
    }
    let gst_live = [
        "gst-launch-1.0 rtmpsrc location=rtmp://a/live/k ! flvdemux ! fakesink",
        "gst-launch-1.0 rtmp2src location=rtmp://a/live/k ! fakesink",
        "gst-launch-1.0 srtsrc uri=srt://:9000 ! tsdemux ! fakesink",
        "gst-launch-1.0 srtserversrc uri=srt://:9000 ! fakesink",
        "gst-launch-1.0 udpsrc port=5000 ! fakesink",
        "gst-launch-1.0 rtspsrc location=rtsp://cam/s ! fakesink",
        "gst-launch-1.0 souphttpsrc location=https://c/l.m3u8 is-live=true ! hlsdemux ! fakesink",
    ];
    for command in gst_live {
        assert_eq!(
            classify(command),
            ("gstreamer-live".into(), Some(Tier::Live)),
            "{command}"
        );
    }
    let batch = [
        "ffmpeg -i in.mp4 -c:v libx264 out.mp4",
        // An output URL is not a live input; nor is a VOD playlist file.
        "ffmpeg -i in.mp4 -c copy -f flv rtmp://origin/live/k",
        "ffmpeg -i https://cdn.example/vod/movie.mp4 -c copy out.mp4",
        "ffmpeg -i vod.m3u8 -c copy out.mp4",
        "ffmpeg -i in.mp4 -vf scale=1280:-2 -preset medium out-re.mp4",
        "ffmpeg -i in.mp4 -f v4l2 /dev/video9",
    ];
    for command in batch {
        assert_eq!(
            classify(command),
            ("ffmpeg-batch".into(), Some(Tier::Batch)),
            "{command}"
        );
    }
    assert_eq!(
        classify("gst-launch-1.0 souphttpsrc location=https://c/v.mp4 ! qtdemux ! fakesink"),
        ("gstreamer-batch".into(), Some(Tier::Batch))
    );
    assert_eq!(
        classify("gst-launch-1.0 filesrc location=a.mp4 ! decodebin ! fakesink"),
        ("gstreamer-batch".into(), Some(Tier::Batch))
    );
    for thumbnail in [
        "ffmpeg -i rtmp://ingest/live/key -frames:v 1 thumb.jpg",
        "ffmpeg -ss 5 -i in.mp4 -vframes 1 thumb.png",
    ] {
        assert_eq!(
            classify(thumbnail),
            ("ffmpeg-thumbnail".into(), None),
            "{thumbnail}"
        );
    }
}

#[test]
fn a_policy_may_replace_a_tier_and_a_rule_wins_over_its_tier() {
    let p = Policy::parse(
        r#"
[tier.live]
cpu_weight = 2000
cpu_max_burst = 20000

[[rule]]
name = "live"
comm = "ffmpeg"
tier = "live"
cpu_max = "50000 100000"

[[rule]]
name = "batch"
comm = "x264"
tier = "batch"
cpu_weight = 5
"#,
        "p.toml",
    )
    .unwrap();
    let Action::Govern { limits, tier, .. } = &p.rules[0].action else {
        panic!("not govern");
    };
    assert_eq!(*tier, Some(Tier::Live));
    assert_eq!(limits.cpu_weight, Some(CpuWeight(2000)));
    assert_eq!(limits.cpu_max_burst, Some(CpuMaxBurst(20_000)));
    assert_eq!(limits.cpu_max, Some("50000 100000".parse().unwrap()));
    assert_eq!(p.tiers[&Tier::Live].cpu_weight, Some(CpuWeight(2000)));
    let Action::Govern { limits, .. } = &p.rules[1].action else {
        panic!("not govern");
    };
    assert_eq!(
        (limits.cpu_weight, limits.cpu_idle),
        (Some(CpuWeight(5)), None)
    );
    // Untouched tiers keep their defaults.
    assert_eq!(p.tiers[&Tier::Batch], Tier::Batch.defaults());
}

#[test]
fn bad_tiers_name_their_line() {
    for (text, line, words) in [
        (
            "[[rule]]\ncomm = \"ffmpeg\"\ntier = \"gold\"\n",
            3,
            "tier \"gold\"",
        ),
        (
            "[tier.gold]\ncpu_weight = 5\n[[rule]]\ncomm = \"f\"\n",
            1,
            "tier \"gold\"",
        ),
        (
            "[tier.live]\ncpu_wieght = 5\n[[rule]]\ncomm = \"f\"\n",
            2,
            "unknown limit `cpu_wieght`",
        ),
        (
            "[tier.live]\ncpu_weight = 0\n[[rule]]\ncomm = \"f\"\n",
            2,
            "cpu weight",
        ),
        (
            "[tier.batch]\ncpu_idle = 1\ncpu_weight = 5\n[[rule]]\ncomm = \"f\"\n",
            3,
            "cpu idle",
        ),
        (
            "[[rule]]\ncomm = \"f\"\naction = \"ignore\"\ntier = \"live\"\n",
            4,
            "sets no job_id, tier or limits",
        ),
    ] {
        let (l, message) = error_of(text);
        assert_eq!(l, line, "{text}: {message}");
        assert!(message.contains(words), "{text}: {message}");
    }
}

#[test]
fn first_match_wins_and_ignore_rules_are_honoured() {
    let p = Policy::parse(
        r#"
[[rule]]
name = "probes"
comm = "ffmpeg"
argv = "-f null"
action = "ignore"

[[rule]]
comm = ["ffmpeg", "x264"]
cpu_max = "50000 100000"
"#,
        "p.toml",
    )
    .unwrap();
    let mut probe = candidate("ffmpeg");
    probe.argv = Some(
        ["ffmpeg", "-i", "in", "-f", "null", "-"]
            .map(String::from)
            .into(),
    );
    assert!(matches!(p.decide(&probe), Some(Decision::Ignore { rule }) if rule.name == "probes"));
    match p.decide(&candidate("x264")) {
        Some(Decision::Govern {
            rule,
            job_id,
            limits,
            tier: None,
        }) => {
            assert_eq!(rule.name, "rule-2");
            assert_eq!(rule.line, 8);
            assert_eq!(job_id.as_str(), "x264-4242");
            assert_eq!(limits.cpu_max, Some("50000 100000".parse().unwrap()));
        }
        other => panic!("{other:?}"),
    }
    // The ignore rule narrows; the filter is the governing rule's comms.
    assert_eq!(
        p.comm_filter(),
        Some(["ffmpeg", "x264"].map(String::from).into())
    );
}

#[test]
fn conditions_on_exe_uid_and_parent_must_all_hold() {
    let p = Policy::parse(
        r#"
[[rule]]
comm = "ffmpeg"
exe = "/opt/**/ffmpeg"
uid = 1000
parent_comm = ["agent", "supervisor"]
"#,
        "p.toml",
    )
    .unwrap();
    let mut c = candidate("ffmpeg");
    c.exe = Some("/opt/ff/7.1/bin/ffmpeg".into());
    assert!(p.decide(&c).is_some());
    let mut other_exe = c.clone();
    other_exe.exe = Some("/usr/bin/ffmpeg".into());
    let mut other_uid = c.clone();
    other_uid.uid = 0;
    let mut other_parent = c.clone();
    other_parent.parent_comm = Some("bash".into());
    let mut unknown_parent = c.clone();
    unknown_parent.parent_comm = None;
    for c in [other_exe, other_uid, other_parent, unknown_parent] {
        assert_eq!(p.decide(&c), None, "{c:?}");
    }
    assert_eq!(
        p.needs(),
        Needs {
            exe: true,
            argv: false,
            parent_comm: true
        }
    );
}

#[test]
fn a_job_id_captured_from_argv_is_sanitised() {
    let p = Policy::parse(
        r#"
[[rule]]
comm = "ffmpeg"
argv = 'rtmp://[^ ]*/live/(?P<stream>[^ ]+)'
job_id = "live-{stream}"
"#,
        "p.toml",
    )
    .unwrap();
    let mut c = candidate("ffmpeg");
    c.argv = Some(
        [
            "ffmpeg",
            "-i",
            "rtmp://in/live/../../etc/x\ny",
            "-c",
            "copy",
        ]
        .map(String::from)
        .into(),
    );
    match p.decide(&c) {
        Some(Decision::Govern { job_id, .. }) => assert_eq!(job_id.as_str(), "live-.._.._etc_x_y"),
        other => panic!("{other:?}"),
    }
    // No argv match: the rule does not apply.
    assert_eq!(p.decide(&candidate("ffmpeg")), None);
    // A rule with a regex on argv cannot be decided without the arguments.
    let mut unreadable = candidate("ffmpeg");
    unreadable.argv = None;
    assert_eq!(p.decide(&unreadable), None);
}

#[test]
fn a_rule_without_comm_disables_the_kernel_filter() {
    let p = Policy::parse("[[rule]]\nexe = \"/usr/bin/ffmpeg\"\n", "p.toml").unwrap();
    assert_eq!(p.comm_filter(), None);
}

#[test]
fn malformed_policies_name_the_line_of_the_mistake() {
    let cases: &[(&str, usize, &str)] = &[
        (
            "[[rule]]\ncomm = \"ffmpeg\"\ncpu_max = \"fast\"\n",
            3,
            "cpu max",
        ),
        (
            "[[rule]]\ncomm = \"ffmpeg\"\n\nmemory_max = \"4Q\"\n",
            4,
            "size",
        ),
        ("[[rule]]\ncomm = \"ffmpeg\"\nnice = -30\n", 3, "nice"),
        ("[[rule]]\ncomm = \"ffmpeg\"\npids_max = 0\n", 3, "pids max"),
        (
            "[[rule]]\ncomm = \"ffmpeg\"\nio_max = [\"8:0 rbps=1\", \"bogus\"]\n",
            3,
            "io max",
        ),
        (
            "[[rule]]\ncomm = \"ffmpeg\"\nargv = \"(unclosed\"\n",
            3,
            "regex",
        ),
        ("[[rule]]\ncomm = \"ffmpeg\"\nexe = \"[\"\n", 3, "glob"),
        (
            "[[rule]]\ncomm = \"ffmpeg\"\njob_id = \"{stream}\"\n",
            3,
            "{stream}",
        ),
        (
            "[[rule]]\ncomm = \"ffmpeg\"\njob_id = \"x-{pid\"\n",
            3,
            "unclosed",
        ),
        (
            "[[rule]]\ncomm = \"a-very-long-process-name\"\n",
            2,
            "15 bytes",
        ),
        ("[[rule]]\ncomm = []\n", 2, "empty list"),
        (
            "[[rule]]\ncomm = \"ffmpeg\"\naction = \"kill\"\n",
            3,
            "action",
        ),
        (
            "[[rule]]\ncomm = \"ffmpeg\"\naction = \"ignore\"\ncpu_weight = 5\n",
            4,
            "ignore rule",
        ),
        (
            "[[rule]]\ncomm = \"ffmpeg\"\nuid = 0\nuser = \"root\"\n",
            4,
            "not both",
        ),
        (
            "[[rule]]\ncomm = \"ffmpeg\"\nuser = \"no-such-user-ffrtmp\"\n",
            3,
            "no user",
        ),
        (
            "\n\n[[rule]]\nname = \"all\"\ncpu_weight = 10\n",
            3,
            "no condition",
        ),
        (
            "[[rule]]\ncomm = \"ffmpeg\"\ncpu_wieght = 10\n",
            3,
            "unknown field",
        ),
        ("[[rule]]\ncomm = \"ffmpeg\"\nnice = \n", 3, ""),
        (
            "[[rule]]\ncomm = \"ffmpeg\"\ncpu_max_burst = \"5ms\"\n",
            3,
            "cpu max burst",
        ),
        (
            "[[rule]]\ncomm = \"ffmpeg\"\ncpu_max = \"20000 100000\"\ncpu_max_burst = 30000\n",
            4,
            "must not exceed",
        ),
        ("[[rule]]\ncomm = \"ffmpeg\"\nnice = [1, 2]\n", 3, ""),
        ("# nothing\n", 1, "no [[rule]]"),
    ];
    for (text, line, needle) in cases {
        let (got_line, message) = error_of(text);
        assert_eq!(got_line, *line, "{text:?}: {message}");
        assert!(
            message.contains(needle),
            "{text:?}: {message:?} lacks {needle:?}"
        );
    }
}

#[test]
fn limits_accept_integers_and_strings() {
    let p = Policy::parse(
        "[[rule]]\ncomm = \"ffmpeg\"\nmemory_max = 4294967296\nmemory_high = \"max\"\npids_max = \"max\"\nnice = -5\n",
        "p.toml",
    )
    .unwrap();
    let Action::Govern { limits, .. } = &p.rules[0].action else {
        panic!("not a govern rule");
    };
    assert_eq!(limits.memory_max, Some(MemoryMax(Size::Bytes(4 << 30))));
    assert_eq!(limits.memory_high, Some(MemoryHigh(Size::Max)));
    assert_eq!(limits.nice, Some(Nice(-5)));
}

#[test]
fn every_limit_of_the_table_is_a_policy_key() {
    let p = Policy::parse(
        "[[rule]]\ncomm = \"ffmpeg\"\ncpu_max = \"50000 100000\"\ncpu_max_burst = 20000\nio_max = [\"8:0 rbps=1\", \"8:16 wbps=2\"]\n",
        "p.toml",
    )
    .unwrap();
    let Action::Govern { limits, .. } = &p.rules[0].action else {
        panic!("not a govern rule");
    };
    assert_eq!(limits.cpu_max_burst, Some(CpuMaxBurst(20_000)));
    assert_eq!(limits.io_max.as_ref().map(|io| io.0.len()), Some(2));
    let err = Policy::parse(
        "[[rule]]\ncomm = \"ffmpeg\"\naction = \"ignore\"\ncpu_max_burst = 1\n",
        "p.toml",
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("p.toml:4: an ignore rule"),
        "{err}"
    );
}

#[test]
fn rule_names_that_are_one_cgroup_name_are_refused_with_both_lines() {
    let (line, message) = error_of(
        "[[rule]]\nname = \"a b\"\ncomm = \"x\"\n\n[[rule]]\nname = \"a_b\"\ncomm = \"y\"\n",
    );
    assert_eq!(line, 5, "{message}");
    assert!(
        message.contains("line 1") && message.contains("a_b"),
        "{message}"
    );
}

fn scratch_file(name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("ffrtmp-policy-{name}-{}", std::process::id()));
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn a_policy_file_is_capped_and_must_be_utf8_with_the_line_said() {
    let big = scratch_file("big", &vec![b'#'; (MAX_POLICY_BYTES + 1) as usize]);
    let err = Policy::load(&big).unwrap_err();
    assert!(matches!(err, PolicyError::TooLarge { .. }), "{err}");
    std::fs::remove_file(&big).unwrap();
    // A device or a FIFO is refused, and at once (a FIFO with no writer
    // would block a plain open: `watch` reloads on its event loop).
    let err = Policy::load(std::path::Path::new("/dev/zero")).unwrap_err();
    assert!(matches!(err, PolicyError::NotAFile { .. }), "{err}");
    let fifo = std::env::temp_dir().join(format!("ffrtmp-policy-fifo-{}", std::process::id()));
    let _ = std::fs::remove_file(&fifo);
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let err = Policy::load(&fifo).unwrap_err();
    assert!(matches!(err, PolicyError::NotAFile { .. }), "{err}");
    std::fs::remove_file(&fifo).unwrap();

    let latin1 = scratch_file(
        "latin1",
        b"[[rule]]\ncomm = \"ffmpeg\"\nname = \"caf\xe9\"\n",
    );
    match Policy::load(&latin1).unwrap_err() {
        PolicyError::Invalid { line, message, .. } => {
            assert_eq!(line, 3, "{message}");
            assert!(message.contains("UTF-8"), "{message}");
        }
        other => panic!("{other}"),
    }
    std::fs::remove_file(&latin1).unwrap();
}

#[test]
fn a_policy_others_may_write_is_loaded_with_a_warning() {
    use std::os::unix::fs::PermissionsExt as _;
    let path = scratch_file("ww", b"[[rule]]\ncomm = \"ffmpeg\"\n");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(Policy::load(&path).unwrap().warnings.is_empty());
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let warnings = Policy::load(&path).unwrap().warnings;
    assert!(
        warnings.iter().any(|w| w.contains("every user")),
        "{warnings:?}"
    );
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn a_policy_near_the_cap_loads_with_lines_right() {
    use std::fmt::Write as _;
    // ~40 000 rules in under 1 MiB; the last one's mistake names its line.
    let mut text = String::new();
    let n = 40_000;
    for i in 0..n {
        let _ = writeln!(text, "[[rule]]\ncomm = \"c{i}\"");
    }
    text.push_str("[[rule]]\ncomm = \"x\"\nnice = 99\n");
    assert!((text.len() as u64) < MAX_POLICY_BYTES);
    let (line, message) = error_of(&text);
    assert_eq!(line, 2 * n + 3, "{message}");
}
