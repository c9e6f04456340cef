//! Counting and hashing stage: an `AsyncRead` wrapper that counts bytes and computes their
//! SHA-256, optionally checks both against what the manifest recorded, and keeps the first tar
//! header block so the volume's root directory (mode, owner, mtime) can be recorded and restored.
//!
//! The reader is moved into the next stage; the [`TallyHandle`] stays with the caller and is
//! read once the chain has reached end of stream.
//!
//! Where it sits: A stage in `pipeline`: plain async I/O.

use sha2::{Digest, Sha256};
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, ReadBuf};

/// The size and SHA-256 a stream must have, from the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub size: u64,
    pub sha256: String,
}

/// The stream differed from what the manifest recorded.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct IntegrityError(String);

#[derive(Default)]
struct Tally {
    bytes: u64,
    hasher: Sha256,
    first_block: Vec<u8>,
    finished: Option<String>,
}

/// What the caller keeps to read the totals after the stream ended.
#[derive(Clone, Default)]
pub struct TallyHandle(Arc<Mutex<Tally>>);

impl TallyHandle {
    /// Bytes seen so far.
    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }

    /// Hex SHA-256 of the whole stream; only meaningful after end of stream was reached.
    pub fn sha256(&self) -> String {
        let mut tally = self.lock();
        if let Some(done) = &tally.finished {
            return done.clone();
        }
        let digest = hex::encode(std::mem::take(&mut tally.hasher).finalize());
        tally.finished = Some(digest.clone());
        digest
    }

    /// The first 512 bytes of the stream (the first tar header when the stream is a tar).
    pub fn first_block(&self) -> Vec<u8> {
        self.lock().first_block.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tally> {
        // A poisoned lock only means another stage panicked mid-update; the counts are still
        // the best information there is.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Counts and hashes what is read through it.
pub struct TallyReader<R> {
    inner: R,
    handle: TallyHandle,
    expected: Option<Expected>,
    hashing: bool,
}

impl<R> TallyReader<R> {
    pub fn new(inner: R) -> (Self, TallyHandle) {
        let handle = TallyHandle::default();
        let reader = Self {
            inner,
            handle: handle.clone(),
            expected: None,
            hashing: true,
        };
        (reader, handle)
    }

    /// Like [`TallyReader::new`], counting only: no SHA-256 (a backup records the hash of the
    /// stored object, not of the tar, and a second hash over the plaintext costs a core).
    pub fn counting(inner: R) -> (Self, TallyHandle) {
        let (mut reader, handle) = Self::new(inner);
        reader.hashing = false;
        (reader, handle)
    }

    /// Like [`TallyReader::new`], but the stream fails with an [`IntegrityError`] (an
    /// `InvalidData` I/O error) as soon as it is longer than expected, and at its end when its
    /// size or SHA-256 differ.
    pub fn expecting(inner: R, expected: Expected) -> (Self, TallyHandle) {
        let (mut reader, handle) = Self::new(inner);
        reader.expected = Some(expected);
        (reader, handle)
    }
}

fn integrity(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, IntegrityError(message))
}

impl<R: AsyncRead + Unpin> AsyncRead for TallyReader<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let new = &buf.filled()[before..];
        let mut tally = this.handle.lock();
        if new.is_empty() {
            drop(tally);
            if let Some(expected) = &this.expected {
                let size = this.handle.bytes();
                if size != expected.size {
                    return Poll::Ready(Err(integrity(format!(
                        "stored object is {size} bytes but the manifest records {} bytes (truncated or replaced)",
                        expected.size
                    ))));
                }
                let sha = this.handle.sha256();
                if sha != expected.sha256 {
                    return Poll::Ready(Err(integrity(format!(
                        "stored object's sha256 is {sha} but the manifest records {} (corrupted or replaced)",
                        expected.sha256
                    ))));
                }
            }
            return Poll::Ready(Ok(()));
        }
        tally.bytes += new.len() as u64;
        if this.hashing {
            tally.hasher.update(new);
        }
        if tally.first_block.len() < 512 {
            let take = (512 - tally.first_block.len()).min(new.len());
            tally.first_block.extend_from_slice(&new[..take]);
        }
        if let Some(expected) = &this.expected
            && tally.bytes > expected.size
        {
            // An error must leave the buffer as it was.
            buf.set_filled(before);
            return Poll::Ready(Err(integrity(format!(
                "stored object is longer than the {} bytes the manifest records (replaced?)",
                expected.size
            ))));
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn sha(data: &[u8]) -> String {
        hex::encode(Sha256::digest(data))
    }

    #[tokio::test]
    async fn counts_and_hashes() {
        let data = vec![7u8; 100_000];
        let (mut reader, handle) = TallyReader::new(&data[..]);
        let mut out = Vec::new();
        reader.read_to_end(&mut out).await.unwrap();
        assert_eq!(handle.bytes(), 100_000);
        assert_eq!(handle.sha256(), sha(&data));
        assert_eq!(handle.first_block(), vec![7u8; 512]);
    }

    #[tokio::test]
    async fn matching_expectation_passes() {
        let data = b"hello".to_vec();
        let expected = Expected {
            size: 5,
            sha256: sha(&data),
        };
        let (mut reader, _) = TallyReader::expecting(&data[..], expected);
        let mut out = Vec::new();
        reader.read_to_end(&mut out).await.unwrap();
    }

    #[tokio::test]
    async fn truncation_and_corruption_and_growth_fail() {
        let data = b"hello world".to_vec();
        let expected = Expected {
            size: data.len() as u64,
            sha256: sha(&data),
        };
        for (case, input) in [
            ("truncated", b"hello".to_vec()),
            ("corrupted", b"hellO world".to_vec()),
            ("longer", b"hello world!".to_vec()),
        ] {
            let (mut reader, _) = TallyReader::expecting(&input[..], expected.clone());
            let err = reader.read_to_end(&mut Vec::new()).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{case}");
            assert!(err.get_ref().unwrap().is::<IntegrityError>(), "{case}");
        }
    }
}
