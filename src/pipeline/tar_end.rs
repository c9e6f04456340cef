//! End-of-archive check for the tar stream a backup reads from Docker: an `AsyncRead` wrapper
//! that follows the chain of tar headers (header, data rounded up to 512 bytes, next header)
//! without copying anything, and fails at end of stream unless the archive ended properly —
//! with the zero blocks that close a tar, at a header position.
//!
//! Why: when dockerd stops mid-stream (a restart, an upgrade), it finishes the HTTP response
//! cleanly, so the archive API's body simply ends early. Without this check such a truncated
//! volume would be stored as a complete backup. A zero block inside a file's data does not
//! fool it: only blocks where a header is due count.
//!
//! Where it sits: A stage in `pipeline`: plain async I/O.

use super::tar_walk::{self, BLOCK, Body, Visit, Walker};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, ReadBuf};

/// Fails the stream when it ends before the tar's end-of-archive marker.
pub struct TarEndCheck<R> {
    inner: R,
    walker: Walker,
    sizes: Sizes,
}

/// Decides how much data follows each header: the ustar size, or the size a PAX header gave
/// the next entry (Go's archive/tar, and so Docker, writes sizes of 8 GiB and more only there).
#[derive(Default)]
pub(super) struct Sizes {
    /// Headers seen, metadata headers included.
    headers: u64,
    /// The size the last PAX header gave the next entry.
    pax_size: Option<u64>,
    /// Where each header starts, when asked for ([`Sizes::recording_starts`]): the cutter
    /// takes them off the front as it goes.
    pub(super) starts: Option<std::collections::VecDeque<u64>>,
}

impl Sizes {
    /// Sizes that also record where each header starts.
    pub(super) fn recording_starts() -> Sizes {
        Sizes {
            starts: Some(Default::default()),
            ..Default::default()
        }
    }
}

/// PAX headers larger than this are skipped, not parsed (Docker's are a few hundred bytes).
const MAX_PAX: u64 = 1 << 20;

impl Visit for Sizes {
    fn header(&mut self, block: &[u8; BLOCK], at: u64) -> io::Result<Body> {
        let ustar_size = entry_size(block)
            .ok_or_else(|| self.malformed(format!("no valid tar header at byte {at}")))?;
        self.headers += 1;
        if let Some(starts) = &mut self.starts {
            starts.push_back(at);
        }
        Ok(match block[156] {
            // Its own data is records for the next entry.
            b'x' => {
                self.pax_size = None;
                if ustar_size <= MAX_PAX {
                    Body::Collect(ustar_size)
                } else {
                    Body::Skip(ustar_size)
                }
            }
            b'g' => Body::Skip(ustar_size),
            _ => Body::Skip(self.pax_size.take().unwrap_or(ustar_size)),
        })
    }

    fn payload(&mut self, data: &[u8]) -> io::Result<()> {
        self.pax_size = pax_size(data);
        Ok(())
    }

    fn end_marker(&mut self, _at: u64) -> io::Result<()> {
        Ok(())
    }

    fn malformed(&self, message: String) -> io::Error {
        malformed(message)
    }
}

impl<R> TarEndCheck<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            walker: Walker::default(),
            sizes: Sizes::default(),
        }
    }

    fn finish(&self) -> io::Result<()> {
        if self.walker.complete() {
            return Ok(());
        }
        Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            TruncatedTar(format!(
                "Docker's tar stream of the volume ended early, after {} bytes and {} entries, without the end-of-archive marker (did the Docker engine restart?); nothing was stored",
                self.walker.offset(),
                self.sizes.headers
            )),
        ))
    }
}

/// The `size` record of a PAX header's data (`"<len> size=<n>\n"` records), if any; records
/// after a malformed one are not read.
fn pax_size(data: &[u8]) -> Option<u64> {
    let mut size = None;
    for record in tar_walk::pax_records(data) {
        let Ok((key, value)) = record else { break };
        if key == b"size" {
            size = std::str::from_utf8(value).ok()?.parse().ok();
        }
    }
    size
}

/// The archive ended early or is not a tar.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TruncatedTar(String);

fn malformed(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, TruncatedTar(message))
}

/// The data size a header announces; `None` when its checksum is wrong.
fn entry_size(block: &[u8; BLOCK]) -> Option<u64> {
    if !tar_walk::checksum_ok(block) {
        return None;
    }
    tar_walk::numeric(&block[124..136])
}

impl<R: AsyncRead + Unpin> AsyncRead for TarEndCheck<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let new = &buf.filled()[before..];
        if new.is_empty() {
            return Poll::Ready(this.finish());
        }
        let advanced = this.walker.advance(new, &mut this.sizes);
        if let Err(e) = advanced {
            buf.set_filled(before);
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    async fn tar_with(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut builder = tokio_tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut header = tokio_tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder
                .append_data(&mut header, name, &data[..])
                .await
                .unwrap();
        }
        builder.into_inner().await.unwrap()
    }

    async fn check(data: &[u8], chunk: usize) -> io::Result<()> {
        // Deliver in small chunks to exercise block boundaries.
        let chunks: Vec<io::Result<bytes::Bytes>> = data
            .chunks(chunk)
            .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
            .collect();
        let reader = tokio_util::io::StreamReader::new(futures::stream::iter(chunks));
        let mut checked = TarEndCheck::new(reader);
        let mut out = Vec::new();
        checked.read_to_end(&mut out).await?;
        assert_eq!(out, data);
        Ok(())
    }

    #[tokio::test]
    async fn a_complete_archive_passes_and_any_truncation_fails() {
        // A file full of zeros must not look like the end marker.
        let archive = tar_with(&[
            ("zeros", vec![0u8; 5000]),
            ("text", b"hello".to_vec()),
            ("empty", vec![]),
        ])
        .await;
        for chunk in [1, 7, 512, 100_000] {
            check(&archive, chunk).await.unwrap();
        }
        let mut padded = archive.clone();
        padded.extend_from_slice(&[0u8; 8192]);
        check(&padded, 1000).await.unwrap();
        for cut in [
            0,
            100,
            512,
            1024,
            3000,
            5632,
            archive.len() - 1024,
            archive.len() - 1,
        ] {
            let err = check(&archive[..cut], 333).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "cut at {cut}");
            assert!(err.to_string().contains("ended early"), "{err}");
        }
    }

    /// A PAX header giving the next entry's size, as Go writes it for files of 8 GiB and more
    /// (the ustar size field then holds 0).
    fn pax_sized_entry(size: usize) -> Vec<u8> {
        let record = format!("size={size}\n");
        let len = record.len() + 3;
        let body = format!("{len} {record}");
        assert_eq!(body.len(), len);
        let mut pax = tokio_tar::Header::new_ustar();
        pax.set_path("PaxHeaders/f").unwrap();
        pax.set_entry_type(tokio_tar::EntryType::XHeader);
        pax.set_size(body.len() as u64);
        pax.set_cksum();
        let mut out = pax.as_bytes().to_vec();
        out.extend_from_slice(body.as_bytes());
        out.resize(out.len().div_ceil(512) * 512, 0);
        let mut file = tokio_tar::Header::new_ustar();
        file.set_path("f").unwrap();
        file.set_size(0);
        file.set_cksum();
        out.extend_from_slice(file.as_bytes());
        out.extend_from_slice(&vec![1u8; size]);
        out.resize(out.len().div_ceil(512) * 512, 0);
        out.extend_from_slice(&[0u8; 1024]);
        out
    }

    #[tokio::test]
    async fn a_pax_size_is_honoured() {
        let archive = pax_sized_entry(5000);
        for chunk in [1, 100, 512, 10_000] {
            check(&archive, chunk).await.unwrap();
        }
        let err = check(&archive[..archive.len() - 1024 - 512], 512)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(pax_size(b"11 size=42\n20 path=a/long/name\n"), Some(42));
        assert_eq!(pax_size(b"20 path=a/long/name\n"), None);
    }

    #[tokio::test]
    async fn garbage_is_not_a_tar() {
        let err = check(&[b'x'; 2048], 512).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
