//! The order of the stream against a fake governor: no root, no kernel.
use std::{cell::RefCell, collections::HashSet, rc::Rc};

use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};

use super::*;
use crate::{
    events::{
        Body, Event, EventError, Exec, Exit, Governed, JobReport, KernelStamp, Sink, Source,
        Timestamp,
    },
    observe::proc::ProcError,
};

/// Governs every exec; those in `staged` on the "maker thread" (in
/// flight until the test sends their job back), the others inline.
#[derive(Default)]
struct Fake {
    staged: HashSet<u32>,
    in_flight: HashSet<u32>,
    followed: HashSet<u32>,
    made_jobs: Option<MadeJobs<u32>>,
    /// What the stream asked, in order.
    calls: Rc<RefCell<Vec<String>>>,
}

fn governed(pid: u32) -> Event {
    Event::new(
        Timestamp::now(),
        Source::Ffrtmp,
        Governed {
            pid,
            process_key: None,
            job_id: format!("job-{pid}"),
            cgroup: None,
            mode: crate::events::Mode::Privileged,
            limits: Default::default(),
            tier: None,
            rule: Some("r".into()),
            adopted: false,
            latency_us: None,
        },
    )
}

impl Govern for Fake {
    type Made = u32;

    fn start_up(&mut self) -> Result<Events, ProcError> {
        Ok(Vec::new())
    }

    fn on_exec(&mut self, _: Option<KernelStamp>, exec: &Exec) -> Events {
        self.calls.borrow_mut().push(format!("exec {}", exec.pid));
        if self.staged.contains(&exec.pid) {
            self.in_flight.insert(exec.pid);
            return Vec::new();
        }
        self.followed.insert(exec.pid);
        vec![governed(exec.pid)]
    }

    fn on_exit(&mut self, exit: &mut Exit) {
        self.calls.borrow_mut().push(format!("exit {}", exit.pid));
        if self.followed.remove(&exit.pid) {
            exit.job = Some(JobReport {
                job_id: format!("job-{}", exit.pid),
                oom_killed: Some(false),
                cpu_usage_us: None,
                memory_peak_bytes: None,
                recovered: false,
            });
        }
    }

    fn is_in_flight(&self, pid: u32) -> bool {
        self.in_flight.contains(&pid)
    }

    fn in_flight(&self) -> usize {
        self.in_flight.len()
    }
    fn followed(&self) -> usize {
        0
    }

    fn take_made_jobs(&mut self) -> Option<MadeJobs<u32>> {
        self.made_jobs.take()
    }

    fn made(&mut self, pid: u32) -> Events {
        self.in_flight.remove(&pid);
        self.followed.insert(pid);
        vec![governed(pid)]
    }

    fn maker_stopped(&mut self) -> Events {
        self.in_flight.clear();
        Vec::new()
    }

    fn request_rescan(&mut self) {}

    fn rescan(&mut self) -> Result<Events, ProcError> {
        Ok(Vec::new())
    }

    fn take_newly_followed(&mut self) -> Vec<u32> {
        Vec::new()
    }

    fn ended_unseen(&mut self, _: &[u32]) -> Events {
        Vec::new()
    }

    fn next_retry(&self) -> Option<std::time::Instant> {
        None
    }

    fn retry(&mut self) -> Events {
        Vec::new()
    }

    fn reload(&mut self, _: crate::policy::Policy) -> Events {
        Vec::new()
    }
}

/// The outputs, as a list the test reads.
#[derive(Clone, Default)]
struct Out(Rc<RefCell<Vec<Event>>>);

impl Sink for Out {
    fn send(&mut self, event: &Event) -> Result<(), EventError> {
        self.0.borrow_mut().push(event.clone());
        Ok(())
    }

    fn flush(&mut self) -> Result<(), EventError> {
        Ok(())
    }
}

impl Out {
    /// `exec 1`, `governed 1`, `exit 1 job` …
    fn lines(&self) -> Vec<String> {
        self.0
            .borrow()
            .iter()
            .map(|e| match &e.body {
                Body::Exec(x) => format!("exec {}", x.pid),
                Body::Governed(g) => format!("governed {}", g.pid),
                Body::Exit(x) if x.job.is_some() => format!("exit {} job", x.pid),
                Body::Exit(x) => format!("exit {}", x.pid),
                other => other.name().to_string(),
            })
            .collect()
    }
}

fn exec(pid: u32, comm: &str) -> Event {
    Event::new(
        Timestamp::now(),
        Source::Ebpf,
        crate::daemon::tests::exec_of(pid, comm),
    )
}

fn exit(pid: u32) -> Event {
    Event::new(
        Timestamp::now(),
        Source::Ebpf,
        Exit {
            pid,
            process_key: None,
            comm: "x".into(),
            exit_code: Some(0),
            signal: None,
            duration_us: None,
            job: None,
        },
    )
}

/// A stream over a fake governor, its outputs, the sender of its made
/// jobs, and the governor's log of calls.
type Harness = (
    Stream<Fake, Out>,
    Out,
    UnboundedSender<u32>,
    Rc<RefCell<Vec<String>>>,
);

/// A stream over a fake governor whose made jobs the test sends.
fn stream(staged: &[u32], filter: Option<&[&str]>) -> Harness {
    let (tx, rx) = unbounded_channel();
    let calls = Rc::default();
    let fake = Fake {
        staged: staged.iter().copied().collect(),
        made_jobs: Some(rx),
        calls: Rc::clone(&calls),
        ..Fake::default()
    };
    let out = Out::default();
    let filter = filter.map(|f| f.iter().map(std::string::ToString::to_string).collect());
    (
        Stream::new(out.clone(), Some(fake), None, filter),
        out,
        tx,
        calls,
    )
}

fn batch(s: &mut Stream<Fake, Out>, events: Vec<Event>) {
    for e in events {
        s.take(e).unwrap();
    }
    Consumer::flush(s).unwrap();
}

#[test]
fn governed_follows_its_exec_and_execs_are_governed_before_earlier_exits() {
    let (mut s, out, _tx, calls) = stream(&[], None);
    batch(&mut s, vec![exec(1, "ffmpeg")]);
    batch(&mut s, vec![exit(1), exec(2, "ffmpeg"), exit(2)]);
    // Written in the order it happened, each governed after its exec…
    assert_eq!(
        out.lines(),
        [
            "exec 1",
            "governed 1",
            "exit 1 job",
            "exec 2",
            "governed 2",
            "exit 2 job"
        ]
    );
    // …but the new exec was governed before the exit ahead of it.
    assert_eq!(*calls.borrow(), ["exec 1", "exec 2", "exit 1", "exit 2"]);
}

#[test]
fn an_exit_is_held_until_its_job_is_made_then_carries_its_report() {
    let (mut s, out, tx, _) = stream(&[7], None);
    let mut made = s.take_made_jobs().unwrap();
    batch(&mut s, vec![exec(7, "ffmpeg"), exit(7), exec(8, "ffmpeg")]);
    assert_eq!(out.lines(), ["exec 7", "exec 8", "governed 8"]);
    tx.send(7).unwrap();
    s.made(made.try_recv().ok(), []).unwrap();
    assert_eq!(
        out.lines(),
        ["exec 7", "exec 8", "governed 8", "governed 7", "exit 7 job"]
    );
}

#[tokio::test]
async fn stopping_emits_the_jobs_in_flight_and_their_held_exits() {
    let (mut s, out, tx, _) = stream(&[3, 4], None);
    let mut made = s.take_made_jobs().unwrap();
    batch(&mut s, vec![exec(3, "ffmpeg"), exec(4, "ffmpeg"), exit(3)]);
    tx.send(3).unwrap();
    tx.send(4).unwrap();
    s.finish(Some(&mut made)).await.unwrap();
    // Made together, written together; the held exit after its job.
    assert_eq!(
        out.lines(),
        ["exec 3", "exec 4", "governed 3", "governed 4", "exit 3 job"]
    );
}

#[test]
fn a_stopped_maker_releases_the_held_exits() {
    let (mut s, out, tx, _) = stream(&[5], None);
    let _made = s.take_made_jobs().unwrap();
    batch(&mut s, vec![exec(5, "ffmpeg"), exit(5)]);
    drop(tx);
    s.made(None, []).unwrap();
    assert_eq!(out.lines(), ["exec 5", "exit 5"]);
}

#[test]
fn the_filter_hides_others_but_never_a_governed_exit() {
    let (mut s, out, _tx, _) = stream(&[], Some(&["ffmpeg"]));
    batch(
        &mut s,
        vec![
            exec(1, "bash"),
            exec(2, "ffmpeg"),
            exit(1),
            exit(2),
            exit(99),
        ],
    );
    // bash was governed by the fake (every exec is): its exit has a job.
    assert_eq!(
        out.lines(),
        [
            "governed 1",
            "exec 2",
            "governed 2",
            "exit 1 job",
            "exit 2 job"
        ]
    );
}
