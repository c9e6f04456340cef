//! Upload stage: cuts a stream into parts, uploads several at once, and hashes what it stores.
//!
//! Every part has the same size, whatever the stream's: memory is bounded by `parts_in_flight`
//! × the part size (4 × 8 MiB by default) at any scale. The size of the stream is unknown up
//! front, and a store takes at most `max_parts` parts per object, so a stream longer than
//! `max_parts` parts goes on in the next *segment*, an object of its own named after the first
//! ([`crate::format::segment_name`]): 8 MiB parts and S3's 10,000-part limit make segments of
//! 78 GiB, a volume of 1 TiB fourteen of them. (Parts that grew instead, as they did before,
//! reach 1 GiB near 1 TiB: 4 GiB of memory with four in flight.)
//!
//! [`upload_parts`] does not complete the upload: it returns [`UploadedParts`], which the caller
//! completes once it knows the producer of the stream succeeded, or aborts. A failed part, a
//! cancellation, or an [`UploadedParts`] dropped unfinished aborts every segment's multipart
//! upload, so no half-written object and no orphan parts remain.
//!
//! Where it sits: A stage in `pipeline`: sees an object store and a path.

use super::PipelineError;
use bytes::Bytes;
use object_store::path::Path;
use object_store::{
    Attributes, MultipartUpload, ObjectStore, ObjectStoreExt, PutMultipartOptions, PutPayload,
};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How a stream is cut into parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartPolicy {
    /// Size of every part but the last of each segment; S3 needs at least 5 MiB.
    pub part_size: usize,
    /// The store's limit on parts per object (S3 and GCS: 10,000; some S3-compatibles: 1,000).
    pub max_parts: usize,
    /// Parts uploading at once.
    pub parts_in_flight: usize,
    /// Each 8 MiB of a part must be stored within this long, retries included; a part that
    /// misses its deadline (a stalled connection that no read timeout sees while the body is
    /// being sent) aborts the upload.
    pub stall_timeout: std::time::Duration,
}

impl Default for PartPolicy {
    fn default() -> Self {
        Self {
            part_size: 8 << 20,
            max_parts: 10_000,
            parts_in_flight: 4,
            stall_timeout: std::time::Duration::from_secs(120),
        }
    }
}

impl PartPolicy {
    /// The most one segment (one object) holds.
    pub fn segment_bytes(&self) -> u64 {
        (self.part_size as u64).saturating_mul(self.max_parts as u64)
    }

    /// How long a part of `size` bytes may take.
    pub fn part_deadline(&self, size: usize) -> std::time::Duration {
        let chunks = size.div_ceil(8 << 20).max(1) as u32;
        self.stall_timeout.saturating_mul(chunks)
    }

    /// The largest stream this policy can upload.
    pub fn max_bytes(&self) -> u64 {
        self.segment_bytes()
            .saturating_mul(u64::from(crate::format::MAX_SEGMENTS))
    }
}

/// Where segment `index` of the object at `location` lies: the object itself, then its name
/// with `.0001`, … appended to it as it is (no part of `location` is encoded again).
pub fn segment_location(location: &Path, index: u32) -> Path {
    Path::parse(crate::format::segment_name(location.as_ref(), index))
        .expect("a valid path with a plain suffix is valid")
}

/// Where every segment of the object at `location` lies, in order.
pub fn segment_locations(location: &Path, segments: u32) -> Vec<Path> {
    (0..segments.max(1))
        .map(|index| segment_location(location, index))
        .collect()
}

/// One segment's multipart upload, not yet completed.
type Segment = (Path, Box<dyn MultipartUpload>);

/// The multipart uploads of a stream (one per segment) whose parts are all stored, waiting to
/// be completed or aborted.
pub struct UploadedParts {
    uploads: Vec<Segment>,
    store: Arc<dyn ObjectStore>,
    /// Bytes stored.
    pub size: u64,
    /// Hex SHA-256 of the bytes stored (all segments, in order).
    pub sha256: String,
    /// Number of parts.
    pub parts: usize,
    /// Number of objects: the first, then its continuations.
    pub segments: u32,
}

impl UploadedParts {
    /// Makes the objects visible, in order; when one fails, the rest are aborted and those
    /// already completed deleted.
    pub async fn complete(mut self) -> Result<(), PipelineError> {
        let mut uploads = std::mem::take(&mut self.uploads).into_iter();
        let mut completed = Vec::new();
        while let Some((location, mut upload)) = uploads.next() {
            if let Err(err) = upload.complete().await {
                abort_logged(upload, &location).await;
                for (location, upload) in uploads {
                    abort_logged(upload, &location).await;
                }
                for location in completed {
                    if let Err(e) = self.store.delete(&location).await {
                        tracing::warn!(%location, "could not delete a segment of an upload that failed: {e}");
                    }
                }
                return Err(err.into());
            }
            completed.push(location);
        }
        Ok(())
    }

    /// Discards the parts.
    pub async fn abort(mut self) {
        for (location, upload) in std::mem::take(&mut self.uploads) {
            abort_logged(upload, &location).await;
        }
    }
}

impl Drop for UploadedParts {
    fn drop(&mut self) {
        let uploads = std::mem::take(&mut self.uploads);
        if !uploads.is_empty()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                for (location, upload) in uploads {
                    abort_logged(upload, &location).await;
                }
            });
        }
    }
}

async fn abort_logged(mut upload: Box<dyn MultipartUpload>, location: &Path) {
    match upload.abort().await {
        Ok(()) => tracing::debug!(%location, "aborted multipart upload"),
        Err(err) => tracing::warn!(
            %location,
            "could not abort the multipart upload ({err}); its parts may remain in the bucket until a lifecycle rule or `lifeboat prune` removes them"
        ),
    }
}

/// Reads `reader` to its end and stores it as the parts of a multipart upload at `location`,
/// and of its continuations ([`segment_location`]) when it holds more than `max_parts` parts.
pub async fn upload_parts<R>(
    store: &Arc<dyn ObjectStore>,
    location: &Path,
    attributes: Attributes,
    mut reader: R,
    policy: &PartPolicy,
    cancel: &CancellationToken,
) -> Result<UploadedParts, PipelineError>
where
    R: AsyncRead + Unpin,
{
    let first = start_upload(store, location, &attributes, policy, cancel).await?;
    let mut uploads: Vec<Segment> = vec![(location.clone(), first)];
    let mut in_flight: JoinSet<object_store::Result<()>> = JoinSet::new();
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut parts = 0usize;
    let mut in_segment = 0usize;
    let part_size = policy.part_size.max(1);

    let outcome: Result<(), PipelineError> = async {
        loop {
            let part = read_part(&mut reader, part_size, cancel).await?;
            if part.is_empty() && parts > 0 {
                break;
            }
            if in_segment >= policy.max_parts.max(1) {
                let index = uploads.len() as u32;
                if index >= crate::format::MAX_SEGMENTS {
                    return Err(PipelineError::TooLarge {
                        max_bytes: policy.max_bytes(),
                        max_parts: policy.max_parts,
                    });
                }
                let at = segment_location(location, index);
                let next = start_upload(store, &at, &attributes, policy, cancel).await?;
                tracing::debug!(location = %at, "the stream goes on in a new segment");
                uploads.push((at, next));
                in_segment = 0;
            }
            let last = part.len() < part_size;
            hasher.update(&part);
            size += part.len() as u64;
            while in_flight.len() >= policy.parts_in_flight.max(1) {
                wait_one(&mut in_flight, cancel).await?;
            }
            let deadline = policy.part_deadline(part.len());
            let (_, upload) = uploads.last_mut().expect("a segment is under way");
            let put = upload.put_part(PutPayload::from(part));
            in_flight.spawn(async move {
                tokio::time::timeout(deadline, put).await.unwrap_or_else(|_| {
                    Err(object_store::Error::Generic {
                        store: "upload",
                        source: format!(
                            "a part made no progress for {} s (stalled connection); the upload is aborted",
                            deadline.as_secs()
                        )
                        .into(),
                    })
                })
            });
            parts += 1;
            in_segment += 1;
            if last {
                break;
            }
        }
        while !in_flight.is_empty() {
            wait_one(&mut in_flight, cancel).await?;
        }
        Ok(())
    }
    .await;

    if let Err(err) = outcome {
        in_flight.abort_all();
        // The pipe first: its spool space goes back to the other stores' pipes now, not after
        // the abort's round trips to a store that is failing.
        drop(reader);
        for (location, upload) in uploads {
            abort_logged(upload, &location).await;
        }
        return Err(err);
    }
    Ok(UploadedParts {
        segments: uploads.len() as u32,
        uploads,
        store: Arc::clone(store),
        size,
        sha256: hex::encode(hasher.finalize()),
        parts,
    })
}

/// Starts the multipart upload of one segment, within the stall deadline (a store that does
/// not answer must not hold every other store's read), and stopped with the rest (a signal,
/// the store's lock lost). A start still under way then goes on in the background and is
/// aborted if it completes.
async fn start_upload(
    store: &Arc<dyn ObjectStore>,
    location: &Path,
    attributes: &Attributes,
    policy: &PartPolicy,
    cancel: &CancellationToken,
) -> Result<Box<dyn MultipartUpload>, PipelineError> {
    let options = PutMultipartOptions {
        attributes: attributes.clone(),
        ..Default::default()
    };
    let mut start = Box::pin({
        let (store, location) = (Arc::clone(store), location.clone());
        async move { store.put_multipart_opts(&location, options).await }
    });
    let given_up = tokio::select! {
        started = tokio::time::timeout(policy.stall_timeout, &mut start) => match started {
            Ok(started) => Ok(started?),
            Err(_) => Err(PipelineError::Store(object_store::Error::Generic {
                store: "upload",
                source: format!(
                    "the store did not start the upload within {} s",
                    policy.stall_timeout.as_secs()
                )
                .into(),
            })),
        },
        () = cancel.cancelled() => Err(PipelineError::Cancelled),
    };
    match given_up {
        Ok(upload) => Ok(upload),
        Err(error) => {
            let location = location.clone();
            tokio::spawn(async move {
                let late = tokio::time::timeout(std::time::Duration::from_secs(300), start);
                if let Ok(Ok(upload)) = late.await {
                    abort_logged(upload, &location).await;
                }
            });
            Err(error)
        }
    }
}

/// Reads up to `size` bytes; fewer only at end of stream.
async fn read_part<R: AsyncRead + Unpin>(
    reader: &mut R,
    size: usize,
    cancel: &CancellationToken,
) -> Result<Bytes, PipelineError> {
    let mut buf = vec![0u8; size];
    let mut filled = 0;
    while filled < size {
        let n = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(PipelineError::Cancelled),
            n = reader.read(&mut buf[filled..]) => n.map_err(PipelineError::Io)?,
        };
        if n == 0 {
            break;
        }
        filled += n;
    }
    buf.truncate(filled);
    Ok(Bytes::from(buf))
}

async fn wait_one(
    in_flight: &mut JoinSet<object_store::Result<()>>,
    cancel: &CancellationToken,
) -> Result<(), PipelineError> {
    tokio::select! {
        biased;
        _ = cancel.cancelled() => Err(PipelineError::Cancelled),
        joined = in_flight.join_next() => match joined {
            Some(Ok(result)) => Ok(result?),
            Some(Err(join_error)) => Err(PipelineError::Io(std::io::Error::other(format!("upload task failed: {join_error}")))),
            None => Ok(()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;
    use object_store::memory::InMemory;

    fn small_policy() -> PartPolicy {
        PartPolicy {
            part_size: 1000,
            max_parts: 20,
            parts_in_flight: 3,
            ..Default::default()
        }
    }

    #[test]
    fn parts_never_grow_and_segments_cover_big_streams() {
        let s3 = PartPolicy::default();
        assert_eq!(s3.part_size, 8 << 20);
        assert_eq!(s3.segment_bytes(), 10_000 * (8 << 20));
        assert!(s3.max_bytes() >= 700 << 40, "hundreds of TiB");
        let small = PartPolicy {
            max_parts: 1000,
            ..s3
        };
        assert!(small.max_bytes() >= 70 << 40);
        assert_eq!(s3.part_deadline(8 << 20).as_secs(), 120);
        assert_eq!(s3.part_deadline(1).as_secs(), 120);
        assert_eq!(s3.part_deadline(64 << 20).as_secs(), 960);
        let at = Path::from("app/id/data.tar.zst.age");
        assert_eq!(segment_location(&at, 0), at);
        assert_eq!(
            segment_location(&at, 12),
            Path::from("app/id/data.tar.zst.age.0012")
        );
        // A store prefix keeps its characters as the URL gave them (`%20`, `~`): a segment
        // lies beside the object, not under a prefix encoded again.
        for prefix in ["lifeboat%20backups", "team~x", "a[1]"] {
            let at = Path::parse(format!("{prefix}/app/id/v.tar.zst.age")).unwrap();
            assert_eq!(segment_location(&at, 0), at, "{prefix}");
            assert_eq!(
                segment_location(&at, 1).as_ref(),
                format!("{prefix}/app/id/v.tar.zst.age.0001"),
                "{prefix}"
            );
        }
    }

    #[tokio::test]
    async fn uploads_and_hashes_a_multi_part_stream() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let data: Vec<u8> = (0..15_500u32).map(|i| (i * 7 % 256) as u8).collect();
        let location = Path::from("a/b.age");
        let parts = upload_parts(
            &store,
            &location,
            Attributes::new(),
            &data[..],
            &small_policy(),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
        assert_eq!(parts.size, data.len() as u64);
        assert_eq!(parts.sha256, hex::encode(Sha256::digest(&data)));
        assert_eq!((parts.parts, parts.segments), (16, 1));
        assert!(
            store.head(&location).await.is_err(),
            "not visible before complete"
        );
        parts.complete().await.unwrap();
        let stored = store.get(&location).await.unwrap().bytes().await.unwrap();
        assert_eq!(stored, data);
    }

    /// A stream of more parts than the store takes per object goes on in segments of equal
    /// parts; their concatenation is the stream, and nothing is visible before completion.
    #[tokio::test]
    async fn a_long_stream_goes_on_in_segments_of_equal_parts() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let policy = PartPolicy {
            part_size: 100,
            max_parts: 3,
            parts_in_flight: 2,
            ..Default::default()
        };
        let location = Path::from("a/v.age");
        for (len, segments) in [(0usize, 1u32), (300, 1), (301, 2), (600, 2), (1000, 4)] {
            let data: Vec<u8> = (0..len).map(|i| (i * 13 % 251) as u8).collect();
            let parts = upload_parts(
                &store,
                &location,
                Attributes::new(),
                &data[..],
                &policy,
                &CancellationToken::new(),
            )
            .await
            .unwrap();
            assert_eq!(
                (parts.size, parts.segments),
                (len as u64, segments),
                "{len}"
            );
            assert_eq!(parts.sha256, hex::encode(Sha256::digest(&data)));
            let listed = store.list(None).try_collect::<Vec<_>>().await.unwrap();
            assert!(listed.is_empty(), "{len}: visible before complete");
            parts.complete().await.unwrap();
            let mut stored = Vec::new();
            for index in 0..segments {
                let at = segment_location(&location, index);
                let bytes = store.get(&at).await.unwrap().bytes().await.unwrap();
                assert!(bytes.len() <= 300, "{len}: at most max_parts parts");
                stored.extend_from_slice(&bytes);
                store.delete(&at).await.unwrap();
            }
            assert_eq!(stored, data, "{len}");
        }
    }

    /// A failed upload leaves no segment behind, the ones begun before it included.
    #[tokio::test]
    async fn a_failure_in_a_later_segment_leaves_nothing() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let policy = PartPolicy {
            part_size: 10,
            max_parts: 2,
            parts_in_flight: 2,
            ..Default::default()
        };
        let data = [7u8; 75];
        let failing = tokio::io::AsyncReadExt::chain(&data[..], failing_reader());
        let err = upload_parts(
            &store,
            &Path::from("big"),
            Attributes::new(),
            failing,
            &policy,
            &CancellationToken::new(),
        )
        .await
        .err()
        .unwrap();
        assert!(matches!(err, PipelineError::Io(_)), "{err}");
        let listed = store.list(None).try_collect::<Vec<_>>().await.unwrap();
        assert!(listed.is_empty(), "{listed:?}");
    }

    /// A reader that fails at once.
    fn failing_reader() -> impl AsyncRead + Unpin {
        struct Failing;
        impl AsyncRead for Failing {
            fn poll_read(
                self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
                _: &mut tokio::io::ReadBuf<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::task::Poll::Ready(Err(std::io::Error::other("the disk went away")))
            }
        }
        Failing
    }

    #[tokio::test]
    async fn cancellation_stops_the_upload() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let cancel = CancellationToken::new();
        cancel.cancel();
        let (_writer, reader) = tokio::io::duplex(16);
        let err = upload_parts(
            &store,
            &Path::from("x"),
            Attributes::new(),
            reader,
            &small_policy(),
            &cancel,
        )
        .await
        .err()
        .unwrap();
        assert!(matches!(err, PipelineError::Cancelled));
    }

    #[tokio::test]
    async fn an_empty_stream_still_makes_an_object() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let parts = upload_parts(
            &store,
            &Path::from("e"),
            Attributes::new(),
            &b""[..],
            &small_policy(),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
        assert_eq!((parts.size, parts.parts), (0, 1));
        parts.complete().await.unwrap();
    }
}
