//! Retention: which backups a keep policy keeps, with restic's semantics — a backup is kept if
//! any rule keeps it:
//! - `last N`: the N newest;
//! - `hourly/daily/weekly/monthly/yearly N`: the newest backup of each of the N newest periods
//!   that have one;
//! - `within D`: every backup made within D before the newest backup.
//!
//! The newest complete backup is always kept, whatever the policy. [`plan`] is pure (tested
//! with tables below); `lifeboat prune` applies it: manifest first (so a crash never leaves a
//! listed backup with missing objects), then the volume objects, and it removes incomplete
//! backups (objects without a manifest) older than a grace period.

use chrono::{DateTime, Datelike, Duration, Utc};
use std::collections::HashSet;

/// How many backups to keep per rule. All `None`: no policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeepPolicy {
    pub last: Option<usize>,
    pub hourly: Option<usize>,
    pub daily: Option<usize>,
    pub weekly: Option<usize>,
    pub monthly: Option<usize>,
    pub yearly: Option<usize>,
    pub within: Option<Duration>,
}

impl KeepPolicy {
    pub fn is_empty(&self) -> bool {
        *self == KeepPolicy::default()
    }
}

/// The decision about one backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub backup_id: String,
    pub time: DateTime<Utc>,
    /// Why it is kept; empty: it goes.
    pub kept_by: Vec<String>,
}

impl Decision {
    pub fn keep(&self) -> bool {
        !self.kept_by.is_empty()
    }
}

/// Maps a time to the period (hour, day, ISO week, month, year) it falls in.
type PeriodOf = fn(&DateTime<Utc>) -> i64;

/// Decides for every backup (any order in, newest first out).
pub fn plan(backups: &[(String, DateTime<Utc>)], policy: &KeepPolicy) -> Vec<Decision> {
    let mut sorted: Vec<_> = backups.to_vec();
    // Newest first by backup id, the order restore picks "newest" in.
    sorted.sort_by(|a, b| b.0.cmp(&a.0));
    let mut decisions: Vec<Decision> = sorted
        .iter()
        .map(|(id, time)| Decision {
            backup_id: id.clone(),
            time: *time,
            kept_by: vec![],
        })
        .collect();
    if let Some(newest) = decisions.first_mut() {
        newest.kept_by.push("newest".into());
    }
    if let Some(n) = policy.last {
        for d in decisions.iter_mut().take(n) {
            d.kept_by.push("last".into());
        }
    }
    let buckets: [(&str, Option<usize>, PeriodOf); 5] = [
        ("hourly", policy.hourly, |t| t.timestamp().div_euclid(3600)),
        ("daily", policy.daily, |t| i64::from(t.num_days_from_ce())),
        ("weekly", policy.weekly, |t| {
            let w = t.iso_week();
            i64::from(w.year()) * 100 + i64::from(w.week())
        }),
        ("monthly", policy.monthly, |t| {
            i64::from(t.year()) * 100 + i64::from(t.month())
        }),
        ("yearly", policy.yearly, |t| i64::from(t.year())),
    ];
    for (name, count, period) in buckets {
        let Some(count) = count else { continue };
        let mut seen = HashSet::new();
        for d in decisions.iter_mut() {
            if seen.len() >= count {
                break;
            }
            if seen.insert(period(&d.time)) {
                d.kept_by.push(name.into());
            }
        }
    }
    if let (Some(within), Some(newest)) = (policy.within, decisions.first().map(|d| d.time)) {
        for d in decisions.iter_mut().filter(|d| d.time >= newest - within) {
            d.kept_by.push("within".into());
        }
    }
    decisions
}

/// Parses `30d`, `12h`, `2w`, `6m` (30 days each), `1y` (365 days), or combinations like `1y6m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let mut total = Duration::zero();
    let mut number = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let n: i64 = number
            .parse()
            .map_err(|_| format!("'{text}' is not a duration like 30d, 12h or 1y6m"))?;
        number.clear();
        total += match c {
            'h' => Duration::hours(n),
            'd' => Duration::days(n),
            'w' => Duration::weeks(n),
            'm' => Duration::days(30 * n),
            'y' => Duration::days(365 * n),
            _ => return Err(format!("'{text}': unknown unit '{c}'; use h, d, w, m or y")),
        };
    }
    if !number.is_empty() || total.is_zero() {
        return Err(format!("'{text}' is not a duration like 30d, 12h or 1y6m"));
    }
    Ok(total)
}

/// What [`prune`] did (or, dry, would do).
#[derive(Debug, Default)]
pub struct PruneReport {
    pub decisions: Vec<Decision>,
    /// Incomplete backups (objects without a manifest) removed.
    pub incomplete: Vec<String>,
    /// Backups that are not genuine (or unsigned): never counted, never removed, reported with
    /// the reason.
    pub not_authentic: Vec<(String, String)>,
    /// Genuine backups dated beyond [`FUTURE_ALLOWANCE`] from now (a backup host's clock is
    /// wrong): kept, never counted, so they cannot make other backups go.
    pub future: Vec<(String, String)>,
    /// Chunks no remaining backup references, older than the grace period: removed (or, in
    /// a dry run, that would be).
    pub chunks_removed: usize,
    pub chunk_bytes_freed: u64,
}

/// How far in the future a backup may be dated (clock skew) and still count.
pub const FUTURE_ALLOWANCE: Duration = Duration::minutes(15);

/// Applies `policy` to the backups of `app`. Incomplete backups whose newest object is older
/// than `grace` are removed too. With `dry_run` nothing is deleted.
pub async fn prune(
    repo: &crate::repo::Repo,
    app: &str,
    policy: &KeepPolicy,
    grace: Duration,
    dry_run: bool,
    trust: &crate::manifest::TrustPolicy,
) -> anyhow::Result<PruneReport> {
    if policy.is_empty() {
        return Err(crate::error::usage(
            "no keep rule: give at least one of --keep-last, --keep-hourly, --keep-daily, --keep-weekly, --keep-monthly, --keep-yearly, --keep-within",
        ));
    }
    let dirs = repo.folders(app).await?;
    let mut report = PruneReport::default();
    let counted = counted_backups(repo, app, trust, &mut report).await?;
    report.incomplete = incomplete(&dirs, grace);
    report.decisions = plan(&counted, policy);
    let doomed: std::collections::HashSet<String> = report
        .decisions
        .iter()
        .filter(|d| !d.keep())
        .map(|d| d.backup_id.clone())
        .chain(report.incomplete.iter().cloned())
        .collect();
    if !dry_run {
        for id in &doomed {
            repo.remove(&dirs[id]).await?;
            tracing::info!(backup = %id, "removed");
        }
    }
    collect_chunks(repo, app, &doomed, grace, dry_run, &mut report).await?;
    Ok(report)
}

/// Removes the chunks that no backup left references, once they are older than `grace` (a
/// backup still running, or one that failed, wrote them recently); the manifests are read
/// after the backups went, under the same lock, so nothing can start referencing one.
async fn collect_chunks(
    repo: &crate::repo::Repo,
    app: &str,
    leaving: &std::collections::HashSet<String>,
    grace: Duration,
    dry_run: bool,
    report: &mut PruneReport,
) -> anyhow::Result<()> {
    let chunks = repo.chunks(app).await?;
    if chunks.is_empty() {
        return Ok(());
    }
    let referenced = repo.referenced_chunks(app, leaving).await?;
    let horizon = Utc::now() - grace;
    for meta in chunks {
        let unreferenced = meta
            .location
            .filename()
            .is_some_and(|id| !referenced.contains(id));
        if unreferenced && meta.last_modified < horizon {
            if !dry_run {
                repo.delete(&meta).await?;
            }
            report.chunks_removed += 1;
            report.chunk_bytes_freed += meta.size;
        }
    }
    if report.chunks_removed > 0 {
        tracing::info!(
            chunks = report.chunks_removed,
            bytes = report.chunk_bytes_freed,
            dry_run,
            "unreferenced chunks"
        );
    }
    Ok(())
}

/// The backups the keep rules count: genuine ones, dated no later than the clock-skew
/// allowance. Future-dated and unauthenticated ones go into `report`, counted never.
async fn counted_backups(
    repo: &crate::repo::Repo,
    app: &str,
    trust: &crate::manifest::TrustPolicy,
    report: &mut PruneReport,
) -> anyhow::Result<Vec<(String, DateTime<Utc>)>> {
    let listed = repo.list(Some(app), trust).await?;
    let horizon = Utc::now() + FUTURE_ALLOWANCE;
    let horizon_id = crate::format::new_backup_id(horizon);
    let mut counted = Vec::new();
    for entry in listed {
        match entry.outcome {
            Ok(found) if found.manifest.started_at > horizon || entry.backup_id > horizon_id => {
                let host = crate::text::printable(&found.manifest.host);
                tracing::warn!(
                    "backup {} of '{app}' is dated {}, in the future: the clock of host {host} is wrong; it is kept and not counted",
                    entry.backup_id,
                    found.manifest.started_at,
                );
                report.future.push((entry.backup_id, host));
            }
            Ok(found) => counted.push((entry.backup_id, found.manifest.started_at)),
            Err(why) => report.not_authentic.push((entry.backup_id, why.reason)),
        }
    }
    Ok(counted)
}

/// Backup folders without a manifest whose newest object is older than `grace`: the leftovers
/// of failed runs (a run still writing one is younger).
fn incomplete(dirs: &crate::repo::Folders, grace: Duration) -> Vec<String> {
    dirs.iter()
        .filter(|(_, metas)| {
            !metas
                .iter()
                .any(|m| m.location.filename() == Some(crate::format::MANIFEST_NAME))
                && metas
                    .iter()
                    .map(|m| m.last_modified)
                    .max()
                    .is_some_and(|t| t < Utc::now() - grace)
        })
        .map(|(id, _)| id.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn kept(backups: &[&str], policy: KeepPolicy) -> Vec<String> {
        let list: Vec<_> = backups.iter().map(|t| (t.to_string(), at(t))).collect();
        plan(&list, &policy)
            .into_iter()
            .filter(Decision::keep)
            .map(|d| d.backup_id)
            .collect()
    }

    const NIGHTLY: [&str; 10] = [
        "2026-01-01T03:00:00Z",
        "2026-01-02T03:00:00Z",
        "2026-01-03T03:00:00Z",
        "2026-01-04T03:00:00Z",
        "2026-01-05T03:00:00Z",
        "2026-01-12T03:00:00Z",
        "2026-01-12T15:00:00Z",
        "2026-02-01T03:00:00Z",
        "2026-03-01T03:00:00Z",
        "2026-03-01T04:00:00Z",
    ];

    #[test]
    fn policy_table() {
        let cases: Vec<(&str, KeepPolicy, Vec<&str>)> = vec![
            (
                "last 3",
                KeepPolicy {
                    last: Some(3),
                    ..Default::default()
                },
                vec![
                    "2026-03-01T04:00:00Z",
                    "2026-03-01T03:00:00Z",
                    "2026-02-01T03:00:00Z",
                ],
            ),
            (
                "daily 3: newest of each of the 3 newest days",
                KeepPolicy {
                    daily: Some(3),
                    ..Default::default()
                },
                vec![
                    "2026-03-01T04:00:00Z",
                    "2026-02-01T03:00:00Z",
                    "2026-01-12T15:00:00Z",
                ],
            ),
            (
                "monthly 2",
                KeepPolicy {
                    monthly: Some(2),
                    ..Default::default()
                },
                vec!["2026-03-01T04:00:00Z", "2026-02-01T03:00:00Z"],
            ),
            (
                "weekly 4",
                KeepPolicy {
                    weekly: Some(4),
                    ..Default::default()
                },
                vec![
                    "2026-03-01T04:00:00Z",
                    "2026-02-01T03:00:00Z",
                    "2026-01-12T15:00:00Z",
                    "2026-01-05T03:00:00Z",
                ],
            ),
            (
                "yearly 5: one year holds them all",
                KeepPolicy {
                    yearly: Some(5),
                    ..Default::default()
                },
                vec!["2026-03-01T04:00:00Z"],
            ),
            (
                "hourly 2",
                KeepPolicy {
                    hourly: Some(2),
                    ..Default::default()
                },
                vec!["2026-03-01T04:00:00Z", "2026-03-01T03:00:00Z"],
            ),
            (
                "within 30d of the newest backup",
                KeepPolicy {
                    within: Some(Duration::days(30)),
                    ..Default::default()
                },
                vec![
                    "2026-03-01T04:00:00Z",
                    "2026-03-01T03:00:00Z",
                    "2026-02-01T03:00:00Z",
                ],
            ),
            (
                "rules combine",
                KeepPolicy {
                    last: Some(1),
                    monthly: Some(3),
                    ..Default::default()
                },
                vec![
                    "2026-03-01T04:00:00Z",
                    "2026-02-01T03:00:00Z",
                    "2026-01-12T15:00:00Z",
                ],
            ),
            (
                "the newest is always kept",
                KeepPolicy {
                    within: Some(Duration::hours(0)),
                    ..Default::default()
                },
                vec!["2026-03-01T04:00:00Z"],
            ),
        ];
        for (name, policy, expected) in cases {
            assert_eq!(kept(&NIGHTLY, policy), expected, "{name}");
        }
    }

    #[test]
    fn reasons_are_given_and_order_does_not_matter() {
        let mut reversed = NIGHTLY;
        reversed.reverse();
        let list: Vec<_> = reversed.iter().map(|t| (t.to_string(), at(t))).collect();
        let decisions = plan(
            &list,
            &KeepPolicy {
                last: Some(1),
                daily: Some(1),
                ..Default::default()
            },
        );
        assert_eq!(decisions[0].kept_by, vec!["newest", "last", "daily"]);
        assert!(decisions[1..].iter().all(|d| !d.keep()));
        assert!(plan(&[], &KeepPolicy::default()).is_empty());
    }

    #[tokio::test]
    async fn future_dated_and_forged_backups_never_make_others_go() {
        use crate::auth::{Signer, Trust};
        use crate::manifest::TrustPolicy;
        let repo = crate::repo::Repo::over(
            std::sync::Arc::new(object_store::memory::InMemory::new()),
            "p",
            "memory://",
        );
        let signer = Signer::from_seed(&[5u8; 32]);
        let mut ids = Vec::new();
        for (id, at) in [
            ("20260101T000000.000Z", "2026-01-01T00:00:00Z"),
            ("20260102T000000.000Z", "2026-01-02T00:00:00Z"),
            ("29990101T000000.000Z", "2999-01-01T00:00:00Z"),
        ] {
            let mut m = crate::manifest::tests::sample(id);
            m.started_at = at.parse().unwrap();
            repo.commit(&m, &signer).await.unwrap();
            ids.push(id);
        }
        // and a forgery, newer than everything genuine in the past
        let mut forged = crate::manifest::tests::sample("20260103T000000.000Z");
        forged.started_at = "2026-01-03T00:00:00Z".parse().unwrap();
        repo.commit(&forged, &Signer::from_seed(&[6u8; 32]))
            .await
            .unwrap();
        let trust = TrustPolicy {
            trust: Trust::new(vec![signer.public()]),
            allow_unsigned: false,
        };
        let policy = KeepPolicy {
            last: Some(1),
            ..Default::default()
        };
        let report = prune(&repo, "cvat", &policy, Duration::hours(24), false, &trust)
            .await
            .unwrap();
        assert_eq!(report.future.len(), 1);
        assert_eq!(report.not_authentic.len(), 1);
        let kept: Vec<_> = report.decisions.iter().filter(|d| d.keep()).collect();
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].backup_id, "20260102T000000.000Z");
        let left = repo.list(Some("cvat"), &trust).await.unwrap();
        let ids_left: Vec<&str> = left.iter().map(|l| l.backup_id.as_str()).collect();
        assert_eq!(
            ids_left,
            [
                "20260102T000000.000Z",
                "20260103T000000.000Z",
                "29990101T000000.000Z"
            ]
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30d").unwrap(), Duration::days(30));
        assert_eq!(parse_duration("1y6m").unwrap(), Duration::days(365 + 180));
        assert_eq!(parse_duration("12h").unwrap(), Duration::hours(12));
        for bad in ["", "30", "d", "3x", "-1d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
