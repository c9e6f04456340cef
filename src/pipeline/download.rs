//! Download stage: an object in the store (or the segments of one, in order) as an
//! `AsyncRead`.
//!
//! object_store resumes a broken GET with ranged requests; errors that still come out of the
//! stream are wrapped in [`StoreReadError`] so that the end of a read chain can tell a network
//! failure from damaged data.
//!
//! Where it sits: A stage in `pipeline`: sees an object store and a path.

use super::PipelineError;
use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use std::sync::Arc;
use tokio::io::AsyncRead;
use tokio_util::io::StreamReader;

/// An error reading from the store in the middle of a stream.
#[derive(Debug, thiserror::Error)]
#[error("reading from the store failed: {0}")]
pub struct StoreReadError(#[source] pub object_store::Error);

/// Opens `location` for streaming.
pub async fn open_object(
    store: &Arc<dyn ObjectStore>,
    location: &Path,
) -> Result<impl AsyncRead + Send + Unpin + use<>, PipelineError> {
    open_objects(store, vec![location.clone()]).await
}

/// Opens the objects at `locations` as one stream, one after the other.
pub async fn open_objects(
    store: &Arc<dyn ObjectStore>,
    locations: Vec<Path>,
) -> Result<impl AsyncRead + Send + Unpin + use<>, PipelineError> {
    Ok(StreamReader::new(object_stream(store, locations).await?))
}

/// The bytes of the objects at `locations`, one after the other: the first is opened now (a
/// missing one is an error of its own, as from a GET), each next one when the one before has
/// ended.
pub async fn object_stream(
    store: &Arc<dyn ObjectStore>,
    locations: Vec<Path>,
) -> Result<impl Stream<Item = std::io::Result<Bytes>> + Send + Unpin + use<>, PipelineError> {
    let mut locations = locations.into_iter();
    let first = match locations.next() {
        Some(location) => store.get(&location).await?.into_stream(),
        None => futures::stream::empty().boxed(),
    };
    let store = Arc::clone(store);
    let rest = futures::stream::iter(locations)
        .then(move |location| {
            let store = Arc::clone(&store);
            async move { store.get(&location).await }
        })
        .map_ok(|got| got.into_stream())
        .try_flatten();
    Ok(first
        .chain(rest)
        .map_err(|e| std::io::Error::other(StoreReadError(e)))
        .boxed())
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn streams_an_object_and_names_a_missing_one() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        store
            .put(&Path::from("k"), b"data".to_vec().into())
            .await
            .unwrap();
        let mut out = String::new();
        open_object(&store, &Path::from("k"))
            .await
            .unwrap()
            .read_to_string(&mut out)
            .await
            .unwrap();
        assert_eq!(out, "data");
        let err = open_object(&store, &Path::from("missing"))
            .await
            .err()
            .unwrap();
        assert!(err.to_string().contains("missing"), "{err}");
    }
}
