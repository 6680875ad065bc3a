//! `ffrtmp policy`: check a policy file before deploying it, print the
//! embedded policy as a starting point, or say what a policy would do with
//! a command line, without running it.
use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap::Subcommand;
use serde_json::json;

use super::exit;
use crate::{
    events::Format,
    policy::{Action, COMM_MAX, Candidate, Decision, EMBEDDED, Policy},
};

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate FILE as `watch --policy` would; print its rules. Exit 2 (with the line of the mistake) if invalid.
    Check {
        /// The policy file (TOML, docs/POLICY.md).
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Print the embedded policy (what `watch` uses without --policy).
    Default,
    /// Print which rule, tier and limits a command line would get, without running it.
    ///
    /// The process is taken to be COMMAND's program (its name, as the
    /// kernel keeps it, is the file name's first 15 bytes) run by this
    /// user with these arguments; `{pid}` in a job id is 0. Exit 0 whether
    /// or not a rule matches; 2 for a bad policy.
    Explain {
        /// The policy file [default: the embedded policy].
        #[arg(long, value_name = "FILE")]
        policy: Option<PathBuf>,
        /// The parent's name, for rules on `parent_comm`.
        #[arg(long, value_name = "COMM")]
        parent_comm: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// The command line, program first (after `--`).
        #[arg(last = true, required = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
}

pub(super) fn run(command: PolicyCommand) -> ExitCode {
    match command {
        PolicyCommand::Default => {
            print!("{EMBEDDED}");
            ExitCode::SUCCESS
        }
        PolicyCommand::Check { file } => match Policy::load(&file) {
            Ok(policy) => {
                check(&policy);
                ExitCode::SUCCESS
            }
            Err(e) => exit::fail(exit::USAGE, &e),
        },
        PolicyCommand::Explain {
            policy,
            parent_comm,
            format,
            command,
        } => {
            let policy = match policy.as_deref().map(Policy::load) {
                None => Policy::embedded(),
                Some(Ok(p)) => p,
                Some(Err(e)) => return exit::fail(exit::USAGE, &e),
            };
            explain(&policy, parent_comm, format, command);
            ExitCode::SUCCESS
        }
    }
}

fn check(policy: &Policy) {
    for w in &policy.warnings {
        eprintln!("ffrtmp: warning: {w}");
    }
    for rule in &policy.rules {
        match &rule.action {
            Action::Ignore => println!("{rule}: ignore"),
            Action::Govern { limits, tier, .. } => {
                let tier = tier.map_or_else(String::new, |t| format!(", tier {t}"));
                println!("{rule}: govern ({} limits{tier})", limits.count());
            }
        }
    }
    match policy.comm_filter() {
        Some(comms) => println!(
            "kernel pre-filter: {}",
            comms.into_iter().collect::<Vec<_>>().join(", ")
        ),
        None => println!(
            "kernel pre-filter: none (a governing rule does not name its comm: every exec goes to user space, and a match may wait up to 10 ms for watch to wake)"
        ),
    }
}

/// The candidate a command line would be: its program's name cut as the
/// kernel cuts it, its path when it has one (absolute, or found on PATH).
fn candidate(parent_comm: Option<String>, command: Vec<String>) -> Candidate {
    let program = command.first().cloned().unwrap_or_default();
    let name = Path::new(&program)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut comm = name;
    while comm.len() > COMM_MAX {
        comm.pop();
    }
    let exe = if program.contains('/') {
        std::fs::canonicalize(&program).ok()
    } else {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(&program))
                .find(|p| p.is_file())
        })
    };
    Candidate {
        pid: 0,
        comm,
        uid: nix::unistd::getuid().as_raw(),
        exe: exe.map(|p| p.to_string_lossy().into_owned()),
        argv: Some(command),
        parent_comm,
    }
}

fn explain(policy: &Policy, parent_comm: Option<String>, format: Format, command: Vec<String>) {
    let c = candidate(parent_comm, command);
    let decision = policy.decide(&c);
    let (rule, action, tier, job_id, limits) = match &decision {
        Some(Decision::Govern {
            rule,
            job_id,
            limits,
            tier,
        }) => (
            Some(*rule),
            "govern",
            *tier,
            Some(job_id.to_string()),
            limits.texts(),
        ),
        Some(Decision::Ignore { rule }) => (Some(*rule), "ignore", None, None, Vec::new()),
        None => (None, "none", None, None, Vec::new()),
    };
    match format {
        Format::Json => {
            let limits: serde_json::Map<String, serde_json::Value> = limits
                .iter()
                .map(|(n, v)| (n.to_string(), json!(v)))
                .collect();
            let out = json!({
                "policy": policy.origin,
                "comm": c.comm,
                "rule": rule.map(|r| r.name.clone()),
                "line": rule.map(|r| r.line),
                "action": action,
                "tier": tier,
                "job_id": job_id,
                "limits": limits,
            });
            println!("{out}");
        }
        Format::Text => {
            println!("policy: {}", policy.origin);
            println!("comm: {}", c.comm);
            match rule {
                Some(r) => println!("rule: {r}"),
                None => println!("rule: none matches: not governed"),
            }
            println!("action: {action}");
            if action == "govern" {
                println!("tier: {}", tier.map_or("none", |t| t.as_str()));
                println!("job id: {}", job_id.unwrap_or_default());
                for (name, value) in limits {
                    println!("{name}: {value}");
                }
            }
        }
    }
}
