//! The read path without writes: download each volume object, check its size and sha256
//! against the manifest, and — with an identity — decrypt it to the last chunk, decompress it
//! and validate every tar entry. Restore runs this over every volume before it touches one;
//! `lifeboat verify` runs it for restore drills.

use crate::keys::BoxIdentity;
use crate::manifest::{Manifest, SourceKind, VolumeRecord};
use crate::pipeline::PipelineError;
use crate::pipeline::compress::decompressing_reader;
use crate::pipeline::download::open_object;
use crate::pipeline::encrypt::decrypting_reader;
use crate::pipeline::tally::{Expected, TallyReader};
use crate::pipeline::tar_check::{EntryRules, TarSummary, TargetKind, check_archive};
use crate::store::Store;
use object_store::ObjectStoreExt;
use tokio::io::{AsyncRead, AsyncReadExt, BufReader};

/// Opens a volume object as the decompressed tar stream, checking size and sha256 as it goes
/// (the check fires at the end of the stream).
pub async fn open_volume_tar(
    store: &Store,
    manifest: &Manifest,
    record: &VolumeRecord,
    identities: &[BoxIdentity],
) -> Result<impl AsyncRead + Send + Unpin + use<>, PipelineError> {
    let stored = open_checked(store, manifest, record).await?;
    let plain = decrypting_reader(
        identities,
        BufReader::new(stored),
        &record.encryption.recipients,
    )
    .await?;
    Ok(decompressing_reader(
        BufReader::with_capacity(256 * 1024, plain),
        record.compression,
    ))
}

async fn open_checked(
    store: &Store,
    manifest: &Manifest,
    record: &VolumeRecord,
) -> Result<impl AsyncRead + Send + Unpin + use<>, PipelineError> {
    let location = store
        .layout
        .object(&manifest.app, &manifest.backup_id, &record.object);
    // A cheap first check that names truncation or replacement plainly; the sha256 over the
    // whole stream stays the real check.
    let head = store.objects.head(&location).await?;
    if head.size != record.stored_size {
        return Err(PipelineError::Verification(format!(
            "stored object {location} is {} bytes but the manifest records {} bytes (truncated or replaced)",
            head.size, record.stored_size
        )));
    }
    let raw = open_object(&store.objects, &location).await?;
    let expected = Expected {
        size: record.stored_size,
        sha256: record.sha256.clone(),
    };
    Ok(TallyReader::expecting(raw, expected).0)
}

/// Verifies one volume. Without identities only size and sha256 are checked.
pub async fn verify_volume(
    store: &Store,
    manifest: &Manifest,
    record: &VolumeRecord,
    identities: Option<&[BoxIdentity]>,
) -> Result<Option<TarSummary>, PipelineError> {
    let Some(identities) = identities else {
        let mut stored = open_checked(store, manifest, record).await?;
        let mut sink = vec![0u8; 256 * 1024];
        while stored
            .read(&mut sink)
            .await
            .map_err(PipelineError::from_read_chain)?
            > 0
        {}
        return Ok(None);
    };
    let tar = open_volume_tar(store, manifest, record, identities).await?;
    let rules = EntryRules {
        target: match record.kind {
            SourceKind::Volume => TargetKind::Volume,
            SourceKind::Bind => TargetKind::Bind,
        },
    };
    let summary = check_archive(tar, rules).await?;
    if summary.tar_bytes != record.tar_size {
        return Err(PipelineError::Verification(format!(
            "the tar stream of {} is {} bytes but the manifest records {}",
            record.name, summary.tar_bytes, record.tar_size
        )));
    }
    Ok(Some(summary))
}
