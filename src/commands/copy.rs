//! `lifeboat copy --from A --to B`: genuine backups from one store to another, copying only
//! what the target lacks; resumable.
//!
//! Where it sits: The binary's edge: two store URLs (the other store settings are shared) to
//! `lifeboat::copy`.

use super::TrustArgs;
use lifeboat::config::ConfigFile;
use lifeboat::store::StoreOptions;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct CopyArgs {
    /// The store to copy from (URL)
    #[arg(long = "from-store", visible_alias = "from", value_name = "URL")]
    pub from: String,
    /// The store to copy to (URL)
    #[arg(long = "to-store", visible_alias = "to", value_name = "URL")]
    pub to: String,
    #[command(flatten)]
    pub app: lifeboat::config::AppNameOptions,
    /// The backup to copy [default: the newest]
    #[arg(long, value_name = "ID", conflicts_with = "all")]
    pub backup: Option<String>,
    /// Every genuine backup of the app
    #[arg(long)]
    pub all: bool,
    /// Only backups these keys vouch for are copied (the data itself is copied as stored:
    /// nothing is decrypted)
    #[command(flatten)]
    pub keys: TrustArgs,
}

pub async fn run(args: CopyArgs, file: ConfigFile) -> anyhow::Result<ExitCode> {
    let app = args.app.app_name(&file.app)?;
    let keys = args.keys.keys(&file)?;
    let with_url = |url: &str| file.store_for(StoreOptions::default().with_url(url));
    let (from_options, to_options) = (with_url(&args.from)?, with_url(&args.to)?);
    let from = lifeboat::repo::Repo::open(&from_options).await?;
    let to = lifeboat::repo::Repo::open(&to_options).await?;
    let which = match (args.backup, args.all) {
        (Some(id), _) => lifeboat::copy::Which::One(id),
        (None, true) => lifeboat::copy::Which::All,
        (None, false) => lifeboat::copy::Which::Newest,
    };
    let cancel = lifeboat::shutdown::cancel_on_signals();
    let parts = to_options.part_policy()?;
    let copied =
        lifeboat::copy::copy(&from, &to, &app, which, &keys.policy, &parts, &cancel).await?;
    for c in &copied {
        if c.present {
            println!("{}  already in {}", c.backup_id, to.url());
        } else {
            println!(
                "{}  copied: {} object(s), {}",
                c.backup_id,
                c.objects,
                lifeboat::text::human_bytes(c.bytes)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
