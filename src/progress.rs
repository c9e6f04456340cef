//! Progress bars on a terminal: one per volume, with bytes read, the compression ratio so far,
//! throughput and — when the volume's size is known — an ETA.
//!
//! Only drawn when stderr is a terminal (never in cron mail or a log file); otherwise every
//! call here is a no-op. The counters are plain atomics the streaming stages bump, and a
//! ticker reads them a few times a second, so the pipeline never waits on drawing.
//!
//! The size comes from walking the volume's directory on this host (`Mountpoint` from
//! `docker volume inspect`) alongside the backup; when lifeboat cannot see it (a remote
//! `DOCKER_HOST`, not root), the bar shows bytes and throughput without an ETA.
//!
//! Where it sits: A leaf: depends on nothing in the crate.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::AsyncWrite;

/// Where bars go: a terminal, or nowhere.
#[derive(Clone, Default)]
pub struct Progress {
    bars: Option<MultiProgress>,
}

impl Progress {
    /// No bars.
    pub fn hidden() -> Self {
        Self { bars: None }
    }

    /// Bars on stderr when it is a terminal.
    pub fn on_terminal() -> Self {
        if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            Self {
                bars: Some(MultiProgress::with_draw_target(ProgressDrawTarget::stderr())),
            }
        } else {
            Self::hidden()
        }
    }

    pub fn is_shown(&self) -> bool {
        self.bars.is_some()
    }

    /// Starts the bar of one volume; `host_dir` is where its data lives on this host, if known.
    pub fn volume(&self, name: &str, host_dir: Option<PathBuf>) -> VolumeProgress {
        let counters = Arc::new(Counters::default());
        let Some(bars) = &self.bars else {
            return VolumeProgress {
                counters,
                ticker: None,
            };
        };
        let bar = bars.add(ProgressBar::no_length());
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix:.bold} {bar:30} {bytes}/{total_bytes} {msg} {bytes_per_sec} ETA {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_prefix(name.to_string());
        let ticker = tokio::spawn(tick(bar, Arc::clone(&counters), host_dir));
        VolumeProgress {
            counters,
            ticker: Some(ticker),
        }
    }
}

#[derive(Default)]
struct Counters {
    read: AtomicU64,
    stored: AtomicU64,
}

/// One volume's counters; the bar disappears when this is dropped.
pub struct VolumeProgress {
    counters: Arc<Counters>,
    ticker: Option<tokio::task::JoinHandle<()>>,
}

impl VolumeProgress {
    /// Wraps the writer the encrypted bytes go to, counting them as stored.
    pub fn count_stored<W>(&self, inner: W) -> CountingWriter<W> {
        CountingWriter {
            inner,
            counter: Arc::clone(&self.counters),
        }
    }

    /// Wraps the reader the tar comes from, counting its bytes as read.
    pub fn count_read<R>(&self, inner: R) -> CountingReader<R> {
        CountingReader {
            inner,
            counter: Arc::clone(&self.counters),
        }
    }
}

impl Drop for VolumeProgress {
    fn drop(&mut self) {
        if let Some(ticker) = self.ticker.take() {
            ticker.abort();
        }
    }
}

async fn tick(bar: ProgressBar, counters: Arc<Counters>, host_dir: Option<PathBuf>) {
    let mut size =
        host_dir.map(|dir| tokio::task::spawn_blocking(move || estimated_tar_size(&dir)));
    let mut interval = tokio::time::interval(Duration::from_millis(200));
    let _clear = ClearOnDrop(bar.clone());
    loop {
        interval.tick().await;
        if let Some(task) = &mut size
            && task.is_finished()
        {
            if let Ok(Some(total)) = task.await {
                bar.set_length(total);
            }
            size = None;
        }
        let read = counters.read.load(Ordering::Relaxed);
        let stored = counters.stored.load(Ordering::Relaxed);
        bar.set_position(read);
        if read > 0 {
            bar.set_message(format!("ratio {:.2}", stored as f64 / read as f64));
        }
    }
}

struct ClearOnDrop(ProgressBar);

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

/// The size of the tar Docker will make of `dir`: 512 bytes of header per entry plus each
/// file's data rounded up to 512. `None` when the directory cannot be read from here.
pub fn estimated_tar_size(dir: &std::path::Path) -> Option<u64> {
    let mut total = 1024u64;
    let mut pending = vec![dir.to_path_buf()];
    std::fs::read_dir(dir).ok()?;
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            total += 512;
            if meta.is_dir() {
                pending.push(entry.path());
            } else if meta.is_file() {
                total += meta.len().div_ceil(512) * 512;
            }
        }
    }
    Some(total)
}

/// Counts the bytes written through it.
pub struct CountingWriter<W> {
    inner: W,
    counter: Arc<Counters>,
}

impl<W: AsyncWrite + Unpin> AsyncWrite for CountingWriter<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            self.counter.stored.fetch_add(n as u64, Ordering::Relaxed);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Counts the bytes read through it.
pub struct CountingReader<R> {
    inner: R,
    counter: Arc<Counters>,
}

impl<R: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for CountingReader<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        self.counter.read.fetch_add(read as u64, Ordering::Relaxed);
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn counts_what_is_written_through_it() {
        let progress = Progress::hidden().volume("v", None);
        let mut writer = progress.count_stored(Vec::new());
        writer.write_all(&[0u8; 1000]).await.unwrap();
        writer.write_all(&[0u8; 24]).await.unwrap();
        assert_eq!(progress.counters.stored.load(Ordering::Relaxed), 1024);
        assert_eq!(writer.inner.len(), 1024);
    }

    #[test]
    fn estimates_the_tar_size_of_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), [1u8; 600]).unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        std::fs::write(dir.path().join("d/b"), b"x").unwrap();
        // 3 headers, 1024 + 512 bytes of data, the end-of-archive blocks.
        assert_eq!(
            estimated_tar_size(dir.path()),
            Some(1024 + 3 * 512 + 1024 + 512)
        );
        assert_eq!(estimated_tar_size(&dir.path().join("missing")), None);
    }
}
