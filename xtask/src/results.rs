//! What the test binaries are told and what they print, read back: the
//! binary under test (`BIN_ENV`), libtest's `test result:` summaries and
//! the `SKIP` lines of tests that could not run. `cargo xtask test` reads
//! them on the host, `vm` on a VM's console: one reader for both.

/// Set for the test binaries: the `ffrtmp` binary the integration tests run
/// (tests/common). They run the shipped build (static musl, release), not
/// cargo's debug build of it: what ships is what is tested.
pub(crate) const BIN_ENV: &str = "FFRTMP_BIN";
/// A test that returned early, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Skip {
    pub test: String,
    pub why: String,
}

/// `SKIP NAME: WHY`, as tests/common's `skip` writes it, at the start of a
/// line or after libtest's `test NAME ... ` (the VM console prefixes it).
pub(crate) fn skip_of(line: &str) -> Option<Skip> {
    let at = line.find("SKIP ")?;
    let before = &line[..at];
    if !(before.is_empty() || before.ends_with("... ") || before.ends_with("] ")) {
        return None;
    }
    let (test, why) = line[at + "SKIP ".len()..].split_once(": ")?;
    if test.is_empty() || test.contains(char::is_whitespace) {
        return None;
    }
    Some(Skip {
        test: test.to_string(),
        why: why.trim().to_string(),
    })
}

/// The number before `what` in "ok. 19 passed; 0 failed; 0 ignored; …".
pub(crate) fn count(summary: &str, what: &str) -> u64 {
    summary
        .split(';')
        .find_map(|part| {
            let mut words = part.split_whitespace().rev();
            (words.next()? == what).then_some(())?;
            words.next()?.parse().ok()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::{Skip, count, skip_of};

    #[test]
    fn counts_cargo_test_summaries() {
        let s =
            "FAILED. 9 passed; 1 failed; 2 ignored; 0 measured; 0 filtered out; finished in 6.36s";
        assert_eq!(
            (count(s, "passed"), count(s, "failed"), count(s, "ignored")),
            (9, 1, 2)
        );
        assert_eq!(count("ok. 0 passed; 0 failed", "ignored"), 0);
    }

    #[test]
    fn finds_skips_where_the_tests_and_the_vm_console_put_them() {
        let skip = |test: &str, why: &str| {
            Some(Skip {
                test: test.into(),
                why: why.into(),
            })
        };
        assert_eq!(
            skip_of("SKIP a_test: needs root"),
            skip("a_test", "needs root")
        );
        assert_eq!(
            skip_of("test a_test ... SKIP a_test: no ffmpeg in the VM image"),
            skip("a_test", "no ffmpeg in the VM image")
        );
        assert_eq!(
            skip_of("[vm 5.10] test x ... SKIP x: favordynmods: off"),
            skip("x", "favordynmods: off")
        );
        for not in [
            "==> SKIPPING the VM tests: not root",
            "error: FFRTMP_SKIP_EBPF=1: the kernel programs are not built",
            "SKIP: no name",
            "a SKIP b: c",
        ] {
            assert_eq!(skip_of(not), None, "{not}");
        }
    }
}
