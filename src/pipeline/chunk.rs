//! The deduplicating write chain and its read chain: a volume's tar stream as content-defined
//! chunks, each stored once per app.
//!
//! ```text
//! tar stream → tar_end → tally (tar size, root entry) → FastCDC (keyed gear) → keyed BLAKE3 id
//!            → known? reuse : [zstd frame → age → sha256]  (IN_FLIGHT on blocking threads, in order)
//!            → frames into the pipe (memory, or the disk spool) → PUT chunks/<ab>/<id> (IN_FLIGHT)
//! ```
//! As with `seal`, the spool lets the app start again once the tar is read: the new chunks'
//! uploads drain it afterwards ([`SealingChunks::finish`]).
//! A chunk is reused only when it is both in the store (a listing made by this run) and in
//! a genuine earlier manifest (which gives its size and sha256): a lost cache costs a
//! re-upload, never a missing chunk. The boundaries and the ids are keyed with keys derived
//! from the owner key (see `keys::ChunkKeys`), so the bucket shows neither plaintext hashes
//! nor boundaries that depend only on the data.
//!
//! The read side ([`chunk_plaintext`]) takes the chunks' ciphertext in order (from the store or
//! a restore spool), checks each chunk's size and sha256 against the signed manifest, decrypts
//! it and decompresses its frame: the tar stream again.
//!
//! Where it sits: A chain in `pipeline` beside `seal` and `open`: sees an object store and a
//! folder, never the bucket layout above it.

use super::PipelineError;
use super::cut::{Cutter, Previous};
use super::fan_out::{Branches, StoreTokens};
use super::seal::SealError;
use super::spool::SpoolBudget;
use super::tally::TallyReader;
use super::tar_check::root_meta;
use super::tar_end::TarEndCheck;
use crate::format::{ChunkRef, Compression, Hex32, RootMeta, chunk_key};
use crate::keys::{BoxIdentity, ChunkKeys, Recipient};
use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{Attributes, ObjectStore, ObjectStoreExt, PutOptions};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::sync::CancellationToken;

/// Chunk sizes: half restic's average (1 MiB). With runs of zeros cut out
/// ([`split_zero_runs`]), 20 pages rewritten in a 128 MiB file of random and zero runs cost
/// 4.4 MiB at this average and 7.3 MiB at 1 MiB (24.7 MiB at 1 MiB without the zero cuts), for
/// 1.4 times the objects.
pub const MIN_CHUNK: usize = 128 * 1024;
pub const AVG_CHUNK: usize = 512 * 1024;
pub const MAX_CHUNK: usize = 2 * 1024 * 1024;
/// Chunks being compressed, encrypted or uploaded at once: memory is bounded by this many
/// times about three `MAX_CHUNK`s.
pub const IN_FLIGHT: usize = 6;
/// Chunks being downloaded at once (restore, verify, copy): a GET of a small object is mostly
/// waiting, so many overlap, as long as their stored bytes stay within [`FETCH_BUDGET_KIB`].
pub const FETCH_IN_FLIGHT: usize = 64;
/// The stored bytes of the chunks being downloaded at once, at most (KiB): 32 MiB.
const FETCH_BUDGET_KIB: u32 = 32 * 1024;

/// Where an app's chunks go.
#[derive(Clone)]
pub struct ChunkStore {
    pub objects: Arc<dyn ObjectStore>,
    /// The app's folder; chunks lie under `chunks/` in it.
    pub app_dir: Path,
    pub attributes: Attributes,
}

impl ChunkStore {
    /// The object of the chunk whose stored bytes have this sha256.
    pub fn location(&self, sha256: &Hex32) -> Path {
        let mut path = self.app_dir.clone();
        for part in chunk_key(sha256).split('/') {
            path = path.join(part);
        }
        path
    }
}

/// Chunks a backup may reference without uploading them: seen in the store by this run, with
/// what a genuine manifest says of them; the chunks this run uploads are added.
///
/// Held compactly, since a volume of a TiB has about two million chunks: those confirmed at
/// the start in one vector sorted by id (80 bytes each, looked up by binary search), the ones
/// this run seals in a set keyed by their id (80 bytes each plus the table's slack, about 130
/// in all).
#[derive(Debug, Default)]
pub struct Known(std::sync::Mutex<KnownChunks>);

#[derive(Debug, Default)]
struct KnownChunks {
    confirmed: Vec<ChunkRef>,
    added: HashSet<ById>,
}

/// A chunk in a set, equal to another and hashed by its id alone (so the set is looked up by
/// id without holding the id twice).
#[derive(Debug, Clone, Copy)]
struct ById(ChunkRef);

impl PartialEq for ById {
    fn eq(&self, other: &Self) -> bool {
        self.0.id == other.0.id
    }
}

impl Eq for ById {}

impl std::hash::Hash for ById {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.id.hash(state);
    }
}

impl std::borrow::Borrow<Hex32> for ById {
    fn borrow(&self) -> &Hex32 {
        &self.0.id
    }
}

impl Known {
    /// The chunks of `earlier` (genuine manifests' chunk lists) that `present` (the store's
    /// listing: sha256 → size) holds with the recorded size. `earlier` becomes the map: no
    /// second copy of the list is made. Of an id stored twice (sealed apart, each listed), the
    /// object with the lower sha256 is the one reused.
    pub fn confirmed(mut earlier: Vec<ChunkRef>, present: &HashMap<Hex32, u64>) -> Known {
        earlier.retain(|c| present.get(&c.sha256) == Some(&c.size));
        earlier.sort_unstable_by_key(|c| (c.id, c.sha256));
        earlier.dedup_by_key(|c| c.id);
        earlier.shrink_to_fit();
        Known(std::sync::Mutex::new(KnownChunks {
            confirmed: earlier,
            added: HashSet::new(),
        }))
    }

    fn chunks(&self) -> std::sync::MutexGuard<'_, KnownChunks> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, id: &Hex32) -> Option<ChunkRef> {
        let chunks = self.chunks();
        chunks
            .confirmed
            .binary_search_by_key(id, |c| c.id)
            .ok()
            .map(|at| chunks.confirmed[at])
            .or_else(|| chunks.added.get(id).map(|c| c.0))
    }

    /// A chunk this run sealed and stored.
    fn add(&self, chunk: ChunkRef) {
        self.chunks().added.insert(ById(chunk));
    }

    pub fn len(&self) -> usize {
        let chunks = self.chunks();
        chunks.confirmed.len() + chunks.added.len()
    }

    /// Frees the map: once every volume is read, nothing more is looked up.
    pub fn forget(&self) {
        *self.chunks() = KnownChunks::default();
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How chunks are sealed.
#[derive(Clone)]
pub struct ChunkSealer {
    pub recipients: Arc<Vec<Recipient>>,
    /// Zstd (one frame per chunk) or none.
    pub compression: Compression,
    pub level: i32,
    pub keys: Arc<ChunkKeys>,
}

/// What a chunked volume is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedChunks {
    pub tar_size: u64,
    pub root: Option<RootMeta>,
    pub chunks: Vec<ChunkRef>,
    /// Bytes uploaded by this run (new chunks).
    pub new_bytes: u64,
    /// Bytes of tar stream that earlier chunks already held.
    pub reused_plain: u64,
}

/// A chunked volume whose tar has been read to its end: its chunk list is final, its new
/// chunks may still be uploading from the spool.
pub struct SealingChunks {
    pub sealed: SealedChunks,
    upload: tokio::task::JoinHandle<Result<(), SealError>>,
    cancel: CancellationToken,
}

impl SealingChunks {
    /// Waits until every new chunk is stored.
    pub async fn finish(self) -> Result<SealedChunks, SealError> {
        match self.upload.await {
            Ok(Ok(())) => Ok(self.sealed),
            Ok(Err(e)) => Err(e),
            Err(join_error) => Err(SealError::Read(PipelineError::Io(std::io::Error::other(
                format!("the chunk upload task failed: {join_error}"),
            )))),
        }
    }

    /// Stops the uploads; chunks already stored stay, unreferenced, until a prune.
    pub async fn abandon(self) {
        self.cancel.cancel();
        let _ = self.upload.await;
    }
}

/// Reads `tar` to its end into chunks for `to`: those `known` lacks are sealed and go through
/// the pipe (the disk spool when there is one) to the uploader; the new ones join `known`.
pub async fn seal_chunks(
    tar: impl AsyncRead + Send + Unpin,
    sealer: &ChunkSealer,
    known: &Known,
    to: &ChunkStore,
    spool: Option<&Arc<SpoolBudget>>,
    cancel: &CancellationToken,
) -> Result<SealingChunks, SealError> {
    let to = [ChunkTarget {
        known,
        store: to,
        tokens: StoreTokens::stopped_by(cancel.clone()),
        previous: None,
    }];
    let mut each = seal_chunks_each(tar, sealer, &to, spool, cancel).await?;
    Ok(each.pop().expect("one store, one upload"))
}

/// One store a chunked volume goes to: what it has, where its chunks go, and its tokens (what
/// stops its uploads; what its uploads cancel when the store refuses one).
pub struct ChunkTarget<'a> {
    pub known: &'a Known,
    pub store: &'a ChunkStore,
    pub tokens: StoreTokens,
    /// The volume's chunks in this store's previous backup: the cuts to try first.
    pub previous: Option<Arc<Previous>>,
}

/// [`seal_chunks`] into several stores at once: the tar is read and cut once, each chunk is
/// sealed once if any store lacks it, and goes to the uploads of the stores that lack it. Each
/// store gets its own chunk list (a chunk it had is referenced as it stored it). Returns one
/// upload per store in the order of `to`; an upload that failed says so from
/// [`SealingChunks::finish`]. Fails only when reading fails (or `cancel` fires) or every
/// upload has.
pub async fn seal_chunks_each(
    tar: impl AsyncRead + Send + Unpin,
    sealer: &ChunkSealer,
    to: &[ChunkTarget<'_>],
    spool: Option<&Arc<SpoolBudget>>,
    cancel: &CancellationToken,
) -> Result<Vec<SealingChunks>, SealError> {
    let mut writers = Vec::with_capacity(to.len());
    let mut uploads = Vec::with_capacity(to.len());
    for target in to {
        let (pipe_writer, pipe_reader) = super::spool::pipe(spool).map_err(SealError::Spool)?;
        let upload_cancel = target.tokens.stop.child_token();
        let upload = tokio::spawn({
            let (store, cancel) = (target.store.clone(), upload_cancel.clone());
            let failed = target.tokens.failed.clone();
            async move {
                let uploaded = upload_frames(pipe_reader, store, cancel).await;
                if matches!(&uploaded, Err(SealError::Upload { .. })) {
                    failed.cancel();
                }
                uploaded
            }
        });
        writers.push(pipe_writer);
        uploads.push((upload, upload_cancel));
    }
    let known: Vec<&Known> = to.iter().map(|target| target.known).collect();
    let tokens: Vec<&StoreTokens> = to.iter().map(|target| &target.tokens).collect();
    let pipes = Branches::new(writers);
    let previous = to.iter().find_map(|target| target.previous.clone());
    let read = tokio::select! {
        read = cut_and_seal(tar, sealer, (&known, &tokens), previous, pipes) => read,
        () = cancel.cancelled() => Err(SealError::Cancelled),
    };
    let read_error = match read {
        Ok(sealed) => {
            return Ok(sealed
                .into_iter()
                .zip(uploads)
                .map(|(sealed, (upload, cancel))| SealingChunks {
                    sealed,
                    upload,
                    cancel,
                })
                .collect());
        }
        Err(error) => error,
    };
    // When every upload ended on its own (refused, or its store stopped) with at least one
    // refusal, the uploads are the cause: the reader then only saw the pipes close.
    let mut errors = Vec::with_capacity(uploads.len());
    let mut all_failed = true;
    for ((upload, upload_cancel), target) in uploads.into_iter().zip(to) {
        upload_cancel.cancel();
        match upload.await {
            Ok(Err(error @ SealError::Upload { .. })) => errors.push(error),
            Ok(Err(SealError::Cancelled)) if target.tokens.stop.is_cancelled() => {
                errors.push(SealError::Cancelled)
            }
            _ => all_failed = false,
        }
    }
    if cancel.is_cancelled() {
        return Err(SealError::Cancelled);
    }
    let refused = errors.iter().any(|e| matches!(e, SealError::Upload { .. }));
    if !all_failed || !refused {
        return Err(read_error);
    }
    match errors.len() {
        1 => Err(errors.remove(0)),
        _ => Err(SealError::EveryUpload(errors)),
    }
}

/// tar → tar_end → tally → FastCDC → id → (known | sealed) → frames into `pipes`, in order:
/// one chunk list per store, each chunk sealed at most once.
async fn cut_and_seal(
    tar: impl AsyncRead + Send + Unpin,
    sealer: &ChunkSealer,
    (known, tokens): (&[&Known], &[&StoreTokens]),
    previous: Option<Arc<Previous>>,
    mut pipes: Branches,
) -> Result<Vec<SealedChunks>, SealError> {
    let (tar, tally) = TallyReader::counting(TarEndCheck::new(tar));
    // About as many chunks as last time: the list is not grown by doubling (80 bytes a chunk).
    let expected = previous.as_ref().map_or(0, |p| p.len() + p.len() / 16);
    let pieces = Cutter::new(tar, Arc::clone(&sealer.keys), previous).into_stream();
    let mut results: Vec<SealedChunks> = known
        .iter()
        .map(|_| SealedChunks {
            tar_size: 0,
            root: None,
            chunks: Vec::with_capacity(expected),
            new_bytes: 0,
            reused_plain: 0,
        })
        .collect();
    let pipe_error = |e| SealError::Read(PipelineError::Io(e));
    // Chunks in order, each either known to every store (ready) or being sealed on a blocking
    // thread.
    let in_order = pieces
        .map(|piece| {
            let sealer = sealer.clone();
            async move {
                let piece =
                    piece.map_err(|e| SealError::Read(PipelineError::from_read_chain(e)))?;
                let joined = |e| SealError::Read(PipelineError::Io(std::io::Error::other(e)));
                // Hashing, like sealing, on a blocking thread: the cutter goes on meanwhile
                // (unless it needed the id itself).
                let (id, data) = match piece.id {
                    Some(id) => (Hex32(id), piece.data),
                    None => {
                        let (keys, data) = (Arc::clone(&sealer.keys), piece.data);
                        tokio::task::spawn_blocking(move || (Hex32(keys.id_bytes(&data)), data))
                            .await
                            .map_err(joined)?
                    }
                };
                let plain = data.len() as u64;
                if known.iter().all(|k| k.get(&id).is_some()) {
                    return Ok((id, None));
                }
                let sealed = tokio::task::spawn_blocking(move || seal_one(&sealer, &data))
                    .await
                    .map_err(joined)?
                    .map_err(SealError::Read)?;
                let sha256 = {
                    use sha2::Digest;
                    Hex32(sha2::Sha256::digest(&sealed).into())
                };
                let chunk = ChunkRef {
                    id,
                    size: sealed.len() as u64,
                    sha256,
                    plain,
                };
                Ok((id, Some((chunk, sealed))))
            }
        })
        .buffered(IN_FLIGHT);
    let mut in_order = std::pin::pin!(in_order);
    while let Some(next) = in_order.next().await {
        let (id, sealed) = next?;
        for (store, (known, result)) in known.iter().zip(results.iter_mut()).enumerate() {
            // Known to this store, or the same plaintext again within the chunks in flight:
            // sealed at most once, stored once.
            if let Some(chunk) = known.get(&id) {
                result.reused_plain += chunk.plain;
                result.chunks.push(chunk);
                continue;
            }
            // A chunk goes unsealed only when every store knew it, and what is known stays.
            let Some((chunk, bytes)) = &sealed else {
                return Err(SealError::Read(PipelineError::Verification(format!(
                    "chunk {id} was neither known nor sealed"
                ))));
            };
            if pipes.is_alive(store) {
                write_frame(&mut pipes, store, &chunk.sha256, bytes).await;
            }
            result.new_bytes += chunk.size;
            known.add(*chunk);
            result.chunks.push(*chunk);
        }
        // A store whose upload failed (or stopped) is dead too, even if every chunk still to
        // come is one it has and nothing would be written to it again.
        for (store, tokens) in tokens.iter().enumerate() {
            if !tokens.is_live() {
                pipes.drop_branch(store);
            }
        }
        pipes.any_left().map_err(pipe_error)?;
    }
    pipes.shutdown().await.map_err(pipe_error)?;
    let tar_size = tally.bytes();
    let root = root_meta(&tally.first_block());
    if results.first().is_none_or(|r| r.chunks.is_empty()) {
        return Err(SealError::Read(PipelineError::Verification(
            "the tar stream was empty".into(),
        )));
    }
    for result in &mut results {
        result.tar_size = tar_size;
        result.root = root;
    }
    Ok(results)
}

/// A sealed chunk in one store's pipe: its sha256 (32 bytes), its length (8 bytes,
/// little-endian), its bytes. A pipe that fails is dropped from `pipes`.
async fn write_frame(pipes: &mut Branches, store: usize, sha256: &Hex32, sealed: &[u8]) {
    pipes.write(store, &sha256.0).await;
    pipes
        .write(store, &(sealed.len() as u64).to_le_bytes())
        .await;
    pipes.write(store, sealed).await;
}

/// The next frame from the pipe, or `None` at its end.
async fn read_frame(
    pipe: &mut (impl AsyncRead + Unpin),
) -> std::io::Result<Option<(Hex32, Bytes)>> {
    let mut header = [0u8; 40];
    match pipe.read_exact(&mut header[..1]).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    pipe.read_exact(&mut header[1..]).await?;
    let sha256 = Hex32(header[..32].try_into().expect("32 bytes"));
    let len = u64::from_le_bytes(header[32..].try_into().expect("8 bytes"));
    if len > (MAX_CHUNK as u64) * 2 {
        return Err(std::io::Error::other(
            "a chunk frame in the spool is too long",
        ));
    }
    let mut body = vec![0u8; len as usize];
    pipe.read_exact(&mut body).await?;
    Ok(Some((sha256, Bytes::from(body))))
}

/// The uploader: frames from the pipe, each a plain PUT (a chunk is at most a few MiB),
/// [`IN_FLIGHT`] at once. The key is the sha256 of the bytes: a PUT can only ever write the
/// same bytes again under a key that exists.
async fn upload_frames(
    pipe: impl AsyncRead + Send + Unpin,
    to: ChunkStore,
    cancel: CancellationToken,
) -> Result<(), SealError> {
    let frames = futures::stream::try_unfold(pipe, |mut pipe| async move {
        Ok::<_, SealError>(
            read_frame(&mut pipe)
                .await
                .map_err(|e| SealError::Read(PipelineError::Io(e)))?
                .map(|frame| (frame, pipe)),
        )
    });
    let uploads = frames
        .map_ok(|(sha256, bytes)| {
            let to = to.clone();
            async move {
                let location = to.location(&sha256);
                let options = PutOptions {
                    attributes: to.attributes.clone(),
                    ..Default::default()
                };
                to.objects
                    .put_opts(&location, bytes.into(), options)
                    .await
                    .map(|_| ())
                    .map_err(|e| SealError::Upload {
                        location,
                        source: PipelineError::Store(e),
                    })
            }
        })
        .try_buffer_unordered(IN_FLIGHT)
        .try_for_each(|()| futures::future::ready(Ok(())));
    tokio::select! {
        done = uploads => done,
        () = cancel.cancelled() => Err(SealError::Cancelled),
    }
}

/// zstd contexts kept between chunks: creating one per chunk costs an allocation and the
/// clearing of its tables each time. At most [`IN_FLIGHT`] of each kind are kept (a context at
/// a high level is tens of MiB), whichever threads the chunks are sealed or opened on.
struct Contexts<T>(std::sync::Mutex<Vec<T>>);

impl<T> Contexts<T> {
    const fn new() -> Self {
        Contexts(std::sync::Mutex::new(Vec::new()))
    }

    fn take(&self, fits: impl Fn(&T) -> bool) -> Option<T> {
        let mut kept = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let at = kept.iter().position(fits)?;
        Some(kept.swap_remove(at))
    }

    fn give_back(&self, context: T) {
        let mut kept = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if kept.len() < IN_FLIGHT {
            kept.push(context);
        }
    }
}

static COMPRESSORS: Contexts<(i32, zstd::bulk::Compressor<'static>)> = Contexts::new();
static DECOMPRESSORS: Contexts<zstd::bulk::Decompressor<'static>> = Contexts::new();

/// One chunk: its own zstd frame (or as is), then its own age file.
fn seal_one(sealer: &ChunkSealer, data: &[u8]) -> Result<Vec<u8>, PipelineError> {
    use std::io::Write;
    let compressed;
    let payload: &[u8] = match sealer.compression {
        Compression::Zstd => {
            let mut compressor = COMPRESSORS
                .take(|(level, _)| *level == sealer.level)
                .map(Ok)
                .unwrap_or_else(|| {
                    zstd::bulk::Compressor::new(sealer.level).map(|c| (sealer.level, c))
                })
                .map_err(PipelineError::Io)?;
            compressed = compressor.1.compress(data).map_err(PipelineError::Io)?;
            COMPRESSORS.give_back(compressor);
            &compressed
        }
        _ => data,
    };
    let encryptor = age::Encryptor::with_recipients(
        sealer
            .recipients
            .iter()
            .map(|r| r.key.as_ref() as &dyn age::Recipient),
    )
    .map_err(|e| PipelineError::Io(std::io::Error::other(format!("cannot encrypt: {e}"))))?;
    let mut out = Vec::with_capacity(payload.len() + 512);
    let mut writer = encryptor.wrap_output(&mut out).map_err(PipelineError::Io)?;
    writer.write_all(payload).map_err(PipelineError::Io)?;
    writer.finish().map_err(PipelineError::Io)?;
    Ok(out)
}

/// Opens one stored chunk: checks its size and sha256 against `chunk`, decrypts it and
/// decompresses its frame.
pub fn open_one(
    chunk: &ChunkRef,
    stored: &[u8],
    compression: Compression,
    identities: &[BoxIdentity],
) -> Result<Vec<u8>, PipelineError> {
    open_chunk(chunk, stored, compression, identities, Digest::Check)
}

/// Whether [`open_chunk`] checks the stored bytes' sha256: always for bytes from the store; not
/// again for bytes read back from a restore's own spool, which holds only bytes checked on
/// their way in (as the spool of a single-object backup is not hashed twice either).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Digest {
    Check,
    CheckedBefore,
}

fn open_chunk(
    chunk: &ChunkRef,
    stored: &[u8],
    compression: Compression,
    identities: &[BoxIdentity],
    digest: Digest,
) -> Result<Vec<u8>, PipelineError> {
    use sha2::Digest as _;
    use std::io::Read;
    let id = chunk.id.to_string();
    let short = &id[..12];
    if stored.len() as u64 != chunk.size {
        return Err(PipelineError::Verification(format!(
            "chunk {short}… is {} bytes but the manifest records {} (truncated or replaced)",
            stored.len(),
            chunk.size
        )));
    }
    if digest == Digest::Check && sha2::Sha256::digest(stored)[..] != chunk.sha256.0 {
        return Err(PipelineError::Verification(format!(
            "chunk {short}… does not match the sha256 the manifest records (altered in the store)"
        )));
    }
    let decryptor = age::Decryptor::new(stored)
        .map_err(|e| PipelineError::Verification(format!("chunk {short}…: {e}")))?;
    let mut reader = decryptor
        .decrypt(identities.iter().map(|i| i.as_ref() as &dyn age::Identity))
        .map_err(|e| {
            PipelineError::Verification(format!(
                "chunk {short}… cannot be decrypted with the owner key given: {e}"
            ))
        })?;
    // The payload is no longer than the age file; the frame holds what the signed manifest
    // says (never more than a chunk can be).
    let mut payload = Vec::with_capacity(stored.len());
    reader
        .read_to_end(&mut payload)
        .map_err(|e| PipelineError::Verification(format!("chunk {short}…: {e}")))?;
    let plain = match compression {
        Compression::Zstd => DECOMPRESSORS
            .take(|_| true)
            .map(Ok)
            .unwrap_or_else(zstd::bulk::Decompressor::new)
            .and_then(|mut decompressor| {
                let capacity = chunk.plain.min(MAX_CHUNK as u64) as usize;
                let plain = decompressor.decompress(&payload, capacity);
                DECOMPRESSORS.give_back(decompressor);
                plain
            })
            .map_err(|e| {
                PipelineError::Verification(format!(
                    "chunk {short}… does not decompress to the {} bytes of tar stream the manifest records: {e}",
                    chunk.plain
                ))
            })?,
        _ => payload,
    };
    if plain.len() as u64 != chunk.plain {
        return Err(PipelineError::Verification(format!(
            "chunk {short}… holds {} bytes of tar stream but the manifest records {}",
            plain.len(),
            chunk.plain
        )));
    }
    Ok(plain)
}

/// The tar stream of a chunked volume from `stored`: each chunk's ciphertext, in order, its
/// size and sha256 checked against the signed manifest, decrypted and decompressed on
/// blocking threads, two chunks at a time (two cores).
pub fn chunk_plaintext<S>(
    stored: S,
    compression: Compression,
    identities: Arc<Vec<BoxIdentity>>,
    digest: Digest,
) -> impl AsyncRead + Send + Unpin + 'static
where
    S: Stream<Item = Result<(ChunkRef, Bytes), PipelineError>> + Send + 'static,
{
    let opened = stored
        .map(move |item| {
            let identities = Arc::clone(&identities);
            async move {
                let (chunk, bytes) = item?;
                tokio::task::spawn_blocking(move || {
                    open_chunk(&chunk, &bytes, compression, &identities, digest)
                })
                .await
                .map_err(|e| PipelineError::Io(std::io::Error::other(e)))?
            }
        })
        .buffered(2)
        .map_ok(Bytes::from)
        .map_err(std::io::Error::other);
    tokio_util::io::StreamReader::new(Box::pin(opened))
}

/// The stored bytes of a volume's chunks, in order, from a spool file that holds them one
/// after the other.
pub fn spooled_chunks(
    file: std::fs::File,
    chunks: Vec<ChunkRef>,
) -> impl Stream<Item = Result<(ChunkRef, Bytes), PipelineError>> + Send + 'static {
    let file = Arc::new(std::sync::Mutex::new(file));
    futures::stream::iter(chunks).then(move |chunk| {
        let file = Arc::clone(&file);
        async move {
            tokio::task::spawn_blocking(move || {
                use std::io::Read;
                let mut bytes = Vec::with_capacity(chunk.size as usize);
                let mut file = file.lock().unwrap_or_else(|p| p.into_inner());
                (&mut *file)
                    .take(chunk.size)
                    .read_to_end(&mut bytes)
                    .map_err(PipelineError::Io)?;
                if bytes.len() as u64 != chunk.size {
                    return Err(PipelineError::Io(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the restore spool ended early",
                    )));
                }
                Ok((chunk, Bytes::from(bytes)))
            })
            .await
            .map_err(|e| PipelineError::Io(std::io::Error::other(e)))?
        }
    })
}

/// The chunks of a volume fetched from the store, in order, a few at a time.
pub fn fetch_chunks(
    from: ChunkStore,
    chunks: Vec<ChunkRef>,
) -> impl Stream<Item = Result<(ChunkRef, Bytes), PipelineError>> + Send + 'static {
    let budget = Arc::new(tokio::sync::Semaphore::new(FETCH_BUDGET_KIB as usize));
    futures::stream::iter(chunks)
        .map(move |chunk| {
            let (from, budget) = (from.clone(), Arc::clone(&budget));
            async move {
                // The semaphore is fair and the chunks ask in order, so the first chunk still
                // waiting is always the next one served: no deadlock, whatever the sizes.
                let kib = chunk.size.div_ceil(1024).min(u64::from(FETCH_BUDGET_KIB)) as u32;
                let permit = budget
                    .acquire_many_owned(kib)
                    .await
                    .expect("the fetch budget is never closed");
                let location = from.location(&chunk.sha256);
                let got = from.objects.get(&location).await.map_err(|e| match e {
                    object_store::Error::NotFound { .. } => PipelineError::Verification(format!(
                        "chunk {location} is missing from the store"
                    )),
                    other => PipelineError::Store(other),
                })?;
                // Read no more than the manifest allows: a replaced, huge object is refused
                // before it is read into memory.
                if got.meta.size != chunk.size {
                    return Err(PipelineError::Verification(format!(
                        "chunk {location} is {} bytes but the manifest records {} (truncated or replaced)",
                        got.meta.size, chunk.size
                    )));
                }
                let bytes = got.bytes().await.map_err(PipelineError::Store)?;
                Ok((chunk, bytes, permit))
            }
        })
        .buffered(FETCH_IN_FLIGHT)
        // Its share of the budget goes back as the chunk leaves, in order.
        .map_ok(|(chunk, bytes, _permit)| (chunk, bytes))
}

/// The quick check of a chunked volume: what is wrong with its chunks in `present` (the
/// store's listing: id → size), if anything.
pub fn missing(chunks: &[ChunkRef], present: &HashMap<Hex32, u64>) -> Option<String> {
    let missing = chunks
        .iter()
        .filter(|c| !present.contains_key(&c.sha256))
        .count();
    let resized = chunks
        .iter()
        .filter(|c| present.get(&c.sha256).is_some_and(|size| *size != c.size))
        .count();
    (missing + resized > 0).then(|| {
        format!(
            "{missing} of its {} chunks are missing from the store and {resized} have another size than the manifest records",
            chunks.len()
        )
    })
}

/// Every chunk in the store under `to` where a chunk lies (`chunks/<ab>/<sha256>`, nothing
/// else): sha256 → stored size.
pub async fn list_chunks(to: &ChunkStore) -> Result<HashMap<Hex32, u64>, object_store::Error> {
    let dir = to.app_dir.clone().join(crate::format::CHUNKS_DIR);
    chunks_under(to, dir).await
}

/// [`list_chunks`], one listing per two-digit prefix (`chunks/00/` … `chunks/ff/`), 16 at
/// once: for a store with many chunks, where one listing is a long chain of pages.
pub async fn list_chunks_by_prefix(
    to: &ChunkStore,
) -> Result<HashMap<Hex32, u64>, object_store::Error> {
    let dirs = (0..=255u8).map(|prefix| {
        let dir = to.app_dir.clone().join(crate::format::CHUNKS_DIR);
        chunks_under(to, dir.join(format!("{prefix:02x}")))
    });
    let mut present = HashMap::new();
    let mut lists = std::pin::pin!(futures::stream::iter(dirs).buffer_unordered(16));
    while let Some(listed) = lists.next().await {
        present.extend(listed?);
    }
    Ok(present)
}

/// The chunks under `dir` where a chunk lies, with their sizes: collected straight into the
/// map (no list of them beside it).
async fn chunks_under(
    to: &ChunkStore,
    dir: Path,
) -> Result<HashMap<Hex32, u64>, object_store::Error> {
    to.objects
        .list(Some(&dir))
        .try_filter_map(|meta| {
            let found = meta
                .location
                .filename()
                .and_then(Hex32::parse)
                .filter(|sha256| to.location(sha256) == meta.location)
                .map(|sha256| (sha256, meta.size));
            async move { Ok(found) }
        })
        .try_collect()
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::testing::noise;
    use object_store::memory::InMemory;

    fn chunk(id: u8, sha256: u8, size: u64) -> ChunkRef {
        ChunkRef {
            id: Hex32([id; 32]),
            size,
            sha256: Hex32([sha256; 32]),
            plain: size * 2,
        }
    }

    /// What may be reused: a chunk of an earlier list only when the listing shows its object
    /// with the recorded size, each id once; then what this run adds; nothing once forgotten.
    #[test]
    fn known_chunks_are_those_listed_with_their_size_and_those_added() {
        let present: HashMap<Hex32, u64> = [
            (Hex32([1; 32]), 10),
            (Hex32([2; 32]), 99),
            (Hex32([4; 32]), 40),
        ]
        .into();
        let earlier = vec![
            chunk(40, 4, 40),
            chunk(10, 1, 10),
            chunk(20, 2, 20),
            chunk(30, 3, 30),
            chunk(10, 1, 10),
        ];
        let known = Known::confirmed(earlier, &present);
        assert_eq!(known.len(), 2);
        assert_eq!(known.get(&Hex32([10; 32])), Some(chunk(10, 1, 10)));
        assert_eq!(known.get(&Hex32([40; 32])), Some(chunk(40, 4, 40)));
        // Listed with another size, or not listed: not reusable.
        assert_eq!(known.get(&Hex32([20; 32])), None);
        assert_eq!(known.get(&Hex32([30; 32])), None);
        // An id sealed twice, both objects listed: the lower sha256 is reused, whatever the order.
        let twice = [chunk(60, 9, 90), chunk(60, 6, 60)];
        let listed: HashMap<Hex32, u64> = [(Hex32([9; 32]), 90), (Hex32([6; 32]), 60)].into();
        for order in [twice.to_vec(), twice.iter().rev().copied().collect()] {
            let known = Known::confirmed(order, &listed);
            assert_eq!(known.get(&Hex32([60; 32])), Some(chunk(60, 6, 60)));
        }
        known.add(chunk(50, 5, 50));
        known.add(chunk(50, 5, 50));
        assert_eq!(known.len(), 3);
        assert_eq!(known.get(&Hex32([50; 32])), Some(chunk(50, 5, 50)));
        known.forget();
        assert!(known.is_empty());
        assert_eq!(known.get(&Hex32([10; 32])), None);
    }

    fn sealer(identity: &age::x25519::Identity) -> ChunkSealer {
        ChunkSealer {
            recipients: Arc::new(vec![
                crate::keys::parse_recipient(&identity.to_public().to_string()).unwrap(),
            ]),
            compression: Compression::Zstd,
            level: 3,
            keys: Arc::new(ChunkKeys::for_tests(7)),
        }
    }

    /// A tar of pseudo-random (incompressible) content, so chunk sizes are real.
    fn tar_of(data: &[u8]) -> Vec<u8> {
        let mut tar = crate::pipeline::testing::file_header("data", data.len()).to_vec();
        tar.extend_from_slice(data);
        tar.resize(tar.len().div_ceil(512) * 512 + 1024, 0);
        tar
    }

    async fn read_back(
        store: &ChunkStore,
        sealed: &SealedChunks,
        id: &age::x25519::Identity,
    ) -> Vec<u8> {
        use tokio::io::AsyncReadExt;
        let identities: Vec<BoxIdentity> = vec![Box::new(id.clone())];
        let mut reader = chunk_plaintext(
            fetch_chunks(store.clone(), sealed.chunks.clone()),
            Compression::Zstd,
            Arc::new(identities),
            Digest::Check,
        );
        let mut out = Vec::new();
        reader.read_to_end(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn a_second_backup_stores_only_what_changed_and_both_read_back() {
        let identity = age::x25519::Identity::generate();
        let store = memory_store();
        let mut data = noise(12 << 20, 1);
        let first_tar = tar_of(&data);
        let known = Known::default();
        let first = seal(&first_tar, &identity, &known, &store).await;
        assert!(first.chunks.len() >= 4, "{} chunks", first.chunks.len());
        assert_eq!(first.tar_size, first_tar.len() as u64);
        assert_eq!(read_back(&store, &first, &identity).await, first_tar);

        // Rewrite 8 KiB in the middle: one or two chunks change.
        data[6 << 20..(6 << 20) + 8192].copy_from_slice(&noise(8192, 2));
        let second_tar = tar_of(&data);
        let present = list_chunks(&store).await.unwrap();
        let known = Known::confirmed(first.chunks.clone(), &present);
        let second = seal(&second_tar, &identity, &known, &store).await;
        assert!(
            second.new_bytes < 10 << 20 && second.new_bytes * 3 < first.new_bytes,
            "new {} of {}",
            second.new_bytes,
            first.new_bytes
        );
        assert_eq!(read_back(&store, &second, &identity).await, second_tar);
        assert_eq!(read_back(&store, &first, &identity).await, first_tar);

        // A chunk the store lost is uploaded again, never referenced blindly.
        let lost = &second.chunks[0];
        store
            .objects
            .delete(&store.location(&lost.sha256))
            .await
            .unwrap();
        let present = list_chunks(&store).await.unwrap();
        let known = Known::confirmed(second.chunks.clone(), &present);
        let third = seal(&second_tar, &identity, &known, &store).await;
        assert_eq!(third.new_bytes, third.chunks[0].size);
        assert_eq!(read_back(&store, &third, &identity).await, second_tar);
    }

    /// A night that follows the previous backup's cuts stores what a night cut afresh stores,
    /// and a chunk the store lost is uploaded again even where the cuts are followed.
    #[tokio::test]
    async fn following_the_previous_cuts_stores_what_cutting_afresh_stores() {
        let identity = age::x25519::Identity::generate();
        let mut data = noise(10 << 20, 11);
        let first_tar = tar_of(&data);
        data[3 << 20..(3 << 20) + 8192].copy_from_slice(&noise(8192, 12));
        let second_tar = tar_of(&data);
        let mut seconds = Vec::new();
        for follow in [false, true] {
            let store = memory_store();
            let first = seal(&first_tar, &identity, &Known::default(), &store).await;
            // The store lost the first night's last chunk.
            let lost = first.chunks.last().unwrap();
            store
                .objects
                .delete(&store.location(&lost.sha256))
                .await
                .unwrap();
            let known = Known::confirmed(first.chunks.clone(), &list_chunks(&store).await.unwrap());
            let cancel = CancellationToken::new();
            let to = [ChunkTarget {
                known: &known,
                store: &store,
                tokens: StoreTokens::stopped_by(cancel.clone()),
                previous: follow.then(|| Arc::new(Previous::of(&first.chunks))),
            }];
            let second = seal_chunks_each(&second_tar[..], &sealer(&identity), &to, None, &cancel)
                .await
                .unwrap()
                .pop()
                .unwrap()
                .finish()
                .await
                .unwrap();
            assert_eq!(read_back(&store, &second, &identity).await, second_tar);
            // Referenced again, and read back above: stored again.
            assert!(second.chunks.iter().any(|c| c.id == lost.id));
            seconds.push(second);
        }
        let ids = |s: &SealedChunks| s.chunks.iter().map(|c| c.id).collect::<Vec<_>>();
        // The same chunks (their stored sizes differ by age's random header padding).
        assert_eq!(ids(&seconds[0]), ids(&seconds[1]));
        assert!(seconds[1].new_bytes < 4 << 20, "{}", seconds[1].new_bytes);
    }

    async fn seal(
        tar: &[u8],
        identity: &age::x25519::Identity,
        known: &Known,
        store: &ChunkStore,
    ) -> SealedChunks {
        seal_chunks(
            tar,
            &sealer(identity),
            known,
            store,
            None,
            &CancellationToken::new(),
        )
        .await
        .unwrap()
        .finish()
        .await
        .unwrap()
    }

    /// A store whose every write fails: its folder is a file.
    fn broken_store(dir: &tempfile::TempDir) -> ChunkStore {
        ChunkStore {
            objects: crate::pipeline::testing::broken_objects(dir),
            app_dir: Path::from("app"),
            attributes: Attributes::new(),
        }
    }

    /// One read, several stores: each gets the chunks it lacks and its own list (a chunk it had
    /// is referenced as it stored it), both read back to the tar; a store that fails does not
    /// stop the others.
    #[tokio::test]
    async fn one_read_fills_each_store_with_what_it_lacks_and_a_broken_one_stops_no_other() {
        let identity = age::x25519::Identity::generate();
        let (fresh, used) = (memory_store(), memory_store());
        let mut data = noise(8 << 20, 20);
        let earlier = seal(&tar_of(&data), &identity, &Known::default(), &used).await;
        data[4 << 20..(4 << 20) + 4096].copy_from_slice(&noise(4096, 21));
        let tar = tar_of(&data);
        let present = list_chunks(&used).await.unwrap();
        let (known_fresh, known_used) = (
            Known::default(),
            Known::confirmed(earlier.chunks.clone(), &present),
        );
        let dir = tempfile::tempdir().unwrap();
        let broken = broken_store(&dir);
        let cancel = CancellationToken::new();
        let to = [
            ChunkTarget {
                known: &known_fresh,
                store: &fresh,
                tokens: crate::pipeline::fan_out::StoreTokens::stopped_by(cancel.clone()),
                previous: None,
            },
            ChunkTarget {
                known: &Known::default(),
                store: &broken,
                tokens: crate::pipeline::fan_out::StoreTokens::stopped_by(cancel.clone()),
                previous: None,
            },
            ChunkTarget {
                known: &known_used,
                store: &used,
                tokens: crate::pipeline::fan_out::StoreTokens::stopped_by(cancel.clone()),
                previous: None,
            },
        ];
        let each = seal_chunks_each(&tar[..], &sealer(&identity), &to, None, &cancel)
            .await
            .unwrap();
        let mut each = each.into_iter();
        let fresh_sealed = each.next().unwrap().finish().await.unwrap();
        let broken_result = each.next().unwrap().finish().await;
        let used_sealed = each.next().unwrap().finish().await.unwrap();
        assert!(
            matches!(broken_result, Err(SealError::Upload { .. })),
            "the broken store's own upload fails"
        );
        let failed: Vec<bool> = to.iter().map(|t| t.tokens.failed.is_cancelled()).collect();
        assert_eq!(failed, [false, true, false], "and only it is marked failed");
        assert_eq!(
            fresh_sealed.new_bytes,
            fresh_sealed.chunks.iter().map(|c| c.size).sum::<u64>()
        );
        assert!(
            used_sealed.new_bytes * 4 < fresh_sealed.new_bytes,
            "the store that had the earlier chunks takes only the changed ones: {} of {}",
            used_sealed.new_bytes,
            fresh_sealed.new_bytes
        );
        let ids = |s: &SealedChunks| s.chunks.iter().map(|c| c.id).collect::<Vec<_>>();
        assert_eq!(
            ids(&fresh_sealed),
            ids(&used_sealed),
            "one cut for all stores"
        );
        assert_eq!(read_back(&fresh, &fresh_sealed, &identity).await, tar);
        assert_eq!(read_back(&used, &used_sealed, &identity).await, tar);
        assert!(missing(&used_sealed.chunks, &list_chunks(&used).await.unwrap()).is_none());
    }

    #[tokio::test]
    async fn when_every_store_fails_the_read_stops_with_each_upload_error() {
        let identity = age::x25519::Identity::generate();
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a, b) = (broken_store(&a), broken_store(&b));
        let (known_a, known_b) = (Known::default(), Known::default());
        let cancel = CancellationToken::new();
        let to = [
            ChunkTarget {
                known: &known_a,
                store: &a,
                tokens: crate::pipeline::fan_out::StoreTokens::stopped_by(cancel.clone()),
                previous: None,
            },
            ChunkTarget {
                known: &known_b,
                store: &b,
                tokens: crate::pipeline::fan_out::StoreTokens::stopped_by(cancel.clone()),
                previous: None,
            },
        ];
        let tar = tar_of(&noise(24 << 20, 30));
        let result = seal_chunks_each(&tar[..], &sealer(&identity), &to, None, &cancel).await;
        // Each store's own error, in order, for the backup to name each store.
        crate::pipeline::testing::assert_each_refused(result, 2);
        // One store alone: its upload error, as before.
        let result = seal_chunks(&tar[..], &sealer(&identity), &known_a, &a, None, &cancel).await;
        assert!(
            matches!(result, Err(SealError::Upload { .. })),
            "{:?}",
            result.err()
        );
    }

    fn memory_store() -> ChunkStore {
        ChunkStore {
            objects: Arc::new(InMemory::new()),
            app_dir: Path::from("app"),
            attributes: Attributes::new(),
        }
    }

    /// Content that comes back after a night without it is sealed again (age is randomised):
    /// the new copy must not replace the bytes the first night's manifest points to.
    #[tokio::test]
    async fn content_that_returns_is_stored_beside_what_older_backups_point_to() {
        let identity = age::x25519::Identity::generate();
        let store = memory_store();
        let a = tar_of(&noise(3 << 20, 10));
        let b = tar_of(&noise(3 << 20, 11));
        let night1 = seal(&a, &identity, &Known::default(), &store).await;
        let present = list_chunks(&store).await.unwrap();
        let night2 = seal(
            &b,
            &identity,
            &Known::confirmed(Vec::new(), &present),
            &store,
        )
        .await;
        let present = list_chunks(&store).await.unwrap();
        // Night 3 deduplicates against night 2 only, where a's chunks are not.
        let night3 = seal(
            &a,
            &identity,
            &Known::confirmed(night2.chunks.clone(), &present),
            &store,
        )
        .await;
        assert!(night3.new_bytes > 0);
        assert_eq!(read_back(&store, &night1, &identity).await, a);
        assert_eq!(read_back(&store, &night3, &identity).await, a);
        assert_eq!(read_back(&store, &night2, &identity).await, b);
    }

    /// Long runs of equal content (zeros: new WAL segments, preallocated files) cut into equal
    /// chunks several of which are in flight at once: stored once, and the volume reads back.
    #[tokio::test]
    async fn repeated_chunks_in_one_volume_are_stored_once_and_read_back() {
        let identity = age::x25519::Identity::generate();
        let store = memory_store();
        let mut data = noise(1 << 20, 12);
        data.extend(vec![0u8; 24 << 20]);
        let tar = tar_of(&data);
        let sealed = seal(&tar, &identity, &Known::default(), &store).await;
        let distinct: std::collections::HashSet<Hex32> =
            sealed.chunks.iter().map(|c| c.sha256).collect();
        assert!(
            sealed.chunks.len() > distinct.len() + 3,
            "{} chunks",
            sealed.chunks.len()
        );
        assert_eq!(list_chunks(&store).await.unwrap().len(), distinct.len());
        assert_eq!(read_back(&store, &sealed, &identity).await, tar);
    }

    /// Only `chunks/<ab>/<sha256>` counts as a stored chunk.
    #[tokio::test]
    async fn a_chunk_moved_elsewhere_is_not_present() {
        let identity = age::x25519::Identity::generate();
        let store = memory_store();
        let sealed = seal(
            &tar_of(&noise(1 << 20, 13)),
            &identity,
            &Known::default(),
            &store,
        )
        .await;
        let chunk = &sealed.chunks[0];
        let stray = store
            .app_dir
            .clone()
            .join("chunks")
            .join("zz")
            .join(chunk.sha256.to_string());
        let bytes = store
            .objects
            .get(&store.location(&chunk.sha256))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        store.objects.put(&stray, bytes.into()).await.unwrap();
        store
            .objects
            .delete(&store.location(&chunk.sha256))
            .await
            .unwrap();
        let present = list_chunks(&store).await.unwrap();
        assert!(missing(&sealed.chunks, &present).is_some());
        assert!(
            Known::confirmed(sealed.chunks.clone(), &present).is_empty() || sealed.chunks.len() > 1
        );
        // Listed a prefix at a time: the same chunks, and not the stray one either.
        assert_eq!(list_chunks_by_prefix(&store).await.unwrap(), present);
        assert_eq!(present.len(), sealed.chunks.len() - 1);
    }

    #[tokio::test]
    async fn a_replaced_chunk_fails_its_check() {
        let identity = age::x25519::Identity::generate();
        let store = memory_store();
        let tar = tar_of(&noise(3 << 20, 3));
        let sealed = seal(&tar, &identity, &Known::default(), &store).await;
        // A bucket writer encrypts other data to the owner: valid age, wrong chunk.
        let forged = seal_one(&sealer(&identity), b"planted").unwrap();
        let chunk = &sealed.chunks[0];
        let err = open_one(
            chunk,
            &forged,
            Compression::Zstd,
            &[Box::new(identity.clone())],
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("bytes but the manifest records")
                || err.to_string().contains("sha256"),
            "{err}"
        );
        let mut same_size = forged.clone();
        same_size.resize(chunk.size as usize, 0);
        let err =
            open_one(chunk, &same_size, Compression::Zstd, &[Box::new(identity)]).unwrap_err();
        assert!(err.to_string().contains("sha256"), "{err}");
    }
}
