//! `lifeboat keygen`: a new age identity for backups.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct KeygenArgs {
    /// Write the identity to this file (created with mode 600, never overwritten) instead of stdout
    #[arg(long, short = 'o', value_name = "PATH")]
    pub output: Option<PathBuf>,
}

pub fn run(args: KeygenArgs) -> anyhow::Result<ExitCode> {
    let (identity, recipient) = lifeboat::keys::generate();
    match &args.output {
        Some(path) => {
            use std::os::unix::fs::OpenOptionsExt;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| {
                    lifeboat::error::usage(format!(
                        "cannot create {}: {e} (keygen never overwrites a key)",
                        path.display()
                    ))
                })?;
            file.write_all(identity.as_bytes())?;
        }
        None => std::io::stdout().write_all(identity.as_bytes())?,
    }
    eprintln!("{recipient}");
    Ok(ExitCode::SUCCESS)
}
