//! The process's log: on stderr, as human-readable text (coloured only when
//! stderr is a terminal, so a redirected log holds no escape codes) or as
//! one JSON object a line, at the level `SLUICE_LOG` sets, else `RUST_LOG`,
//! else `info`.

use std::io::IsTerminal;

use clap::ValueEnum;
use tracing_subscriber::EnvFilter;

/// The variables that set the level (an `EnvFilter` directive such as
/// `debug` or `sluice=debug,rdkafka=warn`); the first one set wins.
pub const LEVEL_VARS: [&str; 2] = ["SLUICE_LOG", "RUST_LOG"];

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object a line: timestamp, level, target and fields.
    Json,
}

/// Installs the process's subscriber. A level variable that does not parse
/// is reported and `info` used instead.
pub fn init(format: LogFormat) {
    let filter = match LEVEL_VARS
        .iter()
        .find_map(|var| Some((var, std::env::var(var).ok().filter(|v| !v.is_empty())?)))
    {
        Some((var, directives)) => EnvFilter::try_new(&directives).unwrap_or_else(|e| {
            eprintln!("warning: {var}={directives:?} is not a log filter ({e}); logging at info");
            EnvFilter::new("info")
        }),
        None => EnvFilter::new("info"),
    };
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => subscriber.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => subscriber.json().init(),
    }
}
