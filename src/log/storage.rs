//! What the log needs of the machine: durable files, the directories that hold them, and the
//! time. The log is written against [`Storage`]; the broker runs it on [`DmaStorage`] (glommio's
//! O_DIRECT files on io_uring, directory operations on glommio's blocking pool, the system
//! clocks), and `log/simulation.rs` runs it on a simulated disk that can lose what was not synced,
//! tear writes, fill up and fail an fdatasync, with a clock of its own.
//!
//! The contract the log relies on, which both implementations keep:
//! - a completed `write_at` is seen by every later read, and survives the process dying;
//! - only what an `fdatasync` covered survives a power loss (a write not yet covered may be lost
//!   whole or in part, sector by sector);
//! - a new file's name survives a power loss only once its directory was synced;
//! - writes and reads are at multiples of [`crate::config::WRITE_ALIGN_BYTES`], from buffers
//!   the file hands out ([`StorageFile::alloc_buffer`]).

use std::future::Future;
use std::io;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Instant;

use glommio::io::{DmaBuffer, DmaFile, OpenOptions, ReadResult};

/// Files, directories and clocks, as the log uses them.
pub trait Storage: Clone + 'static {
    type File: StorageFile;

    /// Opens `path` to read and write, creating it if `create` and it does not exist.
    fn open_rw(&self, path: &Path, create: bool) -> impl Future<Output = io::Result<Self::File>>;

    /// Opens `path` to read.
    fn open_read(&self, path: &Path) -> impl Future<Output = io::Result<Self::File>>;

    /// Creates `dir` (and its parents) if missing, then lists the names of its entries.
    fn list_dir(&self, dir: &Path) -> impl Future<Output = io::Result<Vec<String>>>;

    fn remove_file(&self, path: &Path) -> impl Future<Output = io::Result<()>>;

    /// Makes the entries of `dir` (files created, renamed or removed in it) durable.
    fn sync_dir(&self, dir: &Path) -> impl Future<Output = io::Result<()>>;

    /// The monotonic clock: step sizes, back-offs, latencies.
    fn now(&self) -> Instant;

    /// The wall clock, in milliseconds since the Unix epoch: record and segment times.
    fn now_ms(&self) -> i64;
}

/// An open file written with direct I/O.
pub trait StorageFile: 'static {
    /// A buffer to write from, aligned as direct I/O needs.
    type Buffer: 'static;
    /// What a read returns.
    type Read: Deref<Target = [u8]>;

    fn alloc_buffer(&self, len: usize) -> Self::Buffer;

    fn buffer_bytes(buffer: &mut Self::Buffer) -> &mut [u8];

    /// Shortens the buffer to its first `len` bytes (a multiple of the write alignment).
    fn trim_buffer(buffer: &mut Self::Buffer, len: usize);

    /// Writes the whole buffer at `position`; returns the bytes written (fewer only when the
    /// device is full).
    fn write_at(
        &self,
        buffer: Self::Buffer,
        position: u64,
    ) -> impl Future<Output = io::Result<usize>>;

    /// Reads up to `len` bytes at `position` (fewer at the end of the file).
    fn read_at(&self, position: u64, len: usize) -> impl Future<Output = io::Result<Self::Read>>;

    fn size(&self) -> impl Future<Output = io::Result<u64>>;

    /// Allocates the file up to `len` bytes without writing them (they read as zeros).
    fn pre_allocate(&self, len: u64) -> impl Future<Output = io::Result<()>>;

    fn truncate(&self, len: u64) -> impl Future<Output = io::Result<()>>;

    /// Makes everything written to the file so far survive a power loss.
    fn fdatasync(&self) -> impl Future<Output = io::Result<()>>;

    /// Gives the file a new name (in the same directory).
    fn rename(&self, to: &Path) -> impl Future<Output = io::Result<()>>;

    fn close(self: Rc<Self>) -> impl Future<Output = io::Result<()>>;
}

/// The broker's storage: glommio's DMA files (O_DIRECT on io_uring) and the system clocks.
/// Directory operations have no io_uring form glommio offers that works here (its
/// `Directory::sync` fails with EBADF), so they run on glommio's blocking pool, off the shard's
/// thread.
#[derive(Clone, Copy, Debug, Default)]
pub struct DmaStorage;

impl Storage for DmaStorage {
    type File = DmaFile;

    async fn open_rw(&self, path: &Path, create: bool) -> io::Result<DmaFile> {
        Ok(OpenOptions::new().read(true).write(true).create(create).dma_open(path).await?)
    }

    async fn open_read(&self, path: &Path) -> io::Result<DmaFile> {
        Ok(DmaFile::open(path).await?)
    }

    async fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let dir = dir.to_path_buf();
        glommio::executor()
            .spawn_blocking(move || -> io::Result<Vec<String>> {
                std::fs::create_dir_all(&dir)?;
                let mut names = Vec::new();
                for entry in std::fs::read_dir(&dir)? {
                    if let Some(name) = entry?.file_name().to_str() {
                        names.push(name.to_string());
                    }
                }
                Ok(names)
            })
            .await
    }

    async fn remove_file(&self, path: &Path) -> io::Result<()> {
        let path = path.to_path_buf();
        glommio::executor().spawn_blocking(move || std::fs::remove_file(&path)).await
    }

    async fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let dir: PathBuf = dir.to_path_buf();
        glommio::executor().spawn_blocking(move || std::fs::File::open(&dir)?.sync_all()).await
    }

    fn now(&self) -> Instant {
        Instant::now()
    }

    fn now_ms(&self) -> i64 {
        crate::now_ms()
    }
}

impl StorageFile for DmaFile {
    type Buffer = DmaBuffer;
    type Read = ReadResult;

    fn alloc_buffer(&self, len: usize) -> DmaBuffer {
        self.alloc_dma_buffer(len)
    }

    fn buffer_bytes(buffer: &mut DmaBuffer) -> &mut [u8] {
        buffer.as_bytes_mut()
    }

    fn trim_buffer(buffer: &mut DmaBuffer, len: usize) {
        buffer.trim_to_size(len);
    }

    async fn write_at(&self, buffer: DmaBuffer, position: u64) -> io::Result<usize> {
        Ok(DmaFile::write_at(self, buffer, position).await?)
    }

    async fn read_at(&self, position: u64, len: usize) -> io::Result<ReadResult> {
        Ok(DmaFile::read_at(self, position, len).await?)
    }

    async fn size(&self) -> io::Result<u64> {
        Ok(self.file_size().await?)
    }

    async fn pre_allocate(&self, len: u64) -> io::Result<()> {
        Ok(DmaFile::pre_allocate(self, len, false).await?)
    }

    async fn truncate(&self, len: u64) -> io::Result<()> {
        Ok(DmaFile::truncate(self, len).await?)
    }

    async fn fdatasync(&self) -> io::Result<()> {
        Ok(DmaFile::fdatasync(self).await?)
    }

    async fn rename(&self, to: &Path) -> io::Result<()> {
        Ok(DmaFile::rename(self, to).await?)
    }

    async fn close(self: Rc<Self>) -> io::Result<()> {
        self.close_rc().await?;
        Ok(())
    }
}
