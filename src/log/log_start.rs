//! Where a partition's log starts when that is past its first segment's base offset: Kafka's
//! log start offset as DeleteRecords moves it (KIP-107), or as a follower takes it from its
//! leader. Kept in `log-start-offset` beside the segments and written before anything acts on
//! it, so that after a restart (or a power loss) reads below it are still refused and the
//! records below it never come back into view.
//!
//! The file is text: a version line, then the offset.

use std::io;
use std::path::{Path, PathBuf};

use crate::log::segment::{read_small_file, replace_small_file};
use crate::log::storage::Storage;
use crate::types::Offset;

pub const LOG_START_FILE: &str = "log-start-offset";
const VERSION: u32 = 0;
/// Far more than a version and an offset take: a larger file is not one of these.
const FILE_BYTES_MAX: u64 = 64;

fn path(dir: &Path) -> PathBuf {
    dir.join(LOG_START_FILE)
}

pub fn encode(offset: Offset) -> Vec<u8> {
    format!("{VERSION}\n{}\n", offset.0).into_bytes()
}

pub fn decode(bytes: &[u8]) -> Result<Offset, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not text".to_string())?;
    let mut lines = text.lines();
    match lines.next().map(|v| v.trim().parse::<u32>()) {
        Some(Ok(VERSION)) => {}
        Some(Ok(newer)) => {
            return Err(format!("version {newer}, written by a newer build (this one reads 0)"))
        }
        _ => return Err("no version line".to_string()),
    }
    let offset = lines.next().ok_or("no offset line")?;
    // Offsets as Kafka keeps them: at most i64::MAX.
    let offset: i64 = offset.trim().parse().map_err(|_| format!("offset line {offset:?}"))?;
    if offset < 0 || lines.any(|rest| !rest.trim().is_empty()) {
        return Err(format!("offset {offset} and what follows it"));
    }
    Ok(Offset(offset as u64))
}

/// The partition's recorded log start, if it has one. A file that cannot be read as this build
/// writes it is an error naming it: the partition does not open over it.
pub async fn load<S: Storage>(storage: &S, dir: &Path) -> io::Result<Option<Offset>> {
    let path = path(dir);
    let named = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    let Some(bytes) = read_small_file(storage, &path, FILE_BYTES_MAX).await.map_err(named)? else {
        return Ok(None);
    };
    let invalid =
        |why| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {why}", path.display()));
    decode(&bytes).map(Some).map_err(invalid)
}

/// Records the log start, durably (the directory synced too).
pub async fn persist<S: Storage>(storage: &S, dir: &Path, offset: Offset) -> io::Result<()> {
    replace_small_file(storage, &path(dir), &encode(offset)).await?;
    storage.sync_dir(dir).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_back_what_it_writes_and_refuses_anything_else() {
        assert_eq!(decode(&encode(Offset(0))), Ok(Offset(0)));
        assert_eq!(decode(&encode(Offset(123_456))), Ok(Offset(123_456)));
        assert!(decode(b"1\n5\n").is_err_and(|e| e.contains("newer build")));
        for garbage in [&b""[..], b"0\n", b"0\n-1\n", b"0\nfive\n", b"0\n5\n6\n", b"\xff\xfe"] {
            assert!(decode(garbage).is_err(), "{garbage:?} taken");
        }
    }
}
