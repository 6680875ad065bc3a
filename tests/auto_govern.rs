//! `ffrtmp watch` governing by policy, against the real kernel (host v1
//! hybrid, and pure v2 in the VM): new matching processes land in their job
//! cgroup with the policy's limits read back, unrelated ones are untouched,
//! running ones are adopted, jobs survive kill -9 of the daemon and a
//! restarted daemon reports their exits, lost events trigger a rescan, and
//! the procfs fallback governs too.
//!
//! Each test uses its own cgroup root (`--cgroup-root`), removed at the end,
//! and copies of `sleep`/`sh` under transcoder names.
mod common;

use ffrtmp::events::Fallback;

use std::{
    fs,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use common::{
    Children, PATIENCE, Root, Watch, cgroups, cpu_quota, exit_of, fake, ffrtmp, require_root,
    scratch, sleeper,
};
use ffrtmp::events::{Body, Event, Governed};
use ffrtmp::limits::{Count, Size, Tier};

fn write_policy(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("policy.toml");
    fs::write(&path, text).unwrap();
    path
}

fn governed_of(pid: u32) -> impl Fn(&Event) -> bool {
    move |e| matches!(&e.body, Body::Governed(g) if g.pid == pid)
}

fn as_governed(e: Event) -> Governed {
    match e.body {
        Body::Governed(g) => g,
        other => panic!("not governed: {other:?}"),
    }
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn watch(policy: &Path, root: &Root, extra: &[&str]) -> Watch {
    Watch::start_with(
        Command::new(ffrtmp())
            .arg("watch")
            .arg("--policy")
            .arg(policy)
            .args(["--cgroup-root", root.path()])
            .args(extra),
    )
}

/// Helper: sleep for a minute.
#[test]
fn helper_sleep() {
    if common::is_helper("sleep") {
        thread::sleep(Duration::from_mins(1));
    }
}

const POLICY: &str = r#"
[[rule]]
name = "probe"
comm = "ffmpeg"
argv = "^sleep 29$"
action = "ignore"

[[rule]]
name = "transcode"
comm = "ffmpeg"
cpu_max = "30000 100000"
memory_max = "256M"
nice = 3

[[rule]]
name = "keyed"
comm = "ffkeyed"
argv = 'stream=(?P<key>\S+)'
job_id = "live-{key}"
pids_max = 64
"#;

#[test]
fn a_new_ffmpeg_is_governed_by_its_rule_and_nothing_else_is_touched() {
    if !require_root("a_new_ffmpeg_is_governed_by_its_rule") {
        return;
    }
    let dir = scratch("auto-new");
    let root = Root::new("new");
    let policy = write_policy(&dir, POLICY);
    let ffmpeg = fake(&dir, "ffmpeg", "/bin/sleep");
    let keyed = fake(&dir, "ffkeyed", "/bin/sh");
    let mut w = watch(&policy, &root, &["--backend", "ebpf"]);

    let mut job = sleeper(&ffmpeg, "30");
    let pid = job.id();
    let g = as_governed(w.wait_for("governed ffmpeg", governed_of(pid)));
    assert_eq!(g.rule.as_deref(), Some("transcode"));
    assert_eq!(g.job_id, format!("ffmpeg-{pid}"));
    assert_eq!(g.limits.cpu_max.unwrap().to_string(), "30000 100000");
    assert_eq!(g.limits.memory_max, Some(Size::Bytes(268_435_456)));
    assert_eq!(g.limits.nice, Some(3));
    assert!(!g.adopted);
    assert!(
        g.latency_us.is_some(),
        "eBPF governing has a latency: {g:?}"
    );
    let cgroup = format!("{}/ffmpeg-{pid}", root.path());
    assert_eq!(g.cgroup.as_deref(), Some(cgroup.as_str()));
    assert!(cgroups(pid).contains(&cgroup), "{}", cgroups(pid));
    assert_eq!(cpu_quota(&cgroup), "30000");
    // It went through its rule's staging cgroup (same limits), now empty.
    let staging = root.staging("transcode").expect("its staging cgroup");
    assert_eq!(cpu_quota(&staging), "30000");
    assert!(!cgroups(pid).contains("/.staging/"), "{}", cgroups(pid));

    // Unrelated processes: not reported (the kernel filters them), never moved.
    let mut other = Command::new("/bin/sleep").arg("30").spawn().unwrap();
    // The ignore rule is honoured.
    let mut probe = sleeper(&ffmpeg, "29");
    // A job id captured from argv is sanitised to one directory name.
    let mut stream = Command::new(&keyed)
        .arg0("sh")
        .args(["-c", "exec sleep 30", "stream=../../etc/x y"])
        .spawn()
        .unwrap();
    let k = as_governed(w.wait_for("governed ffkeyed", governed_of(stream.id())));
    assert_eq!(k.job_id, "live-.._.._etc_x");
    assert_eq!(k.limits.pids_max, Some(Count::N(64)));
    // By now the earlier execs have been handled (events are in order).
    w.drain();
    for pid in [other.id(), probe.id()] {
        assert!(
            !cgroups(pid).contains(root.path()),
            "{pid} moved: {}",
            cgroups(pid)
        );
        assert!(
            !w.events.iter().any(governed_of(pid)),
            "{pid} governed: {:?}",
            w.events
        );
    }
    assert!(
        !w.events
            .iter()
            .any(|e| matches!(&e.body, Body::Exec(x) if x.pid == other.id())),
        "an unrelated exec was reported without --all"
    );

    // Its exit carries the job's report, and the empty job cgroup goes.
    kill(&mut job);
    let exit = w.wait_for("exit of the governed ffmpeg", exit_of(pid));
    let Body::Exit(x) = exit.body else {
        unreachable!()
    };
    assert_eq!(x.signal, Some(9));
    let report = x.job.expect("a job report on the exit");
    assert_eq!(report.job_id, format!("ffmpeg-{pid}"));
    assert!(report.cpu_usage_us.is_some());
    let deadline = Instant::now() + PATIENCE;
    while !Root::dirs_of(&cgroup).is_empty() {
        assert!(Instant::now() < deadline, "{cgroup} was not removed");
        thread::sleep(Duration::from_millis(20));
    }
    for c in [&mut other, &mut probe, &mut stream] {
        kill(c);
    }
    let (status, _) = w.stop();
    assert!(status.success());
}

/// Renditions of one stream start together: every one gets its own job
/// (each is staged first, their jobs made on the maker thread), and ones
/// that end at once — many while their job is being made — are reported
/// in order (`governed`, then the exit with the job's report) and leave no
/// job cgroup behind.
#[test]
fn a_ladder_started_at_once_gets_a_job_each_and_leaves_nothing_behind() {
    if !require_root("a_ladder_started_at_once") {
        return;
    }
    let dir = scratch("auto-ladder");
    let root = Root::new("ladder");
    let policy = write_policy(&dir, POLICY);
    let ffmpeg = fake(&dir, "ffmpeg", "/bin/sleep");
    let mut w = watch(&policy, &root, &["--backend", "ebpf"]);
    // Lifetimes spread over the time the maker thread takes for them all,
    // so that some end while their job is being made: ~0.5 ms a job here;
    // in the VMs (TCG, and no favordynmods before 6.1) moves take tens of
    // milliseconds.
    let step = if common::in_vm() { 0.2 } else { 0.0004 };
    let mut short = Children(
        (0..24)
            .map(|i| sleeper(&ffmpeg, &format!("{:.4}", f64::from(i) * step)))
            .collect(),
    );
    let ladder = Children((0..6).map(|_| sleeper(&ffmpeg, "30")).collect());
    let short_pids: Vec<u32> = short.0.iter().map(Child::id).collect();
    for s in &mut short.0 {
        assert!(s.wait().unwrap().success());
    }
    for rendition in &ladder.0 {
        let pid = rendition.id();
        let g = as_governed(w.wait_for("governed rendition", governed_of(pid)));
        let cgroup = format!("{}/ffmpeg-{pid}", root.path());
        assert_eq!(g.cgroup.as_deref(), Some(cgroup.as_str()));
        assert!(cgroups(pid).contains(&cgroup), "{}", cgroups(pid));
        assert_eq!(cpu_quota(&cgroup), "30000");
    }
    let mut governed_short = 0;
    for &pid in &short_pids {
        w.wait_for("exit of a short one", exit_of(pid));
        let at = |pred: &dyn Fn(&Event) -> bool| w.events.iter().position(pred);
        let (exit_at, governed_at) = (at(&exit_of(pid)), at(&governed_of(pid)));
        let Some(Body::Exit(exit)) = exit_at.map(|i| &w.events[i].body) else {
            unreachable!()
        };
        if let Some(g) = governed_at {
            governed_short += 1;
            assert!(g < exit_at.unwrap(), "{pid}: exit before governed");
            let report = exit
                .job
                .as_ref()
                .expect("a governed process's exit has a report");
            assert_eq!(report.job_id, format!("ffmpeg-{pid}"));
        }
        let leftover = format!("{}/ffmpeg-{pid}", root.path());
        let deadline = Instant::now() + PATIENCE;
        while !Root::dirs_of(&leftover).is_empty() {
            if Instant::now() >= deadline {
                w.drain();
                let about: Vec<String> = w
                    .events
                    .iter()
                    .filter(|e| {
                        serde_json::to_string(e).is_ok_and(|j| j.contains(&pid.to_string()))
                    })
                    .map(|e| serde_json::to_string(e).unwrap_or_default())
                    .collect();
                panic!(
                    "{leftover} was left behind; its events:\n{}",
                    about.join("\n")
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
    assert!(governed_short > 0, "none of the short ones was governed");
    drop(ladder);
    let (status, _) = w.stop();
    assert!(status.success());
}

#[test]
fn running_matches_are_adopted_and_run_jobs_are_left_where_they_are() {
    if !require_root("running_matches_are_adopted") {
        return;
    }
    let dir = scratch("auto-adopt");
    let root = Root::new("adopt");
    let policy = write_policy(&dir, POLICY);
    let ffmpeg = fake(&dir, "ffmpeg", "/bin/sleep");
    let mut early = sleeper(&ffmpeg, "30");
    // A workload of `ffrtmp run` that the policy matches (this test binary
    // as a helper, named ffmpeg), already in its own job.
    let as_ffmpeg = dir.join("helper").join("ffmpeg");
    fs::create_dir_all(as_ffmpeg.parent().unwrap()).unwrap();
    fs::copy(std::env::current_exe().unwrap(), &as_ffmpeg).unwrap();
    let run_job = format!("runjob-{}", std::process::id());
    let mut wrapper = Command::new(ffrtmp())
        .args(["run", "--cgroup-root", root.path(), "--job-id", &run_job])
        .args(["--cpu-max", "50000 100000", "--events", "/dev/null", "--"])
        .arg(&as_ffmpeg)
        .args(["--exact", "helper_sleep", "--nocapture", "--test-threads=1"])
        .env(common::HELPER_ENV, "sleep")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let run_cgroup = format!("{}/{run_job}", root.path());
    let deadline = Instant::now() + PATIENCE;
    let run_pid = loop {
        let pids = Root::dirs_of(&run_cgroup)
            .first()
            .and_then(|d| fs::read_to_string(d.join("cgroup.procs")).ok())
            .and_then(|t| t.lines().next().and_then(|l| l.parse::<u32>().ok()));
        if let Some(p) = pids {
            break p;
        }
        assert!(Instant::now() < deadline, "the run workload did not start");
        thread::sleep(Duration::from_millis(20));
    };

    let mut w = watch(&policy, &root, &["--backend", "ebpf"]);
    let g = as_governed(w.wait_for("adopted ffmpeg", governed_of(early.id())));
    assert!(g.adopted, "{g:?}");
    assert_eq!(g.latency_us, None);
    assert!(cgroups(early.id()).contains(&format!("{}/ffmpeg-{}", root.path(), early.id())));
    let tracked = w.wait_for(
        "the run workload tracked",
        |e| matches!(&e.body, Body::Tracked(t) if t.pid == run_pid),
    );
    let Body::Tracked(t) = tracked.body else {
        unreachable!()
    };
    assert_eq!(t.job_id, run_job);
    assert!(
        !w.events.iter().any(governed_of(run_pid)),
        "a run workload was moved"
    );
    assert!(
        cgroups(run_pid).contains(&run_cgroup),
        "{}",
        cgroups(run_pid)
    );
    assert_eq!(cpu_quota(&run_cgroup), "50000", "its limits were changed");

    kill(&mut early);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(run_pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    w.wait_for("exit of the run workload", exit_of(run_pid));
    let _ = wrapper.wait();
    let (status, _) = w.stop();
    assert!(status.success());
}

#[test]
fn kill_9_of_the_daemon_leaves_jobs_governed_and_a_restart_reports_their_exits() {
    if !require_root("kill_9_of_the_daemon") {
        return;
    }
    let dir = scratch("auto-restart");
    let root = Root::new("restart");
    let policy = write_policy(&dir, POLICY);
    let ffmpeg = fake(&dir, "ffmpeg", "/bin/sleep");
    let mut w = watch(&policy, &root, &["--backend", "ebpf"]);
    let mut jobs: Vec<Child> = (0..3).map(|_| sleeper(&ffmpeg, "60")).collect();
    let mut cgroups_before = Vec::new();
    for j in &jobs {
        let g = as_governed(w.wait_for("governed", governed_of(j.id())));
        cgroups_before.push(g.cgroup.unwrap());
    }
    let (status, _) = w.stop_with(nix::sys::signal::Signal::SIGKILL);
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
    thread::sleep(Duration::from_millis(100));
    for (j, cg) in jobs.iter_mut().zip(&cgroups_before) {
        assert!(
            j.try_wait().unwrap().is_none(),
            "a workload died with the daemon"
        );
        assert!(cgroups(j.id()).contains(cg.as_str()), "left its cgroup");
        assert_eq!(cpu_quota(cg), "30000", "its limit is gone");
    }

    let mut w = watch(&policy, &root, &["--backend", "ebpf"]);
    for j in &jobs {
        let pid = j.id();
        w.wait_for(
            "tracked after restart",
            move |e| matches!(&e.body, Body::Tracked(t) if t.pid == pid),
        );
        assert!(!w.events.iter().any(governed_of(pid)), "governed twice");
    }
    let first = jobs.remove(0);
    let pid = first.id();
    let mut first = first;
    kill(&mut first);
    let exit = w.wait_for("exit reported by the restarted daemon", exit_of(pid));
    let Body::Exit(x) = exit.body else {
        unreachable!()
    };
    assert_eq!(x.job.map(|j| j.job_id), Some(format!("ffmpeg-{pid}")));
    for j in &mut jobs {
        kill(j);
    }
    let (status, _) = w.stop();
    assert!(status.success());
}

#[test]
fn lost_events_trigger_a_rescan_that_governs_every_match() {
    if !require_root("lost_events_trigger_a_rescan") {
        return;
    }
    let dir = scratch("auto-lost");
    let root = Root::new("lost");
    let policy = write_policy(&dir, POLICY);
    let ffmpeg = fake(&dir, "ffmpeg", "/bin/sleep");
    // A one-page ring (~30 records) with every exec reported, and the
    // daemon stopped while a storm and the matches run: the ring overflows
    // however fast execs are here (a dynamically linked /bin/true takes
    // 15-80 ms under TCG in the systemd VM: a storm alone did not always).
    let mut w = watch(
        &policy,
        &root,
        &["--backend", "ebpf", "--all", "--ring-buffer-size", "4096"],
    );
    common::signal(w.pid(), nix::sys::signal::Signal::SIGSTOP);
    let storm: Vec<_> = (0..2)
        .map(|_| {
            thread::spawn(|| {
                for _ in 0..200 {
                    let _ = Command::new("/bin/true").status();
                }
            })
        })
        .collect();
    let jobs = Children(
        (0..20)
            .map(|_| {
                thread::sleep(Duration::from_millis(5));
                sleeper(&ffmpeg, "60")
            })
            .collect(),
    );
    for t in storm {
        t.join().unwrap();
    }
    common::signal(w.pid(), nix::sys::signal::Signal::SIGCONT);
    w.wait_for("a lost event", |e| matches!(e.body, Body::Lost(_)));
    for j in &jobs.0 {
        w.wait_for("every match governed", governed_of(j.id()));
        assert!(cgroups(j.id()).contains(root.path()), "{}", cgroups(j.id()));
    }
}

/// A policy of one rule governing `comm` with a CPU quota of `quota` µs.
fn one_rule(name: &str, comm: &str, quota: u32) -> String {
    format!("[[rule]]\nname = \"{name}\"\ncomm = \"{comm}\"\ncpu_max = \"{quota} 100000\"\n")
}

fn policy_event(applied: bool) -> impl Fn(&Event) -> bool {
    move |e| matches!(&e.body, Body::Policy(p) if p.applied == applied)
}

/// SIGHUP (`systemctl reload`) reads the policy again: a good one governs
/// processes that start from then on by its rules (the kernel passes its
/// names, and no longer the old ones); a bad one keeps the running policy
/// and says why in a `policy` event. `watch` never stops for it, and what
/// it governs keeps its job.
#[test]
fn sighup_reloads_the_policy_and_a_bad_one_keeps_the_running_one() {
    if !require_root("sighup_reloads_the_policy") {
        return;
    }
    let dir = scratch("auto-reload");
    let root = Root::new("reload");
    let policy = write_policy(&dir, &one_rule("first", "rl-first", 20000));
    let first = fake(&dir, "rl-first", "/bin/sleep");
    let second = fake(&dir, "rl-second", "/bin/sleep");
    let mut w = watch(&policy, &root, &[]);
    let mut kids = Children(Vec::new());

    kids.0.push(sleeper(&first, "30"));
    let before = as_governed(w.wait_for("first governed", governed_of(kids.0[0].id())));
    assert_eq!(before.rule.as_deref(), Some("first"));

    fs::write(&policy, one_rule("second", "rl-second", 30000)).unwrap();
    common::signal(w.pid(), nix::sys::signal::Signal::SIGHUP);
    let reloaded = w.wait_for("the reload", policy_event(true));
    let Body::Policy(p) = &reloaded.body else {
        unreachable!()
    };
    assert_eq!((p.rules, p.path.as_deref()), (1, policy.to_str()));
    // The old rule's name first: had it still matched, its `governed`
    // would come before the new one's.
    kids.0.push(sleeper(&first, "30"));
    let old_name = kids.0[1].id();
    kids.0.push(sleeper(&second, "30"));
    let g = as_governed(w.wait_for("second governed", governed_of(kids.0[2].id())));
    assert_eq!(g.rule.as_deref(), Some("second"));
    assert!(cpu_quota(g.cgroup.as_deref().unwrap()).starts_with("30000"));
    assert!(
        !w.events.iter().any(governed_of(old_name)),
        "the old rule still governs"
    );
    assert!(!cgroups(old_name).contains(root.path()));
    // What the old rule governed keeps its job and quota.
    let kept = before.cgroup.as_deref().unwrap();
    assert!(cgroups(kids.0[0].id()).contains(kept));
    assert!(cpu_quota(kept).starts_with("20000"));

    fs::write(&policy, "[[rule]]\nname = \"broken\"\nbogus = 1\n").unwrap();
    common::signal(w.pid(), nix::sys::signal::Signal::SIGHUP);
    let refused = w.wait_for("the refused reload", policy_event(false));
    let Body::Policy(p) = &refused.body else {
        unreachable!()
    };
    assert_eq!(p.rules, 1);
    assert!(
        p.error.as_deref().is_some_and(|e| e.contains("bogus")),
        "{p:?}"
    );
    kids.0.push(sleeper(&second, "30"));
    let g = as_governed(w.wait_for("governed after the refusal", governed_of(kids.0[3].id())));
    assert_eq!(g.rule.as_deref(), Some("second"));

    let (status, _) = w.stop();
    assert!(status.success(), "{status}");
}

#[test]
fn the_procfs_fallback_governs_and_says_so() {
    if !require_root("the_procfs_fallback_governs") {
        return;
    }
    let dir = scratch("auto-procfs");
    let root = Root::new("procfs");
    let policy = write_policy(&dir, POLICY);
    let ffmpeg = fake(&dir, "ffmpeg", "/bin/sleep");
    let mut w = watch(
        &policy,
        &root,
        &["--backend", "procfs", "--interval", "50ms"],
    );
    let d = w
        .events
        .iter()
        .find_map(|e| match &e.body {
            Body::Degraded(d) if d.fallback == Fallback::Procfs => Some(d.clone()),
            _ => None,
        })
        .expect("a degraded event saying governing polls /proc");
    assert!(d.reason.contains("/proc"), "{}", d.reason);
    let mut job = sleeper(&ffmpeg, "30");
    let g = as_governed(w.wait_for("governed by polling", governed_of(job.id())));
    assert_eq!(g.latency_us, None);
    assert_eq!(g.limits.cpu_max.unwrap().to_string(), "30000 100000");
    assert!(cgroups(job.id()).contains(root.path()));
    kill(&mut job);
    w.wait_for("exit by polling", exit_of(job.id()));
}

#[test]
fn a_malformed_policy_exits_2_naming_its_line_and_starts_nothing() {
    let dir = scratch("auto-bad");
    let bad = write_policy(
        &dir,
        "[[rule]]\ncomm = \"ffmpeg\"\n\nmemory_max = \"lots\"\n",
    );
    for args in [
        vec!["watch".into(), "--policy".into(), bad.display().to_string()],
        vec!["policy".into(), "check".into(), bad.display().to_string()],
    ] {
        let out = Command::new(ffrtmp()).args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("{}:4:", bad.display())) && stderr.contains("lots"),
            "{stderr}"
        );
        assert!(out.stdout.is_empty(), "something started: {out:?}");
    }
    let missing = Command::new(ffrtmp())
        .args(["watch", "--policy", "/nonexistent/policy.toml"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    let good = Command::new(ffrtmp())
        .args(["policy", "check"])
        .arg(write_policy(&dir, POLICY))
        .output()
        .unwrap();
    assert!(good.status.success(), "{good:?}");
    let text = String::from_utf8_lossy(&good.stdout);
    assert!(
        text.contains("kernel pre-filter: ffkeyed, ffmpeg"),
        "{text}"
    );
}

/// `GET /metrics` from `addr`.
fn scrape(addr: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.0 200 OK\r\n"), "{text}");
    text
}

#[test]
fn metrics_count_what_the_stream_says() {
    if !require_root("metrics_count_what_the_stream_says") {
        return;
    }
    let dir = scratch("auto-metrics");
    let root = Root::new("metrics");
    let policy = write_policy(&dir, POLICY);
    let ffmpeg = fake(&dir, "ffmpeg", "/bin/sleep");
    let addr = format!("127.0.0.1:{}", 20_000 + std::process::id() % 20_000);
    let mut w = watch(
        &policy,
        &root,
        &["--backend", "ebpf", "--metrics-addr", &addr],
    );
    let mut jobs: Vec<Child> = (0..2).map(|_| sleeper(&ffmpeg, "30")).collect();
    for j in &jobs {
        w.wait_for("governed", governed_of(j.id()));
    }
    let text = scrape(&addr);
    for needle in [
        "ffrtmp_events_total{event=\"governed\"} 2",
        "ffrtmp_governed_processes{tier=\"none\"} 2",
        "ffrtmp_govern_latency_seconds_count 2",
    ] {
        assert!(text.contains(needle), "{needle} not in:\n{text}");
    }
    kill(&mut jobs[0]);
    w.wait_for("exit", exit_of(jobs[0].id()));
    assert!(scrape(&addr).contains("ffrtmp_governed_processes{tier=\"none\"} 1"));
    kill(&mut jobs[1]);
}

/// Whether some cgroup mount has `favordynmods`.
fn favordynmods_on() -> bool {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(" - cgroup"))
        .any(|l| {
            l.rsplit(' ')
                .next()
                .is_some_and(|o| o.split(',').any(|o| o == "favordynmods"))
        })
}

fn kernel_at_least_6() -> bool {
    nix::sys::utsname::uname()
        .ok()
        .and_then(|u| u.release().to_str()?.split('.').next()?.parse::<u32>().ok())
        .is_some_and(|major| major >= 6)
}

/// Without `favordynmods` (Linux >= 6.0) `watch` says governing will be
/// slow; `--favordynmods` turns it on (a remount keeping the other options).
#[test]
fn favordynmods_is_reported_when_off_and_turned_on_when_asked() {
    if !require_root("favordynmods_is_reported_when_off") {
        return;
    }
    if favordynmods_on() || !kernel_at_least_6() {
        common::skip(
            "favordynmods_is_reported_when_off",
            "favordynmods is already on, or the kernel predates it (runs in the 6.1 VM)",
        );
        return;
    }
    let dir = scratch("auto-dynmods");
    let root = Root::new("dynmods");
    let policy = write_policy(&dir, POLICY);
    let slow = |w: &Watch| {
        w.events
            .iter()
            .any(|e| matches!(&e.body, Body::Degraded(d) if d.fallback == Fallback::SlowMigrations))
    };
    let before = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let w = watch(&policy, &root, &["--backend", "ebpf"]);
    assert!(slow(&w), "no degraded event: {:?}", w.events);
    drop(w);
    assert!(!favordynmods_on(), "changed without being asked");
    let w = watch(&policy, &root, &["--backend", "ebpf", "--favordynmods"]);
    assert!(!slow(&w), "{:?}", w.events);
    assert!(favordynmods_on(), "not turned on");
    // The cgroup2 mount kept its other options (per mount and per superblock).
    let line = |text: &str| {
        text.lines()
            .find(|l| l.contains(" - cgroup2 "))
            .map(|l| l.replace(",favordynmods", ""))
    };
    assert_eq!(
        line(&before),
        line(&fs::read_to_string("/proc/self/mountinfo").unwrap())
    );
}

/// Debian's real ffmpeg (installed by `cargo xtask test` on the host; not in
/// the VM image) is governed by the embedded policy's rule for it, and its
/// transcode completes under the limits.
#[test]
fn the_real_ffmpeg_is_governed_by_the_embedded_policy() {
    if !require_root("the_real_ffmpeg_is_governed") {
        return;
    }
    if common::in_vm() {
        common::skip(
            "the_real_ffmpeg_is_governed",
            "no ffmpeg in the VM image (runs on the host)",
        );
        return;
    }
    if !Path::new("/usr/bin/ffmpeg").exists() {
        if common::required() {
            panic!("ffmpeg is missing: `cargo xtask test` installs it as root");
        }
        common::skip("the_real_ffmpeg_is_governed", "ffmpeg is not installed");
        return;
    }
    let dir = scratch("auto-ffmpeg");
    let root = Root::new("ffmpeg");
    // No --policy: the embedded one.
    let mut w = Watch::start_with(Command::new(ffrtmp()).args([
        "watch",
        "--backend",
        "ebpf",
        "--cgroup-root",
        root.path(),
    ]));
    // A file transcode (batch) and one paced to realtime (live), at once.
    let encode = |out: &Path, live: bool| {
        let mut c = Command::new("/usr/bin/ffmpeg");
        c.args(["-nostdin", "-loglevel", "error"]);
        if live {
            c.arg("-re");
        }
        c.args([
            "-f",
            "lavfi",
            "-i",
            "testsrc=duration=2:size=320x240:rate=25",
        ])
        .args(["-c:v", "mpeg4", "-y"])
        .arg(out)
        .spawn()
        .unwrap()
    };
    let out = dir.join("out.mp4");
    let mut ffmpeg = encode(&out, false);
    let mut live = encode(&dir.join("live.mp4"), true);
    let pid = ffmpeg.id();
    let g = as_governed(w.wait_for("the real ffmpeg governed", governed_of(pid)));
    assert_eq!(g.rule.as_deref(), Some("ffmpeg-batch"));
    assert_eq!(g.tier, Some(Tier::Batch));
    assert_eq!(g.limits.cpu_idle, Some(1), "{g:?}");
    assert!(g.limits.cpu_weight.is_none(), "{g:?}");
    assert_eq!(g.limits.memory_max, Some(Size::Bytes(4_294_967_296_u64)));
    assert_eq!(g.limits.oom_score_adj, Some(500));
    assert!(cgroups(pid).contains(&format!("{}/ffmpeg-{pid}", root.path())));
    let batch_cgroup = g.cgroup.clone().unwrap();
    assert_eq!(
        common::cpu_file(&batch_cgroup, "cpu.idle").as_deref(),
        Some("1")
    );
    let l = as_governed(w.wait_for("the live ffmpeg governed", governed_of(live.id())));
    assert_eq!(l.rule.as_deref(), Some("ffmpeg-live"));
    assert_eq!(l.tier, Some(Tier::Live));
    assert_eq!(l.limits.cpu_weight, Some(1000), "{l:?}");
    assert!(l.limits.cpu_idle.is_none(), "{l:?}");
    assert!(live.wait().unwrap().success());
    assert!(ffmpeg.wait().unwrap().success());
    assert!(fs::metadata(&out).unwrap().len() > 0, "no output written");
    let exit = w.wait_for("its exit", exit_of(pid));
    let Body::Exit(x) = exit.body else {
        unreachable!()
    };
    assert_eq!(x.exit_code, Some(0));
    let report = x.job.expect("a job report");
    assert!(report.cpu_usage_us.is_some_and(|us| us > 0), "{report:?}");
}

/// `watch --events FILE` writes its events there (stdout stays empty, so a
/// unit's journal holds only logs), and SIGHUP reopens the file by name:
/// logrotate renames it, `systemctl reload` follows, and the events after
/// the reload are in the new file, none lost or split. A link is refused
/// (exit 2) before anything starts.
#[test]
fn watch_writes_events_to_a_file_and_reopens_it_on_sighup() {
    if !require_root("watch_writes_events_to_a_file") {
        return;
    }
    let dir = scratch("auto-events-file");
    let root = Root::new("evfile");
    let policy = write_policy(&dir, &one_rule("t", "ev-ffmpeg", 30000));
    let ffmpeg = fake(&dir, "ev-ffmpeg", "/bin/sleep");
    let file = dir.join("events.jsonl");
    let link = dir.join("link.jsonl");
    std::os::unix::fs::symlink(&policy, &link).unwrap();
    let refused = Command::new(ffrtmp())
        .args(["watch", "--events"])
        .arg(&link)
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");

    let daemon = Command::new(ffrtmp())
        .arg("watch")
        .arg("--policy")
        .arg(&policy)
        .args(["--cgroup-root", root.path(), "--events"])
        .arg(&file)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut kids = Children(Vec::new());
    common::wait_for_event(&file, "started", |e| matches!(e.body, Body::Started(_)));
    kids.0.push(sleeper(&ffmpeg, "30"));
    common::wait_for_event(&file, "the first governed", governed_of(kids.0[0].id()));

    let rotated = dir.join("events.jsonl.1");
    fs::rename(&file, &rotated).unwrap();
    common::signal(daemon.id(), nix::sys::signal::Signal::SIGHUP);
    common::wait_for_event(&file, "the reload", policy_event(true));
    kids.0.push(sleeper(&ffmpeg, "30"));
    let second = kids.0[1].id();
    common::wait_for_event(&file, "the second governed", governed_of(second));
    assert!(
        !common::read_events(&rotated)
            .iter()
            .any(governed_of(second)),
        "an event after the reload went to the rotated file"
    );
    assert!(
        common::read_events(&rotated)
            .iter()
            .any(governed_of(kids.0[0].id()))
    );

    common::signal(daemon.id(), nix::sys::signal::Signal::SIGTERM);
    let out = daemon.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.is_empty(), "events on stdout too: {out:?}");
}

/// Helper: spin on a CPU until killed (at most a minute).
#[test]
fn helper_spin() {
    if common::is_helper("spin") {
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_mins(1) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
    }
}

/// The signal the pressure watch should use here: a job's `cpu.pressure`
/// on a pure cgroup v2 host whose kernel has pressure stall information on
/// (every VM: Debian's kernels have it), else its threads' schedstat (the
/// v1 host).
fn expected_signal() -> ffrtmp::events::Signal {
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    if v2 && fs::read_to_string("/proc/pressure/cpu").is_ok() {
        ffrtmp::events::Signal::Psi
    } else {
        ffrtmp::events::Signal::Schedstat
    }
}

/// The pressure watch, end to end: one more live job spinning than there
/// are CPUs makes each wait a third of the time or more (beside batch jobs
/// spinning too, which yield): `pressure` fires for every live job, for
/// no batch job, and clears once they end.
#[test]
fn pressure_fires_for_live_jobs_that_wait_and_clears_when_they_end() {
    if !require_root("pressure_fires_for_live_jobs") {
        return;
    }
    let dir = scratch("auto-pressure");
    let root = Root::new("pressure");
    let policy = write_policy(
        &dir,
        "[[rule]]\nname = \"live\"\ncomm = \"livespin\"\ntier = \"live\"\n\n[[rule]]\nname = \"batch\"\ncomm = \"batchspin\"\ntier = \"batch\"\n",
    );
    let own = std::env::current_exe().unwrap();
    let live = fake(&dir, "livespin", own.to_str().unwrap());
    let batch = fake(&dir, "batchspin", own.to_str().unwrap());
    let spin = |exe: &Path| {
        Command::new(exe)
            .args(["--exact", "helper_spin", "--test-threads=1"])
            .env(common::HELPER_ENV, "spin")
            .stdout(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut w = watch(&policy, &root, &[]);
    let cpus = thread::available_parallelism().map_or(2, std::num::NonZero::get);
    let mut batches = Children((0..cpus).map(|_| spin(&batch)).collect());
    let mut lives = Children((0..=cpus).map(|_| spin(&live)).collect());
    let jobs: Vec<String> = lives
        .0
        .iter()
        .map(|c| format!("livespin-{}", c.id()))
        .collect();
    for job in &jobs {
        let e = w.wait_for(
            "pressure on a live job",
            |e| matches!(&e.body, Body::Pressure(p) if &p.job_id == job && !p.cleared),
        );
        let Body::Pressure(p) = e.body else {
            unreachable!()
        };
        eprintln!(
            "{job}: waiting {} ({:?}), using {} CPUs",
            p.waiting, p.signal, p.usage_cpus
        );
        assert_eq!(p.tier, Tier::Live);
        assert_eq!(p.signal, expected_signal(), "{p:?}");
        assert!(p.waiting >= 0.1, "{p:?}");
        assert_eq!(p.cause, ffrtmp::events::Cause::Contended, "{p:?}");
    }
    for child in &mut lives.0 {
        kill(child);
    }
    for job in &jobs {
        w.wait_for(
            "the live job's pressure cleared",
            |e| matches!(&e.body, Body::Pressure(p) if &p.job_id == job && p.cleared),
        );
    }
    for child in &mut batches.0 {
        kill(child);
    }
    let strangers: Vec<&Event> = w
        .events
        .iter()
        .filter(|e| matches!(&e.body, Body::Pressure(p) if !jobs.contains(&p.job_id)))
        .collect();
    assert!(
        strangers.is_empty(),
        "pressure for other jobs: {strangers:?}"
    );
}
