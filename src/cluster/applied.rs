//! The metadata a broker has applied: the image of the log's committed prefix, and which entry
//! it ends at. Shard 0's voter or follower applies the
//! entries (one or the other, never both); the broker publishes each new image to its shards.
//!
//! Images are shared as `Arc`s: a publication hands the same image to every shard, and the next
//! entry applied copies it only while a shard still holds the old one.

use std::cell::{Cell, RefCell};
use std::sync::Arc;

use event_listener::{Event as Signal, EventListener};

use super::metadata::{self, MetadataImage};

#[derive(Default)]
pub struct AppliedMetadata {
    image: RefCell<Arc<MetadataImage>>,
    /// The last log entry applied to `image`.
    applied: Cell<u64>,
    /// The snapshot `image` was last restored from (the entry it ends at), if any.
    restored: Cell<u64>,
    /// The image changed.
    changed: Signal,
}

impl AppliedMetadata {
    /// Applies log entry `index` (`data` empty for Raft's own entries). An entry this build
    /// cannot read (a newer format) is an error: skipping it would leave an image that is not
    /// the log's. A batch the image refuses is logged and skipped, as every broker skips it,
    /// so the images stay equal.
    pub fn apply(&self, index: u64, data: &[u8]) -> Result<(), String> {
        if !data.is_empty() {
            let batch = metadata::decode_batch(data)
                .map_err(|why| format!("metadata log entry {index}: {why}"))?;
            let mut image = self.image.borrow_mut();
            if let Err(why) = Arc::make_mut(&mut image).apply_batch(&batch) {
                tracing::error!(index, "metadata log entry not applied: {why}");
            }
        }
        let before = self.applied.replace(index);
        debug_assert!(index > before, "entry {index} applied after {before}");
        Ok(())
    }

    /// Replaces the image by a snapshot's, of the log up to entry `index`: only past what was
    /// applied (a snapshot is restored to catch up), else refused.
    pub fn restore(&self, index: u64, image: MetadataImage) -> Result<(), String> {
        let applied = self.applied.get();
        if index <= applied {
            return Err(format!("a snapshot of entries up to {index}, but {applied} are applied"));
        }
        self.applied.set(index);
        *self.image.borrow_mut() = Arc::new(image);
        self.restored.set(index);
        Ok(())
    }

    pub fn restored(&self) -> u64 {
        self.restored.get()
    }

    /// Wakes whoever waits for a change; once per round of entries applied.
    pub fn notify(&self) {
        self.changed.notify(usize::MAX);
    }

    pub fn image(&self) -> Arc<MetadataImage> {
        self.image.borrow().clone()
    }

    pub fn applied(&self) -> u64 {
        self.applied.get()
    }

    /// Resolves at the next [`Self::notify`] after this call.
    pub fn listen(&self) -> EventListener {
        self.changed.listen()
    }
}
