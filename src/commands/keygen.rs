//! `lifeboat keygen`: a new owner key (to keep offline) and its backup key (for the backup
//! host), or the backup key of an existing owner key.
//!
//! Where it sits: The binary's edge: writes what `lifeboat::keys` generates.

use lifeboat::keys::{self, BackupKey, OwnerKey};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct KeygenArgs {
    /// Write the owner key to this file (created with mode 600, never overwritten) instead of
    /// stdout
    #[arg(long, short = 'o', value_name = "PATH")]
    pub output: Option<PathBuf>,
    /// Write the backup key to this file instead of lifeboat's config directory
    /// [default: ~/.config/lifeboat/backup.key]
    #[arg(long, value_name = "PATH")]
    pub backup_key_output: Option<PathBuf>,
    /// Make no new owner key: write the backup key of this existing one (a new backup host,
    /// or an owner key from an earlier lifeboat or from age-keygen)
    #[arg(long, value_name = "PATH", conflicts_with = "output")]
    pub from_owner_key: Option<PathBuf>,
}

pub fn run(args: KeygenArgs) -> anyhow::Result<ExitCode> {
    let backup_path = args
        .backup_key_output
        .clone()
        .unwrap_or_else(keys::default_backup_key_path);
    if backup_path.exists() {
        return Err(lifeboat::error::usage(format!(
            "a backup key exists at {} already; keygen never overwrites a key. Pass --backup-key-output FILE to write the new one elsewhere, or move the old one away first",
            backup_path.display()
        )));
    }
    if let Some(owner_path) = &args.from_owner_key {
        let backup = OwnerKey::read(owner_path)?.backup_key()?;
        write_backup_key(&backup, &backup_path)?;
        eprintln!(
            "# backup key of the owner key {}: written to {}. Leave it on the backup host: it makes and signs backups but cannot read them.",
            owner_path.display(),
            backup_path.display()
        );
        eprintln!("{}", backup.recipient.text);
        return Ok(ExitCode::SUCCESS);
    }
    let (owner, backup) = keys::generate();
    let owner_place = match &args.output {
        Some(path) => {
            create_secret_file(path)
                .and_then(|mut file| file.write_all(owner.as_bytes()))
                .map_err(|e| {
                    lifeboat::error::usage(format!(
                        "cannot create {}: {e} (keygen never overwrites a key)",
                        path.display()
                    ))
                })?;
            path.display().to_string()
        }
        None => {
            restrict_stdout_file();
            std::io::stdout().write_all(owner.as_bytes())?;
            "stdout".to_string()
        }
    };
    write_backup_key(&backup, &backup_path).map_err(|e| {
        e.context(format!(
            "the owner key was written to {owner_place}; make its backup key with `lifeboat keygen --from-owner-key <that file> --backup-key-output FILE`"
        ))
    })?;
    // Comment lines, so that `2> recipient.txt` still makes a valid recipients file.
    eprintln!(
        "# owner key: written to {owner_place}. Keep it offline: it is the only key that reads the backups, and the one secret a restore needs."
    );
    eprintln!(
        "# backup key: written to {}. Leave it on the backup host: it makes and signs backups but cannot read them.",
        backup_path.display()
    );
    eprintln!("{}", backup.recipient.text);
    Ok(ExitCode::SUCCESS)
}

fn write_backup_key(backup: &BackupKey, path: &Path) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| lifeboat::error::usage(format!("cannot create {}: {e}", dir.display())))?;
    }
    create_secret_file(path)
        .and_then(|mut file| file.write_all(backup.file_text().as_bytes()))
        .map_err(|e| {
            lifeboat::error::usage(format!(
                "cannot create the backup key {}: {e} (keygen never overwrites a key)",
                path.display()
            ))
        })
}

/// A new file only its owner may read or write.
fn create_secret_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

/// `lifeboat keygen > key.txt`: the shell created key.txt with the umask's mode; a secret key
/// gets 600 like every key lifeboat writes.
fn restrict_stdout_file() {
    use std::os::fd::AsRawFd;
    let fd = std::io::stdout().as_raw_fd();
    // SAFETY: fstat and fchmod on the process's own stdout descriptor, with a valid out-pointer.
    unsafe {
        let mut stat: libc::stat = std::mem::zeroed();
        if libc::fstat(fd, &mut stat) == 0 && (stat.st_mode & libc::S_IFMT) == libc::S_IFREG {
            libc::fchmod(fd, 0o600);
        }
    }
}
