//! The write chain of one volume, written once and in data order (like bupstash's `put_data`):
//!
//! ```text
//! tar stream → tar_end (ended properly?) → tally (tar size, root entry)
//!            → compress → encrypt → pipe (memory, or the disk spool)
//!            → upload (multipart parts, sha256 of what is stored) → [finish] the object
//! ```
//!
//! [`seal`] reads the tar to its end and returns a [`Sealing`] ([`seal_each`]: one per store,
//! the tar read once): the tar is read, its upload may
//! still be draining the spool. [`Sealing::finish`] completes the upload and gives the one
//! result a volume record needs, [`Sealed`]; [`Sealing::abandon`] aborts it. Which stage an
//! error belongs to is decided here, once: [`SealError`].
//!
//! It sits in `pipeline`, under the operations: it sees an object store and a path, never the
//! bucket layout, Docker or the manifest.

use super::PipelineError;
use super::compress::{CompressionSettings, compressing_writer};
use super::encrypt::encrypting_writer;
use super::fan_out::StoreTokens;
use super::spool::{self, SpoolBudget};
use super::tally::TallyReader;
use super::tar_check::root_meta;
use super::tar_end::TarEndCheck;
use super::upload::{PartPolicy, UploadedParts, upload_parts};
use crate::format::RootMeta;
use crate::keys::Recipient;
use crate::progress::VolumeProgress;
use object_store::path::Path;
use object_store::{Attributes, ObjectStore};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWriteExt, BufReader};
use tokio_util::sync::CancellationToken;

/// Where a sealed volume goes, and how it is uploaded.
#[derive(Clone)]
pub struct Destination {
    pub objects: Arc<dyn ObjectStore>,
    pub location: Path,
    pub attributes: Attributes,
    pub parts: PartPolicy,
    /// The disk spool between the reader and the upload (`None`: a 1 MiB in-memory pipe).
    pub spool: Option<Arc<SpoolBudget>>,
}

/// How a volume is sealed: compressed, then encrypted to these recipients.
#[derive(Clone)]
pub struct Sealer {
    pub recipients: Arc<Vec<Recipient>>,
    pub compression: CompressionSettings,
}

/// What a stored volume is: everything its manifest record needs from the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// Bytes of the uncompressed tar stream.
    pub tar_size: u64,
    /// The volume root's mode, owner and mtime, when the tar starts with it.
    pub root: Option<RootMeta>,
    /// Bytes stored.
    pub stored_size: u64,
    /// Hex sha256 of the bytes stored.
    pub sha256: String,
    /// The objects they are stored in (a segment per `max_parts` parts).
    pub segments: u32,
}

/// Which stage failed.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The spool could not be set up.
    #[error("cannot set up the spool: {0}")]
    Spool(#[source] std::io::Error),
    /// Reading, compressing or encrypting the tar stream failed.
    #[error("reading the tar stream")]
    Read(#[source] PipelineError),
    /// The store refused or lost the upload.
    #[error("uploading to {location}")]
    Upload {
        location: Path,
        #[source]
        source: PipelineError,
    },
    /// The cancellation token given to [`seal`] fired.
    #[error("interrupted")]
    Cancelled,
    /// Writing to several stores, every store's upload failed before the tar was read: each
    /// one's error, in the order of the destinations (a stopped one's is `Cancelled`).
    #[error("every store's upload failed")]
    EveryUpload(Vec<SealError>),
}

type UploadTask = tokio::task::JoinHandle<Result<UploadedParts, PipelineError>>;

/// A volume whose tar has been read to its end; its upload may still be running.
pub struct Sealing {
    pub tar_size: u64,
    pub root: Option<RootMeta>,
    location: Path,
    upload: UploadTask,
    /// Cancels this upload alone.
    cancel: CancellationToken,
}

/// Reads `tar` to its end through the write chain into an upload to `to`. The upload keeps
/// running after this returns when the spool holds what it has not sent yet.
pub async fn seal(
    tar: impl AsyncRead + Send + Unpin,
    sealer: &Sealer,
    to: &Destination,
    progress: &VolumeProgress,
    cancel: &CancellationToken,
) -> Result<Sealing, SealError> {
    let to = [(to.clone(), StoreTokens::stopped_by(cancel.clone()))];
    let mut sealings = seal_each(tar, sealer, &to, progress, cancel).await?;
    Ok(sealings.pop().expect("one destination, one upload"))
}

/// [`seal`] to several destinations at once: the tar is read, compressed and encrypted once,
/// and the same bytes go to an upload per destination ([`super::fan_out`]), each stopped by
/// its store's token (a store whose lock is lost) or by `cancel`, which also stops the
/// reading; an upload the store refuses marks its store failed. Returns the uploads in the
/// order of `to` once the tar is read; an upload that failed meanwhile says so from
/// [`Sealing::finish`]. Fails only when reading fails or every upload has.
pub async fn seal_each(
    tar: impl AsyncRead + Send + Unpin,
    sealer: &Sealer,
    to: &[(Destination, StoreTokens)],
    progress: &VolumeProgress,
    cancel: &CancellationToken,
) -> Result<Vec<Sealing>, SealError> {
    let mut writers = Vec::with_capacity(to.len());
    let mut uploads = Vec::with_capacity(to.len());
    for (to, tokens) in to {
        let (pipe_writer, pipe_reader) =
            spool::pipe(to.spool.as_ref()).map_err(SealError::Spool)?;
        let upload_cancel = tokens.stop.child_token();
        let upload = tokio::spawn({
            let to = to.clone();
            let cancel = upload_cancel.clone();
            let failed = tokens.failed.clone();
            async move {
                let uploaded = upload_parts(
                    &to.objects,
                    &to.location,
                    to.attributes,
                    pipe_reader,
                    &to.parts,
                    &cancel,
                )
                .await;
                if matches!(&uploaded, Err(e) if !matches!(e, PipelineError::Cancelled)) {
                    failed.cancel();
                }
                uploaded
            }
        });
        writers.push(pipe_writer);
        uploads.push((to.location.clone(), upload, upload_cancel));
    }
    let pipe = super::fan_out::tee(writers);
    let read = tokio::select! {
        read = read_into(tar, sealer, progress.count_stored(pipe)) => read,
        () = cancel.cancelled() => Err(PipelineError::Cancelled),
    };
    let read_error = match read {
        Ok((tar_size, root)) => {
            return Ok(uploads
                .into_iter()
                .map(|(location, upload, cancel)| Sealing {
                    tar_size,
                    root,
                    location,
                    upload,
                    cancel,
                })
                .collect());
        }
        Err(error) => error,
    };
    // When every upload ended on its own (refused, or its store stopped) with at least one
    // refusal, the uploads are the cause: the reader then only saw the pipes close. Otherwise
    // the reader's error is, and the uploads are abandoned.
    let mut errors = Vec::with_capacity(uploads.len());
    let mut all_failed = true;
    for ((location, upload, upload_cancel), (_, tokens)) in uploads.into_iter().zip(to) {
        upload_cancel.cancel();
        match upload.await {
            // Stopped by its own store (a lost lock), not by this reader giving up.
            Ok(Err(PipelineError::Cancelled)) if tokens.stop.is_cancelled() => {
                errors.push(SealError::Cancelled)
            }
            Ok(Err(PipelineError::Cancelled)) => all_failed = false,
            Ok(Err(source)) => errors.push(SealError::Upload { location, source }),
            Ok(Ok(parts)) => {
                parts.abort().await;
                all_failed = false;
            }
            Err(_) => all_failed = false,
        }
    }
    if cancel.is_cancelled() {
        return Err(SealError::Cancelled);
    }
    let refused = errors.iter().any(|e| matches!(e, SealError::Upload { .. }));
    if !all_failed || !refused {
        return Err(SealError::Read(read_error));
    }
    match errors.len() {
        1 => Err(errors.remove(0)),
        _ => Err(SealError::EveryUpload(errors)),
    }
}

/// The chain itself: tar → tar_end → tally → compress → encrypt → `pipe`. Returns the tar's
/// size and root entry.
async fn read_into(
    tar: impl AsyncRead + Send + Unpin,
    sealer: &Sealer,
    pipe: impl tokio::io::AsyncWrite + Send + Unpin + 'static,
) -> Result<(u64, Option<RootMeta>), PipelineError> {
    let (tar, tally) = TallyReader::counting(TarEndCheck::new(tar));
    let encrypted = encrypting_writer(&sealer.recipients, pipe).await?;
    let mut compressed = compressing_writer(encrypted, sealer.compression);
    tokio::io::copy_buf(
        &mut BufReader::with_capacity(256 * 1024, tar),
        &mut compressed,
    )
    .await
    .map_err(PipelineError::Io)?;
    compressed.shutdown().await.map_err(PipelineError::Io)?;
    Ok((tally.bytes(), root_meta(&tally.first_block())))
}

impl Sealing {
    /// Waits for the upload and completes it: the object is visible after this.
    pub async fn finish(self) -> Result<Sealed, SealError> {
        let upload_error = |source| SealError::Upload {
            location: self.location.clone(),
            source,
        };
        let parts = match self.upload.await {
            Ok(Ok(parts)) => parts,
            Ok(Err(PipelineError::Cancelled)) => return Err(SealError::Cancelled),
            Ok(Err(e)) => return Err(upload_error(e)),
            Err(join_error) => {
                return Err(upload_error(PipelineError::Io(std::io::Error::other(
                    format!("the upload task failed: {join_error}"),
                ))));
            }
        };
        let (stored_size, sha256, segments) = (parts.size, parts.sha256.clone(), parts.segments);
        parts.complete().await.map_err(upload_error)?;
        Ok(Sealed {
            tar_size: self.tar_size,
            root: self.root,
            stored_size,
            sha256,
            segments,
        })
    }

    /// Stops the upload and aborts its multipart upload: nothing of it stays in the store.
    pub async fn abandon(self) {
        self.cancel.cancel();
        if let Ok(Ok(parts)) = self.upload.await {
            parts.abort().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Compression;
    use crate::pipeline::compress::decompressing_reader;
    use crate::pipeline::encrypt::decrypting_reader;
    use object_store::ObjectStoreExt;
    use object_store::memory::InMemory;
    use object_store::throttle::{ThrottleConfig, ThrottledStore};
    use tokio::io::AsyncReadExt;

    fn block(path: &str, kind: tokio_tar::EntryType, mode: u32, size: u64) -> Vec<u8> {
        let mut header = tokio_tar::Header::new_gnu();
        // The raw name, as Docker writes it: `set_path` would make "./" empty.
        header.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_uid(999);
        header.set_gid(999);
        header.set_mtime(1_700_000_000);
        header.set_size(size);
        header.set_cksum();
        header.as_bytes().to_vec()
    }

    fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = block("./", tokio_tar::EntryType::Directory, 0o755, 0);
        for (name, data) in files {
            out.extend(block(
                name,
                tokio_tar::EntryType::Regular,
                0o644,
                data.len() as u64,
            ));
            out.extend_from_slice(data);
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
        out.extend_from_slice(&[0u8; 1024]);
        out
    }

    fn keys() -> (age::x25519::Identity, Sealer) {
        let identity = age::x25519::Identity::generate();
        let recipient = crate::keys::parse_recipient(&identity.to_public().to_string()).unwrap();
        let sealer = Sealer {
            recipients: Arc::new(vec![recipient]),
            compression: CompressionSettings::new(Compression::Zstd, None),
        };
        (identity, sealer)
    }

    fn destination(objects: Arc<dyn ObjectStore>) -> Destination {
        Destination {
            objects,
            location: Path::from("app/1/vol.tar.zst.age"),
            attributes: Attributes::new(),
            parts: PartPolicy {
                part_size: 5 << 20,
                ..PartPolicy::default()
            },
            spool: None,
        }
    }

    async fn open(objects: &Arc<dyn ObjectStore>, identity: age::x25519::Identity) -> Vec<u8> {
        let stored = objects
            .get(&Path::from("app/1/vol.tar.zst.age"))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let identities: Vec<crate::keys::BoxIdentity> = vec![Box::new(identity)];
        let plain = decrypting_reader(&identities, BufReader::new(&stored[..]), &[])
            .await
            .unwrap();
        let mut tar = Vec::new();
        decompressing_reader(BufReader::new(plain), Compression::Zstd)
            .read_to_end(&mut tar)
            .await
            .unwrap();
        tar
    }

    #[tokio::test]
    async fn a_sealed_volume_opens_to_the_same_tar_and_its_record_matches_the_object() {
        let big: Vec<u8> = (0..12_000_000u32).map(|i| (i % 251) as u8).collect();
        let tar = tar_of(&[("a.txt", b"hello"), ("big.bin", &big)]);
        let objects: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let (identity, sealer) = keys();
        let cancel = CancellationToken::new();
        let progress = crate::progress::Progress::hidden().volume("vol", None);
        let sealing = seal(
            &tar[..],
            &sealer,
            &destination(Arc::clone(&objects)),
            &progress,
            &cancel,
        )
        .await
        .unwrap();
        let sealed = sealing.finish().await.unwrap();
        assert_eq!(sealed.tar_size, tar.len() as u64);
        assert_eq!(sealed.root.map(|r| (r.mode, r.uid)), Some((0o755, 999)));
        let stored = objects
            .get(&Path::from("app/1/vol.tar.zst.age"))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(sealed.stored_size, stored.len() as u64);
        use sha2::Digest;
        assert_eq!(sealed.sha256, hex::encode(sha2::Sha256::digest(&stored)));
        assert_eq!(open(&objects, identity).await, tar);
    }

    #[tokio::test]
    async fn a_tar_cut_short_is_a_read_error_and_leaves_no_object() {
        let tar = tar_of(&[("a.txt", &[7u8; 100_000])]);
        let cut = &tar[..tar.len() - 1024]; // no end-of-archive marker
        let objects: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let (_, sealer) = keys();
        let progress = crate::progress::Progress::hidden().volume("vol", None);
        let err = seal(
            cut,
            &sealer,
            &destination(Arc::clone(&objects)),
            &progress,
            &CancellationToken::new(),
        )
        .await
        .err()
        .unwrap();
        assert!(matches!(err, SealError::Read(_)), "{err:?}");
        let listed = objects.list(None).count().await;
        assert_eq!(listed, 0, "nothing is visible in the store");
    }

    /// A volume longer than a store takes in one object (3 parts of 64 KiB here) is stored as
    /// segments, nothing visible before completion; read back one after the other (as restore
    /// does), they are the sealed volume.
    #[tokio::test]
    async fn a_volume_past_the_part_limit_goes_on_in_segments_that_read_back_as_one() {
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 256) as u8).collect();
        let tar = tar_of(&[("big.bin", &big)]);
        let objects: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let mut to = destination(Arc::clone(&objects));
        to.parts = PartPolicy {
            part_size: 64 << 10,
            max_parts: 3,
            parts_in_flight: 2,
            ..PartPolicy::default()
        };
        let (identity, mut sealer) = keys();
        sealer.compression = CompressionSettings::new(Compression::None, None);
        let progress = crate::progress::Progress::hidden().volume("vol", None);
        let sealing = seal(&tar[..], &sealer, &to, &progress, &CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(objects.list(None).count().await, 0, "nothing visible yet");
        let sealed = sealing.finish().await.unwrap();
        let segment_bytes = 3 * (64 << 10) as u64;
        assert_eq!(
            sealed.segments as u64,
            sealed.stored_size.div_ceil(segment_bytes)
        );
        assert!(sealed.segments > 10, "{}", sealed.segments);
        let locations: Vec<Path> = (0..sealed.segments)
            .map(|i| super::super::upload::segment_location(&to.location, i))
            .collect();
        assert_eq!(
            locations[1].as_ref(),
            "app/1/vol.tar.zst.age.0001",
            "named after the first"
        );
        assert_eq!(objects.list(None).count().await, locations.len());
        let mut stored = Vec::new();
        super::super::download::open_objects(&objects, locations)
            .await
            .unwrap()
            .read_to_end(&mut stored)
            .await
            .unwrap();
        use sha2::Digest;
        assert_eq!(sealed.stored_size, stored.len() as u64);
        assert_eq!(sealed.sha256, hex::encode(sha2::Sha256::digest(&stored)));
        let identities: Vec<crate::keys::BoxIdentity> = vec![Box::new(identity)];
        let plain = decrypting_reader(&identities, BufReader::new(&stored[..]), &[])
            .await
            .unwrap();
        let mut opened = Vec::new();
        BufReader::new(plain)
            .read_to_end(&mut opened)
            .await
            .unwrap();
        assert_eq!(opened, tar);
    }

    /// The same sealed bytes to two stores from one read; the one whose upload fails says so
    /// and leaves nothing, the other completes.
    #[tokio::test]
    async fn one_read_goes_to_every_store_and_a_broken_one_stops_no_other() {
        let big: Vec<u8> = (0..9_000_000u32).map(|i| (i * 31 % 256) as u8).collect();
        let tar = tar_of(&[("big.bin", &big)]);
        let (good, other): (Arc<dyn ObjectStore>, Arc<dyn ObjectStore>) =
            (Arc::new(InMemory::new()), Arc::new(InMemory::new()));
        let dir = tempfile::tempdir().unwrap();
        let broken = crate::pipeline::testing::broken_objects(&dir);
        let (identity, sealer) = keys();
        let cancel = CancellationToken::new();
        let to: Vec<(Destination, StoreTokens)> = [&good, &broken, &other]
            .into_iter()
            .map(|objects| {
                let tokens = StoreTokens::stopped_by(cancel.clone());
                (destination(Arc::clone(objects)), tokens)
            })
            .collect();
        let progress = crate::progress::Progress::hidden().volume("vol", None);
        let each = seal_each(&tar[..], &sealer, &to, &progress, &cancel)
            .await
            .unwrap();
        let mut results = Vec::new();
        for sealing in each {
            results.push(sealing.finish().await);
        }
        assert!(
            matches!(results[1], Err(SealError::Upload { .. })),
            "{:?}",
            results[1]
        );
        let failed: Vec<bool> = to.iter().map(|(_, t)| t.failed.is_cancelled()).collect();
        assert_eq!(
            failed,
            [false, true, false],
            "only the broken store is marked failed"
        );
        let (a, c) = (results[0].as_ref().unwrap(), results[2].as_ref().unwrap());
        assert_eq!(a, c, "the same bytes in both stores");
        assert_eq!(open(&good, identity.clone()).await, tar);
        assert_eq!(open(&other, identity).await, tar);
    }

    /// Every store refuses (an outage): each store's own error comes back, in order, not a
    /// "broken pipe" from the reader that only saw the pipes close.
    #[tokio::test]
    async fn when_every_store_refuses_each_says_why() {
        let big: Vec<u8> = (0..9_000_000u32).map(|i| (i * 17 % 256) as u8).collect();
        let tar = tar_of(&[("big.bin", &big)]);
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let (_, sealer) = keys();
        let cancel = CancellationToken::new();
        let to: Vec<(Destination, StoreTokens)> = dirs
            .iter()
            .map(|dir| {
                let objects = crate::pipeline::testing::broken_objects(dir);
                (
                    destination(objects),
                    StoreTokens::stopped_by(cancel.clone()),
                )
            })
            .collect();
        let progress = crate::progress::Progress::hidden().volume("vol", None);
        let result = seal_each(&tar[..], &sealer, &to, &progress, &cancel).await;
        crate::pipeline::testing::assert_each_refused(result, 2);
    }

    #[tokio::test]
    async fn cancelling_aborts_and_says_so() {
        let objects: Arc<dyn ObjectStore> = Arc::new(ThrottledStore::new(
            InMemory::new(),
            ThrottleConfig {
                wait_put_per_call: std::time::Duration::from_secs(30),
                ..ThrottleConfig::default()
            },
        ));
        let (_, sealer) = keys();
        let cancel = CancellationToken::new();
        let progress = crate::progress::Progress::hidden().volume("vol", None);
        // An endless tar, and an upload stuck in the store: only the cancellation ends them.
        let endless = tokio::io::repeat(0);
        let to = destination(Arc::clone(&objects));
        let sealing = seal(endless, &sealer, &to, &progress, &cancel);
        let canceller = async {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            cancel.cancel();
        };
        let (result, ()) = tokio::join!(sealing, canceller);
        assert!(
            matches!(result, Err(SealError::Cancelled)),
            "{:?}",
            result.err()
        );
    }

    use futures::StreamExt;
}
