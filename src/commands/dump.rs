//! `lifeboat dump`: one volume of a backup, or one path in it, to stdout — a tar, or the raw
//! file — for `| tar x` or `| psql`. Verified like a restore first; needs no Docker.
//!
//! Where it sits: The binary's edge: flags to `lifeboat::extract::dump`.

use super::TrustArgs;
use lifeboat::config::ConfigFile;
use lifeboat::store::StoreOptions;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct DumpArgs {
    /// The path in the volume: a file is written as is, a directory as a tar of its tree
    /// [default: the whole volume, as a tar]
    pub path: Option<String>,
    #[command(flatten)]
    pub store: StoreOptions,
    #[command(flatten)]
    pub app: lifeboat::config::AppNameOptions,
    /// The volume (full or compose name) [default: the backup's only volume]
    #[arg(long, value_name = "NAME")]
    pub volume: Option<String>,
    /// The backup [default: the newest]
    #[arg(long, value_name = "ID")]
    pub backup: Option<String>,
    /// Directory for the verified ciphertext (only ciphertext, in unlinked files) [default:
    /// [backup] spool_dir, else the state directory's spool/]
    #[arg(long, env = "LIFEBOAT_SPOOL_DIR", value_name = "PATH")]
    pub spool_dir: Option<std::path::PathBuf>,
    /// The owner key decrypts; it (or a backup key) vouches for the backup
    #[command(flatten)]
    pub keys: TrustArgs,
}

pub async fn run(args: DumpArgs, file: ConfigFile) -> anyhow::Result<ExitCode> {
    let store_options = file.store_for(args.store)?;
    let app = args.app.app_name(&file.app)?;
    let keys = args.keys.keys(&file)?;
    let owner = keys.owner.as_ref().ok_or_else(|| {
        lifeboat::error::usage(
            "dump decrypts the backup: pass the owner key with --identity key.txt",
        )
    })?;
    if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        return Err(lifeboat::error::usage(
            "dump writes the data to stdout: pipe it (`| tar -x`, `| psql`) or redirect it to a file",
        ));
    }
    let spool_dir = args
        .spool_dir
        .or_else(|| file.backup.spool_dir.clone())
        .unwrap_or_else(|| lifeboat::state::state_dir().join("spool"));
    let repo = lifeboat::repo::Repo::open(&store_options).await?;
    let backup = repo
        .read(&app, args.backup.as_deref(), &keys.policy)
        .await?;
    let manifest = &backup.manifest;
    let wanted: Vec<String> = args.volume.into_iter().collect();
    let records = lifeboat::extract::select(manifest, &wanted)?;
    let [record] = records[..] else {
        return Err(lifeboat::error::usage(format!(
            "backup {} holds {} volumes: say which with --volume NAME",
            manifest.backup_id,
            records.len()
        )));
    };
    let tar =
        lifeboat::extract::verified_tar(&repo, manifest, record, &owner.identities, &spool_dir)
            .await?;
    lifeboat::extract::dump(tar, args.path.as_deref(), tokio::io::stdout()).await?;
    Ok(ExitCode::SUCCESS)
}
