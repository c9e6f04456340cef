//! A small local record of the containers lifeboat has stopped, so that a run killed with
//! SIGKILL (or a host that lost power) never leaves the app down for longer than the next run,
//! and never starts it on half-written volumes.
//!
//! The record is written *before* anything is stopped (if it cannot be written — a full disk —
//! nothing is stopped) and removed once every container runs again. `downtime::recover` reads
//! a record left by a process that no longer exists and starts those containers again —
//! unless the record says a restore had begun replacing volumes and did not finish: then the
//! app stays stopped, and every run refuses to go on until the operator finishes the restore
//! (runs it again) or rolls it back ([`IncompleteRestore`]).
//!
//! [`exclusively`] is how an operation keeps others out: this host's claim on the app, then the
//! app's lock in the store, for the length of its work.
//!
//! Where it sits: Local state: files only, no Docker; above `repo` (it gives the lock this
//! host's claims), below `downtime` and the operations.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The folder of the records: `LIFEBOAT_STATE_DIR`, else `$XDG_STATE_HOME/lifeboat`, else
/// `~/.local/state/lifeboat`.
pub fn state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("LIFEBOAT_STATE_DIR") {
        return PathBuf::from(dir);
    }
    std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("/var/lib"))
        .join("lifeboat")
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StoppedRecord {
    pub app: String,
    pub operation: String,
    pub pid: u32,
    pub since: chrono::DateTime<chrono::Utc>,
    /// (id, name) in start order.
    pub containers: Vec<(String, String)>,
    /// A restore in progress, once it begins to change volumes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<RestoreState>,
}

/// How far a restore got: what a crash or failure leaves for the next run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RestoreState {
    pub backup_id: String,
    /// Volumes are being replaced (or were, by a run that did not finish): they may be
    /// half-written, and the app must not start until the restore is finished or rolled back.
    pub replacing: bool,
    pub targets: Vec<RestoreTarget>,
    /// How to name the app on the command line to finish or roll back (`--project P --name N`).
    #[serde(default)]
    pub app_args: String,
    /// Restart policies lifeboat set to `no` while replacing, to put back afterwards: (container
    /// id, name, the policy as Docker's JSON).
    #[serde(default)]
    pub restart_policies: Vec<(String, String, serde_json::Value)>,
}

/// One volume (or bind-mounted directory) a restore writes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RestoreTarget {
    /// The volume name, or the host path of a bind mount.
    pub destination: String,
    /// `true` for a host directory (bind mount), `false` for a volume.
    pub host_path: bool,
    /// The restore created the volume (it did not exist before).
    pub created: bool,
    /// It held nothing before the restore.
    #[serde(default)]
    pub was_empty: bool,
    /// The volume that holds a copy of what was there before.
    pub safety_copy: Option<String>,
}

/// This process's claim on an app on this host: an exclusive `flock` on `<dir>/<app>.run`,
/// held for the whole run and released by the kernel when the process ends, however it ends.
/// Two runs of one app on one host never overlap, whatever store each uses, and whether the
/// writer of a record is alive never depends on a pid (which another PID namespace or a reboot
/// reuses).
pub struct Claim {
    _file: std::fs::File,
    app: String,
}

/// Another lifeboat run of the app is active on this host.
#[derive(Debug, thiserror::Error)]
#[error(
    "another lifeboat run of '{app}' is active on this host (it holds {path}); wait for it to finish"
)]
pub struct ClaimHeld {
    pub app: String,
    pub path: String,
}

fn claim_path(dir: &Path, app: &str) -> PathBuf {
    dir.join(format!("{app}.run"))
}

/// The apps this process holds the claim of.
fn claimed_here() -> std::sync::MutexGuard<'static, std::collections::HashSet<String>> {
    static CLAIMED: std::sync::OnceLock<std::sync::Mutex<std::collections::HashSet<String>>> =
        std::sync::OnceLock::new();
    CLAIMED
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

impl Drop for Claim {
    fn drop(&mut self) {
        claimed_here().remove(&self.app);
    }
}

/// The id of this state directory (made once, at random): what a store lock records, so that a
/// run finding a lock of its own state directory knows whether its holder is alive.
pub fn state_id(dir: &Path) -> Option<String> {
    let path = dir.join("id");
    if let Ok(id) = std::fs::read_to_string(&path) {
        return Some(id.trim().to_string());
    }
    let mut random = [0u8; 12];
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut random))
        .ok()?;
    let id = hex::encode(random);
    std::fs::create_dir_all(dir).ok()?;
    let tmp = dir.join(format!("id.{}", std::process::id()));
    std::fs::write(&tmp, &id).ok()?;
    // Two runs making it at once: the first rename wins, and both read the winner.
    std::fs::hard_link(&tmp, &path).ok();
    let _ = std::fs::remove_file(&tmp);
    std::fs::read_to_string(&path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// What the store lock needs to know of this host's runs of `app`.
pub fn local_claims(app: &str) -> Option<crate::lock::LocalClaims> {
    Some(crate::lock::LocalClaims {
        state_id: state_id(&state_dir())?,
        holds_claim: claimed_here().contains(app),
    })
}

/// Runs `work` with this host's claim on `app` and the app's lock in `repo` held, then gives
/// both back. The work gets a token cancelled by `cancel` or when the lock is lost.
pub async fn exclusively<T, F, Fut>(
    repo: &crate::repo::Repo,
    app: &str,
    operation: &str,
    cancel: &tokio_util::sync::CancellationToken,
    work: F,
) -> Result<T>
where
    F: FnOnce(tokio_util::sync::CancellationToken) -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let _claim = claim(&state_dir(), app)?;
    let local = local_claims(app);
    repo.with_lock(app, operation, local.as_ref(), cancel, work)
        .await
}

/// Takes this host's claim on `app`, or fails naming the file another run holds.
pub fn claim(dir: &Path, app: &str) -> Result<Claim> {
    let path = claim_path(dir, app);
    let file = (|| {
        std::fs::create_dir_all(dir)?;
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
    })()
    .map_err(|e| {
        anyhow::anyhow!(
            "cannot open {} to keep two lifeboat runs of '{app}' apart ({e}); nothing was stopped. Free space there or set LIFEBOAT_STATE_DIR",
            path.display()
        )
    })?;
    if try_lock(&file) {
        claimed_here().insert(app.to_string());
        Ok(Claim {
            _file: file,
            app: app.to_string(),
        })
    } else {
        Err(ClaimHeld {
            app: app.to_string(),
            path: path.display().to_string(),
        }
        .into())
    }
}

/// Whether a live run holds the claim on `app` (another process: this one's own claim on it
/// is held by this process, so check before claiming).
fn claimed_by_a_live_run(dir: &Path, app: &str) -> bool {
    match std::fs::File::open(claim_path(dir, app)) {
        Ok(file) => !try_lock(&file),
        Err(_) => false,
    }
}

fn try_lock(file: &std::fs::File) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor this function's caller owns; no memory is involved.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// An open record; [`Record::clear`] removes it once the app runs again.
pub struct Record {
    path: PathBuf,
    record: StoppedRecord,
}

pub fn record_path(dir: &Path, app: &str) -> PathBuf {
    dir.join(format!("{app}.stopped.json"))
}

/// Writes the record of the containers about to be stopped, atomically.
pub fn write(
    dir: &Path,
    app: &str,
    operation: &str,
    containers: Vec<(String, String)>,
) -> Result<Record> {
    let record = StoppedRecord {
        app: app.to_string(),
        operation: operation.to_string(),
        pid: std::process::id(),
        since: chrono::Utc::now(),
        containers,
        restore: None,
    };
    let path = record_path(dir, app);
    if let Ok(Some(earlier)) = read(dir, app)
        && earlier.restore.as_ref().is_some_and(|r| r.replacing)
    {
        return Err(IncompleteRestore {
            app: app.to_string(),
            record: earlier,
        }
        .into());
    }
    save(&path, &record)?;
    Ok(Record { path, record })
}

/// Opens the record a run left behind, to go on from it (finishing or rolling back a restore).
pub fn resume(dir: &Path, app: &str) -> Result<Option<Record>> {
    let path = record_path(dir, app);
    Ok(read(dir, app)?.map(|mut record| {
        record.pid = std::process::id();
        Record { path, record }
    }))
}

/// The record of `app`, if there is one.
pub fn read(dir: &Path, app: &str) -> Result<Option<StoppedRecord>> {
    let path = record_path(dir, app);
    let text = match std::fs::read(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    serde_json::from_slice(&text)
        .map(Some)
        .with_context(|| format!("{} is damaged; look at it, then remove it", path.display()))
}

/// Writes a record atomically (and durably: it is what keeps a half-restored app stopped).
fn save(path: &Path, record: &StoppedRecord) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let failed = |e: &dyn std::fmt::Display| {
        anyhow::anyhow!(
            "cannot write the local record of the containers lifeboat stops ({}: {e}); nothing was stopped. Free space there or set LIFEBOAT_STATE_DIR",
            path.display()
        )
    };
    std::fs::create_dir_all(dir).map_err(|e| failed(&e))?;
    let tmp = path.with_extension("json.tmp");
    let body = serde_json::to_vec_pretty(record).map_err(|e| failed(&e))?;
    (|| -> std::io::Result<()> {
        use std::io::Write;
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&body)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })()
    .map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        failed(&e)
    })?;
    Ok(())
}

impl Record {
    pub fn get(&self) -> &StoppedRecord {
        &self.record
    }

    /// Changes the record and writes it before returning.
    pub fn update(&mut self, change: impl FnOnce(&mut StoppedRecord)) -> Result<()> {
        change(&mut self.record);
        save(&self.path, &self.record)
    }

    /// Leaves the record for the next run (the app stays stopped).
    pub fn keep(self) {}

    pub fn clear(self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!("could not remove {}: {e}", self.path.display());
        }
    }
}

/// A restore began replacing volumes and did not finish: the app stays stopped, and lifeboat
/// refuses to run over it.
#[derive(Debug, thiserror::Error)]
pub struct IncompleteRestore {
    pub app: String,
    pub record: StoppedRecord,
}

impl std::fmt::Display for IncompleteRestore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let restore = self.record.restore.as_ref();
        let backup = restore.map_or("?", |r| r.backup_id.as_str());
        let targets: Vec<&str> = restore
            .map(|r| r.targets.iter().map(|t| t.destination.as_str()).collect())
            .unwrap_or_default();
        let stopped: Vec<&str> = self
            .record
            .containers
            .iter()
            .map(|(_, n)| n.as_str())
            .collect();
        let app_args = restore
            .map(|r| r.app_args.clone())
            .filter(|a| !a.is_empty())
            .unwrap_or_else(|| format!("--project {}", self.app));
        write!(
            f,
            "a restore of backup {backup} of '{}' into {} began replacing data on {} and did not finish: that data may be half-written, so the app's containers ({}) stay stopped and lifeboat will not run over it. Finish it by running the restore again: `lifeboat restore {app_args} --backup {backup} -i KEY`; or put back what was there before: `lifeboat restore {app_args} --rollback`",
            self.app,
            targets.join(", "),
            self.record.since.format("%Y-%m-%d %H:%M:%S UTC"),
            if stopped.is_empty() {
                "none was running".to_string()
            } else {
                stopped.join(", ")
            },
        )
    }
}

/// Fails when a record of another app name covers one of these containers or volumes and
/// either its run is alive (a restore under `--name` of the same project, say) or it is an
/// unfinished restore: a run of a project restored under another name must see it.
pub fn refuse_if_incomplete_touching(
    dir: &Path,
    own_app: &str,
    container_ids: &[String],
    volumes: &[String],
) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(app) = name.strip_suffix(".stopped.json") else {
            continue;
        };
        if app == own_app {
            continue;
        }
        let Ok(Some(record)) = read(dir, app) else {
            continue;
        };
        let touches = record
            .containers
            .iter()
            .any(|(id, _)| container_ids.contains(id))
            || record
                .restore
                .as_ref()
                .is_some_and(|r| r.targets.iter().any(|t| volumes.contains(&t.destination)));
        if !touches {
            continue;
        }
        if claimed_by_a_live_run(dir, app) {
            return Err(ClaimHeld {
                app: app.to_string(),
                path: claim_path(dir, app).display().to_string(),
            }
            .into());
        }
        if record.restore.as_ref().is_some_and(|r| r.replacing) {
            return Err(IncompleteRestore {
                app: app.to_string(),
                record,
            }
            .into());
        }
    }
    Ok(())
}

/// Fails when a restore of `app` did not finish (see [`IncompleteRestore`]). The caller holds
/// the app's [`Claim`], so the record's writer is gone.
pub fn refuse_if_incomplete(dir: &Path, app: &str) -> Result<()> {
    match read(dir, app)? {
        Some(record) if record.restore.as_ref().is_some_and(|r| r.replacing) => {
            Err(IncompleteRestore {
                app: app.to_string(),
                record,
            }
            .into())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_written_atomically_and_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let record = write(
            dir.path(),
            "cvat",
            "backup",
            vec![("id1".into(), "cvat-db-1".into())],
        )
        .unwrap();
        let path = record_path(dir.path(), "cvat");
        let read: StoppedRecord = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(read.containers[0].1, "cvat-db-1");
        assert_eq!(read.pid, std::process::id());
        record.clear();
        assert!(!path.exists());
    }

    #[test]
    fn one_claim_per_app_on_a_host() {
        let dir = tempfile::tempdir().unwrap();
        let first = claim(dir.path(), "cvat").unwrap();
        assert!(claimed_by_a_live_run(dir.path(), "cvat"));
        let err = claim(dir.path(), "cvat").err().unwrap();
        assert_eq!(
            err.downcast_ref::<ClaimHeld>().map(|_| "held"),
            Some("held")
        );
        assert!(
            err.to_string().contains("another lifeboat run of 'cvat'"),
            "{err}"
        );
        claim(dir.path(), "other").unwrap();
        drop(first);
        assert!(!claimed_by_a_live_run(dir.path(), "cvat"));
        claim(dir.path(), "cvat").unwrap();
    }

    #[test]
    fn a_record_of_an_unfinished_restore_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let mut record = write(dir.path(), "cvat", "restore", vec![]).unwrap();
        record
            .update(|r| {
                r.restore = Some(RestoreState {
                    backup_id: "1".into(),
                    replacing: true,
                    targets: vec![],
                    app_args: "--project cvat".into(),
                    restart_policies: vec![],
                })
            })
            .unwrap();
        record.keep();
        let err = write(dir.path(), "cvat", "backup", vec![]).err().unwrap();
        assert!(err.to_string().contains("did not finish"), "{err}");
        assert!(refuse_if_incomplete(dir.path(), "cvat").is_err());
    }

    #[test]
    fn an_unwritable_folder_refuses_to_stop_anything() {
        let err = write(
            Path::new("/proc/lifeboat-cannot-write-here"),
            "cvat",
            "backup",
            vec![],
        )
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("nothing was stopped"), "{err}");
    }
}
