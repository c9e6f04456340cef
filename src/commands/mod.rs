//! The subcommands, one file each, dispatched by [`Command`]. The doc comments are the
//! `--help` text. Settings come from flags, `LIFEBOAT_*` variables and the `--config` file.
//!
//! Where it sits: The binary's edge, under `main.rs`: the options every command shares, and the
//! dispatch to one file per subcommand.

mod backup;
mod check_config;
mod copy;
mod dump;
mod generate;
mod keygen;
mod list;
mod plans;
mod prune;
mod restore;
mod schedule;
mod show;
mod unlock;
mod verify;

use clap::{Parser, Subcommand};
use lifeboat::config::ConfigFile;
use std::path::PathBuf;
use std::process::ExitCode;

/// Back up a docker compose app's volumes to object storage — compressed and age-encrypted in
/// flight — and restore them.
#[derive(Debug, Parser)]
#[command(name = "lifeboat", version, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalOptions,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Args)]
pub struct GlobalOptions {
    /// TOML config file (see config.example.toml); flags and LIFEBOAT_* variables win over it
    #[arg(
        long,
        short = 'c',
        global = true,
        env = "LIFEBOAT_CONFIG",
        value_name = "PATH"
    )]
    pub config: Option<PathBuf>,
    /// More output: -v progress and a summary, -vv debug
    #[arg(long, short = 'v', global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Log format on stderr
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "human",
        env = "LIFEBOAT_LOG_FORMAT"
    )]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Stop the app, stream its volumes to the store, start it again, write the manifest
    Backup(backup::BackupArgs),
    /// Run backups on a cron schedule in the foreground (the sidecar's command); a failed run
    /// is logged and the schedule goes on
    Schedule(schedule::ScheduleArgs),
    /// Verify a backup, then stream it back into the app's volumes
    Restore(restore::RestoreArgs),
    /// List the complete backups in a store
    List(list::ListArgs),
    /// Show one backup's manifest
    Show(show::ShowArgs),
    /// Write one volume of a backup, or one path in it, to stdout (a tar, or the raw file),
    /// verified first; touches no app and needs no Docker
    Dump(dump::DumpArgs),
    /// Remove the backups no keep rule keeps (restic's rules), and stale incomplete ones
    Prune(prune::PruneArgs),
    /// Check backups end to end without touching any volume (for restore drills)
    Verify(verify::VerifyArgs),
    /// Copy genuine backups to another store (any kind), only what it lacks; resumable
    Copy(copy::CopyArgs),
    /// Remove the lock a dead run left behind (a live run renews it; an abandoned one expires
    /// after 10 minutes by itself)
    Unlock(unlock::UnlockArgs),
    /// Check the settings, reach the store and Docker, list what a backup would take; changes
    /// nothing
    CheckConfig(backup::BackupArgs),
    /// Print shell completions (bash, zsh, fish, elvish, powershell)
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff)
    Man,
    /// Create an age identity: the secret key on stdout (or --output), the public key on stderr
    Keygen(keygen::KeygenArgs),
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let file = ConfigFile::load(cli.global.config.as_deref())?;
    let verbose = cli.global.verbose > 0;
    match cli.command {
        Command::Backup(args) => backup::run(args, file, verbose).await,
        Command::Schedule(args) => schedule::run(args, file, verbose).await,
        Command::Restore(args) => restore::run(args, file, verbose).await,
        Command::List(args) => list::run(args, file).await,
        Command::Show(args) => show::run(args, file).await,
        Command::Dump(args) => dump::run(args, file).await,
        Command::Prune(args) => prune::run(args, file).await,
        Command::Verify(args) => verify::run(args, file).await,
        Command::Copy(args) => copy::run(args, file).await,
        Command::Unlock(args) => unlock::run(args, file).await,
        Command::Keygen(args) => keygen::run(args),
        Command::CheckConfig(args) => check_config::run(args, file).await,
        Command::Completions { shell } => generate::completions(shell),
        Command::Man => generate::man(),
    }
}

pub fn init_logging(global: &GlobalOptions) {
    use tracing_subscriber::EnvFilter;
    let default = match global.verbose {
        0 => "warn",
        1 => "info",
        _ => {
            "debug,bollard=info,hyper=info,h2=info,reqwest=info,rustls=info,aws_config=info,aws_smithy_runtime=info"
        }
    };
    let filter =
        EnvFilter::try_from_env("LIFEBOAT_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match global.log_format {
        LogFormat::Human => builder.with_target(false).init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// The keys that decide which backups are genuine, for the commands that read backups.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TrustArgs {
    /// The owner key `lifeboat keygen` wrote: checks the backups' signatures (and decrypts,
    /// where a command reads data)
    #[arg(long, short = 'i', env = "LIFEBOAT_IDENTITY_FILE", value_name = "PATH")]
    pub identity: Option<PathBuf>,
    /// A backup key: checks the signatures it made, on the backup host, which has no owner key
    /// [default: ~/.config/lifeboat/backup.key, when there is one]
    #[arg(
        long,
        short = 'k',
        env = "LIFEBOAT_BACKUP_KEY_FILE",
        value_name = "PATH"
    )]
    pub backup_key: Option<PathBuf>,
    /// Accept the format-1 backup named with --backup (made before lifeboat signed its
    /// backups) as genuine; never counted by prune, never taken as the newest
    #[arg(long)]
    pub allow_unsigned: bool,
}

/// The keys read, and the trust they give.
pub struct Keys {
    pub owner: Option<lifeboat::keys::OwnerKey>,
    pub policy: lifeboat::manifest::TrustPolicy,
}

impl TrustArgs {
    /// Reads the keys given (flags, variables, then the config file's `[restore] identity` and
    /// `[backup] backup_key`), else the default backup key; with none, says what to pass.
    pub fn keys(self, file: &ConfigFile) -> anyhow::Result<Keys> {
        let identity = self.identity.or_else(|| file.restore.identity.clone());
        let backup_key = self.backup_key.or_else(|| file.backup.backup_key.clone());
        let owner = identity
            .as_deref()
            .map(lifeboat::keys::OwnerKey::read)
            .transpose()?;
        let mut trust = owner.as_ref().map(|o| o.trust()).unwrap_or_default();
        let default = lifeboat::keys::default_backup_key_path();
        let backup = match (&backup_key, &owner) {
            (Some(path), _) => Some(lifeboat::keys::BackupKey::read(path)?),
            (None, None) if default.exists() => Some(lifeboat::keys::BackupKey::read(&default)?),
            _ => None,
        };
        if let Some(backup) = &backup {
            for key in backup.trust().keys() {
                trust.add(key.clone());
            }
        }
        if trust.is_empty() {
            return Err(lifeboat::error::usage(format!(
                "no key to tell genuine backups from forged ones: pass --identity KEY (the owner key from `lifeboat keygen`), or --backup-key FILE on the backup host (default {})",
                default.display()
            )));
        }
        Ok(Keys {
            owner,
            policy: lifeboat::manifest::TrustPolicy {
                trust,
                allow_unsigned: self.allow_unsigned,
            },
        })
    }
}
