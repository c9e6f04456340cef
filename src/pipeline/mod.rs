//! The streaming stages a volume passes through, each small and tested alone, and the chains
//! that put them together. Under the operations, beside `docker` and `store`: stages take an
//! object store and a path, and see only the bucket format (`format`) and the keys.
//!
//! Backup:  [`seal`] — Docker tar stream → [`tar_end`] (ended properly?) → [`tally`] (tar
//!          size, root entry) → [`compress`] → [`encrypt`] → pipe or [`spool`] → [`upload`]
//!          (parts, sha256 of the stored object, abort on failure).
//! Restore: [`open`] — [`download`] → [`tally`] (size and sha256 against the manifest) →
//!          [`encrypt`] (decrypt, on its own task: [`relay`]) → [`compress`] (decompress) →
//!          [`tar_check`] (the entry policy, either reading the whole archive or as a
//!          pass-through on the Docker archive upload).
//!
//! Every stage streams: memory is bounded by the upload parts in flight (equal parts; a volume
//! past the store's part limit goes on in another segment) plus small buffers, whatever the
//! size of the volume, and no plaintext is written to local disk. Chunked volumes add their
//! chunk lists, 80 bytes per chunk address, kept in objects of their own ([`chunk_list`]).

pub mod chunk;
pub mod chunk_list;
pub mod compress;
pub mod cut;
pub mod download;
pub mod encrypt;
pub mod fan_out;
pub mod open;
pub mod relay;
pub mod seal;
pub mod spool;
pub mod tally;
pub mod tar_check;
pub mod tar_end;
mod tar_policy;
mod tar_walk;
pub mod upload;

use crate::error::ExitClass;

/// What can go wrong in a stage. Variants say whether the data or the environment is at fault,
/// which decides the exit code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PipelineError {
    /// The stored data is not what the manifest promised, or cannot be decrypted or parsed.
    #[error("{0}")]
    Verification(String),
    /// None of the identities can decrypt the object.
    #[error(
        "wrong key: none of the given identities can decrypt this backup (it was encrypted to {recipients}); pass the identity file that belongs to one of those recipients with --identity"
    )]
    WrongKey { recipients: String },
    /// Reading from or writing to the store failed.
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    /// Local or Docker stream I/O failed.
    #[error("{0}")]
    Io(std::io::Error),
    /// The stream is larger than the part policy can upload.
    #[error(
        "the stream exceeds {max_bytes} bytes, the most {max_parts} parts can hold; raise part_size_mib or max_parts"
    )]
    TooLarge { max_bytes: u64, max_parts: usize },
    /// The operation was cancelled by a signal.
    #[error("cancelled")]
    Cancelled,
}

impl PipelineError {
    pub fn class(&self) -> ExitClass {
        match self {
            PipelineError::Verification(_) | PipelineError::WrongKey { .. } => {
                ExitClass::Verification
            }
            PipelineError::Cancelled => ExitClass::Interrupted,
            _ => ExitClass::Failure,
        }
    }

    /// Sorts an I/O error that surfaced at the end of a read chain: errors that came from the
    /// store or from Docker stay environment failures, everything else (a failed MAC, a
    /// truncated age file, a bad zstd frame, a malformed tar header, a hash mismatch) is data
    /// that failed verification.
    pub fn from_read_chain(err: std::io::Error) -> Self {
        Self::from_read_chain_ref(&err).unwrap_or(PipelineError::Io(err))
    }

    /// [`PipelineError::from_read_chain`] for an error only borrowed; `None` means the error is
    /// a plain I/O failure.
    pub fn from_read_chain_ref(err: &std::io::Error) -> Option<Self> {
        if let Some(inner) = err.get_ref() {
            if inner.is::<download::StoreReadError>() {
                return None;
            }
            if let Some(mismatch) = inner.downcast_ref::<tally::IntegrityError>() {
                return Some(PipelineError::Verification(mismatch.to_string()));
            }
            // An entry the restore policy refuses: the backup is intact, its content is not
            // something lifeboat will write.
            if let Some(refused) = inner.downcast_ref::<tar_check::PolicyViolation>() {
                return Some(PipelineError::Verification(refused.to_string()));
            }
        }
        match err.kind() {
            std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof => {
                Some(PipelineError::Verification(format!(
                    "stored data is damaged or was altered ({err}): the object does not match what was backed up"
                )))
            }
            _ => None,
        }
    }
}

/// Helpers for the stages' tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::seal::SealError;
    use object_store::ObjectStore;
    use std::sync::Arc;

    /// Pseudo-random (incompressible) bytes, the same for the same seed.
    pub fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// A ustar header of a regular file (mode 0644, owner 0, mtime 0), its checksum right.
    pub fn file_header(name: &str, size: usize) -> [u8; 512] {
        let mut header = [0u8; 512];
        header[..name.len()].copy_from_slice(name.as_bytes());
        header[100..107].copy_from_slice(b"0000644");
        header[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
        header[136..147].copy_from_slice(b"00000000000");
        header[156] = b'0';
        header[257..263].copy_from_slice(b"ustar\0");
        header[263..265].copy_from_slice(b"00");
        header[148..156].fill(b' ');
        let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
        header[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        header
    }

    /// A store whose every write fails: its folder is a file.
    pub fn broken_objects(dir: &tempfile::TempDir) -> Arc<dyn ObjectStore> {
        let root = dir.path().join("bucket");
        std::fs::create_dir(&root).unwrap();
        let objects = object_store::local::LocalFileSystem::new_with_prefix(&root).unwrap();
        std::fs::remove_dir(&root).unwrap();
        std::fs::write(&root, b"not a folder").unwrap();
        Arc::new(objects)
    }

    /// `result` is every one of `stores` stores' own refusal, in order.
    pub fn assert_each_refused<T>(result: Result<T, SealError>, stores: usize) {
        let Err(SealError::EveryUpload(errors)) = result else {
            panic!("not every store refused: {:?}", result.err());
        };
        assert_eq!(errors.len(), stores);
        assert!(
            errors.iter().all(|e| matches!(e, SealError::Upload { .. })),
            "{errors:?}"
        );
    }
}
