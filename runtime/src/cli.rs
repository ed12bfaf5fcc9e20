//! The command-line contract both binaries keep: exit codes (0 success, 1 runtime failure,
//! 2 bad usage or input), one `error: …` line on stderr, `--json` printing exactly one JSON
//! document on stdout, logs on stderr, and TOML config files read strictly.

use serde::de::DeserializeOwned;
use serde_json::Value;
use std::future::Future;
use std::path::Path;

/// The options every command of both binaries takes (flatten into the top-level parser).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct CommonArgs {
    /// Data directory.
    #[arg(long, global = true, env = "TALLY_DATA", value_name = "DIR")]
    pub data: Option<std::path::PathBuf>,
    /// Configuration file (TOML); flags and TALLY_* variables take precedence.
    #[arg(long, global = true, env = "TALLY_CONFIG", value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
    /// Print exactly one JSON document on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// How log lines on stderr are written: `text` for people, `json` for log collectors
    /// (one JSON object per line: timestamp, level, the event's fields, target).
    #[arg(
        long,
        global = true,
        env = "TALLY_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text,
        value_name = "FORMAT"
    )]
    pub log_format: LogFormat,
}

/// The format of log lines (`--log-format`).
#[derive(clap::ValueEnum, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Why a command failed; decides the exit code.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// Bad usage or bad input (exit 2). Nothing was changed.
    #[error("{0}")]
    Usage(String),
    /// The command was valid but failed while running (exit 1).
    #[error("{0}")]
    Runtime(String),
}

impl CommandError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CommandError::Usage(_) => 2,
            CommandError::Runtime(_) => 1,
        }
    }
}

/// Shorthand for [`CommandError::Usage`].
pub fn usage(m: impl Into<String>) -> CommandError {
    CommandError::Usage(m.into())
}

/// Shorthand for [`CommandError::Runtime`].
pub fn runtime(m: impl std::fmt::Display) -> CommandError {
    CommandError::Runtime(m.to_string())
}

/// What a command prints: `json` with `--json`, `text` otherwise.
#[derive(Debug, Clone)]
pub struct Output {
    pub json: Value,
    pub text: String,
}

impl Output {
    pub fn new(json: Value, text: impl Into<String>) -> Output {
        Output {
            json,
            text: text.into(),
        }
    }

    /// The JSON document, pretty-printed, as the text too.
    pub fn json_only(json: Value) -> Output {
        let text = serde_json::to_string_pretty(&json).unwrap_or_default() + "\n";
        Output { json, text }
    }
}

pub type CmdResult = Result<Output, CommandError>;

/// Parses the command line; a parse error becomes one `error:` line and exit 2, help and
/// version print as usual.
pub fn parse<C: clap::Parser>(bin: &str) -> C {
    match C::try_parse() {
        Ok(c) => c,
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            eprintln!(
                "{} (hint: see '{bin} --help')",
                one_line(&e.render().to_string())
            );
            std::process::exit(2);
        }
    }
}

/// clap's message on one line: its first line (`error: …`) and what follows it (what is
/// missing, a suggestion such as "a similar argument exists"), without the usage block.
fn one_line(rendered: &str) -> String {
    let mut parts = rendered
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty());
    let first = parts
        .next()
        .unwrap_or("error: invalid arguments")
        .to_string();
    parts.fold(first, |acc, p| {
        if acc.ends_with(':') {
            format!("{acc} {p}")
        } else if p.starts_with("tip:") {
            format!("{acc}; {p}")
        } else {
            format!("{acc}, {p}")
        }
    })
}

/// Logs to stderr in `format`, filtered by `TALLY_LOG` (default `info`); with `traces`,
/// the spans that pass the same filter are exported too (see [`crate::traces`]).
pub fn init_logging(format: LogFormat, traces: Option<crate::traces::TraceLayer>) {
    use std::io::IsTerminal;
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    type Base = tracing_subscriber::layer::Layered<
        Option<crate::traces::TraceLayer>,
        tracing_subscriber::Registry,
    >;
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("TALLY_LOG").unwrap_or_else(|_| "info".into());
    let lines: Box<dyn Layer<Base> + Send + Sync> = match format {
        // Colours only for a person at a terminal; never escape codes in a log file.
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .boxed(),
        // One object per line with the event's fields at the top level (`message` among
        // them), so a log collector indexes them without unpacking; no span lists.
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(traces)
        .with(lines)
        .with(filter)
        .init();
}

/// Runs a command on a new tokio runtime, prints its output (`--json`: the one JSON
/// document) and exits with the contract's code. `Ok(None)`: the command printed what it
/// had to (a server).
///
/// Logging starts here, inside the runtime, because the trace exporter (when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` asks for one) is a gRPC client that lives on it; traces
/// still buffered are sent before the process exits. `service` names the process in them.
pub fn run_main<F>(service: &'static str, log_format: LogFormat, json_out: bool, command: F) -> !
where
    F: Future<Output = Result<Option<Output>, CommandError>>,
{
    // Everything either binary creates (data directories, databases and their journals,
    // backups, license files, ports.json) is private to its user: the data directory holds
    // token hashes, customers and usage. Key files are 0600 by construction as well.
    crate::datadir::private_by_default();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let traces = {
        let _inside = rt.enter();
        match crate::traces::from_env(service) {
            Ok(Some((layer, traces))) => {
                init_logging(log_format, Some(layer));
                Some(traces)
            }
            Ok(None) => {
                init_logging(log_format, None);
                None
            }
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(2);
            }
        }
    };
    let result = rt.block_on(command);
    if let Some(traces) = traces {
        traces.shutdown();
    }
    match result {
        Ok(Some(out)) => {
            if json_out {
                println!("{}", out.json);
            } else {
                print!("{}", out.text);
            }
            std::process::exit(0)
        }
        Ok(None) => std::process::exit(0),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(e.exit_code());
        }
    }
}

/// Reads a TOML config file strictly (the type should `deny_unknown_fields`; TOML itself
/// refuses repeated keys). No path: the defaults.
pub fn load_config<T: DeserializeOwned + Default>(path: Option<&Path>) -> Result<T, CommandError> {
    let Some(path) = path else {
        return Ok(T::default());
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| usage(format!("cannot read config file {}: {e}", path.display())))?;
    toml::from_str(&text)
        .map_err(|e| usage(format!("config file {}: {}", path.display(), e.message())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Default, Debug)]
    #[serde(deny_unknown_fields)]
    struct Conf {
        data: Option<String>,
    }

    #[test]
    fn config_files_are_read_strictly() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "data = \"x\"\n").unwrap();
        assert_eq!(
            load_config::<Conf>(Some(&p)).unwrap().data.as_deref(),
            Some("x")
        );
        std::fs::write(&p, "data = \"x\"\ndata = \"y\"\n").unwrap();
        let e = load_config::<Conf>(Some(&p)).unwrap_err();
        assert_eq!(e.exit_code(), 2, "{e}");
        std::fs::write(&p, "datta = \"x\"\n").unwrap();
        assert!(
            load_config::<Conf>(Some(&p))
                .unwrap_err()
                .to_string()
                .contains("datta")
        );
        assert!(load_config::<Conf>(None).unwrap().data.is_none());
    }
}
