//! Where a volume's tar stream is cut into chunks: FastCDC's keyed gear hash, and runs of zeros
//! cut out; or, where the stream is what it was, the cuts of the volume's previous backup.
//!
//! ```text
//! tar stream → buffer (8 MiB, split, never copied per chunk)
//!            → the previous backup's next chunks again? (same lengths, same keyed ids; up to
//!              eight hashed at once) → those chunks, up to the first that differs
//!            → else FastCDC cut (to 16–256 KiB where many tar headers lie ahead, else
//!              128 KiB–2 MiB) → zero runs cut out → each piece, its id checked against the
//!              previous backup's ids to pick up its order again
//! ```
//! A night that changed 1 % of a volume reads every byte but runs the gear hash over about 1 %
//! of them: each unchanged chunk is recognised by its keyed id alone. Any cuts make a valid
//! chunk list (restore only concatenates), so following the previous cuts changes what is
//! stored only where FastCDC would have cut elsewhere, which for equal bytes it never does but
//! at the end of the stream.
//!
//! Where it sits: the first stage of the `chunk` chain; sees bytes and ids, never a store.

use super::chunk::{AVG_CHUNK, MAX_CHUNK, MIN_CHUNK};
use super::tar_end::Sizes;
use super::tar_walk::Walker;
use crate::format::ChunkRef;
use crate::keys::ChunkKeys;
use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt};

/// A block the stream is read into: chunks are views of it, so one allocation serves
/// several chunks, and is read into again once they are all gone.
const BUFFER: usize = 4 * MAX_CHUNK;
/// Blocks kept for reuse while chunks in them are still on their way.
const RETIRED: usize = 2;
/// Read no less than this at once.
const READ_SPACE: usize = 256 * 1024;
/// Chunks of the previous backup checked at once while the stream follows it: their ids are
/// computed side by side, on as many threads.
const FOLLOW_AT_ONCE: usize = 8;
/// Runs of zeros at least this long are chunks of their own.
const ZERO_RUN: usize = 64 * 1024;
/// A chunk that starts where at least this many tar headers lie within the longest chunk
/// ahead (entries of 32 KiB or less on average: a folder of small files, a database's small
/// tables) is cut to the small sizes below, so that an edited small file costs a chunk of
/// about 64 KiB, not 512.
const SMALL_FILES: usize = 64;
const SMALL_MIN: usize = 16 * 1024;
const SMALL_AVG: usize = 64 * 1024;
const SMALL_MAX: usize = 256 * 1024;

/// A chunk's keyed id.
pub type Id = [u8; 32];

/// A piece of the stream, and its id when the cutter had to compute it.
pub struct Piece {
    pub data: Bytes,
    pub id: Option<Id>,
}

/// The chunks of a volume's previous backup, in order: lengths and ids, the cuts to try first.
/// 40 bytes a chunk: the list, and its positions sorted by id to find where a chunk was.
#[derive(Debug, Default)]
pub struct Previous {
    chunks: Vec<(Id, u32)>,
    by_id: Vec<u32>,
}

impl Previous {
    /// From a genuine manifest's chunk list; a chunk longer than a chunk can be ends it.
    pub fn of(chunks: &[ChunkRef]) -> Previous {
        let usable = chunks
            .iter()
            .take_while(|c| c.plain != 0 && c.plain <= MAX_CHUNK as u64)
            .count();
        let chunks: Vec<(Id, u32)> = chunks[..usable]
            .iter()
            .map(|c| (c.id.0, c.plain as u32))
            .collect();
        // Equal ids sort by position: a lookup finds the first.
        let mut by_id: Vec<u32> = (0..chunks.len() as u32).collect();
        by_id.sort_unstable_by_key(|&at| (chunks[at as usize].0, at));
        Previous { chunks, by_id }
    }

    /// The first position of the chunk with this id.
    fn position_of(&self, id: &Id) -> Option<usize> {
        let first = self
            .by_id
            .partition_point(|&at| self.chunks[at as usize].0 < *id);
        let at = *self.by_id.get(first)? as usize;
        (self.chunks[at].0 == *id).then_some(at)
    }

    pub fn len(&self) -> usize {
        self.chunks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }
}

/// The cutter: pieces of `source` in order.
pub struct Cutter<R> {
    source: R,
    buf: BytesMut,
    /// Earlier blocks, emptied: each is read into again once no chunk holds it.
    retired: VecDeque<BytesMut>,
    /// Blocks allocated so far.
    allocated: usize,
    eof: bool,
    keys: Arc<ChunkKeys>,
    gear: Box<[u64; 256]>,
    gear_ls: Box<[u64; 256]>,
    mask_s: u64,
    mask_l: u64,
    /// FastCDC's masks for [`SMALL_AVG`].
    small_masks: (u64, u64),
    /// Where the tar headers are, followed as the stream is read.
    edges: Edges,
    previous: Option<Arc<Previous>>,
    /// The previous chunk expected next, while the stream follows the previous backup.
    expect: Option<usize>,
    ready: VecDeque<Piece>,
}

impl<R: AsyncRead + Unpin> Cutter<R> {
    pub fn new(source: R, keys: Arc<ChunkKeys>, previous: Option<Arc<Previous>>) -> Self {
        let (mask_s, mask_l) =
            fastcdc::v2020::select_masks(AVG_CHUNK, fastcdc::v2020::Normalization::Level1);
        let (gear, gear_ls) = fastcdc::v2020::get_gear_with_seed(keys.seed());
        let table = |t: &[u64]| -> Box<[u64; 256]> {
            Box::new(t.try_into().expect("the gear table has 256 entries"))
        };
        let previous = previous.filter(|p| !p.is_empty());
        let small_masks =
            fastcdc::v2020::select_masks(SMALL_AVG, fastcdc::v2020::Normalization::Level1);
        Cutter {
            small_masks,
            edges: Edges::default(),
            source,
            buf: BytesMut::with_capacity(BUFFER),
            retired: VecDeque::new(),
            allocated: 1,
            eof: false,
            gear: table(&gear),
            gear_ls: table(&gear_ls),
            mask_s,
            mask_l,
            expect: previous.as_ref().map(|_| 0),
            previous,
            keys,
            ready: VecDeque::new(),
        }
    }

    /// The pieces as a stream.
    pub fn into_stream(self) -> impl futures::Stream<Item = std::io::Result<Piece>> {
        futures::stream::try_unfold(self, |mut cutter| async move {
            Ok(cutter.next().await?.map(|piece| (piece, cutter)))
        })
    }

    /// Reads until the buffer holds a longest chunk, or the stream's end.
    async fn fill(&mut self) -> std::io::Result<()> {
        while !self.eof && self.buf.len() < MAX_CHUNK {
            if self.buf.capacity() - self.buf.len() < READ_SPACE {
                self.next_block();
            }
            let before = self.buf.len();
            if self.source.read_buf(&mut self.buf).await? == 0 {
                self.eof = true;
            }
            self.edges.feed(&self.buf[before..]);
        }
        self.edges
            .forget_before(self.edges.read - self.buf.len() as u64);
        Ok(())
    }

    /// Moves what is left unchunked to the start of a block whose chunks are all gone (no
    /// allocation, no page faults), or of a new one.
    fn next_block(&mut self) {
        let reusable = (0..self.retired.len()).find(|&i| self.retired[i].try_reclaim(BUFFER));
        let mut block = match reusable.and_then(|i| self.retired.remove(i)) {
            Some(block) => block,
            None => {
                self.allocated += 1;
                BytesMut::with_capacity(BUFFER)
            }
        };
        block.extend_from_slice(&self.buf);
        let mut old = std::mem::replace(&mut self.buf, block);
        old.clear();
        self.retired.push_back(old);
        if self.retired.len() > RETIRED {
            self.retired.pop_front();
        }
    }

    /// The next piece, or `None` at the end of the stream.
    pub async fn next(&mut self) -> std::io::Result<Option<Piece>> {
        if let Some(piece) = self.ready.pop_front() {
            return Ok(Some(piece));
        }
        self.fill().await?;
        if self.buf.is_empty() {
            return Ok(None);
        }
        let Some(previous) = self.previous.clone() else {
            // Nothing to follow: ids are computed downstream, several at once.
            let cut = self.cut();
            self.ready.extend(
                split_zero_runs(cut)
                    .into_iter()
                    .map(|data| Piece { data, id: None }),
            );
            return Ok(self.ready.pop_front());
        };
        if let Some(at) = self.expect {
            // The previous backup's next chunks, as many as the buffer holds, hashed at once
            // (on both cores); those that are what they were, in order, are the next pieces.
            let mut heads = Vec::new();
            while let Some(&(want, len)) = previous.chunks.get(at + heads.len()) {
                if len as usize > self.buf.len() || heads.len() == FOLLOW_AT_ONCE {
                    break;
                }
                heads.push((self.buf.split_to(len as usize), want));
            }
            let hashed = heads.into_iter().map(|(head, want)| {
                let keys = Arc::clone(&self.keys);
                async move {
                    let (head, id) = id_of(keys, head).await?;
                    Ok::<_, std::io::Error>((head, id, want))
                }
            });
            let mut hashed = futures::future::try_join_all(hashed).await?;
            let same = hashed.iter().take_while(|(_, id, want)| id == want).count();
            let followed = same == hashed.len();
            let mut rest = hashed.split_off(same).into_iter();
            if let Some((mut head, _, _)) = rest.next() {
                // The stream no longer follows: what was split off goes back, in order.
                for (next, _, _) in rest {
                    head.unsplit(next);
                }
                head.unsplit(std::mem::take(&mut self.buf));
                self.buf = head;
            }
            self.expect = Some(at + same);
            self.ready
                .extend(hashed.into_iter().map(|(head, id, _)| Piece {
                    data: head.freeze(),
                    id: Some(id),
                }));
            if followed && !self.ready.is_empty() {
                return Ok(self.ready.pop_front());
            }
            // FastCDC's cut below needs a longest chunk ahead, as at the top.
            self.fill().await?;
        }
        // Cut afresh, and look for where the previous backup's order picks up again.
        let cut = self.cut();
        self.expect = None;
        for data in split_zero_runs(cut) {
            let (data, id) = id_of(Arc::clone(&self.keys), data).await?;
            self.expect = previous.position_of(&id).map(|at| at + 1);
            self.ready.push_back(Piece { data, id: Some(id) });
        }
        Ok(self.ready.pop_front())
    }

    /// The next FastCDC chunk off the buffer: to the small sizes where many tar headers lie
    /// ahead, else to the usual ones.
    fn cut(&mut self) -> Bytes {
        let start = self.edges.read - self.buf.len() as u64;
        let (min, avg, max, (mask_s, mask_l)) = match self.edges.many_small_files(start) {
            true => (SMALL_MIN, SMALL_AVG, SMALL_MAX, self.small_masks),
            false => (MIN_CHUNK, AVG_CHUNK, MAX_CHUNK, (self.mask_s, self.mask_l)),
        };
        let (_, at) = fastcdc::v2020::cut_gear(
            &self.buf,
            min,
            avg,
            max,
            mask_s,
            mask_l,
            mask_s << 1,
            mask_l << 1,
            &self.gear[..],
            &self.gear_ls[..],
        );
        self.buf.split_to(at.max(1)).freeze()
    }
}

/// The tar headers of the stream read so far, followed with the backup's own end check
/// ([`Sizes`]); where the stream is no tar the check fails it, so here it only stops following.
struct Edges {
    walker: Walker,
    sizes: Sizes,
    /// Bytes of the stream read.
    read: u64,
}

impl Default for Edges {
    fn default() -> Self {
        Edges {
            walker: Walker::default(),
            sizes: Sizes::recording_starts(),
            read: 0,
        }
    }
}

impl Edges {
    fn feed(&mut self, data: &[u8]) {
        self.read += data.len() as u64;
        if self.sizes.starts.is_some() && self.walker.advance(data, &mut self.sizes).is_err() {
            self.sizes.starts = None;
        }
    }

    /// Forgets the headers before `from`, where the unchunked rest of the stream starts: what
    /// is kept is at most a header per 512 bytes of the buffer.
    fn forget_before(&mut self, from: u64) {
        if let Some(starts) = &mut self.sizes.starts {
            while starts.front().is_some_and(|&at| at < from) {
                starts.pop_front();
            }
        }
    }

    /// Whether at least [`SMALL_FILES`] headers start within the longest chunk from `from`.
    fn many_small_files(&mut self, from: u64) -> bool {
        self.forget_before(from);
        let Some(starts) = &self.sizes.starts else {
            return false;
        };
        let within = from + MAX_CHUNK as u64;
        starts
            .iter()
            .take_while(|&&at| at < within)
            .nth(SMALL_FILES - 1)
            .is_some()
    }
}

/// The keyed id of `data`, on a blocking thread.
async fn id_of<T: AsRef<[u8]> + Send + 'static>(
    keys: Arc<ChunkKeys>,
    data: T,
) -> std::io::Result<(T, Id)> {
    tokio::task::spawn_blocking(move || {
        let id = keys.id_bytes(data.as_ref());
        (data, id)
    })
    .await
    .map_err(std::io::Error::other)
}

/// A chunk cut again at the edges of every long run of zeros in it. FastCDC's gear hash finds
/// no boundary inside a run of equal bytes, so a chunk would run on through zeros (a
/// database's empty pages, a preallocated log) to its maximum, and one page written in or
/// near them would cost the whole chunk again. The cuts depend on the content only, like
/// FastCDC's, and equal zero runs share one chunk.
pub fn split_zero_runs(data: Bytes) -> Vec<Bytes> {
    let word = |at: usize| u64::from_ne_bytes(data[at..at + 8].try_into().expect("8 bytes"));
    let n = data.len();
    let mut cuts = Vec::new();
    let mut i = 0;
    while i + 8 <= n {
        if word(i) != 0 {
            i += 8;
            continue;
        }
        let mut start = i;
        while start > 0 && data[start - 1] == 0 {
            start -= 1;
        }
        let mut end = i + 8;
        while end + 8 <= n && word(end) == 0 {
            end += 8;
        }
        while end < n && data[end] == 0 {
            end += 1;
        }
        if end - start >= ZERO_RUN {
            cuts.extend([start, end]);
        }
        i = end.max(i + 8);
    }
    let mut pieces = Vec::with_capacity(cuts.len() + 1);
    let mut from = 0;
    for cut in cuts.into_iter().chain([n]) {
        if cut > from {
            pieces.push(data.slice(from..cut));
            from = cut;
        }
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::testing::noise;
    use futures::TryStreamExt;

    fn keys() -> Arc<ChunkKeys> {
        Arc::new(ChunkKeys::for_tests(9))
    }

    async fn pieces(data: &[u8], previous: Option<Arc<Previous>>) -> Vec<Piece> {
        Cutter::new(data, keys(), previous)
            .into_stream()
            .try_collect()
            .await
            .unwrap()
    }

    fn chunk_list(pieces: &[Piece]) -> Vec<ChunkRef> {
        pieces
            .iter()
            .map(|p| ChunkRef {
                id: crate::format::Hex32(keys().id_bytes(&p.data)),
                size: 0,
                sha256: crate::format::Hex32([0; 32]),
                plain: p.data.len() as u64,
            })
            .collect()
    }

    fn joined(pieces: &[Piece]) -> Vec<u8> {
        pieces.iter().flat_map(|p| p.data.to_vec()).collect()
    }

    /// How many of `pieces` are chunks of `previous`.
    fn reused_of(pieces: &[Piece], previous: &Previous) -> usize {
        pieces
            .iter()
            .filter(|p| previous.position_of(&p.id.unwrap()).is_some())
            .count()
    }

    fn lens(pieces: &[Piece]) -> Vec<usize> {
        pieces.iter().map(|p| p.data.len()).collect()
    }

    fn chunk(id: u8, plain: u64) -> ChunkRef {
        ChunkRef {
            id: crate::format::Hex32([id; 32]),
            size: 1,
            sha256: crate::format::Hex32([0; 32]),
            plain,
        }
    }

    /// A chunk that came twice is found where it came first; one never there, nowhere; the list
    /// ends before a chunk no cutter makes (empty, or past the longest).
    #[test]
    fn the_previous_list_finds_a_chunk_where_it_came_first() {
        let list = [
            chunk(9, 10),
            chunk(3, 20),
            chunk(9, 10),
            chunk(5, 30),
            chunk(3, 20),
            chunk(7, MAX_CHUNK as u64 + 1),
            chunk(8, 40),
        ];
        let previous = Previous::of(&list);
        assert_eq!(previous.len(), 5);
        assert_eq!(previous.position_of(&[9; 32]), Some(0));
        assert_eq!(previous.position_of(&[3; 32]), Some(1));
        assert_eq!(previous.position_of(&[5; 32]), Some(3));
        for absent in [0, 4, 7, 8, 10, 255] {
            assert_eq!(previous.position_of(&[absent; 32]), None, "{absent}");
        }
        assert!(Previous::of(&[chunk(1, 0), chunk(2, 5)]).is_empty());
        assert_eq!(Previous::default().position_of(&[0; 32]), None);
    }

    /// The cuts are FastCDC's (the crate's own stream chunker, same keyed gear) with zero runs
    /// cut out: backups made before this cutter existed keep deduplicating.
    #[tokio::test]
    async fn cuts_where_fastcdc_cuts() {
        let mut data = noise(9 << 20, 1);
        data[3_000_000..3_300_000].fill(0);
        let mut reference = fastcdc::v2020::AsyncStreamCDC::with_level_and_seed(
            &data[..],
            MIN_CHUNK,
            AVG_CHUNK,
            MAX_CHUNK,
            fastcdc::v2020::Normalization::Level1,
            keys().seed(),
        );
        let expected: Vec<usize> = reference
            .as_stream()
            .map_ok(|c| split_zero_runs(Bytes::from(c.data)))
            .try_collect::<Vec<_>>()
            .await
            .unwrap()
            .into_iter()
            .flatten()
            .map(|p| p.len())
            .collect();
        let got = pieces(&data, None).await;
        assert_eq!(lens(&got), expected);
        assert!(got.iter().all(|p| p.id.is_none()));
        assert_eq!(joined(&got), data);
    }

    /// A night that rewrote a page: the unchanged chunks are the previous ones, found by id,
    /// and the cuts are those FastCDC makes of the new data.
    #[tokio::test]
    async fn an_unchanged_stream_follows_the_previous_cuts() {
        let night1 = noise(12 << 20, 2);
        let first = pieces(&night1, None).await;
        let previous = Arc::new(Previous::of(&chunk_list(&first)));
        assert_eq!(previous.len(), first.len());

        // The same stream again: every chunk is the previous one, checked eight at a time.
        let again = pieces(&night1, Some(Arc::clone(&previous))).await;
        assert_eq!(lens(&again), lens(&first));
        assert_eq!(reused_of(&again, &previous), again.len());

        // Every other chunk changed: each batch of previous chunks is cut short at its first
        // changed one and the rest given back, so the pieces are still FastCDC's.
        let mut patchy = night1.clone();
        let mut at = 0;
        for (i, piece) in first.iter().enumerate() {
            if i % 2 == 1 {
                patchy[at + piece.data.len() / 2] ^= 0xff;
            }
            at += piece.data.len();
        }
        let followed = pieces(&patchy, Some(Arc::clone(&previous))).await;
        assert_eq!(lens(&followed), lens(&pieces(&patchy, None).await));
        assert_eq!(joined(&followed), patchy);

        let mut night2 = night1.clone();
        night2[5_000_000..5_008_192].copy_from_slice(&noise(8192, 3));
        let followed = pieces(&night2, Some(Arc::clone(&previous))).await;
        let fresh = pieces(&night2, None).await;
        assert_eq!(lens(&followed), lens(&fresh));
        assert_eq!(joined(&followed), night2);
        let ids = keys();
        for piece in &followed {
            assert_eq!(piece.id, Some(ids.id_bytes(&piece.data)));
        }
        let reused = reused_of(&followed, &previous);
        assert!(
            reused + 2 >= followed.len(),
            "{reused} of {}",
            followed.len()
        );

        // Bytes inserted near the start: the order is picked up again after them.
        let mut night3 = noise(300_000, 4);
        night3.extend_from_slice(&night1);
        let followed = pieces(&night3, Some(Arc::clone(&previous))).await;
        assert_eq!(joined(&followed), night3);
        let reused = reused_of(&followed, &previous);
        assert!(
            reused + 3 >= followed.len(),
            "{reused} of {}",
            followed.len()
        );
    }

    /// A batch cut short with little left in the buffer: the buffer is filled again before
    /// FastCDC cuts, so the cut is where FastCDC makes it, not at the end of what was read.
    #[tokio::test]
    async fn a_batch_cut_short_fills_the_buffer_before_cutting_afresh() {
        let data = noise(8 << 20, 7);
        let first = 1_950_000;
        let previous = Arc::new(Previous::of(&[
            ChunkRef {
                id: crate::format::Hex32(keys().id_bytes(&data[..first])),
                size: 1,
                sha256: crate::format::Hex32([0; 32]),
                plain: first as u64,
            },
            chunk(1, 100_000),
        ]));
        // Read 64 KiB at a time: the buffer holds just over a longest chunk when the batch is
        // split off, so about 150 KB are left after the first chunk: less than FastCDC's next
        // chunk from there.
        let reads = data
            .chunks(64 << 10)
            .map(|p| Ok::<_, std::io::Error>(Bytes::copy_from_slice(p)));
        let reader =
            tokio_util::io::StreamReader::new(futures::stream::iter(reads.collect::<Vec<_>>()));
        let got: Vec<Piece> = Cutter::new(reader, keys(), Some(previous))
            .into_stream()
            .try_collect()
            .await
            .unwrap();
        let mut expected = vec![first];
        expected.extend(lens(&pieces(&data[first..], None).await));
        assert_eq!(lens(&got), expected);
        assert_eq!(joined(&got), data);
    }

    /// A long stream read in small pieces, each chunk dropped once used: the blocks are read
    /// into again rather than allocated anew.
    #[tokio::test]
    async fn blocks_are_reused_once_their_chunks_are_gone() {
        let data = noise(48 << 20, 6);
        let pieces = data
            .chunks(64 << 10)
            .map(|p| Ok::<_, std::io::Error>(Bytes::copy_from_slice(p)));
        let reader =
            tokio_util::io::StreamReader::new(futures::stream::iter(pieces.collect::<Vec<_>>()));
        let mut cutter = Cutter::new(reader, keys(), None);
        let mut hasher = blake3::Hasher::new();
        let mut n = 0;
        while let Some(piece) = cutter.next().await.unwrap() {
            hasher.update(&piece.data);
            n += piece.data.len();
        }
        assert_eq!(n, data.len());
        assert_eq!(hasher.finalize(), blake3::hash(&data));
        assert!(
            cutter.allocated <= 2,
            "{} blocks for 48 MiB",
            cutter.allocated
        );
    }

    /// A stream shorter than the previous one, or empty, or a previous list that promises
    /// more than there is: the pieces are still exactly the stream.
    #[tokio::test]
    async fn any_previous_list_gives_the_stream_back() {
        let long = noise(6 << 20, 5);
        let previous = Arc::new(Previous::of(&chunk_list(&pieces(&long, None).await)));
        for data in [&long[..4 << 20], &long[1..], &[][..], &long[..100]] {
            let got = pieces(data, Some(Arc::clone(&previous))).await;
            assert_eq!(joined(&got), data);
            assert!(
                got.iter()
                    .all(|p| !p.data.is_empty() && p.data.len() <= MAX_CHUNK)
            );
        }
    }

    /// A ustar archive of these files (`f0`, `f1`, …), ended.
    fn tar_of_files(files: &[Vec<u8>]) -> Vec<u8> {
        let mut tar = Vec::new();
        for (i, data) in files.iter().enumerate() {
            tar.extend_from_slice(&crate::pipeline::testing::file_header(
                &format!("f{i}"),
                data.len(),
            ));
            tar.extend_from_slice(data);
            tar.resize(tar.len().div_ceil(512) * 512, 0);
        }
        tar.resize(tar.len() + 1024, 0);
        tar
    }

    /// A folder of small files is cut small, a large file as usual; so twenty small files
    /// edited cost chunks of about 64 KiB each, not 512, and the night still follows.
    #[tokio::test]
    async fn many_small_files_are_cut_small_and_an_edit_costs_little() {
        let mut files: Vec<Vec<u8>> = (0..2000u64)
            .map(|i| noise((i as usize * 7919) % 9000 + 100, i))
            .collect();
        files.push(noise(6 << 20, 5000));
        let night1 = tar_of_files(&files);
        let large_at = night1.len() - 1024 - (6 << 20) - 512;
        let first = pieces(&night1, None).await;
        assert_eq!(joined(&first), night1);
        let mut at = 0;
        for piece in &first {
            if at + piece.data.len() <= large_at - MAX_CHUNK {
                assert!(
                    piece.data.len() <= SMALL_MAX,
                    "{} at {at}",
                    piece.data.len()
                );
            }
            at += piece.data.len();
        }
        let large: Vec<usize> = lens(&first).into_iter().rev().take(2).collect();
        assert!(large.iter().all(|&len| len > SMALL_MAX), "{large:?}");

        for i in 0..20 {
            files[i * 97].extend_from_slice(b"edit 2\n");
        }
        let night2 = tar_of_files(&files);
        let previous = Arc::new(Previous::of(&chunk_list(&first)));
        let second = pieces(&night2, Some(Arc::clone(&previous))).await;
        assert_eq!(joined(&second), night2);
        let new: usize = second
            .iter()
            .filter(|p| previous.position_of(&p.id.unwrap()).is_none())
            .map(|p| p.data.len())
            .sum();
        assert!(new < 3 << 20, "20 small edits cost {new} bytes");
    }

    /// A stream that is no tar is cut as FastCDC cuts it (above); one that stops being a tar
    /// part way is cut small no further.
    #[test]
    fn the_edges_stop_where_the_stream_is_no_tar() {
        let files: Vec<Vec<u8>> = (0..200u64).map(|i| noise(1000, i)).collect();
        let mut edges = Edges::default();
        let tar = tar_of_files(&files);
        edges.feed(&tar[..tar.len() - 1024]);
        assert!(edges.many_small_files(0));
        edges.feed(&noise(4096, 1));
        assert!(edges.sizes.starts.is_none());
        assert!(!edges.many_small_files(0));
    }

    #[test]
    fn long_zero_runs_are_pieces_of_their_own() {
        let mut data = noise(1000, 20);
        data.extend(vec![0u8; 100_000]);
        data.extend(noise(5000, 21));
        data.extend(vec![0u8; 1000]);
        data.extend(noise(7, 22));
        let pieces = split_zero_runs(Bytes::from(data.clone()));
        let lens: Vec<usize> = pieces.iter().map(|p| p.len()).collect();
        assert_eq!(lens, [1000, 100_000, 5000 + 1000 + 7]);
        assert_eq!(pieces.concat(), data);
        let all_zero = split_zero_runs(Bytes::from(vec![0u8; 200_000]));
        assert_eq!(all_zero.len(), 1);
        assert_eq!(split_zero_runs(Bytes::from(vec![1u8; 10])).len(), 1);
    }
}
