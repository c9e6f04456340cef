//! `lifeboat copy`: backups from one store to another of any kind (a local copy to an offsite
//! one, or to a new provider), copying only what the target lacks.
//!
//! Only genuine backups are copied: each manifest is authenticated in the source first. The
//! data is copied as stored — ciphertext; nothing is decrypted, so the backup host's key will
//! do — and checked on the way against the signed manifest (a volume object's size and sha256
//! as it streams, a chunk's before it is written). The manifest's exact bytes and its
//! signature are written last, signature first: a copy cut short leaves an incomplete backup
//! in the target, which the next `copy` finishes (objects and chunks already there with the
//! right size are skipped) and `prune` removes after the grace period otherwise.
//!
//! Where it sits: An operation: uses `repo` (both stores) and `pipeline`'s download, upload
//! and chunk stages; holds the target's lock while it writes.

use crate::format::{Manifest, VolumeRecord};
use crate::manifest::{Authenticated, TrustPolicy};
use crate::pipeline::chunk::{ChunkStore, fetch_chunks, list_chunks};
use crate::pipeline::upload::{PartPolicy, upload_parts};
use crate::repo::Repo;
use anyhow::{Result, anyhow};
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use tokio_util::sync::CancellationToken;

/// What one backup's copy did.
#[derive(Debug, Default)]
pub struct Copied {
    pub backup_id: String,
    /// Already complete in the target: nothing copied.
    pub present: bool,
    pub bytes: u64,
    pub objects: usize,
}

/// Which backups to copy.
pub enum Which {
    /// This one.
    One(String),
    /// Every genuine one.
    All,
    /// The newest genuine one.
    Newest,
}

/// Copies the chosen backups of `app` from `from` to `to`, under the target's lock.
pub async fn copy(
    from: &Repo,
    to: &Repo,
    app: &str,
    which: Which,
    trust: &TrustPolicy,
    parts: &PartPolicy,
    cancel: &CancellationToken,
) -> Result<Vec<Copied>> {
    let backups: Vec<Authenticated> = match which {
        Which::One(id) => vec![from.read(app, Some(&id), trust).await?],
        Which::Newest => vec![from.read(app, None, trust).await?],
        Which::All => {
            let listed = from.list(Some(app), trust).await?;
            for refused in listed.iter().filter_map(|l| l.outcome.as_ref().err()) {
                tracing::warn!("not copying {}: {}", refused.backup_id, refused.reason);
            }
            listed.into_iter().filter_map(|l| l.outcome.ok()).collect()
        }
    };
    crate::state::exclusively(to, app, "copy", cancel, |cancel| async move {
        let mut done = Vec::with_capacity(backups.len());
        let mut failed: Option<anyhow::Error> = None;
        let mut failures = Vec::new();
        for backup in &backups {
            let id = &backup.manifest.backup_id;
            match copy_one(from, to, &backup.manifest, trust, parts, &cancel).await {
                Ok(copied) => done.push(copied),
                // One backup that cannot be copied does not keep the others from the target.
                Err(e) if !cancel.is_cancelled() && backups.len() > 1 => {
                    tracing::error!("backup {id} was not copied: {e:#}");
                    failures.push(id.clone());
                    failed.get_or_insert(e);
                }
                Err(e) => return Err(e.context(format!("copying backup {id} of {app}"))),
            }
        }
        match failed {
            None => Ok(done),
            Some(first) => Err(first.context(format!(
                "{} of {} backups of {app} were not copied from {} to {} ({}); the others were",
                failures.len(),
                backups.len(),
                from.url(),
                to.url(),
                failures.join(", ")
            ))),
        }
    })
    .await
}

async fn copy_one(
    from: &Repo,
    to: &Repo,
    manifest: &Manifest,
    trust: &TrustPolicy,
    parts: &PartPolicy,
    cancel: &CancellationToken,
) -> Result<Copied> {
    let (app, id) = (&manifest.app, &manifest.backup_id);
    let mut copied = Copied {
        backup_id: id.clone(),
        ..Default::default()
    };
    if to.read(app, Some(id), trust).await.is_ok() {
        copied.present = true;
        return Ok(copied);
    }
    // The chunk lists of one backup at a time are in memory (format 5), read and checked.
    let mut listed = std::borrow::Cow::Borrowed(manifest);
    if manifest
        .volumes
        .iter()
        .any(|v| v.chunks.is_empty() && !v.lists.is_empty())
    {
        let mut read = manifest.clone();
        from.read_lists(&mut read).await?;
        listed = std::borrow::Cow::Owned(read);
    }
    let manifest = &*listed;
    let target_chunks = if manifest.volumes.iter().any(VolumeRecord::is_chunked) {
        list_chunks(&to.chunk_store(app))
            .await
            .map_err(|e| anyhow!("cannot list the chunks in {}: {e}", to.url()))?
    } else {
        Default::default()
    };
    for record in &manifest.volumes {
        if cancel.is_cancelled() {
            return Err(crate::error::interrupted());
        }
        let (bytes, objects) = if record.is_chunked() {
            copy_chunks(
                from.chunk_store(app),
                to.chunk_store(app),
                record,
                &target_chunks,
            )
            .await?
        } else {
            copy_object(from, to, manifest, record, parts, cancel).await?
        };
        copied.bytes += bytes;
        copied.objects += objects;
    }
    // The bytes written are authenticated again and must say what was copied: a manifest
    // swapped in the source while the objects were copied is not carried over.
    let (body, signature) = from.manifest_bytes(app, id).await?;
    let again = crate::manifest::authenticate(app, id, &body, signature.as_deref(), trust)
        .map_err(|refused| crate::error::verification(refused.to_string()))?;
    // (As stored: the chunk lists read from their objects are not in the JSON.)
    if crate::format::manifest_json(&again.manifest)? != crate::format::manifest_json(manifest)? {
        return Err(crate::error::verification(format!(
            "the manifest of backup {id} changed in {} while it was copied: not committed",
            from.url()
        )));
    }
    if cancel.is_cancelled() {
        return Err(crate::error::interrupted());
    }
    to.commit_bytes(app, id, &body, signature.as_deref())
        .await?;
    tracing::info!(backup = %id, bytes = copied.bytes, objects = copied.objects, "copied");
    Ok(copied)
}

/// One volume object (each of its segments to an object of the same name), streamed: its size
/// and sha256 checked as it is uploaded, completed only when both match the manifest. Skipped
/// when the target has every segment and they add up to the recorded size.
async fn copy_object(
    from: &Repo,
    to: &Repo,
    manifest: &Manifest,
    record: &VolumeRecord,
    parts: &PartPolicy,
    cancel: &CancellationToken,
) -> Result<(u64, usize)> {
    use crate::pipeline::PipelineError;
    use crate::pipeline::upload::segment_locations;
    use tokio::io::AsyncReadExt;
    let (app, id) = (&manifest.app, &manifest.backup_id);
    let source = from.object(app, id, &record.object);
    let target = to.object(app, id, &record.object);
    let sources = segment_locations(&source.location, record.segments);
    let targets = segment_locations(&target.location, record.segments);
    let mut present = Some(0u64);
    for at in &targets {
        present = match (present, target.objects.head(at).await) {
            (Some(total), Ok(head)) => total.checked_add(head.size),
            _ => None,
        };
    }
    if present == Some(record.stored_size) {
        return Ok((0, 0));
    }
    let mut sizes = Vec::with_capacity(sources.len());
    for at in &sources {
        sizes.push(source.objects.head(at).await?.size);
    }
    let not_copied = || {
        crate::error::verification(format!(
            "{} in {} does not match the signed manifest (size or sha256): not copied",
            source.location,
            from.url()
        ))
    };
    let total = sizes.iter().try_fold(0u64, |t, s| t.checked_add(*s));
    if total != Some(record.stored_size) {
        return Err(not_copied());
    }
    let reader = crate::pipeline::download::open_objects(&source.objects, sources).await?;
    let expected = crate::pipeline::tally::Expected {
        size: record.stored_size,
        sha256: record.sha256.clone(),
    };
    let (mut reader, _) = crate::pipeline::tally::TallyReader::expecting(reader, expected);
    let mut uploaded = Vec::with_capacity(sizes.len());
    for (size, at) in sizes.iter().zip(&targets) {
        // A segment there for each segment here: the parts grow only when the target takes
        // fewer parts per object than the source did.
        let policy = PartPolicy {
            part_size: parts
                .part_size
                .max(size.div_ceil(parts.max_parts.max(1) as u64) as usize),
            ..*parts
        };
        let segment = upload_parts(
            &target.objects,
            at,
            to.upload_attributes().clone(),
            (&mut reader).take(*size),
            &policy,
            cancel,
        )
        .await
        .map_err(|e| match e {
            PipelineError::Io(io) => PipelineError::from_read_chain(io),
            other => other,
        });
        match segment {
            Ok(segment) if segment.segments == 1 => uploaded.push(segment),
            other => {
                for segment in uploaded {
                    segment.abort().await;
                }
                return match other {
                    Err(PipelineError::Verification(_)) => Err(not_copied()),
                    Err(e) => Err(e.into()),
                    Ok(split) => {
                        split.abort().await;
                        Err(anyhow!(
                            "{at}: a segment did not fit one object in {}",
                            to.url()
                        ))
                    }
                };
            }
        }
    }
    // The end of the source, where its size and sha256 are checked.
    if !matches!(reader.read(&mut [0u8; 1]).await, Ok(0)) {
        for segment in uploaded {
            segment.abort().await;
        }
        return Err(not_copied());
    }
    let objects = uploaded.len();
    for segment in uploaded {
        // The rest are aborted as they drop; the segments completed before go too.
        if let Err(error) = segment.complete().await {
            to.delete_volume_object(app, id, record).await;
            return Err(error.into());
        }
    }
    Ok((record.stored_size, objects))
}

/// The chunks of one volume the target lacks, each checked (size, sha256) before it is
/// written under the same name.
async fn copy_chunks(
    from: ChunkStore,
    to: ChunkStore,
    record: &VolumeRecord,
    present: &std::collections::HashMap<crate::format::Hex32, u64>,
) -> Result<(u64, usize)> {
    use sha2::Digest;
    let mut seen = std::collections::HashSet::new();
    // The list objects too (format 5), which are checked and named as chunks are.
    let lists: Vec<_> = record.lists.iter().map(|l| l.object()).collect();
    let missing: Vec<_> = record
        .chunks
        .iter()
        .chain(&lists)
        .filter(|c| present.get(&c.sha256) != Some(&c.size) && seen.insert(c.sha256))
        .copied()
        .collect();
    let count = missing.len();
    let mut fetched = std::pin::pin!(fetch_chunks(from, missing));
    let mut bytes = 0;
    let mut puts = futures::stream::FuturesUnordered::new();
    while let Some((chunk, data)) = fetched.try_next().await? {
        if sha2::Sha256::digest(&data)[..] != chunk.sha256.0 {
            return Err(crate::error::verification(format!(
                "chunk {} does not match the signed manifest: not copied",
                chunk.sha256
            )));
        }
        bytes += data.len() as u64;
        let to = to.clone();
        puts.push(async move {
            to.objects
                .put_opts(
                    &to.location(&chunk.sha256),
                    data.into(),
                    object_store::PutOptions {
                        attributes: to.attributes.clone(),
                        ..Default::default()
                    },
                )
                .await
        });
        while puts.len() >= crate::pipeline::chunk::IN_FLIGHT {
            puts.next().await.transpose()?;
        }
    }
    while puts.next().await.transpose()?.is_some() {}
    Ok((bytes, count))
}
