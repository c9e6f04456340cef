//! `lifeboat schedule`: run backups on a cron schedule, in the foreground (the sidecar's
//! command). One failed run is logged and does not stop the schedule; SIGINT/SIGTERM stops it
//! (a backup in progress is cancelled cleanly: uploads aborted, the app started again).
//!
//! Where it sits: The binary's edge: runs the backup command on a cron schedule.

use super::plans::BackupArgs;
use lifeboat::config::ConfigFile;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct ScheduleArgs {
    /// When to back up: a cron expression in UTC, 5 fields (minute hour day month weekday) or 6
    /// with seconds first, e.g. "0 3 * * *" for 03:00 every night
    #[arg(long, env = "LIFEBOAT_CRON", value_name = "EXPR")]
    pub cron: String,
    /// Start each run up to this much later, at random (10m, 1h), to spread load
    #[arg(long, env = "LIFEBOAT_JITTER", value_name = "DURATION")]
    pub jitter: Option<String>,
    /// Stop after this many runs (for tests and one-off catch-ups) [default: never]
    #[arg(long, hide = true)]
    pub runs: Option<u64>,
    #[command(flatten)]
    pub backup: BackupArgs,
}

pub fn parse_cron(expr: &str) -> anyhow::Result<croner::Cron> {
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Optional)
        .build()
        .parse(expr)
        .map_err(|e| lifeboat::error::usage(format!("--cron '{expr}' is not a cron expression ({e}); e.g. \"0 3 * * *\" for 03:00 every night")))
}

pub async fn run(args: ScheduleArgs, file: ConfigFile, verbose: bool) -> anyhow::Result<ExitCode> {
    let cron = parse_cron(&args.cron)?;
    let jitter = args
        .jitter
        .as_deref()
        .map(humantime::parse_duration)
        .transpose()
        .map_err(|e| {
            lifeboat::error::usage(format!(
                "--jitter: {e}; give a duration like 90s, 10m or 1h"
            ))
        })?
        .unwrap_or_default();
    let cancel = lifeboat::shutdown::cancel_on_signals();
    let mut done = 0u64;
    let mut failed = 0u64;
    loop {
        let now = chrono::Utc::now();
        let next = cron
            .find_next_occurrence(&now, false)
            .map_err(|e| anyhow::anyhow!("--cron '{}' has no next run: {e}", args.cron))?;
        let delay = (next - now).to_std().unwrap_or_default() + random_below(jitter);
        tracing::info!(at = %(now + chrono::Duration::from_std(delay).unwrap_or_default()), "next backup");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = cancel.cancelled() => break,
        }
        tracing::info!("scheduled backup starting");
        let started = std::time::Instant::now();
        let hidden = lifeboat::progress::Progress::hidden();
        match super::plans::notified(args.backup.clone(), file.clone(), hidden, &cancel).await {
            Ok((manifest, store)) => {
                if verbose {
                    println!(
                        "{}",
                        lifeboat::notify::summary(&manifest, &store, started.elapsed())
                    );
                }
                tracing::info!("scheduled backup done")
            }
            Err(e) => {
                failed += 1;
                tracing::error!(
                    exit_code = crate::class_of(&e) as u8,
                    "scheduled backup failed: {e:#}"
                );
            }
        }
        done += 1;
        if cancel.is_cancelled() || args.runs.is_some_and(|n| done >= n) {
            break;
        }
    }
    Ok(if failed > 0 && args.runs.is_some() {
        lifeboat::error::ExitClass::Failure.code()
    } else {
        ExitCode::SUCCESS
    })
}

/// A pseudo-random duration below `max` (jitter needs no strong randomness).
fn random_below(max: std::time::Duration) -> std::time::Duration {
    if max.is_zero() {
        return max;
    }
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos() as u128
        ^ (std::process::id() as u128) << 32;
    let mixed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    std::time::Duration::from_nanos((mixed % max.as_nanos()) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cron_expressions_with_and_without_seconds() {
        let nightly = parse_cron("0 3 * * *").unwrap();
        let from: chrono::DateTime<chrono::Utc> = "2026-11-22T04:00:00Z".parse().unwrap();
        assert_eq!(
            nightly
                .find_next_occurrence(&from, false)
                .unwrap()
                .to_rfc3339(),
            "2026-11-23T03:00:00+00:00"
        );
        let every_5s = parse_cron("*/5 * * * * *").unwrap();
        assert_eq!(
            every_5s
                .find_next_occurrence(&from, false)
                .unwrap()
                .to_rfc3339(),
            "2026-11-22T04:00:05+00:00"
        );
        let err = parse_cron("every night").unwrap_err().to_string();
        assert!(
            err.contains("every night") && err.contains("0 3 * * *"),
            "{err}"
        );
    }

    #[test]
    fn jitter_stays_below_its_bound() {
        let max = std::time::Duration::from_secs(600);
        for _ in 0..100 {
            assert!(random_below(max) < max);
        }
        assert!(random_below(std::time::Duration::ZERO).is_zero());
    }
}
