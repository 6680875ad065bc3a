//! Reading a VM's console: each line printable, libtest's results and the
//! SKIP lines counted (`crate::results`), and the init's end marker.
use std::process::ExitStatus;

use super::VmOutcome;
use crate::results::{count, skip_of};

/// Printed by the init when it is done; the host requires it.
pub(super) const DONE_MARKER: &str = "FFRTMP-VM-DONE";

/// What a VM's console has said so far.
pub(super) struct Console {
    /// `[vm NAME]`, before each line printed.
    prefix: String,
    outcome: VmOutcome,
    /// The init's end marker: whether every suite passed.
    done: Option<bool>,
}

impl Console {
    pub(super) fn new(name: &str) -> Self {
        Console {
            prefix: format!("[vm {name}]"),
            outcome: VmOutcome {
                kernel: name.to_string(),
                passed: 0,
                failed: 0,
                skips: Vec::new(),
                ok: false,
                why: String::new(),
            },
            done: None,
        }
    }

    /// Prints one console line and counts what it says.
    pub(super) fn line(&mut self, line: &str) {
        let line = printable(line);
        println!("{} {line}", self.prefix);
        let outcome = &mut self.outcome;
        if let Some(summary) = line.strip_prefix("test result: ") {
            outcome.passed += count(summary, "passed");
            outcome.failed += count(summary, "failed");
        }
        if let Some(skip) = skip_of(&line) {
            // Said SKIP and returned: not a pass.
            outcome.passed = outcome.passed.saturating_sub(1);
            outcome.skips.push(skip);
        }
        if let Some(rest) = line.strip_prefix(DONE_MARKER) {
            self.done = Some(rest.trim() == "fail=0");
        }
    }

    /// The VM was stopped before its end, for `why`.
    pub(super) fn cut_off(mut self, why: String) -> VmOutcome {
        self.outcome.why = why;
        self.outcome
    }

    /// The VM ended with `status`: passed only if its init reported that
    /// every suite passed, none failed and some test ran.
    pub(super) fn end(mut self, status: ExitStatus) -> VmOutcome {
        let outcome = &mut self.outcome;
        (outcome.ok, outcome.why) = match self.done {
            None => (
                false,
                format!("the VM stopped ({status}) before its init reported the end"),
            ),
            Some(false) => (false, "tests failed inside the VM".into()),
            Some(true) if outcome.failed > 0 => (false, "tests failed inside the VM".into()),
            Some(true) if outcome.passed == 0 => (false, "no test ran inside the VM".into()),
            Some(true) => (true, String::new()),
        };
        self.outcome
    }
}

/// A console line without terminal control sequences (the firmware clears
/// the screen) or carriage returns.
fn printable(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            // ESC, then either one character or "[" parameters up to a letter.
            '\x1b' => {
                if chars.next() == Some('[') {
                    for c in chars.by_ref() {
                        if c.is_ascii_alphabetic() {
                            break;
                        }
                    }
                }
            }
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vm_passes_only_when_its_init_says_so_and_a_test_ran() {
        use std::os::unix::process::ExitStatusExt as _;
        let ok = ExitStatus::from_raw(0);
        let run = |lines: &[&str]| {
            let mut c = Console::new("t");
            for l in lines {
                c.line(l);
            }
            c.end(ok)
        };
        let passed = "test result: ok. 3 passed; 0 failed; 0 ignored";
        let good = run(&[passed, "SKIP x: no ffmpeg", "FFRTMP-VM-DONE fail=0"]);
        assert!(good.ok, "{good}");
        assert_eq!((good.passed, good.skips.len()), (2, 1));
        assert!(!run(&[passed]).ok, "no end marker");
        assert!(!run(&[passed, "FFRTMP-VM-DONE fail=1"]).ok);
        assert!(!run(&["FFRTMP-VM-DONE fail=0"]).ok, "no test ran");
    }

    #[test]
    fn strips_terminal_control_from_console_lines() {
        assert_eq!(
            printable("\x1bc\x1b[?7l\x1b[2JFFRTMP-VM: kernel 6.1\r"),
            "FFRTMP-VM: kernel 6.1"
        );
    }
}
