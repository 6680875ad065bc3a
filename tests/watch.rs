//! `ffrtmp watch` against the real kernel: every test starts the real binary,
//! makes real processes, and checks what the stream says about them.
mod common;

use ffrtmp::events::Fallback;

use std::{
    collections::HashSet,
    io::BufRead as _,
    os::unix::process::CommandExt as _,
    process::{Child, Command, Stdio},
    thread,
    time::Duration,
};

use common::{Watch, exec_of, exit_of, ffrtmp, helper, is_helper, require_root, skip};
use ffrtmp::events::{Body, Event, Source};
use nix::sys::signal::Signal;

fn exec(e: &Event) -> &ffrtmp::events::Exec {
    match &e.body {
        Body::Exec(x) => x,
        other => panic!("not an exec: {other:?}"),
    }
}

fn exit(e: &Event) -> &ffrtmp::events::Exit {
    match &e.body {
        Body::Exit(x) => x,
        other => panic!("not an exit: {other:?}"),
    }
}

fn started_backend(w: &Watch) -> &str {
    match &w.events[..] {
        [
            ..,
            Event {
                body: Body::Started(s),
                ..
            },
        ] => &s.backend,
        other => panic!("started is not the last event so far: {other:?}"),
    }
}

#[test]
fn ebpf_reports_a_short_lived_process_with_its_pid_filename_and_status() {
    if !require_root("ebpf_reports_a_short_lived_process") {
        return;
    }
    let mut w = Watch::observe_all(&["--backend", "ebpf"]);
    assert_eq!(started_backend(&w), "ebpf");
    let mut child = Command::new("/bin/true").spawn().unwrap();
    let pid = child.id();
    assert!(child.wait().unwrap().success());

    let ev = w.wait_for("exec of /bin/true", exec_of(pid));
    assert_eq!(ev.source, Source::Ebpf);
    let x = exec(&ev);
    assert_eq!(x.filename, "/bin/true");
    assert_eq!(x.comm, "true");
    assert_eq!(x.ppid, Some(std::process::id()), "the test is the parent");
    assert_eq!(x.tid, pid);
    assert_eq!(x.uid, 0);
    assert_eq!(x.argv.as_deref(), Some(&["/bin/true".to_string()][..]));
    assert!(!x.adopted);

    let ev = w.wait_for("exit of /bin/true", exit_of(pid));
    let e = exit(&ev);
    assert_eq!((e.exit_code, e.signal), (Some(0), None));
    assert!(e.duration_us.is_some());
    let (status, _) = w.stop();
    assert!(status.success(), "SIGTERM ends watch with 0: {status}");
}

#[test]
fn ebpf_reports_exit_code_42_and_death_by_sigkill() {
    if !require_root("ebpf_reports_exit_code_42_and_death_by_sigkill") {
        return;
    }
    let mut w = Watch::observe_all(&["--backend", "ebpf"]);
    let mut child = Command::new("/bin/sh")
        .args(["-c", "exit 42"])
        .spawn()
        .unwrap();
    let pid = child.id();
    assert_eq!(child.wait().unwrap().code(), Some(42));
    let e = w.wait_for("exit 42", exit_of(pid));
    assert_eq!((exit(&e).exit_code, exit(&e).signal), (Some(42), None));

    let mut sleeper = Command::new("/bin/sleep").arg("30").spawn().unwrap();
    let pid = sleeper.id();
    w.wait_for("exec of sleep", exec_of(pid));
    sleeper.kill().unwrap(); // SIGKILL
    sleeper.wait().unwrap();
    let e = w.wait_for("exit by SIGKILL", exit_of(pid));
    assert_eq!((exit(&e).exit_code, exit(&e).signal), (None, Some(9)));
    assert!(exit(&e).duration_us.is_some_and(|d| d > 0));

    // Each process exits once, however many threads it had.
    let exits = w.events.iter().filter(|e| exit_of(pid)(e)).count();
    assert_eq!(exits, 1);
    let (status, _) = w.stop_with(Signal::SIGINT);
    assert!(status.success(), "SIGINT ends watch with 0: {status}");
}

/// Not a test: the helper process of `ebpf_reports_exec_from_a_non_main_thread`.
/// libtest runs every test on a thread of its own, so exec'ing here is an
/// exec from a non-main thread of a multi-threaded process.
#[test]
fn helper_exec_from_a_thread() {
    if !is_helper("exec-from-thread") {
        return;
    }
    let err = Command::new("/bin/sleep").arg("0.2").exec();
    panic!("exec failed: {err}");
}

/// A multi-threaded process whose non-main thread calls exec: the kernel
/// gives the exec'ing thread the leader's pid; one exec is reported, with
/// `tid` naming the thread, and one exit for the whole group.
#[test]
fn ebpf_reports_exec_from_a_non_main_thread() {
    if !require_root("ebpf_reports_exec_from_a_non_main_thread") {
        return;
    }
    let mut w = Watch::observe_all(&["--backend", "ebpf"]);
    let mut child = helper("helper_exec_from_a_thread", "exec-from-thread")
        .spawn()
        .unwrap();
    let pid = child.id();
    assert!(child.wait().unwrap().success());

    let ev = w.wait_for(
        "exec of sleep from a thread",
        |e| matches!(&e.body, Body::Exec(x) if x.pid == pid && x.filename == "/bin/sleep"),
    );
    let x = exec(&ev);
    assert_ne!(x.tid, pid, "the exec'ing thread is not the leader");
    assert_eq!(
        x.argv.as_deref(),
        Some(&["/bin/sleep".to_string(), "0.2".into()][..])
    );
    let e = w.wait_for("exit of the thread group", exit_of(pid));
    assert_eq!(exit(&e).exit_code, Some(0));
    let exits = w.events.iter().filter(|e| exit_of(pid)(e)).count();
    assert_eq!(exits, 1, "the threads killed by exec are not process exits");
}

/// A child that calls `execveat(dirfd, path, ["true"], [], flags)` itself,
/// right after fork.
fn spawn_execveat(dirfd: i32, path: &'static std::ffi::CStr, flags: i32) -> std::io::Result<Child> {
    let mut cmd = Command::new("/nonexistent-never-run");
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // argv[0] stays "true": busybox (in the VM) picks its applet by it.
            let argv = [c"true".as_ptr(), std::ptr::null()];
            let envp: [*const libc::c_char; 1] = [std::ptr::null()];
            libc::syscall(
                libc::SYS_execveat,
                dirfd,
                path.as_ptr(),
                argv.as_ptr(),
                envp.as_ptr(),
                flags,
            );
            Err(std::io::Error::last_os_error())
        });
    }
    cmd.spawn()
}

/// `execveat(2)` with an absolute path, and relative to a directory fd.
#[test]
fn ebpf_reports_execveat() {
    if !require_root("ebpf_reports_execveat") {
        return;
    }
    let mut w = Watch::observe_all(&["--backend", "ebpf"]);
    let mut child = spawn_execveat(libc::AT_FDCWD, c"/bin/true", 0).expect("execveat of /bin/true");
    let pid = child.id();
    assert!(child.wait().unwrap().success());
    let ev = w.wait_for("exec via execveat", exec_of(pid));
    let x = exec(&ev);
    assert_eq!(
        (x.comm.as_str(), x.filename.as_str()),
        ("true", "/bin/true")
    );
    assert_eq!(x.argv.as_deref(), Some(&["true".to_string()][..]));

    let dir = std::fs::File::open("/bin").unwrap();
    let dirfd = std::os::fd::AsRawFd::as_raw_fd(&dir);
    match spawn_execveat(dirfd, c"true", 0) {
        Ok(mut child) => {
            let pid = child.id();
            assert!(child.wait().unwrap().success());
            let ev = w.wait_for("exec via execveat relative to a dirfd", exec_of(pid));
            // The kernel names a dirfd-relative exec "/dev/fd/N/true".
            assert_eq!(exec(&ev).filename, format!("/dev/fd/{dirfd}/true"));
        }
        // Debian's 5.10 kernel refuses every fd-based exec with ENOENT
        // (seen in the VM matrix); the absolute form above still ran.
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => skip(
            "ebpf_reports_execveat_dirfd_form",
            "this kernel refuses fd-relative execveat with ENOENT",
        ),
        Err(e) => panic!("execveat relative to /bin: {e}"),
    }
}

/// Two forkers (one per core on this machine) exec as fast as they can;
/// every exec is observed, or the shortfall is reported as `lost`.
#[test]
fn ebpf_observes_every_exec_of_two_parallel_forkers() {
    if !require_root("ebpf_observes_every_exec_of_two_parallel_forkers") {
        return;
    }
    const PER_FORKER: usize = 500;
    let mut w = Watch::observe_all(&["--backend", "ebpf"]);
    let forkers: Vec<_> = (0..2)
        .map(|_| {
            thread::spawn(|| {
                (0..PER_FORKER)
                    .map(|_| {
                        let mut c = Command::new("/bin/true")
                            .stdout(Stdio::null())
                            .spawn()
                            .unwrap();
                        let pid = c.id();
                        c.wait().unwrap();
                        pid
                    })
                    .collect::<Vec<u32>>()
            })
        })
        .collect();
    let generated: HashSet<u32> = forkers
        .into_iter()
        .flat_map(|f| f.join().unwrap())
        .collect();
    assert_eq!(generated.len(), 2 * PER_FORKER);
    // A marker exec after the storm: once it is seen, everything before it
    // has been delivered (the ring is FIFO).
    let mut marker = Command::new("/bin/true").spawn().unwrap();
    let marker_pid = marker.id();
    marker.wait().unwrap();
    w.wait_for("the marker exec", exec_of(marker_pid));
    let (_, events) = w.stop();

    let observed: HashSet<u32> = events
        .iter()
        .filter_map(|e| match &e.body {
            Body::Exec(x) if generated.contains(&x.pid) && x.filename == "/bin/true" => Some(x.pid),
            _ => None,
        })
        .collect();
    let lost = common::lost_count(&events);
    let missing = generated.len() - observed.len();
    eprintln!(
        "generated {} observed {} lost {lost}",
        generated.len(),
        observed.len()
    );
    assert!(
        missing as u64 <= lost,
        "{missing} execs neither observed nor reported lost (lost = {lost})"
    );
}

#[test]
fn procfs_backend_observes_a_long_lived_process_and_its_exit() {
    if !require_root("procfs_backend_observes_a_long_lived_process_and_its_exit") {
        return;
    }
    let mut w = Watch::observe_all(&["--backend", "procfs", "--interval", "50ms"]);
    assert_eq!(started_backend(&w), "procfs");
    let mut child = Command::new("/bin/sleep").arg("0.6").spawn().unwrap();
    let pid = child.id();
    let ev = w.wait_for("procfs exec of sleep", exec_of(pid));
    assert_eq!(ev.source, Source::Procfs);
    let x = exec(&ev);
    assert_eq!(x.comm, "sleep");
    // procfs reports the resolved executable (busybox in the VM).
    let exe = std::fs::canonicalize("/bin/sleep").unwrap();
    assert_eq!(x.filename, exe.to_string_lossy());
    assert_eq!(x.ppid, Some(std::process::id()));
    assert_eq!(
        x.argv.as_deref(),
        Some(&["/bin/sleep".to_string(), "0.6".into()][..])
    );
    child.wait().unwrap();
    let ev = w.wait_for("procfs exit of sleep", exit_of(pid));
    let e = exit(&ev);
    assert_eq!(
        (e.exit_code, e.signal),
        (None, None),
        "procfs cannot know the status"
    );
    assert!(e.duration_us.is_some_and(|d| d >= 500_000), "{e:?}");
    let (status, _) = w.stop();
    assert!(status.success());
}

#[test]
fn adopt_reports_processes_that_were_already_running() {
    if !require_root("adopt_reports_processes_that_were_already_running") {
        return;
    }
    let mut sleeper = Command::new("/bin/sleep").arg("30").spawn().unwrap();
    let pid = sleeper.id();
    thread::sleep(Duration::from_millis(50)); // let it exec
    for backend in ["ebpf", "procfs"] {
        let mut w = Watch::observe_all(&["--backend", backend, "--adopt"]);
        let ev = w.wait_for("adopted sleep", exec_of(pid));
        let x = exec(&ev);
        assert!(x.adopted, "{backend}: {x:?}");
        assert_eq!(x.comm, "sleep");
        assert_eq!(
            x.argv.as_deref(),
            Some(&["/bin/sleep".to_string(), "30".into()][..])
        );
        let me = w.pid();
        assert!(
            !w.events.iter().any(exec_of(me)),
            "{backend}: watch does not report itself"
        );
        w.stop();
    }
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();
}

/// tracefs is not mounted at boot on our hosts; make sure of it in a private
/// mount namespace and show the eBPF backend works there.
#[test]
fn ebpf_works_without_tracefs_mounted() {
    if !require_root("ebpf_works_without_tracefs_mounted") {
        return;
    }
    let script = r#"
        for m in $(awk '$9 == "tracefs" || $9 == "debugfs" { print $5 }' /proc/self/mountinfo | sort -r); do
            umount -l "$m" || exit 97
        done
        if awk '$9 == "tracefs"' /proc/self/mountinfo | grep -q .; then exit 98; fi
        exec "$0" watch --backend ebpf --all --observe-only
    "#;
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        script,
        ffrtmp(),
    ]);
    let mut w = Watch::start_with(&mut cmd);
    assert_eq!(started_backend(&w), "ebpf");
    let mut child = Command::new("/bin/true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    w.wait_for("exec without tracefs", exec_of(pid));
}

/// An unprivileged user cannot load eBPF: `auto` falls back to procfs and
/// says why in a `degraded` event before `started`.
#[test]
fn auto_falls_back_to_procfs_when_not_privileged_and_says_why() {
    if !require_root("auto_falls_back_to_procfs_when_not_privileged") {
        return;
    }
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
        ffrtmp(),
        "watch",
        "--all",
        "--observe-only",
    ]);
    let mut w = Watch::start_with(&mut cmd);
    assert_eq!(started_backend(&w), "procfs");
    let degraded = w.events.iter().find_map(|e| match &e.body {
        Body::Degraded(d) => Some(d.clone()),
        _ => None,
    });
    let d = degraded.expect("a degraded event before started");
    assert_eq!(d.fallback, Fallback::Procfs);
    assert!(d.reason.contains("eBPF"), "{}", d.reason);
    let mut child = Command::new("/bin/sleep").arg("0.5").spawn().unwrap();
    let pid = child.id();
    w.wait_for("procfs exec as nobody", exec_of(pid));
    child.wait().unwrap();
    let (status, _) = w.stop();
    assert!(status.success());
}

#[test]
fn text_format_prints_one_line_per_event() {
    if !require_root("text_format_prints_one_line_per_event") {
        return;
    }
    let mut watch = Command::new(ffrtmp())
        .args([
            "watch",
            "--all",
            "--observe-only",
            "--backend",
            "ebpf",
            "--format",
            "text",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(watch.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.contains(" started "), "{first}");
    let mut child = Command::new("/bin/true").arg("marker-arg").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    let line = lines
        .map(|l| l.unwrap())
        .find(|l| l.contains(" exec ") && l.contains(&format!("pid={pid} ")))
        .expect("a text exec line");
    assert!(
        line.contains("filename=/bin/true argv=\"/bin/true marker-arg\""),
        "{line}"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(watch.id() as i32),
        Signal::SIGTERM,
    )
    .unwrap();
    assert!(watch.wait().unwrap().success());
}

/// The kernel suppresses wake-ups within a 10 ms window after one was sent;
/// the consumer must still deliver a record made in that window without any
/// later event to wake it. A burst of execs makes the window; the sleeper's
/// death inside it is the record; nothing follows it.
#[test]
fn ebpf_delivers_the_last_event_of_a_burst_without_a_later_wakeup() {
    if !require_root("ebpf_delivers_the_last_event_of_a_burst") {
        return;
    }
    let mut w = Watch::observe_all(&["--backend", "ebpf"]);
    let mut sleeper = Command::new("/bin/sleep").arg("30").spawn().unwrap();
    let pid = sleeper.id();
    w.wait_for("exec of sleep", exec_of(pid));
    thread::sleep(Duration::from_millis(100));
    for _ in 0..10 {
        Command::new("/bin/true").status().unwrap();
    }
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();
    // 50 windows later, with no process started in between: the exit must
    // already be on the stream (a busy machine may add wake-ups, never
    // remove them, so this cannot pass by luck when polling is broken on a
    // quiet one).
    thread::sleep(Duration::from_millis(500));
    w.drain();
    assert!(
        w.events.iter().any(exit_of(pid)),
        "the exit made inside a wake-up window was not delivered"
    );
}
