//! The upstream wrapper's ten stability cases (scripts/test_wrapper_stability.sh,
//! see ../shared/seed/UPSTREAM_NOTES.md), as behaviours of `ffrtmp`.
//! Case 8 fails upstream; case 6 upstream never checked `/bin/false`.
mod common;

use std::{
    process::{Child, Command, Stdio},
    thread,
    time::Duration,
};

use common::{
    ffrtmp_output as ffrtmp, governed_pid as workload_of, pid_alive, require_root, signal,
};
use nix::sys::signal::Signal::{SIGKILL, SIGTERM};

fn alive(child: &mut Child) -> bool {
    child.try_wait().unwrap().is_none()
}

/// A case's scratch directory; its events file is `events` in it.
fn case_dir(case: u32) -> common::Scratch {
    common::scratch(&format!("upstream-{case}"))
}

#[test]
fn case_01_run_echo_succeeds() {
    if !require_root("case_01_run_echo_succeeds") {
        return;
    }
    let out = ffrtmp(&["run", "--", "echo", "test"]);
    assert!(out.status.success());
    assert_eq!(
        out.stdout, b"test\n",
        "the workload's stdout is its own, with no events in it"
    );
}

#[test]
fn case_02_stopping_an_attach_leaves_the_process_alive() {
    if !require_root("case_02_stopping_an_attach") {
        return;
    }
    let mut sleeper = Command::new("sleep").arg("30").spawn().unwrap();
    let dir = case_dir(2);
    let events = dir.join("events");
    let mut attach = Command::new(common::ffrtmp())
        .args(["attach", "--pid", &sleeper.id().to_string(), "--events"])
        .arg(&events)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Its `governed` proves it is attached and following: no sleep.
    workload_of(&events);
    signal(attach.id(), SIGTERM);
    assert!(attach.wait().unwrap().success());
    assert!(alive(&mut sleeper));
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();
}

#[test]
fn case_03_kill_9_of_the_wrapper_leaves_the_workload_alive() {
    if !require_root("case_03_kill_9_of_the_wrapper") {
        return;
    }
    let dir = case_dir(3);
    let events = dir.join("events");
    let mut wrapper = Command::new(common::ffrtmp())
        .args(["run", "--events"])
        .arg(&events)
        .args(["--", "sleep", "60"])
        .spawn()
        .unwrap();
    let pid = workload_of(&events);
    wrapper.kill().unwrap();
    wrapper.wait().unwrap();
    thread::sleep(Duration::from_millis(100));
    assert!(pid_alive(pid));
    signal(pid, SIGKILL);
}

#[test]
fn case_04_attach_to_a_missing_pid_says_it_does_not_exist() {
    if !require_root("case_04_attach_to_a_missing_pid") {
        return;
    }
    // The largest pid Linux can give, never in use (pids stay below pid_max).
    let out = ffrtmp(&["attach", "--pid", "4194304"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
}

#[test]
fn case_05_run_without_a_job_id_works() {
    if !require_root("case_05_run_without_a_job_id") {
        return;
    }
    assert!(ffrtmp(&["run", "--", "/bin/true"]).status.success());
}

#[test]
fn case_06_true_gives_0_and_false_gives_1() {
    if !require_root("case_06_true_and_false") {
        return;
    }
    assert_eq!(ffrtmp(&["run", "--", "/bin/true"]).status.code(), Some(0));
    assert_eq!(ffrtmp(&["run", "--", "/bin/false"]).status.code(), Some(1));
}

#[test]
fn case_07_three_concurrent_runs_all_finish() {
    if !require_root("case_07_three_concurrent_runs") {
        return;
    }
    let runs: Vec<Child> = (0..3)
        .map(|_| {
            Command::new(common::ffrtmp())
                .args(["run", "--", "sleep", "2"])
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut r in runs {
        assert!(r.wait().unwrap().success());
    }
}

#[test]
fn case_08_sigterm_to_the_wrapper_leaves_the_workload_alive() {
    if !require_root("case_08_sigterm_to_the_wrapper") {
        return;
    }
    let dir = case_dir(8);
    let events = dir.join("events");
    let mut wrapper = Command::new(common::ffrtmp())
        .args(["run", "--events"])
        .arg(&events)
        .args(["--", "sleep", "60"])
        .spawn()
        .unwrap();
    let pid = workload_of(&events);
    signal(wrapper.id(), SIGTERM);
    assert!(wrapper.wait().unwrap().success());
    thread::sleep(Duration::from_millis(100));
    assert!(pid_alive(pid));
    signal(pid, SIGKILL);
}

#[test]
fn case_09_three_quick_attach_detach_cycles_leave_the_process_alive() {
    if !require_root("case_09_three_attach_detach_cycles") {
        return;
    }
    let mut sleeper = Command::new("sleep").arg("30").spawn().unwrap();
    for cycle in 0..3 {
        // One job id per job: a live job's id is never shared.
        let job = format!("upstream-9-{}-{cycle}", std::process::id());
        let out = ffrtmp(&[
            "attach",
            "--pid",
            &sleeper.id().to_string(),
            "--job-id",
            &job,
            "--detach",
        ]);
        assert!(out.status.success(), "cycle {cycle}: {out:?}");
    }
    assert!(alive(&mut sleeper));
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();
}

#[test]
fn case_10_attach_to_an_exited_and_reaped_pid_says_it_does_not_exist() {
    if !require_root("case_10_attach_to_an_exited_pid") {
        return;
    }
    let mut gone = Command::new("/bin/true").spawn().unwrap();
    let pid = gone.id();
    gone.wait().unwrap();
    let out = ffrtmp(&["attach", "--pid", &pid.to_string()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
}
