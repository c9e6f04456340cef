//! The bucket as lifeboat uses it: one place that knows where things lie in the store, reads
//! and writes manifests, and takes the lock.
//!
//! Layout under the store's prefix:
//! ```text
//! <app>/locks/<millis>-<run id>.json                    one per run holding the lock (`lock`)
//! <app>/chunks/<ab>/<chunk id>                          deduplicated chunks, shared by backups
//! <app>/<backup id>/<volume>.<tar.zst|tar.gz|tar>.age   one object per volume, written first
//! <app>/<backup id>/manifest.json.sig                   the manifest's SSH signature
//! <app>/<backup id>/manifest.json                       written last: the commit point
//! ```
//! A backup without its manifest is incomplete and is never listed or restored. The backup id is
//! a sortable UTC timestamp (milliseconds), so the newest backup is the greatest id. Every
//! manifest read here goes through [`manifest::authenticate`] before anyone sees it.
//!
//! The operations reach the bucket only through a [`Repo`]; the pipeline's stages get an
//! [`ObjectAt`] (a client and one key) from it and know nothing else of the layout.
//!
//! Where it sits: An adapter over `store`, `manifest` and `lock`; the operations build on it.

use crate::auth::Signer;
use crate::format::{MANIFEST_NAME, Manifest};
use crate::lock::{LocalClaims, Lock, LockInfo};
use crate::manifest::{self, Authenticated, NotAuthentic, TrustPolicy};
use crate::store::{Layout, Store, StoreOptions};
use anyhow::{Result, anyhow};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{Attributes, ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// The folders beside an app's backup folders that are not backups.
const NOT_BACKUPS: [&str; 2] = ["locks", crate::format::CHUNKS_DIR];

/// An opened store with lifeboat's layout in it.
#[derive(Clone)]
pub struct Repo {
    store: Store,
}

/// One object: the client and its key, what a pipeline stage reads or writes.
#[derive(Clone)]
pub struct ObjectAt {
    pub objects: Arc<dyn ObjectStore>,
    pub location: Path,
}

/// A backup found in the store and what [`manifest::authenticate`] made of it.
pub struct Listed {
    pub app: String,
    pub backup_id: String,
    pub outcome: Result<Authenticated, NotAuthentic>,
}

/// Every object under an app's folder, by the backup folder it lies in.
pub type Folders = BTreeMap<String, Vec<ObjectMeta>>;

impl Repo {
    /// Opens the store the options name.
    pub async fn open(options: &StoreOptions) -> Result<Repo> {
        Ok(Repo {
            store: crate::store::open(options).await?,
        })
    }

    /// A repo over any client (tests: `InMemory`, throttled stores).
    pub fn over(objects: Arc<dyn ObjectStore>, prefix: &str, url: &str) -> Repo {
        Repo {
            store: Store {
                objects,
                layout: Layout {
                    prefix: Path::from(prefix),
                },
                upload_attributes: Attributes::new(),
                url: url.to_string(),
                parts: crate::pipeline::upload::PartPolicy::default(),
            },
        }
    }

    /// The store's URL as given, for messages.
    pub fn url(&self) -> &str {
        &self.store.url
    }

    /// The folder of an app's backups, for messages.
    pub fn app_dir(&self, app: &str) -> Path {
        self.store.layout.app_dir(app)
    }

    /// How volume objects are uploaded to this store (part sizes, limits, stall deadline).
    pub fn part_policy(&self) -> &crate::pipeline::upload::PartPolicy {
        &self.store.parts
    }

    /// Attributes every volume object is uploaded with (S3 storage class).
    pub fn upload_attributes(&self) -> &Attributes {
        &self.store.upload_attributes
    }

    /// A volume object of a backup.
    pub fn object(&self, app: &str, backup_id: &str, object: &str) -> ObjectAt {
        ObjectAt {
            objects: Arc::clone(&self.store.objects),
            location: self.store.layout.object(app, backup_id, object),
        }
    }

    /// Where the stored data of a volume record of a backup is: its object, or its chunks.
    pub fn volume_at(
        &self,
        app: &str,
        backup_id: &str,
        record: &crate::format::VolumeRecord,
    ) -> crate::pipeline::open::StoredAt {
        if record.is_chunked() {
            crate::pipeline::open::StoredAt::Chunks(self.chunk_store(app))
        } else {
            let at = self.object(app, backup_id, &record.object);
            crate::pipeline::open::StoredAt::Object {
                objects: at.objects,
                location: at.location,
                segments: record.segments,
            }
        }
    }

    /// Where the chunks of `app` lie (deduplicated backups).
    pub fn chunk_store(&self, app: &str) -> crate::pipeline::chunk::ChunkStore {
        crate::pipeline::chunk::ChunkStore {
            objects: Arc::clone(&self.store.objects),
            app_dir: self.store.layout.app_dir(app),
            attributes: self.store.upload_attributes.clone(),
        }
    }

    /// Fails when the store cannot be listed (wrong URL, credentials, network).
    pub async fn reachable(&self, app: &str) -> Result<(), object_store::Error> {
        let dir = self.store.layout.app_dir(app);
        self.store.objects.list_with_delimiter(Some(&dir)).await?;
        Ok(())
    }

    /// Refuses a backup id whose folder holds anything already.
    pub async fn ensure_new(&self, app: &str, backup_id: &str) -> Result<()> {
        let dir = self.store.layout.backup_dir(app, backup_id);
        let existing = self.store.objects.list_with_delimiter(Some(&dir)).await?;
        if !existing.objects.is_empty() {
            return Err(anyhow!(
                "{dir} exists already (two backups started in the same millisecond?); nothing was stopped, run the backup again"
            ));
        }
        Ok(())
    }

    /// Deletes a volume object, every segment of it (of a backup that failed before its
    /// manifest, or a copy that failed before it); one already gone is no error.
    pub async fn delete_volume_object(
        &self,
        app: &str,
        backup_id: &str,
        record: &crate::format::VolumeRecord,
    ) {
        let at = self.store.layout.object(app, backup_id, &record.object);
        for key in crate::pipeline::upload::segment_locations(&at, record.segments) {
            match self.store.objects.delete(&key).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => tracing::warn!(%key, "could not delete an object of the failed run: {e}"),
            }
        }
    }

    /// Writes the signature, then the manifest (the commit point); refuses to overwrite either.
    pub async fn commit(&self, manifest: &Manifest, signer: &Signer) -> Result<()> {
        let create = || PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        let layout = &self.store.layout;
        let key = layout.manifest(&manifest.app, &manifest.backup_id);
        let body = crate::format::manifest_json(manifest)?;
        let sig_key = layout.signature(&manifest.app, &manifest.backup_id);
        self.store
            .objects
            .put_opts(&sig_key, signer.sign(&body).into_bytes().into(), create())
            .await
            .map_err(|e| anyhow!("cannot write the manifest's signature {sig_key}: {e}"))?;
        self.store
            .objects
            .put_opts(&key, body.into(), create())
            .await
            .map_err(|e| anyhow!("cannot write manifest {key}: {e}"))?;
        Ok(())
    }

    /// A manifest's exact bytes and its signature's, as stored (for `copy`, which writes them
    /// again elsewhere; the caller authenticated them).
    pub async fn manifest_bytes(
        &self,
        app: &str,
        backup_id: &str,
    ) -> Result<(bytes::Bytes, Option<bytes::Bytes>)> {
        self.fetch(app, backup_id)
            .await
            .map_err(|e| anyhow!("cannot read the manifest of {backup_id}: {e}"))
    }

    /// Writes a manifest's bytes and signature as they are, the signature first (the manifest
    /// is the commit point); a signature left by an earlier, interrupted copy is replaced.
    pub async fn commit_bytes(
        &self,
        app: &str,
        backup_id: &str,
        manifest: &[u8],
        signature: Option<&[u8]>,
    ) -> Result<()> {
        let layout = &self.store.layout;
        let manifest_key = layout.manifest(app, backup_id);
        if self.store.objects.head(&manifest_key).await.is_ok() {
            return Err(anyhow!(
                "{manifest_key} exists already; nothing of it was changed"
            ));
        }
        if let Some(signature) = signature {
            let key = layout.signature(app, backup_id);
            self.store
                .objects
                .put(&key, bytes::Bytes::copy_from_slice(signature).into())
                .await
                .map_err(|e| anyhow!("cannot write {key}: {e}"))?;
        }
        let key = layout.manifest(app, backup_id);
        let create = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        self.store
            .objects
            .put_opts(&key, bytes::Bytes::copy_from_slice(manifest).into(), create)
            .await
            .map_err(|e| anyhow!("cannot write {key}: {e}"))?;
        Ok(())
    }

    /// Checks that the manifest, its signature and every object of a backup are in the store,
    /// each object with the size the manifest records (HEAD requests).
    pub async fn read_back(&self, manifest: &Manifest) -> Result<()> {
        let (app, id) = (&manifest.app, &manifest.backup_id);
        let layout = &self.store.layout;
        for key in [layout.manifest(app, id), layout.signature(app, id)] {
            self.store
                .objects
                .head(&key)
                .await
                .map_err(|e| anyhow!("{key} does not read back: {e}"))?;
        }
        if manifest.volumes.iter().any(|v| v.is_chunked()) {
            let present = crate::pipeline::chunk::list_chunks(&self.chunk_store(app))
                .await
                .map_err(|e| anyhow!("the chunks of {app} cannot be listed: {e}"))?;
            for record in manifest.volumes.iter().filter(|v| v.is_chunked()) {
                let lists: Vec<_> = record.lists.iter().map(|l| l.object()).collect();
                for (of, what) in [(&record.chunks, "chunks"), (&lists, "chunk lists")] {
                    if let Some(problem) = crate::pipeline::chunk::missing(of, &present) {
                        return Err(anyhow!("volume {}, its {what}: {problem}", record.name));
                    }
                }
            }
        }
        for record in manifest.volumes.iter().filter(|v| !v.is_chunked()) {
            let key = layout.object(app, id, &record.object);
            let mut size = 0;
            for segment in crate::pipeline::upload::segment_locations(&key, record.segments) {
                let head = self
                    .store
                    .objects
                    .head(&segment)
                    .await
                    .map_err(|e| anyhow!("{segment} does not read back: {e}"))?;
                size += head.size;
            }
            if size != record.stored_size {
                return Err(anyhow!(
                    "{key} reads back with {size} bytes, but {} were stored",
                    record.stored_size
                ));
            }
        }
        Ok(())
    }

    /// Every complete backup under the store's prefix (optionally of one app), oldest first
    /// per app, each authenticated under `policy`. Only a failure to list the store is an error.
    pub async fn list(&self, app: Option<&str>, policy: &TrustPolicy) -> Result<Vec<Listed>> {
        /// Manifests fetched at once (each is a few KiB to a few MiB).
        const MANIFESTS_IN_FLIGHT: usize = 8;
        let apps = match app {
            Some(app) => vec![app.to_string()],
            None => self.apps().await?,
        };
        let mut listed = Vec::new();
        for app in apps {
            // Several manifests at once: a store's round trip is most of the cost of each.
            let ids = self.backup_ids(&app).await?;
            let fetches = futures::stream::iter(ids)
                .map(|backup_id: String| async {
                    let fetched = self.fetch(&app, &backup_id).await;
                    (backup_id, fetched)
                })
                .buffered(MANIFESTS_IN_FLIGHT);
            let mut fetches = std::pin::pin!(fetches);
            while let Some((backup_id, fetched)) = fetches.next().await {
                let fetched = match fetched {
                    // No manifest: an incomplete backup, never listed.
                    Err(object_store::Error::NotFound { .. }) => continue,
                    other => other,
                };
                let outcome = fetched
                    .map_err(|e| NotAuthentic {
                        app: crate::text::printable(&app),
                        backup_id: crate::text::printable(&backup_id),
                        reason: format!("its manifest cannot be read ({e})"),
                        unsigned: false,
                    })
                    .and_then(|(bytes, sig)| {
                        manifest::authenticate_as(
                            &app,
                            &backup_id,
                            &bytes,
                            sig.as_deref(),
                            policy,
                            false,
                        )
                    });
                listed.push(Listed {
                    app: app.clone(),
                    backup_id,
                    outcome,
                });
            }
        }
        listed.sort_by(|a, b| (&a.app, &a.backup_id).cmp(&(&b.app, &b.backup_id)));
        Ok(listed)
    }

    /// The folders under the store's prefix: one per app.
    async fn apps(&self) -> Result<Vec<String>> {
        let prefix = &self.store.layout.prefix;
        let root = (!prefix.as_ref().is_empty()).then_some(prefix);
        let listing = self
            .store
            .objects
            .list_with_delimiter(root)
            .await
            .map_err(|e| anyhow!("cannot list backups under '{prefix}': {e}"))?;
        Ok(listing
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .collect())
    }

    /// The backup folders of `app` (one listing level: never the chunks inside).
    async fn backup_ids(&self, app: &str) -> Result<Vec<String>> {
        let dir = self.store.layout.app_dir(app);
        let listing = self
            .store
            .objects
            .list_with_delimiter(Some(&dir))
            .await
            .map_err(|e| anyhow!("cannot list backups under '{dir}': {e}"))?;
        Ok(listing
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .filter(|id| !NOT_BACKUPS.contains(&id.as_str()))
            .collect())
    }

    /// The newest backup of `app` that authenticates, looking at no more than a few of the
    /// newest (cheap: one listing, then a manifest or two).
    pub async fn newest_genuine(
        &self,
        app: &str,
        policy: &TrustPolicy,
    ) -> Result<Option<Authenticated>> {
        let mut ids: Vec<String> = self
            .backup_ids(app)
            .await?
            .into_iter()
            .filter(|id| crate::text::is_plain_name(id))
            .collect();
        ids.sort_unstable_by(|a, b| b.cmp(a));
        for id in ids.iter().take(5) {
            if let Ok((bytes, sig)) = self.fetch(app, id).await
                && let Ok(mut found) =
                    manifest::authenticate_as(app, id, &bytes, sig.as_deref(), policy, false)
            {
                match self.read_lists(&mut found.manifest).await {
                    Ok(()) => return Ok(Some(found)),
                    Err(error) => tracing::warn!("backup {id} is not reused: {error:#}"),
                }
            }
        }
        Ok(None)
    }

    /// The manifest's bytes and its signature's (if any).
    async fn fetch(
        &self,
        app: &str,
        backup_id: &str,
    ) -> Result<(bytes::Bytes, Option<bytes::Bytes>), object_store::Error> {
        let (objects, layout) = (&self.store.objects, &self.store.layout);
        let manifest = async {
            bounded(
                objects.get(&layout.manifest(app, backup_id)).await?,
                MAX_MANIFEST,
            )
            .await
        };
        let signature = async {
            match objects.get(&layout.signature(app, backup_id)).await {
                Ok(got) => Ok(Some(bounded(got, MAX_SIGNATURE).await?)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        };
        // Both at once: one round trip, not two.
        let (bytes, sig) = tokio::join!(manifest, signature);
        let bytes = bytes?;
        let sig = match sig? {
            // The signature is written before the manifest: asked for just before it was
            // written, it is there once the manifest is.
            None => match objects.get(&layout.signature(app, backup_id)).await {
                Ok(got) => Some(bounded(got, MAX_SIGNATURE).await?),
                Err(object_store::Error::NotFound { .. }) => None,
                Err(e) => return Err(e),
            },
            found => found,
        };
        Ok((bytes, sig))
    }

    /// Reads and authenticates one backup's manifest; `None` picks the newest backup of `app`,
    /// which must be genuine: a newer backup that is not is reported (exit 4), never skipped.
    pub async fn read(
        &self,
        app: &str,
        backup_id: Option<&str>,
        policy: &TrustPolicy,
    ) -> Result<Authenticated> {
        let Some(id) = backup_id else {
            return self.read_newest(app, policy).await;
        };
        if !crate::text::is_plain_name(id) {
            return Err(crate::error::usage(format!(
                "'{}' is not a backup id; run `lifeboat list` to see the backups there are",
                crate::text::printable(id)
            )));
        }
        let key = self.store.layout.manifest(app, id);
        let (bytes, sig) = match self.fetch(app, id).await {
            Ok(found) => found,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(crate::error::usage(format!(
                    "backup '{id}' of '{app}' not found (no {key}); run `lifeboat list` to see the backups there are"
                )));
            }
            Err(e) => return Err(anyhow!("cannot read {key}: {e}")),
        };
        let mut found = manifest::authenticate(app, id, &bytes, sig.as_deref(), policy)
            .map_err(|refused| crate::error::verification(refused.to_string()))?;
        self.read_lists(&mut found.manifest).await?;
        Ok(found)
    }

    /// Reads the chunk lists of a format-5 manifest's volumes from their objects into their
    /// records' `chunks`, each checked against the signed manifest: a list missing or altered
    /// in the store is a verification failure (exit 4) of the backup, before anything uses it.
    pub async fn read_lists(&self, manifest: &mut Manifest) -> Result<()> {
        let store = self.chunk_store(&manifest.app);
        let backup_id = &manifest.backup_id;
        for record in manifest.volumes.iter_mut() {
            if record.lists.is_empty() || !record.chunks.is_empty() {
                continue;
            }
            let name = crate::text::Printable(&record.name);
            let failed = |reason: String| {
                crate::error::verification(format!("backup {backup_id}, volume {name}: {reason}"))
            };
            record.chunks = crate::pipeline::chunk_list::read_lists(&store, &record.lists, true)
                .await
                .map_err(|e| match e {
                    crate::pipeline::PipelineError::Verification(reason) => failed(reason),
                    other => anyhow!("cannot read the chunk lists of backup {backup_id}: {other}"),
                })?;
            manifest::check_chunk_list(record).map_err(failed)?;
        }
        Ok(())
    }

    async fn read_newest(&self, app: &str, policy: &TrustPolicy) -> Result<Authenticated> {
        let all = self.list(Some(app), policy).await?;
        let newest = all.last().ok_or_else(|| {
            crate::error::usage(format!(
                "no complete backup of '{app}' under {}; check --project/--name and the store URL, or run `lifeboat list` to see what is there",
                self.store.layout.app_dir(app)
            ))
        })?;
        match &newest.outcome {
            Ok(found) => {
                let mut found = found.clone();
                self.read_lists(&mut found.manifest).await?;
                Ok(found)
            }
            Err(refused) => {
                let genuine = all.iter().rev().find(|l| l.outcome.is_ok());
                let hint = match genuine {
                    Some(g) => format!(
                        "; the newest genuine backup is {}: pass --backup {} to restore it",
                        g.backup_id, g.backup_id
                    ),
                    None => String::new(),
                };
                Err(crate::error::verification(format!("{refused}{hint}")))
            }
        }
    }

    /// Every object under the app's folder, by the backup folder it lies in. The locks folder
    /// is not a backup; a file lying beside the backup folders neither.
    pub async fn folders(&self, app: &str) -> Result<Folders> {
        let mut dirs = Folders::new();
        for id in self.backup_ids(app).await? {
            let dir = self.store.layout.backup_dir(app, &id);
            let objects: Vec<ObjectMeta> = self
                .store
                .objects
                .list(Some(&dir))
                .try_collect()
                .await
                .map_err(|e| anyhow!("cannot list {dir}: {e}"))?;
            if !objects.is_empty() {
                dirs.insert(id, objects);
            }
        }
        Ok(dirs)
    }

    /// Deletes one backup folder's objects, the manifest first: an interrupted removal leaves
    /// an incomplete backup, which the next prune removes, never a listed backup with missing
    /// objects.
    pub async fn remove(&self, folder: &[ObjectMeta]) -> Result<()> {
        let (manifests, others): (Vec<_>, Vec<_>) = folder
            .iter()
            .partition(|m| m.location.filename() == Some(MANIFEST_NAME));
        for meta in manifests.into_iter().chain(others) {
            self.store
                .objects
                .delete(&meta.location)
                .await
                .map_err(|e| anyhow!("cannot delete {}: {e}", meta.location))?;
        }
        Ok(())
    }

    /// The chunks (by the sha256 that names their object) that the manifests of `app`
    /// reference, every manifest but those of `leaving` — genuine or not (a chunk is only ever
    /// deleted when nothing could want it). Fails when a manifest cannot be read or parsed:
    /// then no chunk may go.
    pub async fn referenced_chunks(
        &self,
        app: &str,
        leaving: &std::collections::HashSet<String>,
    ) -> Result<std::collections::HashSet<String>> {
        #[derive(serde::Deserialize)]
        struct Volumes {
            #[serde(default)]
            volumes: Vec<Chunks>,
        }
        #[derive(serde::Deserialize)]
        struct Chunks {
            #[serde(default)]
            chunks: Vec<Id>,
            #[serde(default)]
            lists: Vec<crate::format::ListRef>,
        }
        /// A chunk, or a format-5 record's `{"in_lists": n}`.
        #[derive(serde::Deserialize)]
        struct Id {
            sha256: Option<String>,
            in_lists: Option<u64>,
        }
        let mut referenced = std::collections::HashSet::new();
        // A list shared by several backups is read once.
        let mut lists_read = std::collections::HashSet::new();
        let store = self.chunk_store(app);
        for (id, _) in self.folders(app).await? {
            if leaving.contains(&id) {
                continue;
            }
            let (bytes, _) = match self.fetch(app, &id).await {
                Ok(found) => found,
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(e) => return Err(anyhow!("cannot read the manifest of {id}: {e}")),
            };
            let damaged = |what: String| {
                anyhow!(
                    "{what}, so no chunk was deleted; if that backup is damaged, delete its folder {} (or copy it again from another store) and prune again",
                    self.store.layout.backup_dir(app, &id)
                )
            };
            // The version first: a newer format may store what it references otherwise.
            #[derive(serde::Deserialize)]
            struct Version {
                #[serde(default)]
                format_version: u32,
            }
            if let Ok(Version { format_version }) = serde_json::from_slice(&bytes)
                && format_version > crate::format::FORMAT_VERSION
            {
                return Err(anyhow!(
                    "backup {id} is format {format_version}, newer than this lifeboat knows ({}), so what it references is unknown and no chunk was deleted; prune with the lifeboat that wrote it",
                    crate::format::FORMAT_VERSION
                ));
            }
            let parsed: Volumes = serde_json::from_slice(&bytes)
                .map_err(|e| damaged(format!("the manifest of {id} cannot be parsed ({e})")))?;
            for volume in parsed.volumes {
                let listed: u64 = volume.lists.iter().map(|l| l.chunks).sum();
                for chunk in volume.chunks {
                    match chunk {
                        Id {
                            sha256: Some(sha256),
                            in_lists: None,
                        } => referenced.insert(sha256),
                        // The count must be the lists': a record whose lists went missing
                        // references chunks nobody can name.
                        Id {
                            sha256: None,
                            in_lists: Some(n),
                        } if n == listed => continue,
                        _ => {
                            return Err(damaged(format!(
                                "the manifest of {id} holds a chunk entry lifeboat does not write"
                            )));
                        }
                    };
                }
                // A list's chunks are referenced, and so is the list: read it whether the
                // manifest is genuine or not, and if it cannot be read, no chunk may go.
                let unread: Vec<_> = volume
                    .lists
                    .into_iter()
                    .filter(|l| lists_read.insert(l.sha256))
                    .collect();
                let listed = crate::pipeline::chunk_list::read_lists(&store, &unread, false)
                    .await
                    .map_err(|e| {
                        damaged(format!("the chunk lists of {id} cannot be read ({e})"))
                    })?;
                referenced.extend(listed.iter().map(|c| c.sha256.to_string()));
                referenced.extend(unread.iter().map(|l| l.sha256.to_string()));
            }
        }
        Ok(referenced)
    }

    /// Every chunk of `app`: its key, size and when it was written.
    pub async fn chunks(&self, app: &str) -> Result<Vec<ObjectMeta>> {
        let dir = self
            .store
            .layout
            .app_dir(app)
            .join(crate::format::CHUNKS_DIR);
        self.store
            .objects
            .list(Some(&dir))
            .try_collect()
            .await
            .map_err(|e| anyhow!("cannot list {dir}: {e}"))
    }

    /// Deletes one object found by a listing (an unreferenced chunk).
    pub async fn delete(&self, meta: &ObjectMeta) -> Result<()> {
        match self.store.objects.delete(&meta.location).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(anyhow!("cannot delete {}: {e}", meta.location)),
        }
    }

    /// Takes the lock of `app` for `operation` (see [`crate::lock`]).
    pub async fn lock(
        &self,
        app: &str,
        operation: &str,
        local: Option<&LocalClaims>,
    ) -> Result<Lock> {
        crate::lock::acquire(&self.store, app, operation, local).await
    }

    /// Runs `work` under the lock of `app`, then gives the lock back whatever happened. The work
    /// gets `cancel`'s child that is also cancelled when the lock is lost; a failure caused by
    /// that becomes [`crate::lock::LockLost`].
    pub async fn with_lock<T, F, Fut>(
        &self,
        app: &str,
        operation: &str,
        local: Option<&LocalClaims>,
        cancel: &CancellationToken,
        work: F,
    ) -> Result<T>
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let lock = self.lock(app, operation, local).await?;
        let result = work(lock.cancel_on_loss(cancel)).await;
        lock.finish(result).await
    }

    /// Removes every lock of `app`, returning what they held (`lifeboat unlock`).
    pub async fn unlock(&self, app: &str) -> Result<Vec<LockInfo>> {
        crate::lock::unlock(&self.store, app).await
    }

    /// The live locks of `app`.
    pub async fn holders(&self, app: &str) -> Result<Vec<LockInfo>> {
        crate::lock::holders(&self.store, app).await
    }
}

/// The largest manifest read: a format-3 manifest of a 5 TiB volume (format 5 takes about
/// 160 KiB per TiB). A larger object in the bucket is refused before it is read into memory.
const MAX_MANIFEST: u64 = 2 << 30;
/// The largest signature read (an SSH signature is under 1 KiB).
const MAX_SIGNATURE: u64 = 64 << 10;

/// An object's bytes, unless it is larger than `most`.
async fn bounded(
    got: object_store::GetResult,
    most: u64,
) -> Result<bytes::Bytes, object_store::Error> {
    if got.meta.size > most {
        return Err(object_store::Error::Generic {
            store: "lifeboat",
            source: format!(
                "{} is {} bytes, more than lifeboat ever writes there ({most}): not read",
                got.meta.location, got.meta.size
            )
            .into(),
        });
    }
    got.bytes().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Trust;
    use crate::manifest::tests::sample;
    use object_store::memory::InMemory;

    fn signer() -> Signer {
        Signer::from_seed(&[3u8; 32])
    }

    fn policy() -> TrustPolicy {
        TrustPolicy {
            trust: Trust::new(vec![signer().public()]),
            allow_unsigned: false,
        }
    }

    fn repo() -> Repo {
        Repo::over(Arc::new(InMemory::new()), "pre", "memory://")
    }

    #[tokio::test]
    async fn read_back_needs_every_object_with_its_size() {
        let repo = repo();
        let m = sample("20260101T000000.000Z");
        repo.commit(&m, &signer()).await.unwrap();
        let at = repo.object(&m.app, &m.backup_id, &m.volumes[0].object);
        assert!(repo.read_back(&m).await.is_err(), "no object");
        at.objects
            .put(&at.location, vec![0u8; 9].into())
            .await
            .unwrap();
        let err = repo.read_back(&m).await.unwrap_err().to_string();
        assert!(err.contains("9 bytes"), "{err}");
        at.objects
            .put(&at.location, vec![0u8; 10].into())
            .await
            .unwrap();
        repo.read_back(&m).await.unwrap();
    }

    /// A deduplicated backup reads back when every chunk it lists is stored with its size
    /// (what retention after a backup checks before it removes anything).
    #[tokio::test]
    async fn a_chunked_backup_reads_back_by_its_chunks() {
        let repo = repo();
        let mut m = sample("20260101T000000.000Z");
        let store = repo.chunk_store(&m.app);
        let chunk = |n: u8| crate::format::ChunkRef {
            id: crate::format::Hex32([n; 32]),
            size: 3,
            sha256: crate::format::Hex32([n + 100; 32]),
            plain: 10,
        };
        let record = &mut m.volumes[0];
        record.chunks = vec![chunk(1), chunk(2)];
        record.stored_size = 6;
        record.tar_size = 20;
        record.sha256 = crate::format::chunk_list_digest(&record.chunks);
        record.new_bytes = Some(6);
        m.format_version = crate::format::CHUNKED_FORMAT;
        crate::manifest::check(&m, "cvat", &m.backup_id).unwrap();
        repo.commit(&m, &signer()).await.unwrap();
        for c in &m.volumes[0].chunks {
            store
                .objects
                .put(&store.location(&c.sha256), vec![0u8; 3].into())
                .await
                .unwrap();
        }
        repo.read_back(&m).await.unwrap();
        store
            .objects
            .delete(&store.location(&m.volumes[0].chunks[1].sha256))
            .await
            .unwrap();
        let err = repo.read_back(&m).await.unwrap_err().to_string();
        assert!(err.contains("1 of its 2 chunks are missing"), "{err}");
        // The chunks are not a backup folder.
        assert_eq!(repo.folders("cvat").await.unwrap().len(), 1);
        assert_eq!(repo.list(None, &policy()).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn folders_skip_the_locks_and_removal_takes_the_manifest_first() {
        let repo = repo();
        let m = sample("20260101T000000.000Z");
        repo.commit(&m, &signer()).await.unwrap();
        let lock = repo.lock("cvat", "backup", None).await.unwrap();
        let folders = repo.folders("cvat").await.unwrap();
        assert_eq!(folders.keys().collect::<Vec<_>>(), [&m.backup_id]);
        repo.remove(&folders[&m.backup_id]).await.unwrap();
        assert!(repo.list(Some("cvat"), &policy()).await.unwrap().is_empty());
        assert_eq!(repo.holders("cvat").await.unwrap().len(), 1);
        lock.release().await;
    }

    /// A manifest or signature planted far larger than lifeboat writes is refused by its size,
    /// never read into memory (the files are sparse: nothing is written).
    #[tokio::test]
    async fn a_huge_manifest_or_signature_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let objects = object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap();
        let repo = Repo::over(Arc::new(objects), "pre", "file://");
        let id = "20260101T000000.000Z";
        repo.commit(&sample(id), &signer()).await.unwrap();
        repo.read("cvat", Some(id), &policy()).await.unwrap();
        let folder = dir.path().join("pre/cvat").join(id);
        for (file, size) in [
            ("manifest.json.sig", MAX_SIGNATURE + 1),
            ("manifest.json", MAX_MANIFEST + 1),
        ] {
            let grown = std::fs::OpenOptions::new()
                .write(true)
                .open(folder.join(file))
                .unwrap();
            grown.set_len(size).unwrap();
            let err = repo.read("cvat", Some(id), &policy()).await.unwrap_err();
            let err = format!("{err:#}");
            assert!(err.contains("more than lifeboat ever writes"), "{err}");
            assert!(err.contains(file), "{err}");
        }
        let listed = repo.list(Some("cvat"), &policy()).await.unwrap();
        assert!(listed[0].outcome.is_err());
    }

    /// Prune's references: a format-5 backup's lists and their chunks; a planted manifest
    /// whose list claims a trillion chunks, or one of a newer format, stops it (nothing is
    /// allocated for the claim), and so does a manifest an older lifeboat would misread.
    #[tokio::test]
    async fn prune_references_listed_chunks_and_stops_at_what_it_cannot_know() {
        let repo = repo();
        let id = "20260101T000000.000Z";
        let mut m = sample(id);
        let chunks: Vec<crate::format::ChunkRef> = (0..3u8)
            .map(|i| crate::format::ChunkRef {
                id: crate::format::Hex32([i; 32]),
                size: 10,
                sha256: crate::format::Hex32([i + 50; 32]),
                plain: 20,
            })
            .collect();
        let record = &mut m.volumes[0];
        record.lists = crate::pipeline::chunk_list::store_lists(&repo.chunk_store("cvat"), &chunks)
            .await
            .unwrap();
        (record.stored_size, record.tar_size) = (30, 60);
        record.sha256 = crate::format::chunk_list_digest(&chunks);
        record.chunks = chunks.clone();
        m.format_version = crate::format::LISTED_FORMAT;
        repo.commit(&m, &signer()).await.unwrap();
        let stored = repo.manifest_bytes("cvat", id).await.unwrap().0;
        let text = std::str::from_utf8(&stored).unwrap();
        assert!(text.contains(r#"{"in_lists":3}"#), "{text}");
        // What prune before format 5 parsed: it fails, so it deletes nothing.
        #[derive(serde::Deserialize)]
        struct OldId {
            #[allow(dead_code)]
            sha256: String,
        }
        #[derive(serde::Deserialize)]
        struct OldVolume {
            #[serde(default)]
            #[allow(dead_code)]
            chunks: Vec<OldId>,
        }
        #[derive(serde::Deserialize)]
        struct OldManifest {
            #[allow(dead_code)]
            volumes: Vec<OldVolume>,
        }
        assert!(serde_json::from_slice::<OldManifest>(&stored).is_err());
        let read = repo.read("cvat", Some(id), &policy()).await.unwrap();
        assert_eq!(read.manifest.volumes[0].chunks, chunks);
        let none = std::collections::HashSet::new();
        let referenced = repo.referenced_chunks("cvat", &none).await.unwrap();
        let lists = &m.volumes[0].lists;
        assert!(
            lists
                .iter()
                .all(|l| referenced.contains(&l.sha256.to_string()))
        );
        assert!(
            chunks
                .iter()
                .all(|c| referenced.contains(&c.sha256.to_string()))
        );
        assert_eq!(referenced.len(), chunks.len() + lists.len());

        let plant = |id: &str, json: String| {
            let at = repo.store.layout.manifest("cvat", id);
            let objects = Arc::clone(&repo.store.objects);
            async move { objects.put(&at, json.into_bytes().into()).await.unwrap() }
        };
        let huge = format!(
            r#"{{"format_version":5,"volumes":[{{"lists":[{{"sha256":"{}","size":100,"chunks":1099511627776,"stored":0,"plain":0}}]}}]}}"#,
            "ab".repeat(32)
        );
        plant("20260102T000000.000Z", huge).await;
        let err = repo.referenced_chunks("cvat", &none).await.unwrap_err();
        let err = format!("{err:#}");
        assert!(err.contains("not one lifeboat writes"), "{err}");
        assert!(err.contains("no chunk was deleted"), "{err}");
        plant(
            "20260102T000000.000Z",
            r#"{"format_version":6,"volumes":"stored otherwise"}"#.into(),
        )
        .await;
        let err = repo.referenced_chunks("cvat", &none).await.unwrap_err();
        assert!(
            err.to_string().contains("newer than this lifeboat"),
            "{err}"
        );
        // A record that says its chunks are in lists it no longer names.
        plant(
            "20260102T000000.000Z",
            r#"{"format_version":5,"volumes":[{"chunks":[{"in_lists":3}]}]}"#.into(),
        )
        .await;
        let err = repo.referenced_chunks("cvat", &none).await.unwrap_err();
        assert!(err.to_string().contains("does not write"), "{err}");
    }

    #[tokio::test]
    async fn with_lock_gives_the_lock_back_after_a_failure() {
        let repo = repo();
        let cancel = CancellationToken::new();
        let failed: Result<()> = repo
            .with_lock("cvat", "prune", None, &cancel, |_| async {
                Err(anyhow!("the work failed"))
            })
            .await;
        assert!(failed.unwrap_err().to_string().contains("the work failed"));
        assert!(repo.holders("cvat").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn write_list_read_newest_and_a_forged_newest_is_reported() {
        let repo = repo();
        for id in [
            "20260101T000000.000Z",
            "20260301T000000.000Z",
            "20260201T000000.000Z",
        ] {
            repo.commit(&sample(id), &signer()).await.unwrap();
        }
        // an incomplete backup: objects, no manifest
        let at = repo.object("cvat", "20260401T000000.000Z", "v.tar.zst.age");
        at.objects
            .put(&at.location, b"x".to_vec().into())
            .await
            .unwrap();
        let listed = repo.list(None, &policy()).await.unwrap();
        assert_eq!(listed.len(), 3);
        assert!(listed.iter().all(|l| l.outcome.is_ok()));
        let newest = repo.read("cvat", None, &policy()).await.unwrap();
        assert_eq!(newest.manifest.backup_id, "20260301T000000.000Z");
        let found = repo.newest_genuine("cvat", &policy()).await.unwrap();
        assert_eq!(found.unwrap().manifest.backup_id, "20260301T000000.000Z");
        assert!(
            repo.commit(&sample("20260101T000000.000Z"), &signer())
                .await
                .is_err(),
            "no overwrite"
        );
        let err = repo.read("cvat", Some("nope"), &policy()).await;
        let err = err.unwrap_err().to_string();
        assert!(err.contains("not found"), "{err}");
        let err = repo.read("other", None, &policy()).await;
        let err = err.unwrap_err().to_string();
        assert!(err.contains("no complete backup of 'other'"), "{err}");

        // A forged newest backup (signed by another key) is reported, with the way out.
        repo.commit(
            &sample("20991231T000000.000Z"),
            &Signer::from_seed(&[9u8; 32]),
        )
        .await
        .unwrap();
        let err = repo.read("cvat", None, &policy()).await.unwrap_err();
        assert_eq!(
            crate::error::classified(&err),
            Some(crate::error::ExitClass::Verification)
        );
        let text = err.to_string();
        assert!(
            text.contains("20991231T000000.000Z") && text.contains("--backup 20260301T000000.000Z"),
            "{text}"
        );
        let listed = repo.list(Some("cvat"), &policy()).await.unwrap();
        assert_eq!(listed.iter().filter(|l| l.outcome.is_err()).count(), 1);
        let found = repo.newest_genuine("cvat", &policy()).await.unwrap();
        assert_eq!(found.unwrap().manifest.backup_id, "20260301T000000.000Z");
    }
}
