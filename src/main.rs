//! The `errand` binary: parse -> run -> exit code. The only place errors become exit
//! codes: 0 success, 1 failure, 2 usage.

use std::process::ExitCode;

use clap::Parser;
use errand::cli::output::{print_message, print_output};
use errand::cli::{usage, Cli, Command};
use errand::config::{Config, Overrides};
use errand::Error;

fn env(key: &str) -> Option<String> {
    std::env::var(key).ok()
}

fn exit_code(e: &Error) -> ExitCode {
    match e {
        Error::Invalid { .. } | Error::Config { .. } => ExitCode::from(2),
        _ => ExitCode::from(1),
    }
}

fn serve(cli: &Cli, listen: &Option<String>, workers: Option<usize>) -> Result<(), Error> {
    let flags = Overrides {
        config: cli.config.clone(),
        db: cli.db.clone(),
        listen: listen.clone(),
        workers,
    };
    let config = Config::load(&flags, &env)?;
    let (tx, rx) = crossbeam_channel::bounded(1);
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])?;
    std::thread::spawn(move || {
        if signals.forever().next().is_some() {
            let _ = tx.send(());
        }
    });
    errand::server::serve(config, rx)
}

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) if usage::is_help(&e) => {
            // Help and version are answers, printed as clap renders them; a closed
            // stdout is the reader's choice.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            print_message(&format!("errand: {}", usage::usage_line(&e, &args)));
            return ExitCode::from(2);
        }
    };
    // The bench starts and stops many engines: their info lines would bury its progress.
    let level = if matches!(cli.command, Command::Bench(_)) {
        "warn"
    } else {
        "info"
    };
    env_logger::Builder::from_env(env_logger::Env::default().filter_or("ERRAND_LOG", level)).init();
    let result = match &cli.command {
        Command::Serve { listen, workers } => serve(&cli, listen, *workers),
        _ => errand::cli::run(&cli, &env).and_then(|out| {
            if !out.text.is_empty() {
                print_output(&out.text).map_err(|e| {
                    Error::Io(std::io::Error::new(
                        e.kind(),
                        format!("cannot write the output: {e}"),
                    ))
                })?;
            }
            out.failure.map_or(Ok(()), Err)
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            print_message(&format!("errand: {e}"));
            exit_code(&e)
        }
    }
}
