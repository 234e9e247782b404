//! One file into one object, never over an existing one, and one object read back.
//!
//! A file smaller than a part is one conditional PUT (`If-None-Match: *`). A larger one is a
//! multipart upload with parts sent in parallel; object_store completes multipart uploads without
//! a condition, so the key is HEADed first: an object already there is never replaced. Keys are
//! made of backup ids (UUIDs), and one copy job at a time owns a layer's keys, so nothing else
//! writes between the HEAD and the completion.
//!
//! Each upload hashes what it sends (BLAKE3), so the object can be read back and compared, and an
//! object left by an interrupted run can be checked against the file rather than sent again.

use std::path::Path;

use bytes::BytesMut;
use futures::StreamExt;
use object_store::path::Path as Key;
use object_store::{
    ObjectStore, ObjectStoreExt, PutMode, PutMultipartOptions, PutOptions, PutPayload,
    WriteMultipart,
};
use tokio::io::AsyncReadExt;

use crate::error::{Error, Result};
use crate::jobs::JobContext;
use crate::repo::s3::describe;

/// Part size for files up to `MIN_PART * MAX_PARTS`; larger files use larger parts so that no
/// upload needs more than `MAX_PARTS` (S3 allows 10,000).
const MIN_PART: u64 = 16 << 20;
const MAX_PARTS: u64 = 9_000;
/// Parts in flight per upload: enough to keep a link busy, bounded in memory (4 × 16 MiB).
const PARTS_IN_FLIGHT: usize = 4;

/// How an object came to hold the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    Uploaded,
    /// An earlier run's object, read back and found equal to the file.
    AlreadyThere,
}

/// The file's size and BLAKE3 (hex) as it went into the object.
#[derive(Debug, Clone)]
pub struct Uploaded {
    pub bytes: u64,
    pub blake3: String,
    pub sent: Sent,
}

fn part_size(len: u64) -> u64 {
    let need = len.div_ceil(MAX_PARTS).next_multiple_of(1 << 20);
    need.max(MIN_PART)
}

fn store_error<'a>(what: &'a str, key: &'a Key) -> impl Fn(object_store::Error) -> Error + 'a {
    move |e| Error::Upstream(format!("{what} {key}: {}", describe(&e)))
}

/// Sends `file` to `key`. `progress` is called with the bytes sent so far of this file.
pub async fn upload_file(
    store: &dyn ObjectStore,
    file: &Path,
    key: &Key,
    ctx: &JobContext,
    mut progress: impl FnMut(u64),
) -> Result<Uploaded> {
    let mut f = tokio::fs::File::open(file)
        .await
        .map_err(Error::io(format!("opening {}", file.display())))?;
    let len = f
        .metadata()
        .await
        .map_err(Error::io(format!("reading {}", file.display())))?
        .len();
    match store.head(key).await {
        Ok(meta) => return already_there(store, file, key, meta.size).await,
        Err(object_store::Error::NotFound { .. }) => {}
        Err(e) => return Err(store_error("looking for", key)(e)),
    }
    let part = part_size(len);
    let blake3 = if len < part {
        match put_whole(store, &mut f, file, key, len).await? {
            Some(hash) => hash,
            // Written between the HEAD and the PUT: the condition kept it.
            None => return already_there(store, file, key, len).await,
        }
    } else {
        put_parts(store, &mut f, file, key, len, part, ctx, &mut progress).await?
    };
    progress(len);
    Ok(Uploaded {
        bytes: len,
        blake3,
        sent: Sent::Uploaded,
    })
}

/// One conditional PUT; `None` when an object appeared at the key.
async fn put_whole(
    store: &dyn ObjectStore,
    f: &mut tokio::fs::File,
    file: &Path,
    key: &Key,
    len: u64,
) -> Result<Option<String>> {
    let mut buf = Vec::with_capacity(len as usize);
    f.take(len)
        .read_to_end(&mut buf)
        .await
        .map_err(Error::io(format!("reading {}", file.display())))?;
    if buf.len() as u64 != len {
        return Err(Error::Invalid(format!(
            "{} changed size while it was read",
            file.display()
        )));
    }
    let hash = blake3::hash(&buf).to_hex().to_string();
    let opts = PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    };
    match store.put_opts(key, PutPayload::from(buf), opts).await {
        Ok(_) => Ok(Some(hash)),
        Err(object_store::Error::AlreadyExists { .. }) => Ok(None),
        Err(e) => Err(store_error("writing", key)(e)),
    }
}

/// A multipart upload, `PARTS_IN_FLIGHT` parts at a time; aborted when anything fails.
#[allow(clippy::too_many_arguments)]
async fn put_parts(
    store: &dyn ObjectStore,
    f: &mut tokio::fs::File,
    file: &Path,
    key: &Key,
    len: u64,
    part: u64,
    ctx: &JobContext,
    progress: &mut impl FnMut(u64),
) -> Result<String> {
    let upload = store
        .put_multipart_opts(key, PutMultipartOptions::default())
        .await
        .map_err(store_error("starting the upload of", key))?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, part as usize);
    let mut hasher = blake3::Hasher::new();
    let mut done = 0u64;
    let outcome: Result<()> = async {
        while done < len {
            if ctx.is_cancelled() {
                return Err(Error::Conflict("the copy was cancelled".into()));
            }
            let want = part.min(len - done) as usize;
            let mut buf = BytesMut::zeroed(want);
            f.read_exact(&mut buf)
                .await
                .map_err(Error::io(format!("reading {}", file.display())))?;
            hasher.update(&buf);
            writer
                .wait_for_capacity(PARTS_IN_FLIGHT)
                .await
                .map_err(store_error("uploading", key))?;
            writer.put(buf.freeze());
            done += want as u64;
            progress(done);
        }
        Ok(())
    }
    .await;
    match outcome {
        Ok(()) => {
            writer
                .finish()
                .await
                .map_err(store_error("completing the upload of", key))?;
            Ok(hasher.finalize().to_hex().to_string())
        }
        Err(e) => {
            // Best effort: parts of an upload a crash left are for the bucket's lifecycle rule
            // (AbortIncompleteMultipartUpload), as object_store documents.
            if let Err(abort) = writer.abort().await {
                tracing::warn!(%key, error = %describe(&abort), "multipart upload not aborted");
            }
            Err(e)
        }
    }
}

/// An object is at the key already (an earlier, interrupted run): it must be the file, byte for
/// byte, or the copy fails rather than replace it.
async fn already_there(
    store: &dyn ObjectStore,
    file: &Path,
    key: &Key,
    object_bytes: u64,
) -> Result<Uploaded> {
    let local = hash_file(file).await?;
    if object_bytes != local.0 {
        return Err(Error::Conflict(format!(
            "{key} already exists with {object_bytes} bytes, and {} has {}: the object is not replaced",
            file.display(),
            local.0
        )));
    }
    let remote = hash_object(store, key).await?;
    if remote != local {
        return Err(Error::Conflict(format!(
            "{key} already exists and differs from {}: the object is not replaced",
            file.display()
        )));
    }
    Ok(Uploaded {
        bytes: local.0,
        blake3: local.1,
        sent: Sent::AlreadyThere,
    })
}

/// Size and BLAKE3 (hex) of a local file.
pub async fn hash_file(file: &Path) -> Result<(u64, String)> {
    let file = file.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut hasher = blake3::Hasher::new();
        let f =
            std::fs::File::open(&file).map_err(Error::io(format!("opening {}", file.display())))?;
        let n = std::io::copy(
            &mut std::io::BufReader::with_capacity(1 << 20, f),
            &mut hasher,
        )
        .map_err(Error::io(format!("reading {}", file.display())))?;
        Ok((n, hasher.finalize().to_hex().to_string()))
    })
    .await
    .map_err(|e| Error::Invalid(format!("hashing thread: {e}")))?
}

/// Size and BLAKE3 (hex) of an object, read back in one streamed GET.
pub async fn hash_object(store: &dyn ObjectStore, key: &Key) -> Result<(u64, String)> {
    let got = store.get(key).await.map_err(store_error("reading", key))?;
    let mut stream = got.into_stream();
    let mut hasher = blake3::Hasher::new();
    let mut n = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(store_error("reading", key))?;
        n += chunk.len() as u64;
        hasher.update(&chunk);
    }
    Ok((n, hasher.finalize().to_hex().to_string()))
}

/// Writes a small object that must not exist yet. One that exists with the same bytes is
/// accepted (an interrupted run wrote it); other bytes are a conflict.
pub async fn put_new(store: &dyn ObjectStore, key: &Key, bytes: Vec<u8>) -> Result<()> {
    let opts = PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    };
    let want = blake3::hash(&bytes).to_hex().to_string();
    let n = bytes.len() as u64;
    match store.put_opts(key, PutPayload::from(bytes), opts).await {
        Ok(_) => Ok(()),
        Err(object_store::Error::AlreadyExists { .. }) => {
            if hash_object(store, key).await? == (n, want) {
                Ok(())
            } else {
                Err(Error::Conflict(format!(
                    "{key} already exists with other contents: the object is not replaced"
                )))
            }
        }
        Err(e) => Err(store_error("writing", key)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_stay_under_the_limit() {
        assert_eq!(part_size(0), MIN_PART);
        assert_eq!(part_size(MIN_PART * MAX_PARTS), MIN_PART);
        for len in [MIN_PART * MAX_PARTS + 1, 2 << 40, 5 << 40] {
            let p = part_size(len);
            assert!(len.div_ceil(p) <= MAX_PARTS, "{len}");
            assert_eq!(p % (1 << 20), 0);
        }
    }
}
