//! A small local record of the containers lifeboat has stopped, so that a run killed with
//! SIGKILL (or a host that lost power) never leaves the app down for longer than the next run.
//!
//! The record is written *before* anything is stopped (if it cannot be written — a full disk —
//! nothing is stopped) and removed once every container runs again. Every backup and restore
//! first looks for a record left by a process that no longer exists and starts those
//! containers again, saying so.

use anyhow::{Context, Result};
use bollard::Docker;
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
}

/// An open record; [`Record::clear`] removes it once the app runs again.
pub struct Record {
    path: PathBuf,
}

fn record_path(dir: &Path, app: &str) -> PathBuf {
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
    };
    let path = record_path(dir, app);
    let failed = |e: &dyn std::fmt::Display| {
        anyhow::anyhow!(
            "cannot write the local record of the containers lifeboat stops ({}: {e}); nothing was stopped. Free space there or set LIFEBOAT_STATE_DIR",
            path.display()
        )
    };
    std::fs::create_dir_all(dir).map_err(|e| failed(&e))?;
    let tmp = path.with_extension("json.tmp");
    let body = serde_json::to_vec_pretty(&record).map_err(|e| failed(&e))?;
    (|| -> std::io::Result<()> {
        use std::io::Write;
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&body)?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)
    })()
    .map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        failed(&e)
    })?;
    Ok(Record { path })
}

impl Record {
    pub fn clear(self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!("could not remove {}: {e}", self.path.display());
        }
    }
}

fn process_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Starts again the containers an interrupted earlier run left stopped. Returns the names it
/// started.
pub async fn recover(docker: &Docker, dir: &Path, app: &str) -> Result<Vec<String>> {
    let path = record_path(dir, app);
    let text = match std::fs::read(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let record: StoppedRecord = match serde_json::from_slice(&text) {
        Ok(record) => record,
        Err(e) => {
            tracing::warn!("ignoring the unreadable record {}: {e}", path.display());
            let _ = std::fs::remove_file(&path);
            return Ok(vec![]);
        }
    };
    if record.pid != std::process::id() && process_alive(record.pid) {
        // Another lifeboat is at work on this app; the lock keeps the two apart.
        return Ok(vec![]);
    }
    let mut started = Vec::new();
    let mut failed = Vec::new();
    for (id, name) in &record.containers {
        let running = docker
            .inspect_container(
                id,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
            .ok()
            .and_then(|c| c.state)
            .and_then(|s| s.running);
        if running == Some(false) {
            // One container that cannot start must not keep every later backup from running:
            // it is reported, and the operator starts it once its problem is fixed.
            match docker
                .start_container(id, None::<bollard::query_parameters::StartContainerOptions>)
                .await
            {
                Ok(()) => started.push(name.clone()),
                Err(e) => failed.push(format!("{name} ({e})")),
            }
        }
    }
    if !failed.is_empty() {
        tracing::error!(
            "containers an earlier lifeboat run left stopped still cannot start: {}; fix them and `docker start` them by hand",
            failed.join("; ")
        );
    }
    tracing::warn!(
        "an earlier lifeboat {} of {} (pid {}, since {}) ended without starting the app again; started again: {}",
        record.operation,
        record.app,
        record.pid,
        record.since,
        if started.is_empty() {
            "none needed it".to_string()
        } else {
            started.join(", ")
        }
    );
    let _ = std::fs::remove_file(&path);
    Ok(started)
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
