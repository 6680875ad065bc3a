//! The command line contract, without privileges: help, version, and bad
//! input rejected with status 2 before anything starts.
mod common;

use std::process::Command;

use common::FFRTMP;

fn ffrtmp(args: &[&str]) -> std::process::Output {
    Command::new(FFRTMP)
        .args(args)
        .output()
        .expect("running ffrtmp")
}

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
    ] {
        assert!(
            help.contains(option),
            "watch --help lacks {option}:\n{help}"
        );
    }
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
        &["teleport"],
        &[],
    ] {
        let out = ffrtmp(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?} printed to stdout");
        assert!(!out.stderr.is_empty(), "{args:?} gave no message");
    }
}
