//! The governor's decisions against a machine of the tests' own ([`Host`]),
//! without root: what is staged and made, what is left alone, what waits
//! and how long, what a restart finds and follows, which exits were lost.
//! The root suites (tests/auto_govern.rs, tests/hostile.rs) check the same
//! against the real kernel.
use std::{
    collections::BTreeMap,
    io,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use super::{
    Events, Govern, Governor,
    host::{Found, Held, Host, Made, MakeJobs, NoStaging, Staged, Unmade},
    note,
    seen::Seen,
};
use crate::{
    events::{Body, Exec, Exit, KernelStamp},
    govern::{Stats, scope, target::TargetError},
    limits::{JobId, Limits, Tier},
    observe::proc::{ProcError, Stat},
    policy::Policy,
};

/// A process of the fake machine.
#[derive(Clone, Debug)]
struct Proc {
    comm: String,
    start: u64,
    cgroups: Vec<String>,
}

/// The fake machine's state, shared by the host, its job maker and the
/// test that looks at it.
#[derive(Debug)]
struct World {
    now: Instant,
    procs: BTreeMap<u32, Proc>,
    /// Jobs in the tree: id to (cgroup path, tier).
    jobs: BTreeMap<String, (String, Option<Tier>)>,
    staged: Vec<u32>,
    made: Vec<(u32, String)>,
    reaped: Vec<String>,
    /// How many of the next jobs cannot be made.
    make_fails: u32,
    /// Holding a process fails for want of a file descriptor.
    out_of_fds: bool,
    /// /proc cannot be listed.
    proc_unreadable: bool,
    /// Staging cgroups cannot be made.
    no_staging: bool,
    /// Jobs are systemd's scopes.
    scopes: bool,
}

#[derive(Clone)]
struct Shared(Arc<Mutex<World>>);

impl Shared {
    fn new() -> Self {
        Shared(Arc::new(Mutex::new(World {
            now: Instant::now(),
            procs: BTreeMap::new(),
            jobs: BTreeMap::new(),
            staged: Vec::new(),
            made: Vec::new(),
            reaped: Vec::new(),
            make_fails: 0,
            out_of_fds: false,
            proc_unreadable: false,
            no_staging: false,
            scopes: false,
        })))
    }

    fn w(&self) -> MutexGuard<'_, World> {
        self.0.lock().unwrap()
    }

    /// Starts process `pid` named `comm` in cgroup `cgroup`.
    fn start(&self, pid: u32, comm: &str, cgroup: &str) {
        let start = 1000 + u64::from(pid);
        self.w().procs.insert(
            pid,
            Proc {
                comm: comm.into(),
                start,
                cgroups: vec![cgroup.into()],
            },
        );
    }

    fn end(&self, pid: u32) {
        self.w().procs.remove(&pid);
    }

    fn cgroup_of(&self, pid: u32) -> String {
        self.w().procs[&pid].cgroups.join(",")
    }

    fn advance(&self, by: Duration) {
        self.w().now += by;
    }
}

struct FakeHeld {
    pid: u32,
    start: u64,
    world: Shared,
}

impl Held for FakeHeld {
    fn start_ticks(&self) -> u64 {
        self.start
    }

    fn has_exited(&self) -> bool {
        self.world
            .w()
            .procs
            .get(&self.pid)
            .is_none_or(|p| p.start != self.start)
    }
}

struct FakeMaker(Shared);

impl MakeJobs for FakeMaker {
    type Held = FakeHeld;
    type Cgroup = String;

    fn make(&self, job: Unmade<FakeHeld>) -> Made<String> {
        let pid = job.pid;
        let kernel_tracked = matches!(job.seen, Seen::Kernel { .. });
        let mut made = Made {
            pid,
            follow: None,
            comm: String::new(),
            start_ticks: job.target.start,
            kernel_tracked,
            events: Vec::new(),
            retry: None,
            retried: false,
        };
        if job.target.has_exited() {
            return made;
        }
        let mut w = self.0.w();
        made.comm = w.procs[&pid].comm.clone();
        if w.make_fails > 0 {
            w.make_fails -= 1;
            made.events = vec![note(format!("job of {pid} not made"))];
            drop(w);
            made.retry = Some(job.park());
            return made;
        }
        let id = job.job_id.to_string();
        let path = format!("/ffrtmp/{id}");
        if let Some(p) = w.procs.get_mut(&pid) {
            p.cgroups = vec![path.clone()];
        }
        w.jobs.insert(id.clone(), (path, job.tier));
        w.made.push((pid, id.clone()));
        made.events = vec![note(format!("made {id}"))];
        made.follow = Some((id.clone(), Some(id)));
        made.retried = job.attempts > 0;
        made
    }

    fn mark_busy(&self) {}
}

struct FakeHost {
    world: Shared,
    maker: Arc<FakeMaker>,
}

impl Host for FakeHost {
    type Held = FakeHeld;
    type Cgroup = String;
    type Staging = String;
    type Maker = FakeMaker;

    fn maker(&self) -> Arc<FakeMaker> {
        Arc::clone(&self.maker)
    }

    fn now(&self) -> Instant {
        self.world.w().now
    }

    fn jobs_are_slow(&self) -> bool {
        self.world.w().scopes
    }

    fn pids(&mut self) -> Result<Vec<u32>, ProcError> {
        let w = self.world.w();
        if w.proc_unreadable {
            return Err(ProcError::Io {
                path: "/proc".into(),
                source: io::Error::from_raw_os_error(24),
            });
        }
        Ok(w.procs.keys().copied().collect())
    }

    fn scanned(&mut self) {}

    fn stat(&self, pid: u32) -> Result<Stat, ProcError> {
        let w = self.world.w();
        let p = w.procs.get(&pid).ok_or(ProcError::Gone(pid))?;
        Ok(Stat {
            pid,
            comm: p.comm.clone(),
            state: 'S',
            ppid: 1,
            flags: 0,
            start_ticks: p.start,
            utime: 0,
            stime: 0,
            vsize: 0,
            rss_pages: 0,
        })
    }

    fn uid(&self, pid: u32) -> Result<u32, ProcError> {
        self.stat(pid).map(|_| 0)
    }

    fn exe(&self, _: u32) -> Option<String> {
        None
    }

    fn argv(&self, _: u32) -> Option<Vec<String>> {
        None
    }

    fn cgroups(&self, pid: u32) -> Vec<String> {
        self.world
            .w()
            .procs
            .get(&pid)
            .map(|p| p.cgroups.clone())
            .unwrap_or_default()
    }

    fn hold(&mut self, pid: u32, start_ticks: Option<u64>) -> Result<FakeHeld, TargetError> {
        let w = self.world.w();
        if w.out_of_fds {
            return Err(TargetError::Pidfd {
                pid,
                source: io::Error::from_raw_os_error(24),
            });
        }
        let p = w.procs.get(&pid).ok_or(TargetError::NoSuchProcess(pid))?;
        if let Some(expected) = start_ticks
            && expected != p.start
        {
            return Err(TargetError::Reused {
                pid,
                expected,
                actual: p.start,
            });
        }
        Ok(FakeHeld {
            pid,
            start: p.start,
            world: self.world.clone(),
        })
    }

    fn job_prefix(&self) -> Option<&str> {
        Some("/ffrtmp/")
    }

    fn is_job_scope(&self, path: &str) -> bool {
        self.world.w().scopes && scope::job_of_cgroup(path).is_some()
    }

    fn origin(&self, paths: &[String]) -> Option<scope::Origin> {
        self.world
            .w()
            .scopes
            .then(|| scope::Origin::of(paths))
            .flatten()
    }

    /// As the real one: empty jobs nobody looks after are removed first.
    fn jobs(&mut self) -> Vec<Found<String>> {
        let mut w = self.world.w();
        let mut found = Vec::new();
        let jobs = std::mem::take(&mut w.jobs);
        for (id, (path, tier)) in jobs {
            let members: Vec<(u32, Option<String>)> = w
                .procs
                .iter()
                .filter(|(_, p)| p.cgroups.contains(&path))
                .map(|(pid, _)| (*pid, Some(id.clone())))
                .collect();
            if members.is_empty() {
                w.reaped.push(id);
                continue;
            }
            w.jobs.insert(id.clone(), (path.clone(), tier));
            found.push(Found {
                id,
                cgroup: path,
                tier,
                members,
            });
        }
        found
    }

    fn stats(&self, _: &String) -> Stats {
        Stats {
            cpu_usage_us: Some(42),
            ..Stats::default()
        }
    }

    fn reap(&mut self, job: String) {
        let mut w = self.world.w();
        w.jobs.remove(&job);
        w.reaped.push(job);
    }

    fn can_stage(&self) -> Result<(), NoStaging> {
        Ok(())
    }

    fn staging(&mut self, name: &JobId, _: &Limits) -> Result<Staged<String>, NoStaging> {
        if self.world.w().no_staging {
            return Err(NoStaging::NotMade("a test".into()));
        }
        let path = format!("/ffrtmp/.staging/{name}");
        Ok(Staged {
            cgroup: path.clone(),
            path,
            applied: crate::events::Limits::default(),
        })
    }

    fn stage(&self, staging: &String, pid: u32) -> bool {
        let mut w = self.world.w();
        let Some(p) = w.procs.get_mut(&pid) else {
            return false;
        };
        p.cgroups = vec![staging.clone()];
        w.staged.push(pid);
        true
    }

    fn reap_staging(&mut self) {}
}

const POLICY: &str = "[[rule]]\nname = \"ffmpeg\"\ncomm = \"ffmpeg\"\ntier = \"live\"\n";

/// A governor of a fresh fake machine, making jobs inline.
fn governor() -> (Governor<FakeHost>, Shared) {
    let world = Shared::new();
    let host = FakeHost {
        maker: Arc::new(FakeMaker(world.clone())),
        world: world.clone(),
    };
    let policy = Policy::parse(POLICY, "test").unwrap();
    (Governor::inline(host, policy), world)
}

/// The exec of `pid` named `comm`, as the kernel reports it (the stream's
/// tests use it too).
pub(super) fn exec_of(pid: u32, comm: &str) -> Exec {
    Exec {
        pid,
        process_key: None,
        tid: pid,
        ppid: Some(1),
        uid: 0,
        comm: comm.into(),
        filename: format!("/usr/bin/{comm}"),
        argv: None,
        argv_truncated: false,
        adopted: false,
    }
}

/// What the kernel's exec record adds (its start time is left out: the
/// fake machine's ticks are not the kernel's).
fn kernel() -> KernelStamp {
    KernelStamp {
        ktime_ns: 0,
        start_boottime_ns: None,
    }
}

fn exec(g: &mut Governor<FakeHost>, pid: u32, comm: &str) -> Events {
    g.on_exec(Some(kernel()), &exec_of(pid, comm))
}

fn exit(g: &mut Governor<FakeHost>, pid: u32) -> Exit {
    let mut exit = Exit {
        pid,
        process_key: None,
        comm: String::new(),
        exit_code: Some(0),
        signal: None,
        duration_us: None,
        job: None,
    };
    g.on_exit(&mut exit);
    exit
}

fn notes(events: &Events) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match &e.body {
            Body::Degraded(d) => Some(d.reason.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_new_exec_is_staged_then_made_into_its_own_job_and_reaped_after_its_exit() {
    let (mut g, world) = governor();
    g.start_up().unwrap();
    world.start(100, "ffmpeg", "/system.slice/agent.service");
    let events = exec(&mut g, 100, "ffmpeg");
    assert_eq!(notes(&events), ["made ffmpeg-100"]);
    assert_eq!(world.w().staged, [100], "staged first");
    assert_eq!(world.cgroup_of(100), "/ffrtmp/ffmpeg-100");
    assert_eq!(g.followed(), 1);
    assert_eq!(g.take_newly_followed(), [100]);
    world.end(100);
    let x = exit(&mut g, 100);
    let report = x
        .job
        .expect("a followed process's exit has its job's report");
    assert_eq!(
        (report.job_id.as_str(), report.cpu_usage_us),
        ("ffmpeg-100", Some(42))
    );
    assert_eq!(world.w().reaped, ["ffmpeg-100"]);
    assert_eq!(g.followed(), 0);
}

#[test]
fn what_no_rule_matches_is_neither_read_nor_moved() {
    let (mut g, world) = governor();
    g.start_up().unwrap();
    world.start(101, "bash", "/user.slice");
    assert!(exec(&mut g, 101, "bash").is_empty());
    assert!(world.w().staged.is_empty() && world.w().made.is_empty());
    assert_eq!(world.cgroup_of(101), "/user.slice");
}

#[test]
fn a_process_already_in_a_job_is_never_governed_again_but_one_in_staging_is() {
    let (mut g, world) = governor();
    g.start_up().unwrap();
    // A `run` workload, or a child of a governed process.
    world.start(102, "ffmpeg", "/ffrtmp/stream-1");
    assert!(exec(&mut g, 102, "ffmpeg").is_empty());
    assert_eq!(world.cgroup_of(102), "/ffrtmp/stream-1");
    // A scope is a job only where jobs are scopes.
    world.start(103, "ffmpeg", "/system.slice/ffrtmp-cam.scope");
    exec(&mut g, 103, "ffmpeg");
    assert_eq!(world.cgroup_of(103), "/ffrtmp/ffmpeg-103");
    world.w().scopes = true;
    world.start(104, "ffmpeg", "/system.slice/ffrtmp-cam.scope");
    assert!(exec(&mut g, 104, "ffmpeg").is_empty());
    // Left in a staging cgroup by a daemon that stopped: not a job yet.
    world.w().scopes = false;
    world.start(105, "ffmpeg", "/ffrtmp/.staging/ffmpeg-0badc0de");
    exec(&mut g, 105, "ffmpeg");
    assert_eq!(world.cgroup_of(105), "/ffrtmp/ffmpeg-105");
}

#[test]
fn a_process_in_a_user_managers_tree_is_left_to_its_user() {
    let (mut g, world) = governor();
    world.w().scopes = true;
    g.start_up().unwrap();
    world.start(
        106,
        "ffmpeg",
        "/user.slice/user-1000.slice/user@1000.service/app.slice/x.service",
    );
    let events = exec(&mut g, 106, "ffmpeg");
    assert!(
        notes(&events)[0].contains("a user manager's tree"),
        "{events:?}"
    );
    assert!(world.w().staged.is_empty() && world.w().made.is_empty());
}

#[test]
fn a_job_that_cannot_be_made_waits_in_staging_with_a_growing_pause() {
    let (mut g, world) = governor();
    g.start_up().unwrap();
    world.start(110, "ffmpeg", "/system.slice/a.service");
    world.w().make_fails = 3;
    let t0 = world.w().now;
    let events = exec(&mut g, 110, "ffmpeg");
    assert_eq!(notes(&events), ["job of 110 not made"]);
    assert!(
        world.cgroup_of(110).starts_with("/ffrtmp/.staging/ffmpeg-"),
        "under its rule's limits meanwhile"
    );
    assert_eq!(g.followed(), 0);
    // Seen again (a rescan, say) while it waits: not governed twice.
    assert!(exec(&mut g, 110, "ffmpeg").is_empty());
    // 1 s, then 2 s, then 4 s after each failure.
    let mut due = t0;
    for pause in [1, 2, 4] {
        assert_eq!(g.next_retry(), Some(due + Duration::from_secs(pause)));
        world.advance(Duration::from_millis(pause * 1000 - 1));
        assert!(g.retry().is_empty(), "not due yet");
        world.advance(Duration::from_millis(1));
        due = world.w().now;
        g.retry();
    }
    // The fourth try worked.
    assert_eq!(world.cgroup_of(110), "/ffrtmp/ffmpeg-110");
    assert_eq!(g.next_retry(), None);
    assert_eq!(g.followed(), 1);
}

#[test]
fn a_retry_that_works_makes_every_waiting_process_due_at_once() {
    let (mut g, world) = governor();
    g.start_up().unwrap();
    world.start(111, "ffmpeg", "/a");
    world.start(112, "ffmpeg", "/a");
    world.w().make_fails = 3;
    exec(&mut g, 111, "ffmpeg");
    world.advance(Duration::from_millis(500));
    exec(&mut g, 112, "ffmpeg");
    // 111 fails again at its first retry (1 s), and waits 2 s more.
    world.advance(Duration::from_millis(500));
    g.retry();
    assert_eq!(world.w().made.len(), 0);
    // 112's retry (1.5 s) works: 111 is due now, not in 2 s.
    world.advance(Duration::from_millis(500));
    g.retry();
    assert_eq!(world.w().made.len(), 1);
    assert_eq!(g.next_retry(), Some(world.w().now));
    g.retry();
    assert_eq!(world.w().made.len(), 2);
}

#[test]
fn a_process_that_ends_while_it_waits_is_forgotten() {
    let (mut g, world) = governor();
    g.start_up().unwrap();
    world.start(113, "ffmpeg", "/a");
    world.w().make_fails = 1;
    exec(&mut g, 113, "ffmpeg");
    world.end(113);
    exit(&mut g, 113);
    assert_eq!(g.next_retry(), None);
    // And one reused before its retry is not taken for it.
    world.start(114, "ffmpeg", "/a");
    world.w().make_fails = 1;
    exec(&mut g, 114, "ffmpeg");
    world.w().procs.get_mut(&114).unwrap().start += 1;
    world.advance(Duration::from_secs(1));
    g.retry();
    assert!(world.w().made.is_empty());
    assert_eq!(g.next_retry(), None);
}

#[test]
fn at_the_fd_limit_a_process_that_cannot_be_held_is_found_again_by_a_rescan() {
    let (mut g, world) = governor();
    g.start_up().unwrap();
    world.start(120, "ffmpeg", "/a");
    world.w().out_of_fds = true;
    let t0 = world.w().now;
    let events = exec(&mut g, 120, "ffmpeg");
    assert!(
        notes(&events)[0].contains("scanned again in 1 s"),
        "{events:?}"
    );
    assert_eq!(world.cgroup_of(120), "/a", "not held: not moved");
    assert_eq!(g.next_retry(), Some(t0 + Duration::from_secs(1)));
    world.w().out_of_fds = false;
    world.advance(Duration::from_secs(1));
    g.retry();
    assert_eq!(world.cgroup_of(120), "/ffrtmp/ffmpeg-120");
}

#[test]
fn a_rescan_that_cannot_read_proc_is_tried_again() {
    let (mut g, world) = governor();
    g.start_up().unwrap();
    world.w().proc_unreadable = true;
    g.request_rescan();
    let events = g.rescan().unwrap();
    assert!(
        notes(&events)[0].starts_with("scanning /proc"),
        "{events:?}"
    );
    world.start(121, "ffmpeg", "/a");
    world.w().proc_unreadable = false;
    world.advance(Duration::from_secs(1));
    g.retry();
    assert_eq!(world.cgroup_of(121), "/ffrtmp/ffmpeg-121");
}

#[test]
fn without_a_staging_cgroup_a_process_goes_straight_to_its_job() {
    let (mut g, world) = governor();
    world.w().no_staging = true;
    let events = g.start_up().unwrap();
    assert!(
        notes(&events)[0].contains("new processes go straight to their job"),
        "{events:?}"
    );
    world.start(122, "ffmpeg", "/a");
    exec(&mut g, 122, "ffmpeg");
    assert!(world.w().staged.is_empty());
    assert_eq!(world.cgroup_of(122), "/ffrtmp/ffmpeg-122");
}

/// Restart and recovery: what a new daemon finds in the tree — jobs of a
/// killed daemon and of `run`, a job whose processes all ended while no
/// daemon ran, a process left in staging, a match never governed — and
/// what it does with each.
#[test]
fn a_restarted_daemon_follows_what_the_tree_holds_and_governs_the_rest() {
    let (mut g, world) = governor();
    {
        let mut w = world.w();
        w.jobs.insert(
            "ffmpeg-130".into(),
            ("/ffrtmp/ffmpeg-130".into(), Some(Tier::Live)),
        );
        w.jobs
            .insert("stream-1".into(), ("/ffrtmp/stream-1".into(), None));
        w.jobs
            .insert("ended".into(), ("/ffrtmp/ended".into(), None));
    }
    world.start(130, "ffmpeg", "/ffrtmp/ffmpeg-130");
    world.start(131, "ffmpeg", "/ffrtmp/stream-1");
    world.start(132, "sh", "/ffrtmp/stream-1");
    world.start(133, "ffmpeg", "/ffrtmp/.staging/ffmpeg-0badc0de");
    world.start(134, "ffmpeg", "/system.slice/b.service");
    let events = g.start_up().unwrap();
    let tracked: Vec<(u32, String, Option<Tier>)> = events
        .iter()
        .filter_map(|e| match &e.body {
            Body::Tracked(t) => Some((t.pid, t.job_id.clone(), t.tier)),
            _ => None,
        })
        .collect();
    assert_eq!(
        tracked,
        [
            (130, "ffmpeg-130".into(), Some(Tier::Live)),
            (131, "stream-1".into(), None),
            (132, "stream-1".into(), None)
        ]
    );
    // Followed where they are, never moved; the empty job removed.
    assert_eq!(world.cgroup_of(131), "/ffrtmp/stream-1");
    assert_eq!(world.w().reaped, ["ended"]);
    // The staged one and the new match get their own jobs (adopted).
    assert_eq!(world.cgroup_of(133), "/ffrtmp/ffmpeg-133");
    assert_eq!(world.cgroup_of(134), "/ffrtmp/ffmpeg-134");
    assert_eq!(g.followed(), 5);
    // A tracked job is reaped when its last process ends, not before.
    world.end(131);
    let x = exit(&mut g, 131);
    assert_eq!(x.job.unwrap().job_id, "stream-1");
    assert_eq!(world.w().reaped, ["ended"]);
    world.end(132);
    exit(&mut g, 132);
    assert_eq!(world.w().reaped, ["ended", "stream-1"]);
}

#[test]
fn exits_the_kernel_lost_are_recovered_by_a_rescan_with_their_reports() {
    let (mut g, world) = governor();
    g.start_up().unwrap();
    world.start(140, "ffmpeg", "/a");
    world.start(141, "ffmpeg", "/a");
    exec(&mut g, 140, "ffmpeg");
    exec(&mut g, 141, "ffmpeg");
    world.end(140);
    // 141's pid now names another process, started elsewhere.
    world.w().procs.insert(
        141,
        Proc {
            comm: "ffmpeg".into(),
            start: 9999,
            cgroups: vec!["/b".into()],
        },
    );
    g.request_rescan();
    let events = g.rescan().unwrap();
    let exits: Vec<(u32, bool)> = events
        .iter()
        .filter_map(|e| match &e.body {
            Body::Exit(x) => Some((x.pid, x.job.as_ref().is_some_and(|j| j.recovered))),
            _ => None,
        })
        .collect();
    let mut exits = exits;
    exits.sort_unstable();
    assert_eq!(exits, [(140, true), (141, true)]);
    let mut reaped = world.w().reaped.clone();
    reaped.sort();
    assert_eq!(reaped, ["ffmpeg-140", "ffmpeg-141"]);
    assert_eq!(g.followed(), 1, "the new 141, governed by the same rescan");
    assert_eq!(world.cgroup_of(141), "/ffrtmp/ffmpeg-141");
}

#[test]
fn an_adopted_process_that_ended_before_the_exit_filter_had_it_is_reported() {
    let (mut g, world) = governor();
    world.start(150, "ffmpeg", "/a");
    world.start(151, "ffmpeg", "/a");
    g.start_up().unwrap();
    let adopted = g.take_newly_followed();
    assert_eq!(adopted, [150, 151]);
    world.start(152, "ffmpeg", "/a");
    exec(&mut g, 152, "ffmpeg");
    world.end(150);
    world.end(152);
    // 152 was seen at its exec: the kernel reports its exit itself.
    let events = g.ended_unseen(&[150, 151, 152]);
    let pids: Vec<u32> = events
        .iter()
        .filter_map(|e| match &e.body {
            Body::Exit(x) => Some(x.pid),
            _ => None,
        })
        .collect();
    assert_eq!(pids, [150]);
}

#[test]
fn a_reload_stages_new_processes_by_the_new_rules_and_keeps_governed_ones() {
    let (mut g, world) = governor();
    g.start_up().unwrap();
    world.start(160, "ffmpeg", "/a");
    exec(&mut g, 160, "ffmpeg");
    let policy = Policy::parse(
        "[[rule]]\nname = \"gst\"\ncomm = \"gst-launch-1.0\"\ncpu_weight = 50\n",
        "test",
    )
    .unwrap();
    assert!(g.reload(policy).is_empty());
    world.start(161, "ffmpeg", "/a");
    world.start(162, "gst-launch-1.0", "/a");
    assert!(exec(&mut g, 161, "ffmpeg").is_empty(), "no rule now");
    exec(&mut g, 162, "gst-launch-1.0");
    assert_eq!(world.cgroup_of(160), "/ffrtmp/ffmpeg-160", "kept");
    assert_eq!(world.cgroup_of(161), "/a");
    assert_eq!(world.cgroup_of(162), "/ffrtmp/gst-launch-1.0-162");
    assert_eq!(world.w().staged, [160, 162]);
}
