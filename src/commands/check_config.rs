//! `lifeboat check-config`: validate the settings and reach the store and Docker, naming the
//! first problem and its fix. Changes nothing.

use super::backup::{BackupArgs, build_plan};
use lifeboat::config::ConfigFile;
use std::process::ExitCode;

pub async fn run(args: BackupArgs, file: ConfigFile) -> anyhow::Result<ExitCode> {
    let (plan, store_options, retention) = build_plan(args, file)?;
    retention.policy()?;
    retention.grace()?;
    println!(
        "ok  settings: app '{}', {} recipient(s), {:?} compression",
        plan.app_name,
        plan.recipients.len(),
        plan.compression.kind
    );
    let store = lifeboat::store::open(&store_options).await?;
    lifeboat::backup::check_store_reachable(&store, &plan.app_name).await?;
    println!("ok  store {} is reachable", store.url);
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
        let version = lifeboat::backup::read_version(&docker, &app, version_from).await?;
        println!("ok  app version {version} (from {version_from})");
    }
    Ok(ExitCode::SUCCESS)
}
