//! `cargo xtask bench run`: `ffrtmp run` and `cgexec` against a bare
//! exec; attach latency; wrapper RSS while a job runs.
use std::{
    ffi::OsStr,
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::kit::peak_rss_during;
use crate::build_release;

/// Median wall time of each command over `runs` rounds; every round runs
/// each command once, in turn, so that drift in the machine's speed (large
/// on a VM) affects them all alike. Every execution must succeed.
/// Untimed rounds before [`medians_interleaved`] times.
const WARM_UP_ROUNDS: usize = 20;

fn medians_interleaved(
    runs: usize,
    commands: &[(&str, Vec<&OsStr>)],
) -> anyhow::Result<Vec<Duration>> {
    let mut times: Vec<Vec<Duration>> = commands.iter().map(|_| Vec::with_capacity(runs)).collect();
    // Untimed rounds first: a binary's first runs after it was written (or
    // after the page cache dropped it) were up to 5 ms slower here, and
    // that is the state of the page cache, not the binary.
    for _ in 0..WARM_UP_ROUNDS {
        for (program, args) in commands {
            Command::new(program)
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .with_context(|| format!("starting {program}"))?;
        }
    }
    for _ in 0..runs {
        for ((program, args), times) in commands.iter().zip(&mut times) {
            let start = Instant::now();
            let status = Command::new(program)
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .with_context(|| format!("starting {program}"))?;
            times.push(start.elapsed());
            if !status.success() {
                bail!("{program} {args:?} failed: {status}");
            }
        }
    }
    Ok(times
        .into_iter()
        .map(|mut t| {
            t.sort();
            t[t.len() / 2]
        })
        .collect())
}

/// Median time from spawning `cmd()` to its `governed` event on stderr; the
/// command must then succeed.
fn median_until_governed(
    runs: usize,
    mut cmd: impl FnMut() -> Command,
) -> anyhow::Result<Duration> {
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        let mut child = cmd().stdout(Stdio::null()).stderr(Stdio::piped()).spawn()?;
        let stderr = child.stderr.take().context("no stderr pipe")?;
        let mut governed = None;
        for line in BufReader::new(stderr).lines() {
            if line?.contains("\"event\":\"governed\"") {
                governed = Some(start.elapsed());
                break;
            }
        }
        let status = child.wait()?;
        match governed {
            Some(t) if status.success() => times.push(t),
            _ => bail!("{:?}: no governed event, or it failed: {status}", cmd()),
        }
    }
    times.sort();
    Ok(times[times.len() / 2])
}

pub(super) fn run(root: &Path, runs: usize, against: Option<&Path>) -> anyhow::Result<()> {
    if !crate::is_root() {
        bail!("bench run needs root (it creates cgroups)");
    }
    crate::packages::ensure(&[("cgexec", "cgroup-tools")])?;
    let bin = build_release(root)?;
    println!("bench run: {runs} runs each, interleaved, median wall time");
    // cgexec needs its cgroup made first (cgcreate), in the same hierarchies.
    let group = format!("ffrtmp-bench-cgexec-{}", std::process::id());
    crate::run_command(Command::new("cgcreate").args(["-g", &format!("cpu,memory:/{group}")]))?;
    let cgexec_group = format!("cpu,memory:/{group}");
    let limits = ["--cpu-max", "100000 100000", "--memory-max", "512M"];
    let bin_str = bin.to_str().context("the binary's path is not UTF-8")?;
    let against_str = against
        .map(|p| p.to_str().context("--against's path is not UTF-8"))
        .transpose()?;
    let mut commands: Vec<(&str, Vec<&OsStr>)> = vec![
        ("/bin/true", vec![]),
        // The floor of a supervising wrapper: timeout(1), a small C program
        // that forks, execs and waits.
        ("timeout", ["600", "/bin/true"].map(OsStr::new).to_vec()),
        // The command: a job cgroup for the exit report (cpuacct,
        // memory), no limits.
        (bin_str, ["run", "--", "/bin/true"].map(OsStr::new).to_vec()),
        // With limits, as operators run it: also the cpu hierarchy and the
        // limits written and read back.
        (
            bin_str,
            ["run"]
                .iter()
                .chain(&limits)
                .chain(&["--", "/bin/true"])
                .map(OsStr::new)
                .collect(),
        ),
        (
            "cgexec",
            ["-g", &cgexec_group, "/bin/true"].map(OsStr::new).to_vec(),
        ),
    ];
    // Right after this build's own `run`, so that both follow the same
    // command: a `run` that follows cgexec was 6 ms slower here (the
    // kernel's cgroup locks leave their fast path after a migration).
    if let Some(other) = against_str {
        commands.insert(
            3,
            (other, ["run", "--", "/bin/true"].map(OsStr::new).to_vec()),
        );
    }
    let medians = medians_interleaved(runs, &commands);
    let _ = Command::new("cgdelete")
        .args(["-g", &cgexec_group])
        .status();
    let mut medians = medians?;
    let other = against.map(|_| medians.remove(3));
    let [bare, floor, plain, wrapped, cgexec] = medians[..] else {
        bail!("five commands were timed");
    };
    println!("  /bin/true:                         {:>8.3} ms", ms(bare));
    println!(
        "  timeout 600 /bin/true (floor):     {:>8.3} ms  (+{:.3} ms)",
        ms(floor),
        ms(floor) - ms(bare)
    );
    println!(
        "  ffrtmp run -- /bin/true:           {:>8.3} ms  (+{:.3} ms, x{:.1})",
        ms(plain),
        ms(plain) - ms(bare),
        plain.as_secs_f64() / bare.as_secs_f64()
    );
    println!(
        "  ffrtmp run (cpu+memory limits):    {:>8.3} ms  (+{:.3} ms, x{:.1})",
        ms(wrapped),
        ms(wrapped) - ms(bare),
        wrapped.as_secs_f64() / bare.as_secs_f64()
    );
    println!(
        "  cgexec (existing cgroup):          {:>8.3} ms  (+{:.3} ms)",
        ms(cgexec),
        ms(cgexec) - ms(bare)
    );
    if let (Some(other), Some(t)) = (against, other) {
        println!(
            "  {} run -- /bin/true: {:>8.3} ms  (+{:.3} ms)",
            other.display(),
            ms(t),
            ms(t) - ms(bare)
        );
    }

    // Attach: from the call to the limits applied, i.e. to the `governed`
    // event (written once every limit is in force and read back).
    let mut sleeper = Command::new("/bin/sleep").arg("600").spawn()?;
    let pid = sleeper.id().to_string();
    let mut n = 0;
    let attach = median_until_governed(runs.min(100), || {
        n += 1;
        let mut c = Command::new(&bin);
        c.args([
            "attach",
            "--pid",
            &pid,
            "--detach",
            "--job-id",
            &format!("bench-attach-{n}"),
        ]);
        c.args(["--cpu-max", "50000 100000", "--memory-max", "256M"]);
        c
    });
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    let attach = attach?;
    println!(
        "  ffrtmp attach (call to `governed`): {:>8.3} ms",
        ms(attach)
    );

    // Wrapper RSS while a job runs.
    let mut wrapper = Command::new(&bin)
        .args(["run", "--cpu-max", "100000 100000", "--", "/bin/sleep", "2"])
        .stderr(Stdio::null())
        .spawn()?;
    let wpid = wrapper.id();
    let ((), rss) = peak_rss_during(wpid, || thread::sleep(Duration::from_millis(1500)));
    wrapper.wait()?;
    println!("  ffrtmp run wrapper RSS while its job runs: {rss} KiB");
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
