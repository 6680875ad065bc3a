//! What a fleet's monitoring sees of a node: the metrics endpoint checked by
//! Debian's `promtool` and scraped by a real Prometheus, the shipped alert
//! and recording rules (checked and unit-tested by `promtool`), and the
//! example scrape configuration.
//!
//! `promtool` and `prometheus` come from Debian's `prometheus` package,
//! which `cargo xtask test` installs on the host; the VMs do not have it,
//! so there these tests say SKIP.
mod common;

use std::{
    fmt::Write as _,
    fs,
    io::{Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use common::{Children, PATIENCE, Root, Watch, fake, ffrtmp, require_root, scratch, sleeper};
use ffrtmp::events::Body;

/// The shipped Prometheus files (/usr/share/ffrtmp/prometheus in the package).
fn prometheus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("prometheus")
}

/// Whether `command` runs here; when it does not, says SKIP (in a VM,
/// or when the tests are not required to run) or fails (on the host, where
/// `cargo xtask test` installs it).
fn have(test: &str, command: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {command}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return true;
    }
    assert!(
        common::in_vm() || !common::required(),
        "{test}: {command} is not installed (Debian's prometheus package; cargo xtask test installs it)"
    );
    common::skip(
        test,
        &format!("{command} is not installed here (runs on the host)"),
    );
    false
}

/// Runs `cmd`, feeding it `input`; panics with its output unless it succeeds.
fn must_pass(cmd: &mut Command, input: &[u8]) -> String {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{text}",
        out.status
    );
    text
}

#[test]
fn the_shipped_rules_pass_promtool_check_and_their_unit_tests() {
    if !have("the_shipped_rules_pass_promtool", "promtool") {
        return;
    }
    let dir = prometheus_dir();
    let checked = must_pass(
        Command::new("promtool")
            .args(["check", "rules", "rules.yml"])
            .current_dir(&dir),
        b"",
    );
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tested = must_pass(
        Command::new("promtool")
            .args(["test", "rules", "rules.test.yml"])
            .current_dir(&dir),
        b"",
    );
    assert!(tested.contains("SUCCESS"), "{tested}");
}

#[test]
fn the_example_scrape_configuration_passes_promtool_check_config() {
    if !have("the_example_scrape_configuration", "promtool") {
        return;
    }
    // As installed: its rule file at the path the package puts it.
    let dir = scratch("fleet-config");
    let config = fs::read_to_string(prometheus_dir().join("scrape.yml"))
        .unwrap()
        .replace(
            "/usr/share/ffrtmp/prometheus/rules.yml",
            prometheus_dir().join("rules.yml").to_str().unwrap(),
        );
    fs::write(dir.join("scrape.yml"), config).unwrap();
    must_pass(
        Command::new("promtool")
            .args(["check", "config"])
            .arg(dir.join("scrape.yml")),
        b"",
    );
}

/// The shipped rsyslog configuration passes rsyslog's own check, as
/// Debian's /etc/rsyslog.conf would include it (which sets the work
/// directory), and the check refuses a typo in it.
#[test]
fn the_shipped_rsyslog_configuration_passes_rsyslogd_check() {
    if !have("the_shipped_rsyslog_configuration", "rsyslogd") {
        return;
    }
    let dir = scratch("fleet-rsyslog");
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("rsyslog/ffrtmp-events.conf");
    let check = |conf: &Path| {
        let main = dir.join("rsyslog.conf");
        fs::write(
            &main,
            format!(
                "global(workDirectory=\"{}\")\ninclude(file=\"{}\")\n",
                dir.display(),
                conf.display()
            ),
        )
        .unwrap();
        Command::new("rsyslogd")
            .args(["-N1", "-f"])
            .arg(&main)
            .output()
            .unwrap()
    };
    let out = check(&shipped);
    assert!(out.status.success(), "{out:?}");
    let typo = dir.join("typo.conf");
    fs::write(
        &typo,
        fs::read_to_string(&shipped)
            .unwrap()
            .replace("Protocol=", "Protocl="),
    )
    .unwrap();
    assert!(!check(&typo).status.success(), "rsyslogd -N1 took a typo");
}

/// One HTTP/1.0 exchange with `addr`: the status line, headers and body.
fn http(addr: &str, request: &str) -> (String, String, String) {
    let mut conn = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    conn.set_read_timeout(Some(PATIENCE)).unwrap();
    conn.write_all(request.as_bytes()).unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (status.to_string(), headers.to_string(), body.to_string())
}

/// A port for this test: distinct per test process and per use.
fn port(offset: u32) -> u32 {
    30_000 + (std::process::id() * 4 + offset) % 20_000
}

const POLICY: &str = r#"
[[rule]]
name = "fleet-live"
comm = "ffleet"
tier = "live"
"#;

/// `watch` governing `ffleet` processes live, with metrics on `addr`.
fn watch(dir: &Path, root: &Root, addr: &str) -> Watch {
    let policy = dir.join("policy.toml");
    fs::write(&policy, POLICY).unwrap();
    Watch::start_with(
        Command::new(ffrtmp())
            .arg("watch")
            .arg("--policy")
            .arg(&policy)
            .args(["--cgroup-root", root.path(), "--metrics-addr", addr]),
    )
}

/// Starts `n` `ffleet` sleepers and waits until `w` governed each.
fn govern(dir: &Path, w: &mut Watch, n: usize) -> Children {
    let ffleet = fake(dir, "ffleet", "/bin/sleep");
    let jobs = Children((0..n).map(|_| sleeper(&ffleet, "60")).collect());
    for j in &jobs.0 {
        let pid = j.id();
        w.wait_for(
            "governed",
            move |e| matches!(&e.body, Body::Governed(g) if g.pid == pid),
        );
    }
    jobs
}

#[test]
fn the_live_endpoint_passes_promtool_in_both_formats_and_answers_head_and_queries() {
    const TEST: &str = "the_live_endpoint_passes_promtool";
    if !require_root(TEST) || !have(TEST, "promtool") {
        return;
    }
    let dir = scratch("fleet-endpoint");
    let root = Root::new("fleet-endpoint");
    let addr = format!("127.0.0.1:{}", port(0));
    let mut w = watch(&dir, &root, &addr);
    let _jobs = govern(&dir, &mut w, 1);

    let (status, headers, classic) = http(&addr, "GET /metrics HTTP/1.0\r\n\r\n");
    assert_eq!(status, "HTTP/1.0 200 OK");
    assert!(
        headers.contains("Content-Type: text/plain; version=0.0.4"),
        "{headers}"
    );
    must_pass(
        Command::new("promtool").args(["check", "metrics"]),
        classic.as_bytes(),
    );
    for needle in [
        "# TYPE ffrtmp_governed_total counter",
        "ffrtmp_governed_total{rule=\"fleet-live\",tier=\"live\"} 1",
        "ffrtmp_governed_processes{tier=\"live\"} 1",
        "ffrtmp_daemon_info{backend=",
        "ffrtmp_build_info{version=",
        "process_open_fds ",
    ] {
        assert!(classic.contains(needle), "{needle} not in:\n{classic}");
    }

    let (status, headers, om) = http(
        &addr,
        "GET /metrics?x=1 HTTP/1.1\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\n\r\n",
    );
    assert_eq!(status, "HTTP/1.0 200 OK");
    assert!(
        headers.contains("Content-Type: application/openmetrics-text; version=1.0.0"),
        "{headers}"
    );
    assert!(om.ends_with("# EOF\n"), "{om}");
    assert!(om.contains("# TYPE ffrtmp_governed counter\n"), "{om}");
    // Debian's promtool (2.42) reads the classic format only ("unknown
    // metric type info"): the OpenMetrics answer is checked by a real
    // Prometheus's parser (a_real_prometheus_scrapes_the_daemon…).

    let (status, headers, body) = http(&addr, "HEAD /metrics HTTP/1.1\r\n\r\n");
    assert_eq!(status, "HTTP/1.0 200 OK");
    assert!(body.is_empty(), "{body}");
    assert!(headers.contains("Content-Length: "), "{headers}");
    assert_eq!(
        http(&addr, "GET / HTTP/1.0\r\n\r\n").0,
        "HTTP/1.0 404 Not Found"
    );
    let (status, headers, _) = http(&addr, "POST /metrics HTTP/1.0\r\n\r\n");
    assert_eq!(status, "HTTP/1.0 405 Method Not Allowed");
    assert!(headers.contains("Allow: GET, HEAD"), "{headers}");
}

/// A Prometheus server on loopback, its data in a scratch directory.
struct Prometheus {
    child: Child,
    addr: String,
}

impl Prometheus {
    fn start(dir: &Path, target: &str) -> Self {
        let addr = format!("127.0.0.1:{}", port(2));
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {rules}\n\
             scrape_configs:\n  - job_name: ffrtmp\n    static_configs:\n      - targets: ['{target}']\n",
            rules = prometheus_dir().join("rules.yml").display()
        );
        fs::write(dir.join("prometheus.yml"), config).unwrap();
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .expect("starting prometheus");
        Prometheus { child, addr }
    }

    /// `GET /api/v1/PATH?K=V&…`'s `data`.
    fn api(&self, path: &str, params: &[(&str, &str)]) -> serde_json::Value {
        let mut query = String::new();
        for (k, v) in params {
            query.push_str(if query.is_empty() { "?" } else { "&" });
            query.push_str(k);
            query.push('=');
            for b in v.bytes() {
                if b.is_ascii_alphanumeric() || b"_-.~".contains(&b) {
                    query.push(b as char);
                } else {
                    let _ = write!(query, "%{b:02X}");
                }
            }
        }
        let (status, _, body) = http(
            &self.addr,
            &format!("GET /api/v1/{path}{query} HTTP/1.0\r\n\r\n"),
        );
        assert!(status.ends_with(" 200 OK"), "{status}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], "success", "{v}");
        v["data"].clone()
    }

    /// The value of a query that returns one sample (as Prometheus writes
    /// it: "2"), once it returns one.
    fn wait_for_value(&self, query: &str, dir: &Path) -> String {
        let deadline = Instant::now() + Duration::from_mins(1);
        loop {
            if TcpStream::connect(&self.addr).is_ok() {
                let data = self.api("query", &[("query", query)]);
                if let Some(v) = data["result"][0]["value"][1].as_str() {
                    return v.to_string();
                }
            }
            assert!(
                Instant::now() < deadline,
                "no result for {query} within 60 s; prometheus.log:\n{}",
                fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
            );
            thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_real_prometheus_scrapes_the_daemon_and_counts_what_it_governed() {
    const TEST: &str = "a_real_prometheus_scrapes_the_daemon";
    if !require_root(TEST) || !have(TEST, "prometheus") {
        return;
    }
    let dir = scratch("fleet-prometheus");
    let root = Root::new("fleet-prometheus");
    let addr = format!("127.0.0.1:{}", port(1));
    let mut w = watch(&dir, &root, &addr);
    let prometheus = Prometheus::start(&dir, &addr);
    let mut jobs = govern(&dir, &mut w, 2);

    assert_eq!(prometheus.wait_for_value("up{job=\"ffrtmp\"}", &dir), "1");
    let version = env!("CARGO_PKG_VERSION");
    let build = prometheus.wait_for_value(
        &format!("ffrtmp_build_info{{job=\"ffrtmp\",version=\"{version}\",commit!=\"\"}}"),
        &dir,
    );
    assert_eq!(build, "1");
    // Two governed: the scrape after both, the counter and the gauge agree.
    let deadline = Instant::now() + Duration::from_mins(1);
    let governed = "ffrtmp_governed_total{rule=\"fleet-live\",tier=\"live\"}";
    while prometheus.wait_for_value(governed, &dir) != "2" {
        assert!(Instant::now() < deadline, "{governed} never reached 2");
        thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(prometheus.wait_for_value(governed, &dir), "2");
    assert_eq!(
        prometheus.wait_for_value("ffrtmp_governed_processes{tier=\"live\"}", &dir),
        "2"
    );
    // One ends: the gauge follows, the counter does not.
    let ended = jobs.0.pop().unwrap();
    let pid = ended.id();
    drop(Children(vec![ended]));
    w.wait_for(
        "exit",
        move |e| matches!(&e.body, Body::Exit(x) if x.pid == pid),
    );
    let deadline = Instant::now() + Duration::from_mins(1);
    while prometheus.wait_for_value("ffrtmp_governed_processes{tier=\"live\"}", &dir) != "1" {
        assert!(Instant::now() < deadline, "the live gauge never fell to 1");
        thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(prometheus.wait_for_value(governed, &dir), "2");
    // The shipped rules loaded into the real server, every one healthy.
    // It asked for OpenMetrics and parsed it: the build is an `info`
    // family (the classic format has no such type: it would be a gauge).
    let metadata = prometheus.api(
        "targets/metadata",
        &[
            ("match_target", "{job=\"ffrtmp\"}"),
            ("metric", "ffrtmp_build"),
        ],
    );
    assert_eq!(metadata[0]["type"], "info", "{metadata}");
    let rules = prometheus.api("rules", &[]);
    let groups = rules["groups"].as_array().unwrap();
    let all: Vec<&serde_json::Value> = groups
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    assert!(all.len() >= 10, "{rules}");
    assert!(all.iter().all(|r| r["health"] != "err"), "{rules}");
}

/// A collector joins a process's events by `process_key`: `exec`,
/// `governed` and `exit` of one process carry the same key, made of this
/// boot, its start time as /proc shows it, and its pid; and every event
/// names the host and the boot.
#[test]
fn one_process_key_joins_exec_governed_and_exit() {
    const TEST: &str = "one_process_key_joins_exec_governed_and_exit";
    if !require_root(TEST) {
        return;
    }
    let dir = scratch("fleet-key");
    let root = Root::new("fleet-key");
    let mut w = watch(&dir, &root, &format!("127.0.0.1:{}", port(3)));
    let jobs = govern(&dir, &mut w, 1);
    let pid = jobs.0[0].id();
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let start = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .nth(19)
        .unwrap()
        .to_string();
    let boot_id = fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    let expected = format!("{}:{start}:{pid}", boot_id.trim());
    drop(jobs); // killed
    w.wait_for(
        "exit",
        move |e| matches!(&e.body, Body::Exit(x) if x.pid == pid),
    );
    let exec = w.wait_for(
        "exec",
        move |e| matches!(&e.body, Body::Exec(x) if x.pid == pid),
    );
    let keys: Vec<Option<String>> = w
        .events
        .iter()
        .filter_map(|e| match &e.body {
            Body::Exec(x) if x.pid == pid => Some(x.process_key.clone()),
            Body::Governed(g) if g.pid == pid => Some(g.process_key.clone()),
            Body::Exit(x) if x.pid == pid => Some(x.process_key.clone()),
            _ => None,
        })
        .collect();
    assert!(keys.len() >= 3, "{keys:?}");
    assert!(
        keys.iter().all(|k| k.as_deref() == Some(expected.as_str())),
        "{expected}: {keys:?}"
    );
    assert_eq!(exec.source, ffrtmp::events::Source::Ebpf, "{exec:?}");
    // Every line names this node and this boot.
    let host = nix::unistd::gethostname().unwrap().into_string().unwrap();
    assert!(!w.raw.is_empty());
    for line in &w.raw {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(
            (v["host"].as_str(), v["boot_id"].as_str()),
            (Some(host.as_str()), Some(boot_id.trim())),
            "{line}"
        );
    }
}
