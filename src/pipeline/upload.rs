//! Upload stage: cuts a stream into parts, uploads several at once, and hashes what it stores.
//!
//! The size of the stream is unknown up front, so part sizes grow: they double every tenth of
//! the store's part limit, which lets `max_parts` parts hold ~1000 × the first part size × the
//! limit / 10 (8 MiB parts, 10,000-part limit: ~8 TiB; 1,000-part limit: ~800 GiB). Memory is
//! bounded by `parts_in_flight` × the current part size.
//!
//! [`upload_parts`] does not complete the upload: it returns [`UploadedParts`], which the caller
//! completes once it knows the producer of the stream succeeded, or aborts. A failed part, a
//! cancellation, or an [`UploadedParts`] dropped unfinished aborts the multipart upload, so no
//! half-written object and no orphan parts remain.
//!
//! Where it sits: A stage in `pipeline`: sees an object store and a path.

use super::PipelineError;
use bytes::Bytes;
use object_store::path::Path;
use object_store::{Attributes, MultipartUpload, ObjectStore, PutMultipartOptions, PutPayload};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How a stream is cut into parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartPolicy {
    /// Size of the first parts; S3 needs at least 5 MiB for every part but the last.
    pub first_part_size: usize,
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
            first_part_size: 8 << 20,
            max_parts: 10_000,
            parts_in_flight: 4,
            stall_timeout: std::time::Duration::from_secs(120),
        }
    }
}

impl PartPolicy {
    /// Size of part `index` (0-based).
    pub fn part_size(&self, index: usize) -> usize {
        let step = (self.max_parts / 10).max(1);
        let doublings = (index / step).min(16) as u32;
        self.first_part_size.saturating_mul(1usize << doublings)
    }

    /// How long a part of `size` bytes may take.
    pub fn part_deadline(&self, size: usize) -> std::time::Duration {
        let chunks = size.div_ceil(8 << 20).max(1) as u32;
        self.stall_timeout.saturating_mul(chunks)
    }

    /// The largest stream this policy can upload.
    pub fn max_bytes(&self) -> u64 {
        (0..self.max_parts).map(|i| self.part_size(i) as u64).sum()
    }
}

/// A multipart upload whose parts are all stored, waiting to be completed or aborted.
pub struct UploadedParts {
    upload: Option<Box<dyn MultipartUpload>>,
    location: Path,
    /// Bytes stored.
    pub size: u64,
    /// Hex SHA-256 of the bytes stored.
    pub sha256: String,
    /// Number of parts.
    pub parts: usize,
}

impl UploadedParts {
    /// Makes the object visible.
    pub async fn complete(mut self) -> Result<(), PipelineError> {
        let mut upload = self
            .upload
            .take()
            .expect("complete or abort is called once");
        if let Err(err) = upload.complete().await {
            abort_logged(upload, &self.location).await;
            return Err(err.into());
        }
        Ok(())
    }

    /// Discards the parts.
    pub async fn abort(mut self) {
        if let Some(upload) = self.upload.take() {
            abort_logged(upload, &self.location).await;
        }
    }
}

impl Drop for UploadedParts {
    fn drop(&mut self) {
        if let Some(upload) = self.upload.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let location = self.location.clone();
            runtime.spawn(async move { abort_logged(upload, &location).await });
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

/// Reads `reader` to its end and stores it as the parts of a multipart upload at `location`.
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
    let options = PutMultipartOptions {
        attributes,
        ..Default::default()
    };
    // Bounded by the stall deadline (a store that does not answer must not hold every other
    // store's read), and stopped with the rest (a signal, the store's lock lost). A start
    // still under way then goes on in the background and is aborted if it completes.
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
    let mut upload = match given_up {
        Ok(upload) => upload,
        Err(error) => {
            let location = location.clone();
            tokio::spawn(async move {
                let late = tokio::time::timeout(std::time::Duration::from_secs(300), start);
                if let Ok(Ok(upload)) = late.await {
                    abort_logged(upload, &location).await;
                }
            });
            return Err(error);
        }
    };
    let mut in_flight: JoinSet<object_store::Result<()>> = JoinSet::new();
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut parts = 0usize;

    let outcome: Result<(), PipelineError> = async {
        loop {
            let part = read_part(&mut reader, policy.part_size(parts), cancel).await?;
            if part.is_empty() && parts > 0 {
                break;
            }
            if parts >= policy.max_parts {
                return Err(PipelineError::TooLarge {
                    max_bytes: policy.max_bytes(),
                    max_parts: policy.max_parts,
                });
            }
            let last = part.len() < policy.part_size(parts);
            hasher.update(&part);
            size += part.len() as u64;
            while in_flight.len() >= policy.parts_in_flight.max(1) {
                wait_one(&mut in_flight, cancel).await?;
            }
            let deadline = policy.part_deadline(part.len());
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
        abort_logged(upload, location).await;
        return Err(err);
    }
    Ok(UploadedParts {
        upload: Some(upload),
        location: location.clone(),
        size,
        sha256: hex::encode(hasher.finalize()),
        parts,
    })
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
    use object_store::ObjectStoreExt;
    use object_store::memory::InMemory;

    fn small_policy() -> PartPolicy {
        PartPolicy {
            first_part_size: 1000,
            max_parts: 20,
            parts_in_flight: 3,
            ..Default::default()
        }
    }

    #[test]
    fn part_sizes_grow_to_cover_big_streams() {
        let s3 = PartPolicy::default();
        assert_eq!(s3.part_size(0), 8 << 20);
        assert_eq!(s3.part_size(999), 8 << 20);
        assert_eq!(s3.part_size(1000), 16 << 20);
        assert!(s3.max_bytes() >= 5 << 40, "S3 objects up to 5 TiB");
        let small = PartPolicy {
            max_parts: 1000,
            ..s3
        };
        assert!(small.max_bytes() >= 500 << 30);
        assert_eq!(s3.part_deadline(8 << 20).as_secs(), 120);
        assert_eq!(s3.part_deadline(1).as_secs(), 120);
        assert_eq!(s3.part_deadline(64 << 20).as_secs(), 960);
    }

    #[tokio::test]
    async fn uploads_and_hashes_a_multi_part_stream() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let data: Vec<u8> = (0..25_000u32).map(|i| (i * 7 % 256) as u8).collect();
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
        // 2 parts of 1000, then 2000, 4000, ... : 1000*2 + 2000*2 + 4000*2 + 8000*2 > 25000
        assert!(parts.parts > 2);
        assert!(
            store.head(&location).await.is_err(),
            "not visible before complete"
        );
        parts.complete().await.unwrap();
        let stored = store.get(&location).await.unwrap().bytes().await.unwrap();
        assert_eq!(stored, data);
    }

    #[tokio::test]
    async fn too_large_streams_are_refused_and_leave_nothing() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let policy = PartPolicy {
            first_part_size: 10,
            max_parts: 3,
            parts_in_flight: 2,
            ..Default::default()
        };
        let data = vec![0u8; 1000];
        let location = Path::from("big");
        let err = upload_parts(
            &store,
            &location,
            Attributes::new(),
            &data[..],
            &policy,
            &CancellationToken::new(),
        )
        .await
        .err()
        .unwrap();
        assert!(matches!(err, PipelineError::TooLarge { .. }), "{err}");
        assert!(store.head(&location).await.is_err());
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
