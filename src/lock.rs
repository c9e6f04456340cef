//! One run per app and store at a time: a lock object `<prefix>/<app>/lock.json` created with a
//! conditional put (`If-None-Match: *` on S3), holding who took it and until when.
//!
//! The holder renews the expiry every minute while it works; a lock whose holder died expires
//! after ten minutes and is then taken over, and `lifeboat unlock` removes one by hand. Right
//! after taking the lock, a second conditional create of the same key must fail: a store that
//! ignores conditional writes (some S3-compatibles do) is reported, because there the lock
//! cannot keep two runs apart.

use crate::store::Store;
use anyhow::{Result, anyhow};
use chrono::{DateTime, Duration, Utc};
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutMode, PutOptions};
use serde::{Deserialize, Serialize};
use sha2::Digest;

const LOCK_NAME: &str = "lock.json";
const LEASE: Duration = Duration::minutes(10);
const RENEW_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LockInfo {
    pub holder: String,
    pub operation: String,
    pub host: String,
    pub pid: u32,
    pub acquired_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// Another run holds the lock.
#[derive(Debug, thiserror::Error)]
#[error(
    "another lifeboat {} of '{app}' holds the lock (host {}, pid {}, since {}, expires {}); wait for it to finish, or if that run is dead, remove the lock with `lifeboat unlock --project {app}`",
    .info.operation, .info.host, .info.pid, .info.acquired_at, .info.expires_at
)]
pub struct LockHeld {
    pub app: String,
    pub info: LockInfo,
}

/// A held lock; [`Lock::release`] gives it back.
pub struct Lock {
    store: Store,
    key: Path,
    holder: String,
    renewer: tokio::task::JoinHandle<()>,
}

pub fn lock_key(store: &Store, app: &str) -> Path {
    store.layout.app_dir(app).join(LOCK_NAME)
}

fn new_holder() -> String {
    let seed = format!(
        "{}:{}:{:?}",
        gethostname::gethostname().to_string_lossy(),
        std::process::id(),
        std::time::SystemTime::now()
    );
    hex::encode(&sha2::Sha256::digest(seed.as_bytes())[..8])
}

fn body(info: &LockInfo) -> object_store::PutPayload {
    serde_json::to_vec_pretty(info)
        .expect("a lock serializes")
        .into()
}

/// Whether the holder is a process of this host that no longer exists (killed, power loss):
/// its lock is stale at once, not only when it expires.
fn holder_died_here(held: &LockInfo) -> bool {
    held.host == gethostname::gethostname().to_string_lossy()
        && held.pid != std::process::id()
        && !std::path::Path::new(&format!("/proc/{}", held.pid)).exists()
}

/// Reads the current lock, if any.
pub async fn read(store: &Store, app: &str) -> Result<Option<LockInfo>> {
    match store.objects.get(&lock_key(store, app)).await {
        Ok(got) => Ok(serde_json::from_slice(&got.bytes().await?).ok()),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(anyhow!("cannot read the lock of '{app}': {e}")),
    }
}

/// Takes the lock of `app` for `operation`.
pub async fn acquire(store: &Store, app: &str, operation: &str) -> Result<Lock> {
    let key = lock_key(store, app);
    let now = Utc::now();
    let info = LockInfo {
        holder: new_holder(),
        operation: operation.to_string(),
        host: gethostname::gethostname().to_string_lossy().into_owned(),
        pid: std::process::id(),
        acquired_at: now,
        expires_at: now + LEASE,
    };
    let create = || PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    };
    for attempt in 0..2 {
        match store.objects.put_opts(&key, body(&info), create()).await {
            Ok(_) => break,
            Err(object_store::Error::AlreadyExists { .. }) if attempt == 0 => {
                let current = read(store, app).await?;
                match current {
                    Some(held) if held.expires_at > Utc::now() && !holder_died_here(&held) => {
                        return Err(LockHeld {
                            app: app.to_string(),
                            info: held,
                        }
                        .into());
                    }
                    held => {
                        tracing::warn!(
                            "taking over the stale lock of '{app}' ({})",
                            held.map_or_else(
                                || "unreadable".to_string(),
                                |h| format!(
                                    "{} by {} pid {}, valid until {}",
                                    h.operation, h.host, h.pid, h.expires_at
                                )
                            )
                        );
                        store.objects.delete(&key).await?;
                    }
                }
            }
            Err(object_store::Error::AlreadyExists { .. }) => {
                let held = read(store, app).await?.ok_or_else(|| {
                    anyhow!(
                        "the lock of '{app}' changed hands while lifeboat took it over; try again"
                    )
                })?;
                return Err(LockHeld {
                    app: app.to_string(),
                    info: held,
                }
                .into());
            }
            Err(object_store::Error::NotImplemented { .. }) => {
                tracing::warn!(
                    "the store cannot create objects conditionally; running without a lock for '{app}'"
                );
                return Ok(Lock {
                    store: store.clone(),
                    key,
                    holder: info.holder,
                    renewer: tokio::spawn(async {}),
                });
            }
            Err(e) => return Err(anyhow!("cannot take the lock {key}: {e}")),
        }
    }
    match store.objects.put_opts(&key, body(&info), create()).await {
        Err(object_store::Error::AlreadyExists { .. }) => {}
        _ => tracing::warn!(
            "the store {} ignores conditional writes (If-None-Match): the lock of '{app}' cannot keep two lifeboat runs apart there; schedule runs so they do not overlap",
            store.url
        ),
    }
    let renewer = {
        let (store, key, mut info) = (store.clone(), key.clone(), info.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(RENEW_EVERY).await;
                info.expires_at = Utc::now() + LEASE;
                if let Err(e) = store.objects.put(&key, body(&info)).await {
                    tracing::warn!("could not renew the lock {key}: {e}");
                }
            }
        })
    };
    Ok(Lock {
        store: store.clone(),
        key,
        holder: info.holder,
        renewer,
    })
}

impl Lock {
    /// Gives the lock back (only if it is still ours).
    pub async fn release(self) {
        self.renewer.abort();
        let ours = match self.store.objects.get(&self.key).await {
            Ok(got) => got
                .bytes()
                .await
                .ok()
                .and_then(|b| serde_json::from_slice::<LockInfo>(&b).ok())
                .is_some_and(|info| info.holder == self.holder),
            Err(_) => false,
        };
        if ours && let Err(e) = self.store.objects.delete(&self.key).await {
            tracing::warn!(
                "could not release the lock {}: {e}; it expires by itself",
                self.key
            );
        }
    }
}

/// Removes the lock of `app`, returning what it held.
pub async fn unlock(store: &Store, app: &str) -> Result<Option<LockInfo>> {
    let held = read(store, app).await?;
    match store.objects.delete(&lock_key(store, app)).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(held),
        Err(e) => Err(anyhow!("cannot remove the lock of '{app}': {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Layout;
    use object_store::memory::InMemory;
    use std::sync::Arc;

    fn store() -> Store {
        Store {
            objects: Arc::new(InMemory::new()),
            layout: Layout {
                prefix: Path::from("p"),
            },
            url: "memory://".into(),
            upload_attributes: Default::default(),
        }
    }

    #[tokio::test]
    async fn one_holder_at_a_time_and_release_frees_it() {
        let store = store();
        let lock = acquire(&store, "cvat", "backup").await.unwrap();
        let err = acquire(&store, "cvat", "restore").await.err().unwrap();
        let held = err.downcast_ref::<LockHeld>().expect("LockHeld");
        assert_eq!(held.info.operation, "backup");
        assert!(err.to_string().contains("lifeboat unlock --project cvat"));
        acquire(&store, "other-app", "backup")
            .await
            .unwrap()
            .release()
            .await;
        lock.release().await;
        acquire(&store, "cvat", "restore")
            .await
            .unwrap()
            .release()
            .await;
        assert!(read(&store, "cvat").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_lock_of_a_dead_process_on_this_host_is_taken_over_at_once() {
        let store = store();
        let now = Utc::now();
        let dead = LockInfo {
            holder: "dead".into(),
            operation: "backup".into(),
            host: gethostname::gethostname().to_string_lossy().into_owned(),
            pid: 4_194_303,
            acquired_at: now,
            expires_at: now + Duration::minutes(10),
        };
        store
            .objects
            .put(&lock_key(&store, "cvat"), body(&dead))
            .await
            .unwrap();
        acquire(&store, "cvat", "backup")
            .await
            .unwrap()
            .release()
            .await;
        let elsewhere = LockInfo {
            host: "another-host".into(),
            ..dead
        };
        store
            .objects
            .put(&lock_key(&store, "cvat"), body(&elsewhere))
            .await
            .unwrap();
        assert!(
            acquire(&store, "cvat", "backup").await.is_err(),
            "another host's live lock holds"
        );
    }

    #[tokio::test]
    async fn an_expired_lock_is_taken_over_and_unlock_removes_one() {
        let store = store();
        let stale = LockInfo {
            holder: "dead".into(),
            operation: "backup".into(),
            host: "h".into(),
            pid: 1,
            acquired_at: Utc::now() - Duration::hours(2),
            expires_at: Utc::now() - Duration::hours(1),
        };
        store
            .objects
            .put(&lock_key(&store, "cvat"), body(&stale))
            .await
            .unwrap();
        let lock = acquire(&store, "cvat", "backup").await.unwrap();
        assert_eq!(
            read(&store, "cvat").await.unwrap().unwrap().operation,
            "backup"
        );
        assert_ne!(read(&store, "cvat").await.unwrap().unwrap().holder, "dead");
        let removed = unlock(&store, "cvat").await.unwrap().unwrap();
        assert_eq!(removed.pid, std::process::id());
        lock.release().await; // no longer ours: nothing to do
        assert!(unlock(&store, "cvat").await.unwrap().is_none());
    }
}
