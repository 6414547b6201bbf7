//! A workaround for a glommio 0.9 pitfall (upstream #605/#670): if the first DMA file a thread
//! opens on a device is an empty read-write file, glommio caches that the device supports
//! polled I/O and every later O_DIRECT read on it fails with EOPNOTSUPP (os error 95). Each
//! thread that does DMA I/O in a directory therefore first reads a small non-empty file there.

use std::io;
use std::path::Path;

/// The 4 KiB file read first; kept in the data directory.
pub const PROBE_FILE: &str = ".spate-probe";

/// Writes the probe file if it is missing or short. Blocking: call before the executors start.
pub fn write_probe_file(dir: &Path) -> io::Result<()> {
    let probe = dir.join(PROBE_FILE);
    if std::fs::metadata(&probe).map(|m| m.len()).unwrap_or(0) < 4096 {
        std::fs::write(&probe, [0u8; 4096])?;
    }
    Ok(())
}

/// Opens and reads the probe file read-only: must be this thread's first DMA file on the device.
pub async fn probe_device(dir: &Path) {
    let probe = async {
        let file = glommio::io::DmaFile::open(dir.join(PROBE_FILE)).await?;
        file.read_at(0, 4096).await?;
        file.close().await
    };
    if let Err(e) = probe.await {
        tracing::warn!(dir = %dir.display(), "probe read failed; O_DIRECT reads may fail: {e}");
    }
}
