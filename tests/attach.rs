//! `ffrtmp attach` against the real kernel: a running process is governed
//! without a restart, held by its pidfd; bad pids are refused with status 2.
mod common;

use std::{
    fs,
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use common::{
    cgroups, cpu_quota, ffrtmp, helper, in_a_root_job, is_helper, read_events, require_root,
    root_job_cgroup, root_job_removed, scratch, wait_for_event,
};
use ffrtmp::events::Body;
use ffrtmp::limits::Count;

fn start_time(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    stat.rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .nth(19)
        .unwrap()
        .parse()
        .unwrap()
}

fn nice_of_threads(pid: u32) -> Vec<i32> {
    fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(Result::ok)
        .map(|t| {
            let stat = fs::read_to_string(t.path().join("stat")).unwrap();
            stat.rsplit(')')
                .next()
                .unwrap()
                .split_whitespace()
                .nth(16)
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect()
}

/// Helper: four threads that sleep.
#[test]
fn helper_threads() {
    if !is_helper("threads") {
        return;
    }
    let threads: Vec<_> = (0..3)
        .map(|_| thread::spawn(|| thread::sleep(Duration::from_mins(1))))
        .collect();
    thread::sleep(Duration::from_mins(1));
    drop(threads);
}

fn spawn_threads() -> Child {
    let child = helper("helper_threads", "threads").spawn().unwrap();
    let deadline = Instant::now() + common::PATIENCE;
    while fs::read_dir(format!("/proc/{}/task", child.id())).map_or(0, std::iter::Iterator::count)
        < 4
    {
        assert!(Instant::now() < deadline, "helper threads did not start");
        thread::sleep(Duration::from_millis(10));
    }
    child
}

#[test]
fn attach_moves_the_whole_process_sets_nice_on_every_thread_and_reports_the_exit() {
    if !require_root("attach_moves_the_whole_process") {
        return;
    }
    let dir = scratch("basic");
    let events = dir.join("events");
    let mut target = spawn_threads();
    let pid = target.id();
    let job = format!("attach-basic-{}", std::process::id());
    let mut attach = Command::new(ffrtmp())
        .args([
            "attach",
            "--pid",
            &pid.to_string(),
            "--job-id",
            &job,
            "--cpu-max",
            "20000 100000",
            "--nice",
            "7",
            "--events",
        ])
        .arg(&events)
        .spawn()
        .unwrap();
    let governed = wait_for_event(&events, "governed", |e| matches!(e.body, Body::Governed(_)));
    let Body::Governed(g) = governed.body else {
        unreachable!()
    };
    assert_eq!((g.pid, g.job_id.as_str()), (pid, job.as_str()));
    assert_eq!(g.limits.cpu_max.unwrap().to_string(), "20000 100000");
    assert_eq!(g.limits.nice, Some(7));
    let cg = cgroups(pid);
    assert!(cg.contains(&root_job_cgroup(&job)), "{cg}");
    // Every thread moved with the process and got the nice value.
    for task in fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(Result::ok)
    {
        let t = fs::read_to_string(task.path().join("cgroup")).unwrap();
        assert!(
            t.contains(&root_job_cgroup(&job)),
            "thread {:?}: {t}",
            task.file_name()
        );
    }
    let nice = nice_of_threads(pid);
    assert!(nice.len() >= 4 && nice.iter().all(|&n| n == 7), "{nice:?}");

    target.kill().unwrap();
    target.wait().unwrap();
    assert!(attach.wait().unwrap().success());
    let exit = wait_for_event(&events, "exit", |e| matches!(e.body, Body::Exit(_)));
    let Body::Exit(x) = exit.body else {
        unreachable!()
    };
    assert_eq!(x.pid, pid);
    // Not our child: the status is unknown and reported as such.
    assert_eq!((x.exit_code, x.signal), (None, None));
    assert_eq!(x.job.unwrap().job_id, job);
    assert!(root_job_removed(&job), "{job}'s cgroup left behind");
}

#[test]
fn bad_pids_exit_2_with_a_clear_message() {
    if !require_root("bad_pids_exit_2_with_a_clear_message") {
        return;
    }
    let mut reaped = Command::new("/bin/true").spawn().unwrap();
    let gone = reaped.id();
    reaped.wait().unwrap();
    for (pid, words) in [
        ("99999999", "1..=4194304"),
        ("4194304", "does not exist"),
        (&gone.to_string(), "does not exist"),
        ("1", "init"),
        ("2", "kernel thread"),
        ("0", "PID"),
        ("-5", "PID"),
        ("abc", "PID"),
    ] {
        let out = Command::new(ffrtmp())
            .args(["attach", "--pid", pid])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{pid}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(words), "{pid}: {err}");
    }
    // ffrtmp itself.
    let out = Command::new("/bin/sh")
        .args(["-c", &format!("exec {} attach --pid $$", ffrtmp())])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("ffrtmp itself"));
}

#[test]
fn a_reused_pid_is_refused() {
    if !require_root("a_reused_pid_is_refused") {
        return;
    }
    let mut first = Command::new("/bin/sleep").arg("30").spawn().unwrap();
    let pid = first.id();
    let recorded = start_time(pid);
    first.kill().unwrap();
    first.wait().unwrap();
    // Make the kernel hand out the same pid again (ns_last_pid), retrying
    // when another fork takes it first.
    let mut second = None;
    for _ in 0..20 {
        thread::sleep(Duration::from_millis(20)); // let the start time move on
        fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).unwrap();
        let c = Command::new("/bin/sleep").arg("30").spawn().unwrap();
        if c.id() == pid {
            second = Some(c);
            break;
        }
        let mut c = c;
        c.kill().unwrap();
        c.wait().unwrap();
    }
    let mut second = second.expect("could not get the same pid again");
    assert_ne!(
        start_time(pid),
        recorded,
        "ticks are 10 ms; the reuse came later"
    );
    let out = Command::new(ffrtmp())
        .args([
            "attach",
            "--pid",
            &pid.to_string(),
            "--start-time",
            &recorded.to_string(),
            "--cpu-max",
            "20000 100000",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("another process"),
        "{out:?}"
    );
    assert!(
        !in_a_root_job(&cgroups(pid)),
        "the new process was governed"
    );
    second.kill().unwrap();
    second.wait().unwrap();
}

#[test]
fn stopping_attach_or_detaching_leaves_the_process_running_and_governed() {
    if !require_root("stopping_attach_leaves_the_process_running") {
        return;
    }
    let dir = scratch("stop");
    let mut target = Command::new("/bin/sleep")
        .arg("30")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = target.id();
    // Upstream's cases 2 and 9: attach, stop the attach; three cycles.
    for cycle in 0..3 {
        let events = dir.join(format!("events-{cycle}"));
        let job = format!("cycle-{}-{cycle}", std::process::id());
        let mut attach = Command::new(ffrtmp())
            .args([
                "attach",
                "--pid",
                &pid.to_string(),
                "--job-id",
                &job,
                "--memory-max",
                "256M",
                "--events",
            ])
            .arg(&events)
            .spawn()
            .unwrap();
        wait_for_event(&events, "governed", |e| matches!(e.body, Body::Governed(_)));
        common::signal(attach.id(), nix::sys::signal::Signal::SIGTERM);
        assert!(attach.wait().unwrap().success());
        wait_for_event(
            &events,
            "detached",
            |e| matches!(&e.body, Body::Detached(d) if d.reason == "SIGTERM"),
        );
        assert!(
            target.try_wait().unwrap().is_none(),
            "cycle {cycle}: the process died"
        );
        assert!(
            cgroups(pid).contains(&root_job_cgroup(&job)),
            "cycle {cycle}: not governed"
        );
    }
    // --detach returns at once, leaving it governed.
    let job = format!("detach-{}", std::process::id());
    let out = Command::new(ffrtmp())
        .args([
            "attach",
            "--pid",
            &pid.to_string(),
            "--job-id",
            &job,
            "--detach",
            "--cpu-weight",
            "150",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(cgroups(pid).contains(&root_job_cgroup(&job)));
    assert!(target.try_wait().unwrap().is_none());
    target.kill().unwrap();
    target.wait().unwrap();
}

#[test]
fn include_children_moves_the_descendants_too() {
    if !require_root("include_children_moves_the_descendants_too") {
        return;
    }
    let mut parent = Command::new("/bin/sh")
        .args(["-c", "/bin/sleep 30 & /bin/sleep 30 & wait"])
        .spawn()
        .unwrap();
    let pid = parent.id();
    let deadline = Instant::now() + common::PATIENCE;
    let children = loop {
        let kids: Vec<u32> = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|c| c.parse().ok())
            .collect();
        if kids.len() == 2 {
            break kids;
        }
        assert!(Instant::now() < deadline);
        thread::sleep(Duration::from_millis(10));
    };
    let job = format!("family-{}", std::process::id());
    let out = Command::new(ffrtmp())
        .args([
            "attach",
            "--pid",
            &pid.to_string(),
            "--job-id",
            &job,
            "--include-children",
            "--detach",
            "--pids-max",
            "64",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    for p in std::iter::once(pid).chain(children.iter().copied()) {
        assert!(
            cgroups(p).contains(&root_job_cgroup(&job)),
            "{p}: {}",
            cgroups(p)
        );
    }
    for c in children {
        common::signal(c, nix::sys::signal::Signal::SIGKILL);
    }
    parent.wait().unwrap();
}

/// `ffrtmp status` reads the governed jobs back from the cgroup tree.
#[test]
fn status_lists_governed_jobs_and_whether_a_wrapper_holds_them() {
    if !require_root("status_lists_governed_jobs") {
        return;
    }
    let mut sleeper = Command::new("/bin/sleep").arg("30").spawn().unwrap();
    let pid = sleeper.id();
    let job = format!("status-{}", std::process::id());
    let out = Command::new(ffrtmp())
        .args([
            "attach",
            "--pid",
            &pid.to_string(),
            "--job-id",
            &job,
            "--detach",
            "--pids-max",
            "32",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let out = Command::new(ffrtmp())
        .args(["status", "--format", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["mode"], "privileged");
    let entry = common::status_job(&status, "job_id", &job);
    assert_eq!(entry["pids"], serde_json::json!([pid]));
    assert_eq!(entry["supervised"], false, "a detached job has no wrapper");
    assert_eq!(entry["limits"]["pids.max"], "32");
    assert_eq!(entry["made_by"], "attach", "{entry}");
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();
}

/// The CPU quota of job `job` under the default root.
fn cpu_quota_of(job: &str) -> String {
    cpu_quota(&root_job_cgroup(job))
}

#[test]
fn attaching_again_updates_the_job_and_a_job_id_in_use_is_refused() {
    if !require_root("attaching_again_updates_the_job") {
        return;
    }
    let dir = scratch("reattach");
    let events = dir.join("events");
    let mut first = Command::new("/bin/sleep").arg("30").spawn().unwrap();
    let mut other = Command::new("/bin/sleep").arg("30").spawn().unwrap();
    let job = format!("reattach-{}", std::process::id());
    let attach = |pid: u32, limits: &[&str]| {
        Command::new(ffrtmp())
            .args([
                "attach",
                "--detach",
                "--pid",
                &pid.to_string(),
                "--job-id",
                &job,
            ])
            .args(limits)
            .arg("--events")
            .arg(&events)
            .output()
            .unwrap()
    };
    let out = attach(first.id(), &["--cpu-max", "20000 100000"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(cpu_quota_of(&job), "20000");

    // The same process again: its job's limits are updated in place, and a
    // limit of a hierarchy the job did not have yet is added.
    let out = attach(
        first.id(),
        &["--cpu-max", "50000 100000", "--pids-max", "16"],
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(cpu_quota_of(&job), "50000");
    let last = read_events(&events)
        .into_iter()
        .rev()
        .find_map(|e| match e.body {
            Body::Governed(g) => Some(g),
            _ => None,
        })
        .unwrap();
    assert_eq!(last.limits.cpu_max.unwrap().to_string(), "50000 100000");
    assert_eq!(last.limits.pids_max, Some(Count::N(16)));
    let cg = cgroups(first.id());
    assert!(cg.contains(&root_job_cgroup(&job)), "{cg}");
    if !Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        assert!(
            cg.contains(&format!(":pids:{}", root_job_cgroup(&job))),
            "{cg}"
        );
    }

    // Another process under that job id: refused, nothing moved or changed.
    let out = attach(other.id(), &["--cpu-max", "90000 100000"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("another job uses this job id"), "{stderr}");
    assert!(
        !in_a_root_job(&cgroups(other.id())),
        "{}",
        cgroups(other.id())
    );
    assert_eq!(cpu_quota_of(&job), "50000");

    // `run` under a job id in use: refused before the workload starts.
    let marker = dir.join("ran");
    let out = Command::new(ffrtmp())
        .args(["run", "--job-id", &job, "--", "/bin/touch"])
        .arg(&marker)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(!marker.exists(), "the workload ran under a job id in use");
    assert_eq!(cpu_quota_of(&job), "50000");

    for c in [&mut first, &mut other] {
        c.kill().unwrap();
        c.wait().unwrap();
    }
}
