//! A deduplicated volume's chunk list in objects of its own (format 5), so that a manifest
//! stays a few KiB and nothing holds a list's JSON, however many chunks a volume has.
//!
//! ```text
//! write: the volume's chunks → list_pieces (keyed edges) → list_text → zstd frame → sha256
//!        → PUT chunks/<ab>/<sha256> (IN_FLIGHT)                        → ListRef in the manifest
//! read:  ListRef (signed) → GET, its size → sha256 → zstd -d (no more than its lines can be)
//!        → parse_list → count and sizes against the ListRef → the chunks, in order
//! ```
//! A list is stored beside the chunks and named like them, by the sha256 of its bytes, so a
//! stretch of a volume that did not change since the last backup gives an object that is there
//! already, and prune, verify and copy find lists where they find chunks. It is not encrypted:
//! it says what a format-3 manifest says in the open (chunk ids, which are keyed hashes, and
//! sizes); the manifest's signature covers its sha256, and its lines cover their chunks'.
//!
//! Where it sits: A chain in `pipeline` beside `chunk`, whose store and fetch it uses; sees
//! only the bucket format (`format`).

use super::PipelineError;
use super::chunk::{ChunkStore, IN_FLIGHT};
use crate::format::{ChunkRef, LIST_LINE_MAX, ListRef, list_pieces, list_text, parse_list};
use futures::{StreamExt, TryStreamExt};
use object_store::{ObjectStoreExt, PutOptions};
use sha2::Digest;

/// The zstd level of a list: hex digits compress to about half at any level.
const LEVEL: i32 = 3;
/// List objects fetched at once.
const FETCH_IN_FLIGHT: usize = 8;

/// Stores a volume's chunk list in objects ([`list_pieces`]), a few at once, and returns what
/// the manifest records of them, in order.
pub async fn store_lists(
    to: &ChunkStore,
    chunks: &[ChunkRef],
) -> Result<Vec<ListRef>, PipelineError> {
    futures::stream::iter(list_pieces(chunks))
        .map(|piece| {
            let text = list_text(piece);
            let list = ListRef {
                sha256: crate::format::Hex32([0; 32]),
                size: 0,
                chunks: piece.len() as u64,
                stored: piece.iter().map(|c| c.size).sum(),
                plain: piece.iter().map(|c| c.plain).sum(),
            };
            async move {
                let frame = tokio::task::spawn_blocking(move || zstd::bulk::compress(&text, LEVEL))
                    .await
                    .map_err(|e| PipelineError::Io(std::io::Error::other(e)))?
                    .map_err(PipelineError::Io)?;
                let list = ListRef {
                    sha256: crate::format::Hex32(sha2::Sha256::digest(&frame).into()),
                    size: frame.len() as u64,
                    ..list
                };
                // The same bytes under the same name: written again when there already (one
                // request a list, about 2,048 chunks; a night of 1 % churn uploads about 20
                // chunks per list), never anything else under it.
                let options = PutOptions {
                    attributes: to.attributes.clone(),
                    ..Default::default()
                };
                to.objects
                    .put_opts(&to.location(&list.sha256), frame.into(), options)
                    .await?;
                Ok(list)
            }
        })
        .buffered(IN_FLIGHT)
        .try_collect()
        .await
}

/// A volume's chunks, read from its list objects in order, each checked against what the
/// manifest records of it. A list that is missing, altered or not one lifeboat writes is a
/// [`PipelineError::Verification`]. `authenticated`: the lists come from a manifest whose
/// signature was checked, so their count sizes the result up front (prune also reads the
/// lists of manifests that are not, and sizes nothing by them).
pub async fn read_lists(
    from: &ChunkStore,
    lists: &[ListRef],
    authenticated: bool,
) -> Result<Vec<ChunkRef>, PipelineError> {
    if let Some(list) = lists.iter().find(|l| !l.is_plausible()) {
        return Err(PipelineError::Verification(format!(
            "chunk list {} is not one lifeboat writes ({} chunks in {} bytes)",
            list.sha256, list.chunks, list.size
        )));
    }
    let total = match authenticated {
        true => lists.iter().map(|l| l.chunks as usize).sum(),
        false => 0,
    };
    let mut chunks = Vec::with_capacity(total);
    let mut read = std::pin::pin!(
        futures::stream::iter(lists)
            .map(|list| read_list(from, list))
            .buffered(FETCH_IN_FLIGHT)
    );
    while let Some(piece) = read.try_next().await? {
        chunks.extend_from_slice(&piece);
    }
    Ok(chunks)
}

/// One list object's chunks, checked.
async fn read_list(from: &ChunkStore, list: &ListRef) -> Result<Vec<ChunkRef>, PipelineError> {
    let location = from.location(&list.sha256);
    let wrong = |what: &str| {
        PipelineError::Verification(format!(
            "chunk list {location} {what}: it is not the list the signed manifest records"
        ))
    };
    let got = from.objects.get(&location).await.map_err(|e| match e {
        object_store::Error::NotFound { .. } => {
            PipelineError::Verification(format!("chunk list {location} is missing from the store"))
        }
        other => PipelineError::Store(other),
    })?;
    // A replaced, huge object is refused before it is read into memory.
    if got.meta.size != list.size {
        return Err(wrong(&format!(
            "is {} bytes but the manifest records {}",
            got.meta.size, list.size
        )));
    }
    let frame = got.bytes().await?;
    if sha2::Sha256::digest(&frame)[..] != list.sha256.0 {
        return Err(wrong("does not match its sha256"));
    }
    // Its sha256 is the manifest's; the bound (at most 1.4 MB) holds whether or not that
    // manifest was authenticated (prune reads the lists of every manifest).
    let most = list.chunks as usize * LIST_LINE_MAX;
    let text = tokio::task::spawn_blocking(move || zstd::bulk::decompress(&frame, most))
        .await
        .map_err(|e| PipelineError::Io(std::io::Error::other(e)))?
        .map_err(|_| wrong("does not decompress to at most its lines"))?;
    let chunks = parse_list(&text).map_err(|reason| wrong(&reason))?;
    let stored = chunks.iter().try_fold(0u64, |t, c| t.checked_add(c.size));
    let plain = chunks.iter().try_fold(0u64, |t, c| t.checked_add(c.plain));
    if chunks.len() as u64 != list.chunks
        || stored != Some(list.stored)
        || plain != Some(list.plain)
    {
        return Err(wrong("holds other chunks than its manifest records"));
    }
    Ok(chunks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Hex32;
    use std::sync::Arc;

    fn store() -> ChunkStore {
        ChunkStore {
            objects: Arc::new(object_store::memory::InMemory::new()),
            app_dir: object_store::path::Path::from("app"),
            attributes: Default::default(),
        }
    }

    /// `n` chunks whose ids are their index's BLAKE3 (so about one in 2,048 ends a list).
    fn chunks(n: u32, salt: u8) -> Vec<ChunkRef> {
        (0..n)
            .map(|i| ChunkRef {
                id: Hex32(*blake3::hash(&[&i.to_le_bytes()[..], &[salt]].concat()).as_bytes()),
                size: 1000 + u64::from(i),
                sha256: Hex32(sha2::Sha256::digest(i.to_le_bytes()).into()),
                plain: 4000 + u64::from(i % 7),
            })
            .collect()
    }

    #[tokio::test]
    async fn a_list_stored_in_objects_reads_back_whole_and_in_order() {
        let store = store();
        let all = chunks(20_000, 0);
        let lists = store_lists(&store, &all).await.unwrap();
        assert!(lists.len() > 3, "{} lists", lists.len());
        assert!(
            lists
                .iter()
                .all(|l| l.chunks as usize <= crate::format::LIST_OBJECT_MAX)
        );
        assert_eq!(lists.iter().map(|l| l.chunks).sum::<u64>(), 20_000);
        assert_eq!(read_lists(&store, &lists, true).await.unwrap(), all);
        // A list with one chunk changed differs only in the list object that holds it.
        let mut changed = all.clone();
        changed[10_000].size += 1;
        let again = store_lists(&store, &changed).await.unwrap();
        let differ = lists.iter().zip(&again).filter(|(a, b)| a != b).count();
        assert_eq!((again.len(), differ), (lists.len(), 1));
    }

    #[tokio::test]
    async fn a_list_missing_altered_or_swapped_is_refused() {
        let store = store();
        let lists = store_lists(&store, &chunks(3000, 1)).await.unwrap();
        let other = store_lists(&store, &chunks(10, 2)).await.unwrap();
        let location = store.location(&lists[0].sha256);
        // Another list's object under this one's name, and the same with the size it should have.
        let swapped = store.objects.get(&store.location(&other[0].sha256)).await;
        let swapped = swapped.unwrap().bytes().await.unwrap();
        store.objects.put(&location, swapped.into()).await.unwrap();
        let error = read_lists(&store, &lists, true)
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("bytes but the manifest records"), "{error}");
        let mut frame = zstd::bulk::compress(&list_text(&chunks(3000, 3)), LEVEL).unwrap();
        frame.resize(lists[0].size as usize, 0);
        store.objects.put(&location, frame.into()).await.unwrap();
        let error = read_lists(&store, &lists, true)
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("does not match its sha256"), "{error}");
        // A ListRef that understates what its (genuine) object holds.
        let restored = store_lists(&store, &chunks(3000, 1)).await.unwrap();
        let mut understated = restored.clone();
        understated[0].chunks -= 1;
        let error = read_lists(&store, &understated, true)
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("does not decompress") || error.contains("other chunks"));
        store.objects.delete(&location).await.unwrap();
        let error = read_lists(&store, &restored, true)
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("is missing from the store"), "{error}");
    }
}
