//! The read path: one volume object (its segments, in order) from the store to a checked tar
//! stream.
//!
//! ```text
//! store ─ GET ─▶ size+sha256 (against the signed manifest) ─▶ age decrypt ─▶ decompress ─▶ tar policy
//! ```
//! `lifeboat verify` runs it to a sink. A restore runs it once per object *while* the
//! ciphertext goes to a local spool file ([`fetch_verified`]); only when every object has
//! passed does it write anything, and then from the spool ([`open_spooled`]): the bytes written
//! are the bytes verified, downloaded once, and no plaintext touches the disk.
//!
//! The read chain of [`super::seal`], written once, in data order. Like every stage it takes an
//! object store and the object's path; the bucket layout is the caller's.
//!
//! Where it sits: A chain in `pipeline`, under the operations (`restore`, and the `verify`
//! command): sees an object store and a path, never the bucket layout.

use super::PipelineError;
use super::chunk::{ChunkStore, Digest, chunk_plaintext, fetch_chunks, spooled_chunks};
use super::compress::decompressing_reader;
use super::download::{object_stream, open_objects};
use super::encrypt::decrypting_reader;
use super::relay::relay;
use super::tally::{Expected, TallyReader};
use super::tar_check::{EntryRules, PolicyReader, TarSummary, TargetKind, check_archive};
use super::upload::segment_locations;
use crate::format::{SourceKind, VolumeRecord};
use crate::keys::BoxIdentity;
use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use std::path::Path;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, BufReader};

/// Where a volume's stored bytes are: one object (split into `segments`, format 4), or chunks
/// (format 3).
pub enum StoredAt {
    Object {
        objects: Arc<dyn ObjectStore>,
        location: ObjectPath,
        segments: u32,
    },
    Chunks(ChunkStore),
}

impl std::fmt::Display for StoredAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoredAt::Object {
                location,
                segments: 1,
                ..
            } => write!(f, "object {location}"),
            StoredAt::Object {
                location, segments, ..
            } => write!(
                f,
                "object {location} and its {} continuations",
                segments - 1
            ),
            StoredAt::Chunks(store) => write!(f, "chunks under {}/chunks", store.app_dir),
        }
    }
}

/// The plaintext tar of a stored object read through `stored`: decryption (and whatever
/// reads `stored`: the download, the hash) on a task of its own, decompression on the
/// reader's, so that the two use two cores.
async fn plaintext(
    stored: impl AsyncRead + Send + Unpin + 'static,
    record: &VolumeRecord,
    identities: &[BoxIdentity],
) -> Result<Box<dyn AsyncRead + Send + Unpin + 'static>, PipelineError> {
    let plain = decrypting_reader(
        identities,
        BufReader::new(stored),
        &record.encryption.recipients,
    )
    .await?;
    Ok(decompressing_reader(
        BufReader::with_capacity(256 * 1024, relay(plain)),
        record.compression,
    ))
}

/// The entry policy for where a record is written: a host directory gets no device nodes and
/// no setuid/setgid files.
fn rules(record: &VolumeRecord) -> EntryRules {
    EntryRules {
        target: match record.kind {
            SourceKind::Volume => TargetKind::Volume,
            SourceKind::Bind => TargetKind::Bind,
        },
    }
}

/// Parses the whole tar under the entry policy for where it will be written, and checks its
/// size against the manifest.
async fn check_tar(
    tar: impl AsyncRead + Send + Unpin,
    record: &VolumeRecord,
) -> Result<TarSummary, PipelineError> {
    let summary = check_archive(tar, rules(record)).await?;
    if summary.tar_bytes != record.tar_size {
        return Err(PipelineError::Verification(format!(
            "the tar stream of {} is {} bytes but the manifest records {}",
            crate::text::printable(&record.name),
            summary.tar_bytes,
            record.tar_size
        )));
    }
    Ok(summary)
}

/// The stored object of `record` (its segments, one after the other), its size and sha256
/// checked against the manifest as it is read (the check fires at the end of the stream).
async fn open_checked(
    objects: &Arc<dyn ObjectStore>,
    location: &[ObjectPath],
    record: &VolumeRecord,
) -> Result<impl AsyncRead + Send + Unpin + use<>, PipelineError> {
    check_size(objects, location, record).await?;
    let raw = open_objects(objects, location.to_vec()).await?;
    let expected = Expected {
        size: record.stored_size,
        sha256: record.sha256.clone(),
    };
    Ok(TallyReader::expecting(raw, expected).0)
}

/// A cheap first check that names truncation or replacement plainly; the sha256 over the whole
/// stream stays the real check.
async fn check_size(
    objects: &Arc<dyn ObjectStore>,
    location: &[ObjectPath],
    record: &VolumeRecord,
) -> Result<(), PipelineError> {
    let mut size = 0u64;
    for segment in location {
        size = size.saturating_add(objects.head(segment).await?.size);
    }
    if size != record.stored_size {
        let what = match location {
            [one] => format!("stored object {one} is"),
            [first, ..] => format!("the {} segments of {first} are", location.len()),
            [] => "nothing is".into(),
        };
        return Err(PipelineError::Verification(format!(
            "{what} {size} bytes but the manifest records {} bytes (truncated or replaced)",
            record.stored_size
        )));
    }
    Ok(())
}

/// Verifies the stored data of one volume. Without identities only size and sha256 are
/// checked (of every chunk, for a chunked volume).
pub async fn verify_volume(
    at: &StoredAt,
    record: &VolumeRecord,
    identities: Option<&Arc<Vec<BoxIdentity>>>,
) -> Result<Option<TarSummary>, PipelineError> {
    let (objects, location) = match at {
        StoredAt::Object {
            objects,
            location,
            segments,
        } => (objects, segment_locations(location, *segments)),
        StoredAt::Chunks(store) => return verify_chunks(store, record, identities).await,
    };
    let mut stored = open_checked(objects, &location, record).await?;
    let Some(identities) = identities else {
        let mut sink = vec![0u8; 256 * 1024];
        while stored
            .read(&mut sink)
            .await
            .map_err(PipelineError::from_read_chain)?
            > 0
        {}
        return Ok(None);
    };
    let tar = plaintext(stored, record, identities).await?;
    check_tar(tar, record).await.map(Some)
}

/// [`verify_volume`] of a chunked volume.
async fn verify_chunks(
    store: &ChunkStore,
    record: &VolumeRecord,
    identities: Option<&Arc<Vec<BoxIdentity>>>,
) -> Result<Option<TarSummary>, PipelineError> {
    let fetched = fetch_chunks(store.clone(), record.chunks.clone());
    let Some(identities) = identities else {
        use sha2::Digest;
        let mut fetched = std::pin::pin!(fetched);
        while let Some((chunk, bytes)) = fetched.try_next().await? {
            if bytes.len() as u64 != chunk.size
                || sha2::Sha256::digest(&bytes)[..] != chunk.sha256.0
            {
                return Err(PipelineError::Verification(format!(
                    "chunk {} does not match the size and sha256 the manifest records (altered in the store)",
                    store.location(&chunk.sha256)
                )));
            }
        }
        return Ok(None);
    };
    let tar = chunk_plaintext(
        fetched,
        record.compression,
        Arc::clone(identities),
        Digest::Check,
    );
    check_tar(tar, record).await.map(Some)
}

/// A verified object's ciphertext in a local file that has no name (it is gone when closed or
/// when the process dies).
pub struct Spooled {
    file: std::fs::File,
    pub size: u64,
}

/// Downloads the object of `record` at `location` once into a spool file in `dir` while verifying it end to
/// end (size, sha256, decryption, decompression, every tar entry): a [`Spooled`] exists only
/// for an object that passed.
pub async fn fetch_verified(
    at: &StoredAt,
    record: &VolumeRecord,
    identities: &Arc<Vec<BoxIdentity>>,
    dir: &Path,
) -> Result<(Spooled, TarSummary), PipelineError> {
    let spool_error = |e: std::io::Error| {
        PipelineError::Io(std::io::Error::new(
            e.kind(),
            format!("restore spool in {}: {e}", dir.display()),
        ))
    };
    std::fs::create_dir_all(dir).map_err(spool_error)?;
    let file = tempfile::tempfile_in(dir).map_err(spool_error)?;
    let writer = file.try_clone().map_err(spool_error)?;
    // Bounded by bytes, roughly: 64 download pieces, or 4 whole chunks (each up to a few MiB).
    let slots = if matches!(at, StoredAt::Chunks(_)) {
        4
    } else {
        64
    };
    let (to_file, mut from_tee) = tokio::sync::mpsc::channel::<bytes::Bytes>(slots);
    // The spool writer, a thread of its own with large writes: what the verifier reads, in
    // the same order, to the file.
    let write = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut writer = std::io::BufWriter::with_capacity(1 << 20, writer);
        while let Some(chunk) = from_tee.blocking_recv() {
            writer.write_all(&chunk)?;
        }
        writer.flush()
    });
    let write = async move {
        write.await.unwrap_or_else(|e| {
            Err(std::io::Error::other(format!(
                "the spool writer failed: {e}"
            )))
        })
    };
    let (objects, location) = match at {
        StoredAt::Object {
            objects,
            location,
            segments,
        } => (objects, segment_locations(location, *segments)),
        StoredAt::Chunks(store) => {
            // Each chunk's ciphertext to the spool, in order, as it is verified.
            let teed = fetch_chunks(store.clone(), record.chunks.clone()).and_then(move |item| {
                let to_file = to_file.clone();
                async move {
                    to_file.send(item.1.clone()).await.map_err(|_| {
                        PipelineError::Io(std::io::Error::other("the restore spool writer stopped"))
                    })?;
                    Ok(item)
                }
            });
            let verify = check_tar(
                chunk_plaintext(
                    teed,
                    record.compression,
                    Arc::clone(identities),
                    Digest::Check,
                ),
                record,
            );
            let (verified, written) = tokio::join!(verify, write);
            written.map_err(spool_error)?;
            let summary = verified?;
            let size = record.stored_size;
            return Ok((Spooled { file, size }, summary));
        }
    };
    check_size(objects, &location, record).await?;
    let stream = object_stream(objects, location)
        .await?
        .and_then(move |chunk| {
            let to_file = to_file.clone();
            async move {
                to_file
                    .send(chunk.clone())
                    .await
                    .map_err(|_| std::io::Error::other("the restore spool writer stopped"))?;
                Ok(chunk)
            }
        });
    let expected = Expected {
        size: record.stored_size,
        sha256: record.sha256.clone(),
    };
    let checked = TallyReader::expecting(
        tokio_util::io::StreamReader::new(Box::pin(stream)),
        expected,
    )
    .0;
    let verify = async {
        let tar = plaintext(checked, record, identities).await?;
        check_tar(tar, record).await
    };
    let (verified, written) = tokio::join!(verify, write);
    // A spool that could not be written (a full disk) is the cause when both fail.
    written.map_err(spool_error)?;
    let summary = verified?;
    Ok((
        Spooled {
            file,
            size: record.stored_size,
        },
        summary,
    ))
}

/// The plaintext tar of a spooled object, under the entry policy again as it is written.
pub async fn open_spooled(
    spooled: &Spooled,
    record: &VolumeRecord,
    identities: &Arc<Vec<BoxIdentity>>,
) -> Result<impl AsyncRead + Send + Unpin + use<>, PipelineError> {
    use std::io::Seek;
    let mut file = spooled.file.try_clone().map_err(PipelineError::Io)?;
    file.rewind().map_err(PipelineError::Io)?;
    let tar: Box<dyn AsyncRead + Send + Unpin> = if record.is_chunked() {
        let stored = spooled_chunks(file, record.chunks.clone());
        // Every chunk's sha256 was checked on its way into this spool.
        Box::new(chunk_plaintext(
            stored,
            record.compression,
            Arc::clone(identities),
            Digest::CheckedBefore,
        ))
    } else {
        plaintext(tokio::fs::File::from_std(file), record, identities).await?
    };
    Ok(PolicyReader::new(tar, rules(record)).0)
}
