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
    let dir = std::env::temp_dir().join(format!("ffrtmp-cli-policy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
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
