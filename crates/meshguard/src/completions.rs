//! `meshguard completions SHELL` and `meshguard man`: generated from the CLI definition itself,
//! so they never drift from the flags the binary takes.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, CommandFactory, ValueEnum};

#[derive(Args)]
pub(crate) struct CompletionsArgs {
    /// The shell to complete for. bash: `source <(meshguard completions bash)` or save it in
    /// /etc/bash_completion.d/; zsh: save as `_meshguard` in a directory on $fpath; fish: save in
    /// ~/.config/fish/completions/meshguard.fish.
    #[arg(value_enum)]
    shell: Shell,
}

#[derive(Clone, Copy, ValueEnum)]
enum Shell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Args)]
pub(crate) struct ManArgs {
    /// Write one page per command (meshguard.1, meshguard-serve.1, meshguard-ca-init.1, ...)
    /// into this directory instead of printing meshguard(1) to standard output.
    #[arg(long)]
    dir: Option<PathBuf>,
}

pub(crate) fn completions(a: CompletionsArgs) -> Result<ExitCode> {
    let mut cmd = crate::Cli::command();
    let shell = match a.shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    // Into a buffer first: clap_complete panics on a write error (a closed pipe).
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "meshguard", &mut out);
    print_bytes(&out)
}

pub(crate) fn man(a: ManArgs) -> Result<ExitCode> {
    let cmd = crate::Cli::command();
    match a.dir {
        None => {
            let mut out = Vec::new();
            clap_mangen::Man::new(cmd)
                .render(&mut out)
                .context("rendering the man page")?;
            return print_bytes(&out);
        }
        Some(dir) => {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            clap_mangen::generate_to(cmd, &dir)
                .with_context(|| format!("cannot write man pages to {}", dir.display()))?;
            let written = std::fs::read_dir(&dir)
                .map(|rd| {
                    rd.filter_map(Result::ok)
                        .filter(|e| e.file_name().to_string_lossy().ends_with(".1"))
                        .count()
                })
                .unwrap_or(0);
            eprintln!("wrote {written} man page(s) to {}", dir.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes to standard output; a reader that went away (`| head`) is not an error.
fn print_bytes(b: &[u8]) -> Result<ExitCode> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(b).and_then(|()| stdout.flush()) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(e) => Err(e).context("writing to standard output"),
    }
}
