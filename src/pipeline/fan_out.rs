//! One stream, several stores: the branches a backup writes when it goes to more than one store
//! in a run. Every volume is read (and compressed and encrypted) once; its bytes go to one pipe
//! per store, each drained by that store's own uploader.
//!
//! A branch whose pipe fails (its store refused an upload, or lost its lock) is dropped, and
//! the others go on: one failing store does not stop the others. Only when every branch is
//! gone does writing fail.
//!
//! Where it sits: A stage in `pipeline`, between the encrypting stage and the pipes or spools
//! of [`super::spool`]; it knows nothing of stores.

use super::spool::PipeWriter;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// What ties the uploads of one store together across the volumes of a run: `stop` ends them
/// (a signal, or the store's lock lost); an upload the store refuses cancels `failed`, so that
/// the volumes after it leave that store out instead of trying it again.
#[derive(Clone, Debug, Default)]
pub struct StoreTokens {
    pub stop: CancellationToken,
    pub failed: CancellationToken,
}

impl StoreTokens {
    /// Tokens for one store, stopped with `stop`.
    pub fn stopped_by(stop: CancellationToken) -> Self {
        Self {
            stop,
            failed: CancellationToken::new(),
        }
    }

    /// Neither stopped nor failed: worth writing to.
    pub fn is_live(&self) -> bool {
        !self.stop.is_cancelled() && !self.failed.is_cancelled()
    }
}

/// Writers of which some may have failed.
pub struct Branches {
    writers: Vec<Option<PipeWriter>>,
    /// The first error a write to a branch gave (the spool's disk full, say): what writing
    /// fails with once no branch is left.
    first_error: Option<std::io::Error>,
}

impl Branches {
    pub fn new(writers: Vec<PipeWriter>) -> Self {
        Self {
            writers: writers.into_iter().map(Some).collect(),
            first_error: None,
        }
    }

    /// Stops writing to a branch (its store failed or stopped).
    pub fn drop_branch(&mut self, branch: usize) {
        self.writers[branch] = None;
    }

    /// How many branches are still written to.
    pub fn alive(&self) -> usize {
        self.writers.iter().flatten().count()
    }

    pub fn is_alive(&self, branch: usize) -> bool {
        self.writers[branch].is_some()
    }

    /// Writes `data` to one branch; a branch that fails is dropped (its reader reports why).
    pub async fn write(&mut self, branch: usize, data: &[u8]) {
        if let Some(writer) = &mut self.writers[branch]
            && let Err(error) = writer.write_all(data).await
        {
            tracing::debug!(branch, "a branch of the fan-out failed: {error}");
            self.writers[branch] = None;
            self.first_error.get_or_insert(error);
        }
    }

    /// Writes `data` to every live branch; fails once none is left.
    pub async fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        for branch in 0..self.writers.len() {
            self.write(branch, data).await;
        }
        self.any_left()
    }

    /// Ends every live branch; fails when none is left.
    pub async fn shutdown(&mut self) -> std::io::Result<()> {
        for branch in 0..self.writers.len() {
            if let Some(writer) = &mut self.writers[branch]
                && let Err(error) = writer.shutdown().await
            {
                self.writers[branch] = None;
                self.first_error.get_or_insert(error);
            }
        }
        self.any_left()
    }

    /// Fails once no branch is left, with the first write error if there was one.
    pub fn any_left(&mut self) -> std::io::Result<()> {
        if self.alive() == 0 {
            return Err(self.first_error.take().unwrap_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::BrokenPipe,
                    "every store's upload has stopped",
                )
            }));
        }
        Ok(())
    }
}

/// One writer for several: what is written to it goes to each of `writers` (through a 1 MiB
/// in-memory pipe and a task that copies it on). A single writer is returned as it is.
pub fn tee(mut writers: Vec<PipeWriter>) -> PipeWriter {
    if writers.len() == 1 {
        return writers.pop().expect("one writer");
    }
    let (writer, mut reader) = tokio::io::duplex(1 << 20);
    tokio::spawn(async move {
        let mut branches = Branches::new(writers);
        let mut buffer = vec![0u8; 256 << 10];
        loop {
            match reader.read(&mut buffer).await {
                Ok(0) => {
                    // The writer is done: end every branch (a branch ended early failed).
                    let _ = branches.shutdown().await;
                    return;
                }
                Ok(n) => {
                    if branches.write_all(&buffer[..n]).await.is_err() {
                        // Dropping the reader makes the next write fail.
                        return;
                    }
                }
                Err(_) => return,
            }
        }
    });
    Box::new(writer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn every_branch_gets_every_byte_and_a_failed_one_does_not_stop_the_others() {
        let (a_writer, mut a_reader) = tokio::io::duplex(64);
        let (b_writer, b_reader) = tokio::io::duplex(64);
        let (c_writer, mut c_reader) = tokio::io::duplex(64);
        drop(b_reader); // store b's upload is gone
        let mut tee = tee(vec![
            Box::new(a_writer),
            Box::new(b_writer),
            Box::new(c_writer),
        ]);
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        let writing = async {
            tee.write_all(&data).await.unwrap();
            tee.shutdown().await.unwrap();
        };
        let (mut a, mut c) = (Vec::new(), Vec::new());
        let ((), _, _) = tokio::join!(
            writing,
            a_reader.read_to_end(&mut a),
            c_reader.read_to_end(&mut c)
        );
        assert_eq!(a, data);
        assert_eq!(c, data);
    }

    #[tokio::test]
    async fn writing_fails_once_every_branch_is_gone() {
        let (a_writer, a_reader) = tokio::io::duplex(64);
        let (b_writer, b_reader) = tokio::io::duplex(64);
        drop((a_reader, b_reader));
        let mut tee = tee(vec![Box::new(a_writer), Box::new(b_writer)]);
        let mut failed = false;
        for _ in 0..64 {
            if tee.write_all(&[7u8; 64 << 10]).await.is_err() {
                failed = true;
                break;
            }
        }
        assert!(failed, "the writer learns that no store takes its bytes");
    }
}
