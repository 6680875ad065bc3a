//! `--format text`: one line per event for people, `key=value` after the
//! timestamp and event name. Values with spaces or quotes are quoted.
use std::io::{self, Write};

use super::{Body, Event};

pub(super) fn write(out: &mut Vec<u8>, e: &Event) -> io::Result<()> {
    write!(
        out,
        "{} {:<8} {:<6}",
        e.ts,
        e.body.name(),
        e.source.as_str()
    )?;
    match &e.body {
        Body::Started(s) => write!(
            out,
            " schema={} version={} pid={} backend={}",
            s.schema, s.version, s.pid, s.backend
        ),
        Body::Exec(x) => exec(out, x),
        Body::Exit(x) => exit(out, x),
        Body::Governed(g) => governed(out, g),
        Body::Tracked(t) => {
            write!(out, " pid={} comm=", t.pid)?;
            quoted(out, &t.comm)?;
            write!(out, " job_id={} cgroup={}", t.job_id, t.cgroup)
        }
        Body::Detached(d) => write!(
            out,
            " pid={} job_id={} reason={}",
            d.pid, d.job_id, d.reason
        ),
        Body::Lost(l) => write!(out, " count={} reason={:?}", l.count, l.reason),
        Body::Pressure(p) => write!(
            out,
            " job_id={} tier={} waiting={:.2} usage_cpus={:.2} cause={:?} signal={:?} cleared={}",
            p.job_id, p.tier, p.waiting, p.usage_cpus, p.cause, p.signal, p.cleared
        ),
        Body::Policy(p) => {
            write!(
                out,
                " path={} applied={} rules={}",
                p.path.as_deref().unwrap_or("(embedded)"),
                p.applied,
                p.rules
            )?;
            if let Some(e) = &p.error {
                out.extend_from_slice(b" error=");
                quoted(out, e)?;
            }
            Ok(())
        }
        Body::Degraded(d) => {
            if let Some(limit) = &d.limit {
                write!(out, " limit={limit}")?;
            }
            out.extend_from_slice(b" reason=");
            quoted(out, &d.reason)?;
            write!(out, " fallback={}", d.fallback)
        }
    }
}

fn exec(out: &mut Vec<u8>, x: &super::Exec) -> io::Result<()> {
    write!(
        out,
        " pid={} ppid={} uid={} comm=",
        x.pid,
        opt(x.ppid),
        x.uid
    )?;
    quoted(out, &x.comm)?;
    out.extend_from_slice(b" filename=");
    quoted(out, &x.filename)?;
    out.extend_from_slice(b" argv=");
    match &x.argv {
        Some(args) => quoted(out, &args.join(" "))?,
        None => out.extend_from_slice(b"-"),
    }
    if x.adopted {
        out.extend_from_slice(b" adopted");
    }
    Ok(())
}

fn exit(out: &mut Vec<u8>, x: &super::Exit) -> io::Result<()> {
    write!(out, " pid={} comm=", x.pid)?;
    quoted(out, &x.comm)?;
    write!(
        out,
        " exit_code={} signal={} duration_us={}",
        opt(x.exit_code),
        opt(x.signal),
        opt(x.duration_us)
    )?;
    if let Some(j) = &x.job {
        write!(
            out,
            " job_id={} oom_killed={} cpu_usage_us={} memory_peak_bytes={}",
            j.job_id,
            opt(j.oom_killed),
            opt(j.cpu_usage_us),
            opt(j.memory_peak_bytes)
        )?;
    }
    Ok(())
}

fn governed(out: &mut Vec<u8>, g: &super::Governed) -> io::Result<()> {
    write!(
        out,
        " pid={} job_id={} mode={} cgroup={}",
        g.pid,
        g.job_id,
        g.mode,
        opt(g.cgroup.as_ref())
    )?;
    for (k, v) in g.limits.values() {
        out.extend_from_slice(b" ");
        out.extend_from_slice(k.as_str().as_bytes());
        out.extend_from_slice(b"=");
        match &v {
            serde_json::Value::String(s) => quoted(out, s)?,
            other => write!(out, "{other}")?,
        }
    }
    if let Some(tier) = g.tier {
        write!(out, " tier={tier}")?;
    }
    if let Some(rule) = &g.rule {
        out.extend_from_slice(b" rule=");
        quoted(out, rule)?;
    }
    if let Some(us) = g.latency_us {
        write!(out, " latency_us={us}")?;
    }
    if g.adopted {
        out.extend_from_slice(b" adopted");
    }
    Ok(())
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

fn quoted(out: &mut Vec<u8>, s: &str) -> io::Result<()> {
    if !s.is_empty() && !s.contains(|c: char| c.is_whitespace() || c == '"' || c.is_control()) {
        out.extend_from_slice(s.as_bytes());
        return Ok(());
    }
    write!(out, "{s:?}")
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;
    use crate::events::{Exec, Source, Timestamp};

    #[test]
    fn exec_line_quotes_arguments_with_spaces() {
        let e = Event::new(
            Timestamp(UNIX_EPOCH),
            Source::Ebpf,
            Exec {
                pid: 5,
                process_key: None,
                tid: 5,
                ppid: None,
                uid: 0,
                comm: "ffmpeg".into(),
                filename: "/usr/bin/ffmpeg".into(),
                argv: Some(vec!["ffmpeg".into(), "-i".into(), "a b".into()]),
                argv_truncated: false,
                adopted: true,
            },
        );
        let mut out = Vec::new();
        write(&mut out, &e).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "1970-01-01T00:00:00.000000000Z exec     ebpf   pid=5 ppid=- uid=0 comm=ffmpeg \
             filename=/usr/bin/ffmpeg argv=\"ffmpeg -i a b\" adopted"
        );
    }
}
