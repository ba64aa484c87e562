//! The operational log (stderr): `--log-level` read strictly, so a typo is an error instead of a
//! filter that silently shows nothing (`EnvFilter` takes `verbose` for a target name).

use std::io::IsTerminal;

use anyhow::{bail, Result};
use tracing_subscriber::EnvFilter;

/// The levels a directive may name.
const LEVELS: &[&str] = &["error", "warn", "info", "debug", "trace", "off"];

const HELP: &str = "use one of error, warn, info, debug, trace (or off), or an EnvFilter directive such as `info,meshguard_engine=debug`";

fn known_level(s: &str) -> bool {
    LEVELS.iter().any(|l| l.eq_ignore_ascii_case(s))
}

/// A near miss for a level people type (`warning`, `verbose`, `err`).
fn hint(s: &str) -> &'static str {
    match s.to_ascii_lowercase().as_str() {
        "warning" | "wrn" => " (did you mean `warn`?)",
        "err" | "fatal" | "critical" | "crit" => " (did you mean `error`?)",
        "verbose" | "all" | "debugging" => " (did you mean `debug` or `trace`?)",
        "information" | "informational" | "notice" | "normal" => " (did you mean `info`?)",
        "none" | "quiet" | "silent" => " (did you mean `off`?)",
        _ => "",
    }
}

/// Parses `--log-level`: a level, or EnvFilter directives (`target=level`, comma-separated)
/// whose levels are all known. A bare word that is not a level is refused, though EnvFilter
/// would read it as a target name.
pub fn parse_filter(level: &str) -> Result<EnvFilter> {
    let level = level.trim();
    if level.is_empty() {
        bail!("--log-level is empty: {HELP}");
    }
    for directive in level.split(',').map(str::trim) {
        if directive.is_empty() {
            bail!("--log-level `{level}` has an empty directive (two commas, or a trailing one): {HELP}");
        }
        match directive.rsplit_once('=') {
            None => {
                if !known_level(directive) {
                    bail!(
                        "--log-level: unknown level `{directive}`{}: {HELP}",
                        hint(directive)
                    );
                }
            }
            Some((target, lvl)) => {
                if target.is_empty() {
                    bail!("--log-level: `{directive}` names no target before `=`: {HELP}");
                }
                if !known_level(lvl) {
                    bail!(
                        "--log-level: unknown level `{lvl}` in `{directive}`{}: {HELP}",
                        hint(lvl)
                    );
                }
            }
        }
    }
    match EnvFilter::try_new(level) {
        Ok(f) => Ok(f),
        Err(e) => bail!("--log-level `{level}`: {e}: {HELP}"),
    }
}

/// Starts the operational log on stderr at `level` (see [`parse_filter`]); colours only when
/// stderr is a terminal. A second call keeps the first subscriber and succeeds.
pub fn init_logging(level: &str) -> Result<()> {
    init_logging_as(level, "text")
}

/// [`init_logging`] in a chosen format: `text` (for people) or `json` (one object per line,
/// for log pipelines).
pub fn init_logging_as(level: &str, format: &str) -> Result<()> {
    let filter = parse_filter(level)?;
    match format {
        "text" => {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal())
                .try_init();
        }
        "json" => {
            let _ = tracing_subscriber::fmt()
                .json()
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .try_init();
        }
        other => bail!("--log-format `{other}`: use text or json"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(level: &str) -> String {
        match parse_filter(level) {
            Ok(_) => panic!("`{level}` was accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn levels_and_directives_are_accepted() {
        for ok in [
            "error",
            "warn",
            "info",
            "debug",
            "trace",
            "off",
            "INFO",
            " debug ",
            "info,meshguard_engine=debug",
            "meshguard_server=trace",
            "warn,h2=off,meshguard_proxy::inbound=debug",
            "meshguard[decide]=debug",
        ] {
            assert!(parse_filter(ok).is_ok(), "{ok}: {}", err_or_ok(ok));
        }
    }

    fn err_or_ok(level: &str) -> String {
        parse_filter(level)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn unknown_levels_are_refused_with_the_valid_ones() {
        let e = err("verbose");
        assert!(e.contains("unknown level `verbose`"), "{e}");
        assert!(
            e.contains("error, warn, info, debug, trace (or off), or an EnvFilter directive"),
            "{e}"
        );
        assert!(err("warning").contains("did you mean `warn`?"));
        assert!(err("info,meshguard_engine=loud")
            .contains("unknown level `loud` in `meshguard_engine=loud`"));
        assert!(err("").contains("--log-level is empty"));
        assert!(err("info,,debug").contains("empty directive"));
        assert!(err("=debug").contains("names no target"));
        assert!(!err("verbose").contains("Some("));
    }

    #[test]
    fn init_twice_is_fine_and_bad_levels_fail() {
        assert!(init_logging("warn").is_ok());
        assert!(init_logging("info").is_ok());
        assert!(init_logging("loud").is_err());
    }
}
