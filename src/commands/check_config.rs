//! `lifeboat check-config`: validate the settings and reach the store and Docker, naming the
//! first problem and its fix; say which keys are loaded and whether the store's backups are
//! signed by them. Changes nothing.
//!
//! Where it sits: The binary's edge: asks the library's adapters (store, Docker, keys) and prints
//! what they answer.

use super::plans::{BackupArgs, build_plan};
use lifeboat::config::ConfigFile;
use lifeboat::text::Printable;
use std::process::ExitCode;

pub async fn run(args: BackupArgs, file: ConfigFile) -> anyhow::Result<ExitCode> {
    let key_path = args
        .backup
        .backup_key
        .clone()
        .or_else(|| file.backup.backup_key.clone())
        .unwrap_or_else(lifeboat::keys::default_backup_key_path);
    let (plan, stores, retention) = build_plan(args, file)?;
    retention.policy()?;
    retention.grace()?;
    println!(
        "ok  settings: app '{}', {:?} compression",
        plan.app_name, plan.compression.kind
    );
    let signing = plan.signer.public();
    println!(
        "ok  backup key {}: encrypts to {} (the owner key){}, signs as {}",
        key_path.display(),
        plan.recipients[0].text,
        if plan.recipients.len() > 1 {
            format!(" and {} extra recipient(s)", plan.recipients.len() - 1)
        } else {
            String::new()
        },
        lifeboat::auth::fingerprint(&signing)
    );
    let policy = lifeboat::manifest::TrustPolicy {
        trust: lifeboat::auth::Trust::new(vec![signing]),
        allow_unsigned: false,
    };
    for store_options in &stores {
        check_store(store_options, &plan, &policy).await?;
    }
    let docker = lifeboat::docker::connect().await?;
    println!("ok  Docker engine answers");
    let app = lifeboat::docker::App::discover(&docker, &plan.selector).await?;
    let sources = lifeboat::backup::plan_sources(&docker, &app, &plan.selection).await?;
    let running = app.containers.iter().filter(|c| c.running).count();
    println!(
        "ok  app: {} containers ({running} running)",
        app.containers.len()
    );
    for source in &sources {
        println!(
            "ok  volume {} (mounted by {} at {})",
            source.name, source.service, source.container_path
        );
    }
    if let Some(version_from) = &plan.version_from {
        let version = lifeboat::docker::read_version(&docker, &app, version_from).await?;
        println!("ok  app version {version} (from {version_from})");
    }
    Ok(ExitCode::SUCCESS)
}

/// One store: reachable, and whether its newest backup verifies with this key.
async fn check_store(
    store_options: &lifeboat::store::StoreOptions,
    plan: &lifeboat::backup::BackupPlan,
    policy: &lifeboat::manifest::TrustPolicy,
) -> anyhow::Result<()> {
    let repo = lifeboat::repo::Repo::open(store_options).await?;
    lifeboat::backup::check_store_reachable(&repo, &plan.app_name).await?;
    println!("ok  store {} is reachable", repo.url());
    let listed = repo.list(Some(&plan.app_name), policy).await?;
    let signed = listed.iter().filter(|l| l.outcome.is_ok()).count();
    match listed.last() {
        None => println!("ok  no backup of '{}' in the store yet", plan.app_name),
        Some(newest) => match &newest.outcome {
            Ok(_) => println!(
                "ok  {signed} of {} backup(s) of '{}' are signed by this key, the newest ({}) among them",
                listed.len(),
                plan.app_name,
                newest.backup_id
            ),
            Err(why) => println!(
                "!!  the newest backup of '{}' ({}) does not verify with this key: {}. Is this the backup key of the owner key that made the others? ({signed} of {} verify)",
                plan.app_name,
                Printable(&newest.backup_id),
                why.reason,
                listed.len()
            ),
        },
    }
    Ok(())
}
