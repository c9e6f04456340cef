//! One run per app and store at a time, on every store with read-after-write consistency —
//! also S3-compatibles that ignore conditional writes.
//!
//! The protocol is restic's: each run writes a lock object of its own,
//! `<prefix>/<app>/locks/<millis>-<run id>.json`, then lists the locks. It goes ahead only if
//! no other live lock is there; otherwise it removes its own and backs off. Two runs that see
//! each other both back off, and a deterministic order decides which of them tries again: the
//! one whose key sorts first (the earlier, by its own clock) retries after a moment, the
//! others give up with [`LockHeld`]. Safety needs no conditional write: a run proceeds only
//! if its list, made after its own write was stored, shows no other lock, so of two runs at
//! most one can have seen the other missing.
//!
//! Liveness is a lease, never a pid: a lock expires [`LEASE`] after its last renewal (renewed
//! every [`RENEW_EVERY`]); an expired one (plus a clock-skew allowance) is removed by whoever
//! finds it. A holder never renews a lease that already ran out (it was frozen or cut off and
//! someone may have taken over): it stops, and so does one whose lock was removed, through
//! [`Lock::lost`] — the operation then aborts like on a signal and exits 5 ([`LockLost`]).
//! Where the store supports conditional updates, renewal is `If-Match` on the lock's ETag,
//! so a removal in between is seen. A lock written by this host's state directory whose
//! local claim is free (its process is gone: `state::claim`) is stale at once.
//!
//! Where it sits: An adapter over `store`: knows nothing of Docker or local state (the caller
//! passes `state::local_claims`).

use crate::store::Store;
use anyhow::{Result, anyhow};
use chrono::{DateTime, Duration, Utc};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutMode, PutOptions, UpdateVersion};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// How long a lock stays live without renewal.
pub const LEASE: Duration = Duration::minutes(10);
/// How often the holder renews it.
pub const RENEW_EVERY: std::time::Duration = std::time::Duration::from_secs(60);
/// Clocks of two hosts may differ this much before one takes the other's lock for expired.
const SKEW: Duration = Duration::minutes(2);
/// Backing-off attempts of the run that sorts first, before it gives up.
const ATTEMPTS: u32 = 8;
const LOCKS_DIR: &str = "locks";
/// Where lifeboat before 0.2 kept its single lock object.
const LEGACY_LOCK: &str = "lock.json";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LockInfo {
    /// Random id of the run that holds it.
    #[serde(alias = "holder")]
    pub run_id: String,
    pub operation: String,
    pub host: String,
    /// For people only: liveness is the lease.
    pub pid: u32,
    pub acquired_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// The id of the state directory of the run (see `state::state_id`).
    #[serde(default)]
    pub state_id: Option<String>,
}

impl LockInfo {
    fn describe(&self) -> String {
        format!(
            "{} on {} (pid {}, run {}), since {}, lease until {}",
            self.operation,
            crate::text::printable(&self.host),
            self.pid,
            crate::text::printable(&self.run_id),
            self.acquired_at.format("%Y-%m-%d %H:%M:%S UTC"),
            self.expires_at.format("%Y-%m-%d %H:%M:%S UTC")
        )
    }
}

/// Another run holds the lock.
#[derive(Debug, thiserror::Error)]
#[error(
    "another lifeboat run of '{app}' holds the lock in this store: a {}; wait for it to finish, or if that run is dead, remove the lock with `lifeboat unlock --name {app}`",
    .info.describe()
)]
pub struct LockHeld {
    pub app: String,
    pub info: LockInfo,
}

/// This run lost its lock while it worked: its lease ran out, or another run removed it.
#[derive(Debug, thiserror::Error)]
#[error(
    "lifeboat lost the lock of '{app}' while it worked ({why}); it stopped, the app was started again and unfinished uploads were aborted{}",
    .other.as_ref().map_or(String::new(), |o| format!("; the lock is now held by a {}", o.describe()))
)]
pub struct LockLost {
    pub app: String,
    pub why: String,
    pub other: Option<LockInfo>,
}

/// Timings, shortened in tests.
#[derive(Debug, Clone, Copy)]
pub struct LockTimes {
    pub lease: Duration,
    pub renew_every: std::time::Duration,
    /// How long the run that sorts first waits before it tries again.
    pub back_off: std::time::Duration,
}

impl LockTimes {
    /// The defaults, or a renewal every `LIFEBOAT_LOCK_RENEW_SECS` seconds with a lease ten
    /// times as long (for tests that must see a lost lock within seconds).
    pub fn from_env() -> Self {
        match std::env::var("LIFEBOAT_LOCK_RENEW_SECS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|s| *s > 0)
        {
            Some(secs) => Self {
                lease: Duration::seconds(10 * secs as i64),
                renew_every: std::time::Duration::from_secs(secs),
                ..Self::default()
            },
            None => Self::default(),
        }
    }
}

impl Default for LockTimes {
    fn default() -> Self {
        Self {
            lease: LEASE,
            renew_every: RENEW_EVERY,
            back_off: std::time::Duration::from_millis(700),
        }
    }
}

/// A held lock; [`Lock::release`] gives it back.
pub struct Lock {
    store: Store,
    key: Path,
    app: String,
    lost: CancellationToken,
    why_lost: Arc<std::sync::Mutex<Option<LockLost>>>,
    renewer: tokio::task::JoinHandle<()>,
}

fn locks_dir(store: &Store, app: &str) -> Path {
    store.layout.app_dir(app).join(LOCKS_DIR)
}

fn new_run_id() -> String {
    use rand_like::random_hex;
    random_hex(8)
}

/// Random hex from the OS (a run id).
mod rand_like {
    pub fn random_hex(bytes: usize) -> String {
        let mut buf = vec![0u8; bytes];
        if getrandom_fill(&mut buf).is_err() {
            // Time and pid: unique enough for a run id when the OS has no random source.
            let seed = format!("{:?}{}", std::time::SystemTime::now(), std::process::id());
            use sha2::Digest;
            buf.copy_from_slice(&sha2::Sha256::digest(seed.as_bytes())[..bytes]);
        }
        hex::encode(buf)
    }

    fn getrandom_fill(buf: &mut [u8]) -> std::io::Result<()> {
        use std::io::Read;
        std::fs::File::open("/dev/urandom")?.read_exact(buf)
    }
}

fn body(info: &LockInfo) -> object_store::PutPayload {
    serde_json::to_vec_pretty(info)
        .expect("a lock serializes")
        .into()
}

/// A lock found in the store.
struct Found {
    key: Path,
    info: Option<LockInfo>,
}

/// Every lock of `app` (and the legacy single lock), with what each says.
async fn list_locks(store: &Store, app: &str) -> Result<Vec<Found>> {
    let dir = locks_dir(store, app);
    let mut keys: Vec<Path> = store
        .objects
        .list(Some(&dir))
        .map_ok(|m| m.location)
        .try_collect()
        .await
        .map_err(|e| anyhow!("cannot list the locks of '{app}' ({dir}): {e}"))?;
    keys.push(store.layout.app_dir(app).join(LEGACY_LOCK));
    keys.sort_by(|a, b| a.as_ref().cmp(b.as_ref()));
    let mut found = Vec::with_capacity(keys.len());
    for key in keys {
        match store.objects.get(&key).await {
            Ok(got) => {
                let info = got
                    .bytes()
                    .await
                    .ok()
                    .and_then(|b| serde_json::from_slice::<LockInfo>(&b).ok());
                found.push(Found { key, info });
            }
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(anyhow!("cannot read the lock {key}: {e}")),
        }
    }
    Ok(found)
}

/// Whether a lock no longer keeps anyone out: its lease ran out (with the skew allowance), it
/// is unreadable and old, or it was written from this host's state directory by a run whose
/// local claim is free.
fn is_stale(found: &Found, local: Option<&LocalClaims>) -> bool {
    let Some(info) = &found.info else {
        return true;
    };
    if info.expires_at + SKEW < Utc::now() {
        return true;
    }
    match (local, &info.state_id) {
        (Some(local), Some(id)) => id == &local.state_id && local.dead(info),
        _ => false,
    }
}

/// What this host knows of its own runs: its state directory's id, and whether a run of the
/// app is still alive (its claim held).
pub struct LocalClaims {
    pub state_id: String,
    /// Whether this process holds the app's claim (then no other local run of it is alive).
    pub holds_claim: bool,
}

impl LocalClaims {
    fn dead(&self, info: &LockInfo) -> bool {
        self.holds_claim && info.pid != std::process::id()
    }
}

/// Takes the lock of `app` for `operation`. `local` is what this host's state directory knows
/// of its own runs (`state::local_claims`): a lock one of them left behind is taken over at once.
pub async fn acquire(
    store: &Store,
    app: &str,
    operation: &str,
    local: Option<&LocalClaims>,
) -> Result<Lock> {
    acquire_with(store, app, operation, LockTimes::from_env(), local).await
}

/// [`acquire`] with other timings, and what this host knows of its own runs.
pub async fn acquire_with(
    store: &Store,
    app: &str,
    operation: &str,
    times: LockTimes,
    local: Option<&LocalClaims>,
) -> Result<Lock> {
    let run_id = new_run_id();
    for attempt in 0..ATTEMPTS {
        let now = Utc::now();
        let info = LockInfo {
            run_id: run_id.clone(),
            operation: operation.to_string(),
            host: gethostname::gethostname().to_string_lossy().into_owned(),
            pid: std::process::id(),
            acquired_at: now,
            expires_at: now + times.lease,
            state_id: local.map(|l| l.state_id.clone()),
        };
        let key =
            locks_dir(store, app).join(format!("{:016}-{run_id}.json", now.timestamp_millis()));
        // The key is this run's own: a conditional create only guards against the
        // impossible, but it costs nothing where the store supports it.
        let create = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        let written = match store.objects.put_opts(&key, body(&info), create).await {
            Err(object_store::Error::NotImplemented { .. }) => {
                store.objects.put(&key, body(&info)).await
            }
            other => other,
        };
        let etag = written
            .map_err(|e| anyhow!("cannot write the lock {key}: {e}"))?
            .e_tag;
        let mut others = Vec::new();
        for found in list_locks(store, app).await? {
            if found.key == key {
                continue;
            }
            if is_stale(&found, local) {
                tracing::warn!(
                    "removing the stale lock {} ({})",
                    found.key,
                    found
                        .info
                        .as_ref()
                        .map_or_else(|| "unreadable".to_string(), LockInfo::describe)
                );
                let _ = store.objects.delete(&found.key).await;
                continue;
            }
            others.push(found);
        }
        if others.is_empty() {
            return Ok(Lock::start(store, key, app, info, etag, times));
        }
        let _ = store.objects.delete(&key).await;
        let first = others.iter().all(|o| key.as_ref() < o.key.as_ref());
        if !first || attempt + 1 == ATTEMPTS {
            let holder = others
                .into_iter()
                .find_map(|o| o.info)
                .expect("a live lock is readable");
            return Err(LockHeld {
                app: app.to_string(),
                info: holder,
            }
            .into());
        }
        tracing::info!(
            "another lifeboat run of '{app}' is taking the lock at the same moment; trying again"
        );
        let jitter = std::time::Duration::from_millis(u64::from(attempt) * 100);
        tokio::time::sleep(times.back_off + jitter).await;
    }
    unreachable!("the last attempt returns")
}

impl Lock {
    fn start(
        store: &Store,
        key: Path,
        app: &str,
        info: LockInfo,
        etag: Option<String>,
        times: LockTimes,
    ) -> Lock {
        let lost = CancellationToken::new();
        let why_lost = Arc::new(std::sync::Mutex::new(None));
        let renewer = tokio::spawn(renew(
            store.clone(),
            key.clone(),
            app.to_string(),
            info,
            etag,
            times,
            lost.clone(),
            why_lost.clone(),
        ));
        Lock {
            store: store.clone(),
            key,
            app: app.to_string(),
            lost,
            why_lost,
            renewer,
        }
    }

    /// Cancelled when the lock is lost; the operation then stops as on a signal.
    pub fn lost(&self) -> &CancellationToken {
        &self.lost
    }

    /// A token cancelled by a signal (`parent`) or when this lock is lost: what the work under
    /// the lock watches.
    pub fn cancel_on_loss(&self, parent: &CancellationToken) -> CancellationToken {
        let token = parent.child_token();
        let (lost, cancel) = (self.lost.clone(), token.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = lost.cancelled() => cancel.cancel(),
                _ = cancel.cancelled() => {}
            }
        });
        token
    }

    /// Gives the lock back after `result`: a failure caused by losing the lock becomes
    /// [`LockLost`] (exit 5, naming the other holder); a success stays one.
    pub async fn finish<T>(self, result: Result<T>) -> Result<T> {
        match (self.release().await, result) {
            (Some(lost), Err(error)) => Err(anyhow::Error::new(lost).context(format!("{error:#}"))),
            (Some(lost), Ok(value)) => {
                tracing::warn!("{lost}; the work was already done");
                Ok(value)
            }
            (None, result) => result,
        }
    }

    /// Why the lock was lost, if it was.
    pub fn lost_error(&self) -> Option<LockLost> {
        self.why_lost
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// Gives the lock back. Returns why it had been lost, if it had.
    pub async fn release(self) -> Option<LockLost> {
        self.renewer.abort();
        if !self.lost.is_cancelled()
            && let Err(e) = self.store.objects.delete(&self.key).await
        {
            tracing::warn!(
                "could not release the lock {}: {e}; it expires by itself",
                self.key
            );
        }
        let _ = &self.app;
        self.lost_error()
    }
}

/// Keeps the lease alive; cancels `lost` when it cannot.
#[allow(clippy::too_many_arguments)]
async fn renew(
    store: Store,
    key: Path,
    app: String,
    mut info: LockInfo,
    mut etag: Option<String>,
    times: LockTimes,
    lost: CancellationToken,
    why_lost: Arc<std::sync::Mutex<Option<LockLost>>>,
) {
    let give_up = |why: String, other: Option<LockInfo>| {
        tracing::error!("lost the lock of '{app}': {why}");
        *why_lost.lock().unwrap_or_else(|p| p.into_inner()) = Some(LockLost {
            app: app.clone(),
            why,
            other,
        });
        lost.cancel();
    };
    loop {
        tokio::time::sleep(times.renew_every).await;
        if Utc::now() > info.expires_at {
            // Frozen or cut off past the lease: someone may have taken over meanwhile.
            let other = other_holder(&store, &app, &key).await;
            return give_up("its lease ran out before it could be renewed".into(), other);
        }
        match store.objects.head(&key).await {
            Ok(_) => {}
            Err(object_store::Error::NotFound { .. }) => {
                let other = other_holder(&store, &app, &key).await;
                return give_up("another run or `lifeboat unlock` removed it".into(), other);
            }
            Err(e) => {
                tracing::warn!("could not renew the lock {key}: {e}; trying again");
                continue;
            }
        }
        let mut next = info.clone();
        next.expires_at = Utc::now() + times.lease;
        let conditional = PutOptions {
            mode: PutMode::Update(UpdateVersion {
                e_tag: etag.clone(),
                version: None,
            }),
            ..Default::default()
        };
        let put = match (
            &etag,
            store.objects.put_opts(&key, body(&next), conditional).await,
        ) {
            (Some(_), Err(object_store::Error::NotImplemented { .. })) | (None, _) => {
                store.objects.put(&key, body(&next)).await
            }
            (_, result) => result,
        };
        match put {
            Ok(result) => {
                etag = result.e_tag;
                info = next;
            }
            Err(
                object_store::Error::Precondition { .. } | object_store::Error::NotFound { .. },
            ) => {
                let other = other_holder(&store, &app, &key).await;
                return give_up(
                    "it changed in the store (removed or taken over)".into(),
                    other,
                );
            }
            Err(e) => tracing::warn!("could not renew the lock {key}: {e}; trying again"),
        }
    }
}

/// The live lock of another run, if there is one.
async fn other_holder(store: &Store, app: &str, own: &Path) -> Option<LockInfo> {
    list_locks(store, app)
        .await
        .ok()?
        .into_iter()
        .filter(|f| &f.key != own && !is_stale(f, None))
        .find_map(|f| f.info)
}

/// Removes every lock of `app`, returning what they held.
pub async fn unlock(store: &Store, app: &str) -> Result<Vec<LockInfo>> {
    let mut removed = Vec::new();
    for found in list_locks(store, app).await? {
        match store.objects.delete(&found.key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {
                removed.extend(found.info);
            }
            Err(e) => return Err(anyhow!("cannot remove the lock {}: {e}", found.key)),
        }
    }
    Ok(removed)
}

/// The live locks of `app` (for tests and `check-config`).
pub async fn holders(store: &Store, app: &str) -> Result<Vec<LockInfo>> {
    Ok(list_locks(store, app)
        .await?
        .into_iter()
        .filter(|f| !is_stale(f, None))
        .filter_map(|f| f.info)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Layout;
    use object_store::memory::InMemory;

    fn store_over(objects: Arc<dyn object_store::ObjectStore>) -> Store {
        Store {
            objects,
            layout: Layout {
                prefix: Path::from("p"),
            },
            url: "memory://".into(),
            upload_attributes: Default::default(),
            parts: Default::default(),
        }
    }

    fn store() -> Store {
        store_over(Arc::new(InMemory::new()))
    }

    fn quick() -> LockTimes {
        LockTimes {
            lease: Duration::seconds(2),
            renew_every: std::time::Duration::from_millis(200),
            back_off: std::time::Duration::from_millis(50),
        }
    }

    /// A store that ignores conditional writes, as some S3-compatibles do: every put
    /// overwrites.
    #[derive(Debug)]
    struct IgnoresConditions(InMemory);

    impl std::fmt::Display for IgnoresConditions {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "IgnoresConditions")
        }
    }

    #[async_trait::async_trait]
    impl object_store::ObjectStore for IgnoresConditions {
        async fn put_opts(
            &self,
            location: &Path,
            payload: object_store::PutPayload,
            mut opts: PutOptions,
        ) -> object_store::Result<object_store::PutResult> {
            opts.mode = PutMode::Overwrite;
            self.0.put_opts(location, payload, opts).await
        }
        async fn put_multipart_opts(
            &self,
            location: &Path,
            opts: object_store::PutMultipartOptions,
        ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
            self.0.put_multipart_opts(location, opts).await
        }
        async fn get_opts(
            &self,
            location: &Path,
            options: object_store::GetOptions,
        ) -> object_store::Result<object_store::GetResult> {
            self.0.get_opts(location, options).await
        }
        fn delete_stream(
            &self,
            locations: futures::stream::BoxStream<'static, object_store::Result<Path>>,
        ) -> futures::stream::BoxStream<'static, object_store::Result<Path>> {
            self.0.delete_stream(locations)
        }
        fn list(
            &self,
            prefix: Option<&Path>,
        ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>>
        {
            self.0.list(prefix)
        }
        async fn list_with_delimiter(
            &self,
            prefix: Option<&Path>,
        ) -> object_store::Result<object_store::ListResult> {
            self.0.list_with_delimiter(prefix).await
        }
        async fn copy_opts(
            &self,
            from: &Path,
            to: &Path,
            options: object_store::CopyOptions,
        ) -> object_store::Result<()> {
            self.0.copy_opts(from, to, options).await
        }
    }

    async fn race(store: &Store, n: usize) -> (Vec<Lock>, Vec<anyhow::Error>) {
        let attempts = (0..n).map(|i| {
            let store = store.clone();
            async move { acquire_with(&store, "cvat", &format!("backup-{i}"), quick(), None).await }
        });
        let mut won = Vec::new();
        let mut refused = Vec::new();
        for result in futures::future::join_all(attempts).await {
            match result {
                Ok(lock) => won.push(lock),
                Err(e) => refused.push(e),
            }
        }
        (won, refused)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn exactly_one_of_many_simultaneous_runs_proceeds_even_without_conditional_writes() {
        for objects in [
            Arc::new(InMemory::new()) as Arc<dyn object_store::ObjectStore>,
            Arc::new(IgnoresConditions(InMemory::new())),
        ] {
            let store = store_over(objects);
            for _ in 0..5 {
                let (won, refused) = race(&store, 6).await;
                assert_eq!(won.len(), 1, "{refused:?}");
                for e in &refused {
                    assert!(e.downcast_ref::<LockHeld>().is_some(), "{e}");
                    assert!(e.to_string().contains("holds the lock"), "{e}");
                }
                for lock in won {
                    assert!(lock.release().await.is_none());
                }
                assert!(holders(&store, "cvat").await.unwrap().is_empty());
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn an_expired_lock_is_taken_over_by_exactly_one() {
        let store = store_over(Arc::new(IgnoresConditions(InMemory::new())));
        let dead = LockInfo {
            run_id: "dead".into(),
            operation: "backup".into(),
            host: "elsewhere".into(),
            pid: 1,
            acquired_at: Utc::now() - Duration::hours(2),
            expires_at: Utc::now() - Duration::hours(1),
            state_id: None,
        };
        store
            .objects
            .put(
                &locks_dir(&store, "cvat").join("0000000000000001-dead.json"),
                body(&dead),
            )
            .await
            .unwrap();
        let (won, refused) = race(&store, 5).await;
        assert_eq!(won.len(), 1, "{refused:?}");
        let holders = holders(&store, "cvat").await.unwrap();
        assert_eq!(holders.len(), 1);
        assert_ne!(holders[0].run_id, "dead");
        for lock in won {
            lock.release().await;
        }
    }

    #[tokio::test]
    async fn a_live_lock_of_another_host_holds_and_unlock_removes_it() {
        let store = store();
        let lock = acquire_with(&store, "cvat", "backup", quick(), None)
            .await
            .unwrap();
        let err = acquire_with(&store, "cvat", "restore", quick(), None)
            .await
            .err()
            .unwrap();
        let held = err.downcast_ref::<LockHeld>().expect("LockHeld");
        assert_eq!(held.info.operation, "backup");
        assert!(
            err.to_string().contains("lifeboat unlock --name cvat"),
            "{err}"
        );
        acquire_with(&store, "other-app", "backup", quick(), None)
            .await
            .unwrap()
            .release()
            .await;
        let removed = unlock(&store, "cvat").await.unwrap();
        assert_eq!(removed.len(), 1);
        // The holder finds out at its next renewal and stops.
        tokio::time::timeout(std::time::Duration::from_secs(5), lock.lost().cancelled())
            .await
            .expect("the holder notices");
        let lost = lock.release().await.expect("lost");
        assert!(lost.why.contains("removed"), "{lost}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_held_lock_is_renewed_past_its_first_lease_on_every_kind_of_store() {
        for store in [
            store(),
            store_over(Arc::new(IgnoresConditions(InMemory::new()))),
        ] {
            let times = LockTimes {
                lease: Duration::milliseconds(600),
                renew_every: std::time::Duration::from_millis(100),
                back_off: std::time::Duration::from_millis(50),
            };
            let lock = acquire_with(&store, "cvat", "backup", times, None)
                .await
                .unwrap();
            let first = holders(&store, "cvat").await.unwrap()[0].clone();
            // Three leases long: only renewals keep it.
            tokio::time::sleep(std::time::Duration::from_millis(1800)).await;
            assert!(!lock.lost().is_cancelled(), "still held");
            let now = holders(&store, "cvat").await.unwrap();
            assert_eq!(now.len(), 1);
            assert_eq!(now[0].run_id, first.run_id);
            assert!(
                now[0].expires_at > first.expires_at + Duration::milliseconds(900)
                    && now[0].expires_at > Utc::now(),
                "the lease moved on: {} then {}",
                first.expires_at,
                now[0].expires_at
            );
            assert!(
                acquire_with(&store, "cvat", "restore", quick(), None)
                    .await
                    .is_err(),
                "a renewed lock still keeps others out"
            );
            assert!(lock.release().await.is_none());
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_holder_whose_lease_ran_out_never_renews_over_a_takeover() {
        let store = store_over(Arc::new(IgnoresConditions(InMemory::new())));
        let times = LockTimes {
            lease: Duration::milliseconds(300),
            renew_every: std::time::Duration::from_millis(900),
            back_off: std::time::Duration::from_millis(50),
        };
        // The first holder is "frozen": its first renewal comes after its lease ran out.
        let first = acquire_with(&store, "cvat", "backup", times, None)
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        // Someone finds it expired (with the skew allowance) and takes over.
        let expired = LockInfo {
            expires_at: Utc::now() - SKEW - Duration::seconds(1),
            ..holders(&store, "cvat").await.unwrap()[0].clone()
        };
        let key = list_locks(&store, "cvat").await.unwrap()[0].key.clone();
        store.objects.put(&key, body(&expired)).await.unwrap();
        let second = acquire_with(&store, "cvat", "restore", quick(), None)
            .await
            .unwrap();
        // The first one wakes up: it must stop, naming the new holder, and not resurrect.
        tokio::time::timeout(std::time::Duration::from_secs(5), first.lost().cancelled())
            .await
            .expect("the frozen holder notices");
        let lost = first.release().await.expect("lost");
        assert_eq!(
            lost.other.as_ref().map(|o| o.operation.as_str()),
            Some("restore"),
            "{lost}"
        );
        let live = holders(&store, "cvat").await.unwrap();
        assert_eq!(live.len(), 1, "{live:?}");
        assert_eq!(live[0].operation, "restore");
        second.release().await;
    }

    #[tokio::test]
    async fn a_lock_of_a_dead_local_run_is_taken_over_at_once() {
        let store = store();
        let dead = LockInfo {
            run_id: "dead".into(),
            operation: "backup".into(),
            host: "here".into(),
            pid: 4_194_303,
            acquired_at: Utc::now(),
            expires_at: Utc::now() + Duration::minutes(10),
            state_id: Some("this-state-dir".into()),
        };
        store
            .objects
            .put(
                &locks_dir(&store, "cvat").join("0000000000000001-dead.json"),
                body(&dead),
            )
            .await
            .unwrap();
        let elsewhere = LocalClaims {
            state_id: "another-state-dir".into(),
            holds_claim: true,
        };
        assert!(
            acquire_with(&store, "cvat", "backup", quick(), Some(&elsewhere))
                .await
                .is_err(),
            "another host's live lock holds"
        );
        let here = LocalClaims {
            state_id: "this-state-dir".into(),
            holds_claim: true,
        };
        acquire_with(&store, "cvat", "backup", quick(), Some(&here))
            .await
            .unwrap()
            .release()
            .await;
    }
}
