//! What the kernel does with a pure cgroup v2 hierarchy, as the VM harness
//! (`cargo xtask vm-test`) sets it up: controllers enabled at the root, a
//! delegated subtree owned by an unprivileged user, a RAM block device.
//!
//! These are the facts governance builds on; they run inside the VM on every
//! kernel of the matrix. On a host without a pure v2 hierarchy at
//! /sys/fs/cgroup (our hosts are v1 hybrid) they skip loudly; inside the VM
//! they are required.
mod common;

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command},
    thread,
    time::{Duration, Instant},
};

use common::{helper, in_vm, is_helper, require_root, skip};

const CGROUP2_ROOT: &str = "/sys/fs/cgroup";

/// The v2 root when /sys/fs/cgroup is a pure v2 hierarchy.
fn v2_root(test: &str) -> Option<PathBuf> {
    if !require_root(test) {
        return None;
    }
    let root = PathBuf::from(CGROUP2_ROOT);
    if root.join("cgroup.controllers").is_file() {
        return Some(root);
    }
    if in_vm() {
        panic!("{test}: the VM must mount a pure cgroup v2 hierarchy at {CGROUP2_ROOT}");
    }
    skip(
        test,
        &format!("{CGROUP2_ROOT} is not pure cgroup v2 (these run in `cargo xtask vm-test`)"),
    );
    None
}

/// A cgroup made for one test, removed (after its processes) on drop.
struct TestCgroup {
    path: PathBuf,
    children: Vec<Child>,
}

impl TestCgroup {
    fn new(parent: &Path, name: &str) -> Self {
        let path = parent.join(format!("{name}-{}", std::process::id()));
        fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        TestCgroup {
            path,
            children: Vec::new(),
        }
    }

    fn write(&self, file: &str, value: &str) {
        fs::write(self.path.join(file), value)
            .unwrap_or_else(|e| panic!("writing {value:?} to {file}: {e}"));
    }

    fn read(&self, file: &str) -> String {
        fs::read_to_string(self.path.join(file)).unwrap_or_else(|e| panic!("reading {file}: {e}"))
    }

    /// A `key value` field of a flat-keyed file such as cpu.stat.
    fn field(&self, file: &str, key: &str) -> u64 {
        self.read(file)
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{file} has no {key}"))
    }

    /// Starts a helper and moves it into this cgroup.
    fn spawn(&mut self, mut cmd: Command) -> u32 {
        let child = cmd.spawn().expect("spawning a helper");
        let pid = child.id();
        self.write("cgroup.procs", &pid.to_string());
        self.children.push(child);
        pid
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = fs::remove_dir(&self.path);
    }
}

/// Helper: spin on the CPU until killed.
#[test]
fn helper_busy_loop() {
    if !is_helper("busy-loop") {
        return;
    }
    let mut x = 0u64;
    loop {
        x = std::hint::black_box(x.wrapping_add(1));
    }
}

/// Helper: allocate and touch 256 MiB, then report success (it should not).
#[test]
fn helper_allocate() {
    if !is_helper("allocate") {
        return;
    }
    println!("allocated {} MiB", common::allocate_mib(256));
}

#[test]
fn cpu_max_throttles_a_busy_loop_to_its_quota() {
    let Some(root) = v2_root("cpu_max_throttles_a_busy_loop_to_its_quota") else {
        return;
    };
    let mut cg = TestCgroup::new(&root, "ffrtmp-test-cpu");
    cg.write("cpu.max", "20000 100000");
    assert_eq!(cg.read("cpu.max").trim(), "20000 100000");
    cg.spawn(helper("helper_busy_loop", "busy-loop"));
    // Let it settle, then measure two seconds of CPU against wall time.
    thread::sleep(Duration::from_millis(500));
    let (usage0, t0) = (cg.field("cpu.stat", "usage_usec"), Instant::now());
    thread::sleep(Duration::from_secs(2));
    let used = cg.field("cpu.stat", "usage_usec") - usage0;
    let share = used as f64 / t0.elapsed().as_micros() as f64;
    eprintln!(
        "cpu.max 20000/100000: busy loop got {:.1} % of a CPU",
        share * 100.0
    );
    assert!(
        (0.15..=0.25).contains(&share),
        "got {:.1} % of a CPU",
        share * 100.0
    );
    assert!(cg.field("cpu.stat", "nr_throttled") > 0);
}

#[test]
fn memory_max_oom_kills_a_process_that_exceeds_it() {
    let Some(root) = v2_root("memory_max_oom_kills_a_process_that_exceeds_it") else {
        return;
    };
    let mut cg = TestCgroup::new(&root, "ffrtmp-test-mem");
    cg.write("memory.max", &(32u64 << 20).to_string());
    if cg.path.join("memory.swap.max").exists() {
        cg.write("memory.swap.max", "0");
    }
    let pid = cg.spawn(helper("helper_allocate", "allocate"));
    let status = cg.children.last_mut().unwrap().wait().unwrap();
    use std::os::unix::process::ExitStatusExt as _;
    assert_eq!(status.signal(), Some(9), "pid {pid}: {status}");
    assert!(cg.field("memory.events", "oom_kill") >= 1);
}

#[test]
fn controllers_are_enabled_for_children_of_the_root() {
    let Some(root) = v2_root("controllers_are_enabled_for_children_of_the_root") else {
        return;
    };
    let enabled = fs::read_to_string(root.join("cgroup.subtree_control")).unwrap();
    for c in ["cpu", "memory", "io", "pids"] {
        assert!(
            enabled.split_whitespace().any(|e| e == c),
            "{c} not in {enabled:?}"
        );
    }
    let cg = TestCgroup::new(&root, "ffrtmp-test-files");
    for file in [
        "cpu.max",
        "cpu.weight",
        "memory.max",
        "memory.high",
        "io.max",
        "pids.max",
    ] {
        assert!(
            cg.path.join(file).exists(),
            "{file} missing in a child cgroup"
        );
    }
}

/// io.max needs a real block device; the VM provides a RAM disk.
#[test]
fn io_max_accepts_a_limit_on_a_real_block_device() {
    let Some(root) = v2_root("io_max_accepts_a_limit_on_a_real_block_device") else {
        return;
    };
    let Ok(dev) = fs::read_to_string("/sys/block/ram0/dev") else {
        if in_vm() {
            panic!("the VM must provide /dev/ram0 (brd)");
        }
        skip(
            "io_max_accepts_a_limit_on_a_real_block_device",
            "no /dev/ram0",
        );
        return;
    };
    let dev = dev.trim();
    let cg = TestCgroup::new(&root, "ffrtmp-test-io");
    cg.write("io.max", &format!("{dev} wbps=1048576"));
    let back = cg.read("io.max");
    assert!(
        back.contains(&format!("{dev} rbps=max wbps=1048576")),
        "{back:?}"
    );
}

/// The VM's delegated subtree, as systemd's `Delegate=yes` hands it out: a
/// service started inside it as the owner (not root) can move itself to a
/// leaf, enable controllers, make job cgroups with them and join one, and
/// cannot make cgroups outside it.
#[test]
fn delegated_subtree_is_usable_by_its_unprivileged_owner() {
    let Some(root) = v2_root("delegated_subtree_is_usable_by_its_unprivileged_owner") else {
        return;
    };
    let (Some(dir), Some(uid)) = (
        std::env::var_os("FFRTMP_DELEGATED_CGROUP"),
        std::env::var("FFRTMP_DELEGATED_UID").ok(),
    ) else {
        if in_vm() {
            panic!("the VM must describe its delegated subtree");
        }
        skip(
            "delegated_subtree_is_usable_by_its_unprivileged_owner",
            "no delegated subtree",
        );
        return;
    };
    let dir = PathBuf::from(dir);
    let (leaf, job) = (dir.join("leaf"), dir.join("job"));
    // As the service: v2's no-internal-process rule means it must leave
    // the subtree's root before enabling controllers there.
    let service = format!(
        "set -e; mkdir {leaf}; echo $$ > {leaf}/cgroup.procs; \
         echo '+cpu +memory' > {dir}/cgroup.subtree_control; \
         mkdir {job}; echo $$ > {job}/cgroup.procs; \
         cat /proc/self/cgroup {job}/cgroup.controllers; \
         if mkdir {root}/not-mine 2>/dev/null; then echo ESCAPED; fi",
        leaf = leaf.display(),
        job = job.display(),
        dir = dir.display(),
        root = root.display(),
    );
    // As its manager (root): start it inside the subtree, then drop to the
    // owner (util-linux setpriv by path: busybox sh prefers its own applet).
    let manager = format!(
        "echo $$ > {dir}/cgroup.procs && exec /usr/bin/setpriv --reuid={uid} --regid={uid} --clear-groups sh -c \"$0\"",
        dir = dir.display()
    );
    let out = Command::new("sh")
        .args(["-c", &manager, &service])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // Undo, so the subtree is as the VM made it.
    let _ = fs::remove_dir(&job);
    let _ = fs::remove_dir(&leaf);
    let _ = fs::write(dir.join("cgroup.subtree_control"), "-cpu -memory");
    let _ = fs::remove_dir(root.join("not-mine"));

    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rel = job.strip_prefix(&root).unwrap();
    assert!(text.contains(&format!("0::/{}", rel.display())), "{text}");
    for c in ["cpu", "memory"] {
        assert!(
            text.split_whitespace().any(|w| w == c),
            "{c} not available in the job: {text}"
        );
    }
    assert!(
        !text.contains("ESCAPED"),
        "the delegate made a cgroup outside its subtree"
    );
}
