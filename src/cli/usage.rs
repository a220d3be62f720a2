//! clap's usage errors as the one line SPEC §8 asks for: what is wrong, then the `--help`
//! that says what to do (`errand: ...; see errand enqueue --help`). clap's own rendering
//! spreads an error over a usage block and a pointer to `--help`, three to six lines.

use std::ffi::OsString;

use clap::error::ErrorKind;
use clap::CommandFactory;

use super::Cli;

/// True for the "errors" that are answers: `--help`, `--version` (printed as clap renders
/// them, exit 0).
pub fn is_help(err: &clap::Error) -> bool {
    matches!(
        err.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
    )
}

/// The one-line message for a usage error from parsing `args` (the whole command line,
/// program name first), without the `errand: ` prefix.
pub fn usage_line(err: &clap::Error, args: &[OsString]) -> String {
    let mut root = Cli::command();
    // Built, every subcommand knows the global flags (`--db PATH`) the walk must skip.
    root.build();
    let (path, cmd) = command_path(&root, args);
    let what = match err.kind() {
        // `errand job` alone: clap would print the whole help; one line names the choices.
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand | ErrorKind::MissingSubcommand => {
            let names: Vec<&str> = cmd
                .get_subcommands()
                .map(|c| c.get_name())
                .filter(|n| *n != "help")
                .collect();
            if names.is_empty() {
                "arguments are missing".to_string()
            } else {
                format!("a subcommand is required: one of {}", names.join(", "))
            }
        }
        _ => one_line(&err.render().to_string()),
    };
    format!("{what}; see {path} --help")
}

/// clap's rendered error on one line: its "error: " prefix, usage block and `--help`
/// pointer dropped; a list under a "...:" line joined with commas; tips kept.
fn one_line(rendered: &str) -> String {
    let body = rendered.strip_prefix("error: ").unwrap_or(rendered);
    let mut parts = Vec::new();
    for paragraph in body.split("\n\n") {
        let paragraph = paragraph.trim();
        if paragraph.starts_with("Usage:") || paragraph.starts_with("For more information") {
            continue;
        }
        let mut lines = paragraph.lines().map(str::trim).filter(|l| !l.is_empty());
        let Some(first) = lines.next() else { continue };
        let rest: Vec<&str> = lines.collect();
        parts.push(if rest.is_empty() {
            first.to_string()
        } else if first.ends_with(':') {
            format!("{first} {}", rest.join(", "))
        } else {
            format!("{first} {}", rest.join(" "))
        });
    }
    if parts.is_empty() {
        "invalid command line".to_string()
    } else {
        parts.join("; ")
    }
}

/// The subcommand `args` name (`errand credentials set`) and its definition, as far as
/// the words name one: options before a subcommand (and their values) are skipped.
fn command_path<'c>(root: &'c clap::Command, args: &[OsString]) -> (String, &'c clap::Command) {
    let mut cmd = root;
    let mut path = root.get_name().to_string();
    let mut words = args.iter().skip(1).map(|a| a.to_str());
    while cmd.has_subcommands() {
        let Some(Some(word)) = words.next() else {
            break;
        };
        if word == "--" {
            break;
        }
        if let Some(flag) = word.strip_prefix('-') {
            let takes_value = !word.contains('=')
                && cmd.get_arguments().any(|a| {
                    let named = match flag.strip_prefix('-') {
                        Some(long) => a.get_long() == Some(long),
                        None => flag.chars().count() == 1 && a.get_short() == flag.chars().next(),
                    };
                    named && a.get_action().takes_values()
                });
            if takes_value {
                words.next();
            }
            continue;
        }
        match cmd.find_subcommand(word) {
            Some(sub) if sub.get_name() != "help" => {
                path.push(' ');
                path.push_str(sub.get_name());
                cmd = sub;
            }
            _ => break,
        }
    }
    (path, cmd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn line(args: &[&str]) -> String {
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        let err = Cli::try_parse_from(&args).unwrap_err();
        assert!(!is_help(&err), "{args:?}");
        usage_line(&err, &args)
    }

    #[test]
    fn usage_errors_are_one_line_naming_the_help_to_read() {
        let cases: &[(&[&str], &str)] = &[
            (
                &["errand", "enqueue", "--url", "http://x/"],
                "the following required arguments were not provided: --account <ACCOUNT>; \
                 see errand enqueue --help",
            ),
            (
                &["errand", "--db", "x.db", "enqueue"],
                "the following required arguments were not provided: --account <ACCOUNT>, \
                 --url <URL>; see errand enqueue --help",
            ),
            (
                &["errand", "frob"],
                "unrecognized subcommand 'frob'; tip: a similar subcommand exists: 'job'; \
                 see errand --help",
            ),
            (
                &["errand", "credentials", "set", "acct9"],
                "the following required arguments were not provided: <PROVIDER>; \
                 see errand credentials set --help",
            ),
            (
                &["errand", "job"],
                "a subcommand is required: one of show, approve, cancel, retry, reopen; \
                 see errand job --help",
            ),
            (
                &["errand", "--config", "c.toml"],
                "a subcommand is required: one of serve, enqueue, jobs, job, pause, resume, \
                 credentials, stats, prune, backup, check, bench; see errand --help",
            ),
        ];
        for (args, want) in cases {
            assert_eq!(line(args), *want, "{args:?}");
        }
        let conflict = line(&[
            "errand",
            "enqueue",
            "--account",
            "a",
            "--url",
            "u",
            "--json",
            "{}",
            "--data",
            "x",
        ]);
        assert!(conflict.contains("cannot be used with"), "{conflict}");
        assert!(
            conflict.ends_with("; see errand enqueue --help"),
            "{conflict}"
        );
        let typo = line(&["errand", "jobs", "--jsn"]);
        assert!(
            typo.contains("'--jsn'") && typo.contains("'--json'"),
            "{typo}"
        );
        for l in [conflict, typo] {
            assert!(!l.contains('\n') && !l.contains('\x1b'), "{l:?}");
        }
    }
}
