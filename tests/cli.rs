//! The command line contract, without privileges: help, version, and bad
//! input rejected with status 2 before anything starts.
mod common;

use common::ffrtmp_output as ffrtmp;

#[test]
fn help_documents_watch_and_its_options() {
    let out = ffrtmp(&["watch", "--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for option in [
        "--backend",
        "--interval",
        "--adopt",
        "--format",
        "--ring-buffer-size",
        "--policy",
        "--all",
        "--observe-only",
        "--cgroup-root",
        "--favordynmods",
        "--metrics-addr",
    ] {
        assert!(
            help.contains(option),
            "watch --help lacks {option}:\n{help}"
        );
    }
}

#[test]
fn policy_default_prints_a_policy_that_checks() {
    let out = ffrtmp(&["policy", "default"]);
    assert!(out.status.success());
    let dir = common::scratch("cli-policy");
    let file = dir.join("default.toml");
    std::fs::write(&file, &out.stdout).unwrap();
    let check = ffrtmp(&["policy", "check", file.to_str().unwrap()]);
    assert!(check.status.success(), "{check:?}");
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(
        text.contains("kernel pre-filter: ffmpeg, gst-launch-1.0"),
        "{text}"
    );
}

#[test]
fn version_names_the_package_version() {
    let out = ffrtmp(&["--version"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}

/// `--version` and `version --format json` say the same facts: version,
/// commit, target, kernel programs (the binary under test is the shipped
/// one under `cargo xtask test`: musl, with its kernel programs).
#[test]
fn version_says_commit_target_and_kernel_programs() {
    let out = ffrtmp(&["version", "--format", "json"]);
    assert!(out.status.success(), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let long = String::from_utf8(ffrtmp(&["--version"]).stdout).unwrap();
    let short = String::from_utf8(ffrtmp(&["-V"]).stdout).unwrap();
    let commit = json["commit"].as_str().unwrap();
    assert!(commit.len() >= 7 && commit != "unknown", "{json}");
    assert!(short.trim() == format!("ffrtmp {} ({commit})", json["version"].as_str().unwrap()));
    let target = json["target"].as_str().unwrap();
    let programs = if json["kernel_programs"] == true {
        "embedded"
    } else {
        "absent"
    };
    for line in [
        format!("commit: {commit}"),
        format!("target: {target}"),
        format!("kernel programs: {programs}"),
    ] {
        assert!(long.lines().any(|l| l == line), "{line} not in {long}");
    }
    assert_eq!(json["libc"] == "musl", target.ends_with("-musl"), "{json}");
    assert_eq!(json["events_schema"], ffrtmp::events::SCHEMA_VERSION);
    if std::env::var_os(common::BIN_ENV).is_some() {
        assert_eq!(
            json["libc"], "musl",
            "the shipped binary is the static musl build"
        );
        assert_eq!(json["kernel_programs"], true);
    }
}

#[test]
fn completions_are_printed_for_each_shell_and_bad_shells_exit_2() {
    for (shell, marker) in [
        ("bash", "complete -F _ffrtmp"),
        ("zsh", "#compdef ffrtmp"),
        ("fish", "complete -c ffrtmp"),
    ] {
        let out = ffrtmp(&["completions", shell]);
        assert!(out.status.success(), "{shell}: {out:?}");
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(script.contains(marker), "{shell}: no {marker}");
        // Options of deferred subcommands are in the script too.
        assert!(script.contains("cpu-max-burst"), "{shell}");
    }
    let out = ffrtmp(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
}

/// The hidden generator writes one page per subcommand, and fails cleanly
/// on a directory it cannot make.
#[test]
fn manual_writes_a_page_per_command() {
    let dir = std::env::temp_dir().join(format!("ffrtmp-cli-man-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = ffrtmp(&["manual", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    for page in [
        "ffrtmp.1",
        "ffrtmp-watch.1",
        "ffrtmp-run.1",
        "ffrtmp-policy-check.1",
        "ffrtmp-cleanup.1",
    ] {
        let text = std::fs::read_to_string(dir.join(page)).unwrap();
        assert!(text.starts_with(".ie") || text.contains(".TH"), "{page}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    let out = ffrtmp(&["manual", "/proc/version/x"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
}

#[test]
fn bad_options_exit_2_with_a_message_and_print_no_events() {
    for args in [
        &["watch", "--backend", "kprobe"][..],
        &["watch", "--interval", "0"],
        &["watch", "--interval", "-5ms"],
        &["watch", "--ring-buffer-size", "1000"],
        &["watch", "--format", "yaml"],
        &["watch", "extra"],
        &["watch", "--policy", "/nonexistent/policy.toml"],
        &["watch", "--cgroup-root", "relative/path"],
        &["watch", "--cgroup-root", "/a/../b"],
        &["watch", "--metrics-addr", "not-an-address"],
        &["run", "--cpu-max-burst", "5ms", "--", "true"],
        &[
            "run",
            "--cpu-max",
            "20000 100000",
            "--cpu-max-burst",
            "30000",
            "--",
            "true",
        ],
        &["attach", "--pid", "1", "--cpu-max-burst", "-1"],
        &["policy", "check", "/nonexistent/policy.toml"],
        &["policy", "check"],
        &["teleport"],
        &[],
    ] {
        let out = ffrtmp(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?} printed to stdout");
        assert!(!out.stderr.is_empty(), "{args:?} gave no message");
    }
}
