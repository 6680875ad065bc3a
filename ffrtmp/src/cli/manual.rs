//! Manual pages generated from the CLI definition (clap_mangen), so they
//! never drift from it: `ffrtmp(1)` and one page per subcommand
//! (`ffrtmp-watch(1)`, `ffrtmp-policy-check(1)`, …), each with what
//! `--help` says at length, and a SEE ALSO section naming the others and the
//! documentation. `cargo xtask dist` writes them with the hidden
//! `ffrtmp manual DIR`; the package installs them.
use std::{fs, path::PathBuf, process::ExitCode};

use clap::{Args, Command, CommandFactory as _};

use super::{Cli, exit};

#[derive(Debug, Args)]
pub struct ManualArgs {
    /// The directory to write the pages into (made if missing).
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
}

pub(crate) fn manual(args: ManualArgs) -> ExitCode {
    let written = fs::create_dir_all(&args.dir).and_then(|()| {
        for (name, page) in pages() {
            fs::write(args.dir.join(name), page)?;
        }
        Ok(())
    });
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => exit::fail(exit::FAILURE, &e),
    }
}

/// Every page: (file name, roff text).
pub(crate) fn pages() -> Vec<(String, String)> {
    let mut top = Cli::command().disable_help_subcommand(true);
    // Builds every deferred subcommand (cli::deferred) and their names.
    top.build();
    let commands = documented(&top);
    let names: Vec<String> = commands.iter().map(page_name).collect();
    commands
        .iter()
        .map(|cmd| {
            let mut roff = Vec::new();
            let man = clap_mangen::Man::new(cmd.clone())
                .manual("ffrtmp manual")
                .source(format!("ffrtmp {}", env!("CARGO_PKG_VERSION")));
            // Writing into a Vec cannot fail.
            let _ = man.render(&mut roff);
            let mut page = String::from_utf8_lossy(&roff).into_owned();
            if cmd.get_name() == top.get_name() {
                page.push_str(EXIT_STATUS);
            }
            page.push_str(&see_also(&page_name(cmd), &names));
            (format!("{}.1", page_name(cmd)), page)
        })
        .collect()
}

/// `ffrtmp` and every subcommand a user can type, depth first.
fn documented(cmd: &Command) -> Vec<Command> {
    let mut all = vec![cmd.clone()];
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        all.extend(documented(sub));
    }
    all
}

fn page_name(cmd: &Command) -> String {
    cmd.get_display_name()
        .unwrap_or_else(|| cmd.get_name())
        .to_string()
}

/// The exit statuses ffrtmp itself chooses (cli::exit).
const EXIT_STATUS: &str = r#".SH "EXIT STATUS"
.TP
\fB0\fR
Success (\fBwatch\fR: stopped by SIGINT or SIGTERM).
.TP
\fB1\fR
A failure while running (\fBwatch\fR, \fBstatus\fR, \fBpolicy\fR).
.TP
\fB2\fR
Bad usage or input, before anything is created or started.
.TP
\fB125\fR
\fBrun\fR and \fBattach\fR: ffrtmp itself failed.
.TP
\fB126\fR, \fB127\fR
\fBrun\fR: the command cannot be executed, or was not found.
.PP
\fBrun\fR otherwise exits with its workload's status, 128+N when signal N killed it.
"#;

fn see_also(this: &str, names: &[String]) -> String {
    let others: Vec<String> = names
        .iter()
        .filter(|n| *n != this)
        .map(|n| format!("\\fB{}\\fR(1)", n.replace('-', "\\-")))
        .collect();
    format!(
        ".SH \"SEE ALSO\"\n{}\n.PP\nThe event stream, policies and operations: \\fI/usr/share/doc/ffrtmp/\\fR (EVENTS.md, POLICY.md, OPERATIONS.md, ARCHITECTURE.md).\n",
        others.join(",\n")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every subcommand has a page, and every option a documented entry in
    /// its page: a new subcommand or option without help fails here.
    #[test]
    fn every_subcommand_and_option_has_a_man_entry() {
        let pages = pages();
        let mut top = Cli::command().disable_help_subcommand(true);
        top.build();
        let commands = documented(&top);
        assert!(commands.len() >= 8, "{}", commands.len());
        for cmd in &commands {
            let name = format!("{}.1", page_name(cmd));
            let (_, page) = pages
                .iter()
                .find(|(n, _)| *n == name)
                .unwrap_or_else(|| panic!("no page {name}"));
            assert!(page.contains(".SH NAME") && page.contains(".SH \"SEE ALSO\""));
            assert!(
                cmd.get_about().is_some(),
                "{name}: the subcommand has no description"
            );
            for arg in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
                let id = arg.get_id().as_str();
                assert!(
                    arg.get_help().is_some() || arg.get_long_help().is_some(),
                    "{name}: {id} has no help text"
                );
                // clap_mangen writes `\-\-name` for --name, and the value
                // name for a positional.
                let entry = match (arg.get_long(), arg.get_value_names()) {
                    (Some(long), _) => format!("\\-\\-{}", long.replace('-', "\\-")),
                    (None, Some(names)) => names[0].to_string(),
                    (None, None) => id.to_uppercase(),
                };
                assert!(page.contains(&entry), "{name}: no entry {entry} for {id}");
            }
        }
        // The hidden generator documents itself nowhere.
        assert!(pages.iter().all(|(n, _)| !n.contains("manual")));
        assert!(pages.iter().any(|(n, _)| n == "ffrtmp-policy-check.1"));
    }
}
