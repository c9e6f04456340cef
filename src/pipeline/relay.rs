//! Relay stage: moves the stages before it onto a task of their own, so that a read chain
//! uses more than one core (on restore: hashing and decryption on one, decompression and the
//! tar policy on another).
//!
//! The relay reads its input in chunks and hands them over a bounded channel (at most
//! `DEPTH` chunks of `CHUNK` bytes wait); an error of the input reaches the reader as the same
//! `io::Error` (kind and source kept), so the end of the chain still tells damaged data from
//! a failed store or disk. Dropping the reader stops the task.
//!
//! Where it sits: A stage in `pipeline`: plain async I/O, nothing of lifeboat.

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::io::StreamReader;

const CHUNK: usize = 256 << 10;
const DEPTH: usize = 8;

/// `inner`, read on a task of its own.
pub fn relay<R>(mut inner: R) -> impl AsyncRead + Send + Unpin + 'static
where
    R: AsyncRead + Send + Unpin + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(DEPTH);
    tokio::spawn(async move {
        loop {
            let mut buf = BytesMut::with_capacity(CHUNK);
            match inner.read_buf(&mut buf).await {
                Ok(0) => break,
                Ok(_) => {
                    if tx.send(Ok(buf.freeze())).await.is_err() {
                        break; // the reader is gone
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    break;
                }
            }
        }
    });
    StreamReader::new(tokio_stream_from(rx))
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>,
) -> impl futures::Stream<Item = std::io::Result<Bytes>> + Send + Unpin + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bytes_and_errors_pass_unchanged() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let mut out = Vec::new();
        relay(std::io::Cursor::new(data.clone()))
            .read_to_end(&mut out)
            .await
            .unwrap();
        assert_eq!(out, data);

        let failing = tokio_util::io::StreamReader::new(futures::stream::iter(vec![
            Ok(Bytes::from_static(b"abc")),
            Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "mac")),
        ]));
        let mut out = Vec::new();
        let err = relay(failing).read_to_end(&mut out).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        assert_eq!(err.to_string(), "mac");
        assert_eq!(out, b"abc");
    }
}
