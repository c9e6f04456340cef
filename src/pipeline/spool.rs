//! The spool: a bounded, disk-backed pipe between the encrypting stage and the uploader.
//!
//! With it, reading the volumes — the app's downtime — runs at compression speed even when the
//! uplink is slower: encrypted output the uploader cannot take yet goes to a local file, and the
//! uploader drains it after the app has been started again. Without it (size 0) the pipe is a
//! 1 MiB in-memory buffer, and the app stays stopped until the upload has taken everything.
//!
//! Only ciphertext passes through; the file is unlinked as soon as it is created (a crash
//! leaves nothing behind), and ranges the uploader has consumed are punched out of it, so disk
//! use stays within one [`SpoolBudget`] shared by all volumes of a run. When the budget is used
//! up the writer waits, exactly like a full in-memory pipe.
//!
//! Two threads per pipe do the blocking file I/O: one appends what the writer sends, one reads
//! it back in order for the reader. Errors (a full disk) reach both ends with the spool's path.
//!
//! Where it sits: A stage in `pipeline`: local files only.

use bytes::Bytes;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio_util::sync::PollSender;

/// Largest chunk the reader thread hands to the uploader at once.
const READ_CHUNK: usize = 1 << 20;
/// Largest chunk the writer hands to the spool thread: with 16 in the channel, at most 1 MiB
/// waits there.
const WRITE_CHUNK: usize = 64 << 10;
/// Smallest budget worth spooling with.
pub const MIN_BUDGET: u64 = 16 << 20;

/// The disk space all spool files of a run may hold together.
pub struct SpoolBudget {
    dir: PathBuf,
    limit: u64,
    used: Mutex<u64>,
    freed: Condvar,
}

impl SpoolBudget {
    /// A budget of `limit` bytes for files in `dir` (created if missing).
    pub fn new(dir: PathBuf, limit: u64) -> io::Result<Arc<Self>> {
        std::fs::create_dir_all(&dir)?;
        Ok(Arc::new(Self {
            dir,
            limit,
            used: Mutex::new(0),
            freed: Condvar::new(),
        }))
    }

    /// The default budget: half the free space of `dir`'s file system, at most 16 GiB.
    pub fn default_limit(dir: &Path) -> u64 {
        let probe = dir
            .ancestors()
            .find(|d| d.exists())
            .unwrap_or(Path::new("/"));
        free_bytes(probe).map_or(0, |free| (free / 2).min(16 << 30))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    fn lock(&self) -> MutexGuard<'_, u64> {
        self.used.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until `n` bytes fit; `false` when `give_up` says the reader is gone.
    fn reserve(&self, n: u64, give_up: impl Fn() -> bool) -> bool {
        let mut used = self.lock();
        while *used + n > self.limit.max(n) {
            if give_up() {
                return false;
            }
            used = self
                .freed
                .wait_timeout(used, Duration::from_millis(50))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        *used += n;
        true
    }

    fn release(&self, n: u64) {
        let mut used = self.lock();
        *used = used.saturating_sub(n);
        self.freed.notify_all();
    }
}

/// Free space of the file system holding `dir` (or its nearest existing ancestor).
pub fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let dir = dir.ancestors().find(|d| d.exists())?;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a valid C string and `stat` a valid out-pointer for the call.
    let rc = unsafe { libc::statvfs(path.as_ptr(), &mut stat) };
    (rc == 0).then(|| stat.f_bavail as u64 * stat.f_frsize as u64)
}

#[derive(Default)]
struct PipeState {
    written: u64,
    read: u64,
    writer_done: bool,
    reader_gone: bool,
    error: Option<String>,
}

struct Pipe {
    state: Mutex<PipeState>,
    changed: Condvar,
    path: PathBuf,
    budget: Arc<SpoolBudget>,
    /// The spool file, to free a dead pipe's unread range at once.
    file: Arc<File>,
}

impl Pipe {
    /// The reader is gone (its upload ended or failed): what was written and never read goes
    /// back to the budget at once, so that a failed store never keeps that space from the
    /// other pipes of the run. From then on neither thread counts or releases anything more.
    fn reader_gone(&self) {
        let unread = {
            let mut state = self.lock();
            if state.reader_gone {
                return;
            }
            state.reader_gone = true;
            let unread = state.written.saturating_sub(state.read);
            // The disk too, not only the count: the writer may never write to this pipe again.
            if unread > 0 {
                punch_hole(&self.file, state.read, unread);
            }
            state.read = state.written;
            unread
        };
        self.changed.notify_all();
        self.budget.release(unread);
    }
}

impl Drop for Pipe {
    /// A safety net: anything still counted as written and unread goes back.
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        self.budget
            .release(state.written.saturating_sub(state.read));
    }
}

impl Pipe {
    fn lock(&self) -> MutexGuard<'_, PipeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update(&self, change: impl FnOnce(&mut PipeState)) {
        change(&mut self.lock());
        self.changed.notify_all();
    }

    fn fail(&self, what: &str, error: io::Error) {
        let message = format!("spool {}: {what}: {error}", self.path.display());
        self.update(|s| {
            s.error.get_or_insert(message);
        });
    }

    fn error(&self, fallback: &str) -> io::Error {
        let message = self.lock().error.clone();
        io::Error::other(message.unwrap_or_else(|| fallback.to_string()))
    }
}

/// Where the encrypting stage writes.
pub type PipeWriter = Box<dyn AsyncWrite + Send + Unpin>;
/// Where the uploader reads.
pub type PipeReader = Box<dyn AsyncRead + Send + Unpin>;

/// A pipe through the spool when there is a budget, else a small in-memory one.
pub fn pipe(budget: Option<&Arc<SpoolBudget>>) -> io::Result<(PipeWriter, PipeReader)> {
    let Some(budget) = budget else {
        let (writer, reader) = tokio::io::duplex(1 << 20);
        return Ok((Box::new(writer), Box::new(reader)));
    };
    let file = tempfile::tempfile_in(budget.dir()).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "cannot create a spool file in {}: {e}",
                budget.dir().display()
            ),
        )
    })?;
    let file = Arc::new(file);
    let shared = Arc::new(Pipe {
        state: Mutex::new(PipeState::default()),
        changed: Condvar::new(),
        path: budget.dir().to_path_buf(),
        budget: Arc::clone(budget),
        file: Arc::clone(&file),
    });
    let (to_spool, from_writer) = mpsc::channel::<Bytes>(16);
    let (to_reader, from_spool) = mpsc::channel::<io::Result<Bytes>>(2);
    {
        let (file, shared, budget) = (Arc::clone(&file), Arc::clone(&shared), Arc::clone(budget));
        std::thread::Builder::new()
            .name("spool-write".into())
            .spawn(move || spool_writes(&file, &shared, &budget, from_writer))?;
    }
    {
        let (shared, budget) = (Arc::clone(&shared), Arc::clone(budget));
        std::thread::Builder::new()
            .name("spool-read".into())
            .spawn(move || spool_reads(&file, &shared, &budget, to_reader))?;
    }
    let reader = SpoolReader {
        receiver: from_spool,
        pending: Bytes::new(),
        shared: Arc::clone(&shared),
    };
    let writer = SpoolWriter {
        sender: PollSender::new(to_spool),
        shared,
    };
    Ok((Box::new(writer), Box::new(reader)))
}

fn spool_writes(
    file: &File,
    shared: &Pipe,
    budget: &SpoolBudget,
    mut from_writer: mpsc::Receiver<Bytes>,
) {
    while let Some(chunk) = from_writer.blocking_recv() {
        if shared.lock().reader_gone {
            return;
        }
        let n = chunk.len() as u64;
        if !budget.reserve(n, || shared.lock().reader_gone) {
            return;
        }
        let at = shared.lock().written;
        if let Err(e) = file.write_all_at(&chunk, at) {
            budget.release(n);
            shared.fail("cannot write", e);
            return;
        }
        let counted = {
            let mut state = shared.lock();
            if !state.reader_gone {
                state.written += n;
            }
            !state.reader_gone
        };
        if !counted {
            // The reader went away meanwhile and gave back what it had counted: this is ours.
            budget.release(n);
            return;
        }
        shared.changed.notify_all();
    }
    shared.update(|s| s.writer_done = true);
}

fn spool_reads(
    file: &File,
    shared: &Pipe,
    budget: &SpoolBudget,
    to_reader: mpsc::Sender<io::Result<Bytes>>,
) {
    let mut punch_works = true;
    loop {
        let (at, available) = {
            let mut state = shared.lock();
            while state.written == state.read
                && !state.writer_done
                && !state.reader_gone
                && state.error.is_none()
            {
                state = shared
                    .changed
                    .wait(state)
                    .unwrap_or_else(|p| p.into_inner());
            }
            if let Some(error) = &state.error {
                let _ = to_reader.blocking_send(Err(io::Error::other(error.clone())));
                return;
            }
            if state.reader_gone || state.written == state.read {
                return; // nobody reads, or writer done and everything handed over
            }
            (state.read, state.written - state.read)
        };
        let n = available.min(READ_CHUNK as u64) as usize;
        let mut chunk = vec![0u8; n];
        if let Err(e) = file.read_exact_at(&mut chunk, at) {
            shared.fail("cannot read back", e);
            continue;
        }
        if punch_works && !punch_hole(file, at, n as u64) {
            punch_works = false;
            tracing::warn!(
                "the file system of {} cannot free spool space as it is read (no hole punching); the spool file may grow to the size of the volume's encrypted stream",
                shared.path.display()
            );
        }
        let consumed = {
            let mut state = shared.lock();
            if !state.reader_gone {
                state.read += n as u64;
            }
            !state.reader_gone
        };
        if !consumed {
            return; // the reader's going gave this space back already
        }
        shared.changed.notify_all();
        budget.release(n as u64);
        if to_reader.blocking_send(Ok(Bytes::from(chunk))).is_err() {
            shared.reader_gone();
            return;
        }
    }
}

/// Frees the disk blocks of a consumed range (`FALLOC_FL_PUNCH_HOLE`).
fn punch_hole(file: &File, at: u64, len: u64) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: fallocate on an open descriptor; it reads no memory of ours.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            at as libc::off_t,
            len as libc::off_t,
        )
    };
    rc == 0
}

struct SpoolWriter {
    sender: PollSender<Bytes>,
    shared: Arc<Pipe>,
}

impl AsyncWrite for SpoolWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if ready!(self.sender.poll_reserve(cx)).is_err() {
            return Poll::Ready(Err(self
                .shared
                .error("the upload stopped reading the spool")));
        }
        let n = buf.len().min(WRITE_CHUNK);
        if self
            .sender
            .send_item(Bytes::copy_from_slice(&buf[..n]))
            .is_err()
        {
            return Poll::Ready(Err(self
                .shared
                .error("the upload stopped reading the spool")));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.sender.close();
        Poll::Ready(Ok(()))
    }
}

struct SpoolReader {
    receiver: mpsc::Receiver<io::Result<Bytes>>,
    pending: Bytes,
    shared: Arc<Pipe>,
}

impl Drop for SpoolReader {
    fn drop(&mut self) {
        // Gives back the unread space and wakes both threads: the writer stops waiting for
        // space, the reader for data.
        self.shared.reader_gone();
    }
}

impl AsyncRead for SpoolReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pending.is_empty() {
            match ready!(self.receiver.poll_recv(cx)) {
                Some(Ok(chunk)) => self.pending = chunk,
                Some(Err(e)) => return Poll::Ready(Err(e)),
                None => return Poll::Ready(Ok(())),
            }
        }
        let n = self.pending.len().min(buf.remaining());
        buf.put_slice(&self.pending.split_to(n));
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn the_writer_runs_ahead_of_a_slow_reader_within_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let budget = SpoolBudget::new(dir.path().to_path_buf(), 4 << 20).unwrap();
        let (mut writer, mut reader) = pipe(Some(&budget)).unwrap();
        let input = data(3 << 20);
        // 3 MiB fit in the 4 MiB budget: the writer finishes before anything is read.
        writer.write_all(&input).await.unwrap();
        writer.shutdown().await.unwrap();
        drop(writer);
        assert!(*budget.lock() <= 4 << 20);
        let mut output = Vec::new();
        reader.read_to_end(&mut output).await.unwrap();
        assert_eq!(output, input);
        assert_eq!(*budget.lock(), 0, "everything read is released");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "the spool file is unlinked from the start"
        );
    }

    /// Two pipes share a budget; one's reader goes away with its spool full (its store
    /// failed): the space comes back and the other pipe goes on to its end.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_pipe_whose_reader_is_gone_gives_its_space_back_to_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let budget = SpoolBudget::new(dir.path().to_path_buf(), 2 << 20).unwrap();
        let (mut dead_writer, dead_reader) = pipe(Some(&budget)).unwrap();
        dead_writer.write_all(&data(2 << 20)).await.unwrap();
        // Wait until the spool thread has taken it all from the channel into the file.
        for _ in 0..200 {
            if *budget.lock() >= (2 << 20) - (64 << 10) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        // The store fails: its reader goes, its writer is never written again (the fan-out
        // may be busy with the other branch) and stays alive until the end.
        drop(dead_reader);
        let (mut writer, mut reader) = pipe(Some(&budget)).unwrap();
        let input = data(6 << 20);
        let expected = input.clone();
        let write = tokio::spawn(async move {
            writer.write_all(&input).await.unwrap();
            writer.shutdown().await.unwrap();
        });
        let mut output = Vec::new();
        let read = reader.read_to_end(&mut output);
        tokio::time::timeout(std::time::Duration::from_secs(20), read)
            .await
            .expect("the live pipe is not starved by the dead one's space")
            .unwrap();
        write.await.unwrap();
        assert_eq!(output, expected);
        drop(dead_writer);
        for _ in 0..200 {
            if *budget.lock() == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(*budget.lock(), 0, "everything is given back");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_full_budget_makes_the_writer_wait() {
        let dir = tempfile::tempdir().unwrap();
        let budget = SpoolBudget::new(dir.path().to_path_buf(), 1 << 20).unwrap();
        let (mut writer, mut reader) = pipe(Some(&budget)).unwrap();
        let input = data(10 << 20);
        let expected = input.clone();
        let write = tokio::spawn(async move {
            writer.write_all(&input).await.unwrap();
            writer.shutdown().await.unwrap();
        });
        let mut output = Vec::new();
        let mut chunk = vec![0u8; 64 << 10];
        loop {
            let n = reader.read(&mut chunk).await.unwrap();
            if n == 0 {
                break;
            }
            assert!(*budget.lock() <= 1 << 20);
            output.extend_from_slice(&chunk[..n]);
        }
        write.await.unwrap();
        assert_eq!(output, expected);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_reader_that_goes_away_stops_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let budget = SpoolBudget::new(dir.path().to_path_buf(), 1 << 20).unwrap();
        let (mut writer, reader) = pipe(Some(&budget)).unwrap();
        drop(reader);
        let input = data(8 << 20);
        let err = writer.write_all(&input).await.unwrap_err();
        assert!(err.to_string().contains("stopped reading"), "{err}");
    }

    #[test]
    fn the_default_budget_follows_free_space() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_bytes(dir.path()).expect("statvfs of a temporary directory");
        // A spool directory not made yet: its nearest existing ancestor's file system counts.
        let limit = SpoolBudget::default_limit(&dir.path().join("not/made/yet"));
        let expected = (free / 2).min(16 << 30);
        assert!(limit > 0, "free space {free} gives a budget");
        assert!(
            limit.abs_diff(expected) < 256 << 20,
            "half the free space ({free}) up to 16 GiB: {limit} vs {expected}"
        );
    }
}
