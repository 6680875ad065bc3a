//! Turns the kernel's ring-buffer records ([`ExecRecord`], [`ExitRecord`])
//! into [`Event`]s. Every record is length-checked before it is read; a
//! record of the wrong size or an unknown kind is an error, never a guess.
use std::{mem::size_of, ptr, time::Duration, time::SystemTime};

use ffrtmp_common::{EventHeader, ExecRecord, ExitRecord, Plain, exec_flags, kind};
use nix::time::{ClockId, clock_gettime};

use crate::{
    events::{Body, Event, Exec, Exit, KernelStamp, Source, Timestamp, process_key},
    observe::proc::{split_nul, ticks_of_ns},
};

/// Errors while decoding a record.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("record of {len} bytes is shorter than the {need} bytes of kind {kind}")]
    Short { kind: u32, len: usize, need: usize },
    #[error("record of unknown kind {0}")]
    UnknownKind(u32),
}

/// Reads a `T` from the start of `data`, if it is long enough.
fn read<T: Plain>(data: &[u8]) -> Option<T> {
    (data.len() >= size_of::<T>())
        // SAFETY: `T: Plain` is valid for any bytes; the length is checked
        // and `read_unaligned` has no alignment requirement.
        .then(|| unsafe { ptr::read_unaligned(data.as_ptr().cast::<T>()) })
}

/// Converts `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) to wall-clock time.
/// Recomputed per call (two vDSO reads) so clock steps are followed.
pub fn wall_clock(ktime_ns: u64) -> SystemTime {
    let now = SystemTime::now();
    let Ok(mono) = clock_gettime(ClockId::CLOCK_MONOTONIC) else {
        return now;
    };
    let mono_ns = u64::try_from(mono.tv_sec()).unwrap_or(0) * 1_000_000_000
        + u64::try_from(mono.tv_nsec()).unwrap_or(0);
    now.checked_sub(Duration::from_nanos(mono_ns.saturating_sub(ktime_ns)))
        .unwrap_or(now)
}

fn c_str(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// Decodes one ring-buffer record.
pub fn decode(data: &[u8]) -> Result<Event, RecordError> {
    let short = |kind, need| RecordError::Short {
        kind,
        len: data.len(),
        need,
    };
    let header: EventHeader = read(data).ok_or(short(0, size_of::<EventHeader>()))?;
    let ts = Timestamp(wall_clock(header.ktime_ns));
    let mut stamp = KernelStamp {
        ktime_ns: header.ktime_ns,
        start_boottime_ns: None,
    };
    let body: Body = match header.kind {
        kind::EXEC => {
            let r: ExecRecord = read(data).ok_or(short(header.kind, size_of::<ExecRecord>()))?;
            stamp.start_boottime_ns = (r.start_boottime_ns > 0).then_some(r.start_boottime_ns);
            let mut e = exec(&r);
            e.process_key = process_key(e.pid, stamp.start_boottime_ns.and_then(ticks_of_ns));
            e.into()
        }
        kind::EXIT => {
            let r: ExitRecord = read(data).ok_or(short(header.kind, size_of::<ExitRecord>()))?;
            exit(&r).into()
        }
        other => return Err(RecordError::UnknownKind(other)),
    };
    let mut event = Event::new(ts, Source::Ebpf, body);
    event.kernel = Some(stamp);
    Ok(event)
}

fn exec(r: &ExecRecord) -> Exec {
    let name_len = usize::from(r.filename_len).min(r.filename.len());
    let argv_len = usize::from(r.argv_len).min(r.argv.len());
    let argv = if r.flags & exec_flags::ARGV_UNREADABLE != 0 && argv_len == 0 {
        None
    } else {
        Some(split_nul(&r.argv[..argv_len]))
    };
    Exec {
        pid: r.header.pid,
        // With the stamp, by `decode`.
        process_key: None,
        tid: r.old_pid,
        ppid: (r.flags & exec_flags::PPID_UNREADABLE == 0).then_some(r.ppid),
        uid: r.uid,
        comm: c_str(&r.comm),
        filename: String::from_utf8_lossy(&r.filename[..name_len]).into_owned(),
        argv,
        argv_truncated: r.flags & exec_flags::ARGV_TRUNCATED != 0,
        adopted: false,
    }
}

/// Splits a wait(2) status into (exit code, signal).
pub fn split_status(status: u32) -> (Option<i32>, Option<i32>) {
    let sig = (status & 0x7f) as i32;
    if sig == 0 {
        (Some(((status >> 8) & 0xff) as i32), None)
    } else {
        (None, Some(sig))
    }
}

fn exit(r: &ExitRecord) -> Exit {
    let (exit_code, signal) = split_status(r.status);
    let duration_us = (r.start_ns > 0 && r.header.ktime_ns >= r.start_ns)
        .then(|| (r.header.ktime_ns - r.start_ns) / 1_000);
    let start = (r.start_boottime_ns > 0).then_some(r.start_boottime_ns);
    Exit {
        pid: r.header.pid,
        process_key: process_key(r.header.pid, start.and_then(ticks_of_ns)),
        comm: c_str(&r.comm),
        exit_code,
        signal,
        duration_us,
        job: None,
    }
}

#[cfg(test)]
mod tests {
    use ffrtmp_common::{ARGV_CAP, FILENAME_CAP, TASK_COMM_LEN};

    use super::*;

    fn bytes<T: Plain>(v: &T) -> Vec<u8> {
        // SAFETY: Plain types have no padding-sensitive invariants for reading.
        unsafe {
            std::slice::from_raw_parts(std::ptr::from_ref::<T>(v).cast::<u8>(), size_of::<T>())
        }
        .to_vec()
    }

    fn comm(s: &str) -> [u8; TASK_COMM_LEN] {
        let mut c = [0; TASK_COMM_LEN];
        c[..s.len()].copy_from_slice(s.as_bytes());
        c
    }

    fn exec_record(argv: &[u8], flags: u32) -> ExecRecord {
        let mut r = ExecRecord {
            header: EventHeader {
                kind: kind::EXEC,
                pid: 100,
                ktime_ns: 5,
            },
            old_pid: 101,
            ppid: 1,
            uid: 1000,
            gid: 1000,
            flags,
            filename_len: 9,
            argv_len: argv.len() as u16,
            start_boottime_ns: 7_000_000_000,
            comm: comm("true"),
            filename: [0xAA; FILENAME_CAP],
            argv: [0xBB; ARGV_CAP],
        };
        r.filename[..10].copy_from_slice(b"/bin/true\0");
        r.argv[..argv.len()].copy_from_slice(argv);
        r
    }

    #[test]
    fn decodes_an_exec_record_ignoring_bytes_past_the_lengths() {
        let ev = decode(&bytes(&exec_record(b"/bin/true\0-x\0", 0))).unwrap();
        assert_eq!(
            ev.kernel,
            Some(KernelStamp {
                ktime_ns: 5,
                start_boottime_ns: Some(7_000_000_000)
            })
        );
        let Body::Exec(e) = ev.body else {
            panic!("{ev:?}")
        };
        assert_eq!(ev.source, Source::Ebpf);
        assert_eq!((e.pid, e.tid, e.ppid, e.uid), (100, 101, Some(1), 1000));
        assert_eq!(e.comm, "true");
        assert_eq!(e.filename, "/bin/true");
        assert_eq!(e.argv, Some(vec!["/bin/true".into(), "-x".into()]));
        assert!(!e.argv_truncated && !e.adopted);
        // 7 s after boot is 700 ticks of 10 ms.
        assert!(e.process_key.unwrap().ends_with(":700:100"));
    }

    #[test]
    fn unreadable_arguments_are_null_and_flags_are_honoured() {
        let flags = exec_flags::ARGV_UNREADABLE | exec_flags::PPID_UNREADABLE;
        let Body::Exec(e) = decode(&bytes(&exec_record(b"", flags))).unwrap().body else {
            panic!()
        };
        assert_eq!((e.argv, e.ppid), (None, None));
        let Body::Exec(e) = decode(&bytes(&exec_record(b"a\0b", exec_flags::ARGV_TRUNCATED)))
            .unwrap()
            .body
        else {
            panic!()
        };
        assert!(e.argv_truncated);
        assert_eq!(e.argv, Some(vec!["a".into(), "b".into()]));
    }

    #[test]
    fn decodes_exit_statuses_like_wait() {
        for (status, code, sig) in [
            (42 << 8, Some(42), None),
            (0, Some(0), None),
            (9, None, Some(9)),
            (0x80 | 0xb, None, Some(11)), // core dumped
        ] {
            let r = ExitRecord {
                header: EventHeader {
                    kind: kind::EXIT,
                    pid: 7,
                    ktime_ns: 3_500_000,
                },
                status,
                pad: 0,
                start_ns: 1_000_000,
                start_boottime_ns: 9_000_000_000,
                comm: comm("sleep"),
            };
            let Body::Exit(e) = decode(&bytes(&r)).unwrap().body else {
                panic!()
            };
            assert_eq!((e.exit_code, e.signal), (code, sig), "status {status:#x}");
            assert_eq!(e.duration_us, Some(2500));
            let key = e.process_key.unwrap();
            assert!(key.ends_with(":900:7"), "{key}");
            assert_eq!(e.comm, "sleep");
        }
    }

    #[test]
    fn rejects_short_and_unknown_records() {
        let full = bytes(&exec_record(b"", 0));
        assert!(matches!(
            decode(&full[..100]),
            Err(RecordError::Short {
                kind: 1,
                len: 100,
                ..
            })
        ));
        assert!(matches!(
            decode(&full[..8]),
            Err(RecordError::Short { kind: 0, .. })
        ));
        let mut bad = full.clone();
        bad[0] = 77;
        assert_eq!(decode(&bad), Err(RecordError::UnknownKind(77)));
    }
}
