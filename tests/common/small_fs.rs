//! A size-limited tmpfs for a data directory that fills: the full-disk tests mount one (root with
//! CAP_SYS_ADMIN), or say so and skip unless `SPATE_REQUIRE_FAULT_FS=1` (set by `.ci/run`) makes
//! the missing privilege a failure.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::skip_without_privilege;

/// A size-limited tmpfs, unmounted when dropped.
pub struct SmallFs {
    pub path: PathBuf,
}

impl SmallFs {
    pub fn mount(path: &Path, size_mib: u64) -> Result<SmallFs, String> {
        std::fs::create_dir_all(path).map_err(|e| e.to_string())?;
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
            .arg(path)
            .output()
            .map_err(|e| format!("running mount: {e}"))?;
        if !output.status.success() {
            return Err(String::from_utf8_lossy(&output.stderr).into_owned());
        }
        Ok(SmallFs { path: path.to_path_buf() })
    }
}

impl SmallFs {
    /// Mounts one, or says why not and returns `None` (a failure under
    /// `SPATE_REQUIRE_FAULT_FS=1`).
    pub fn mount_or_skip(path: &Path, size_mib: u64) -> Option<SmallFs> {
        SmallFs::mount(path, size_mib)
            .map_err(|why| skip_without_privilege("mount a small tmpfs for a full-disk test", &why))
            .ok()
    }

    /// Takes every free block but `spare` (of 4 KiB) with a file of its own, which removing
    /// gives back.
    pub fn fill(&self, spare: u64) -> PathBuf {
        use std::io::Write;
        let path = self.path.join("filler-to-the-last-block");
        let mut file = std::fs::File::create(&path).unwrap();
        let block = [0x5au8; 4096];
        while file.write_all(&block).is_ok() {}
        let len = file.metadata().unwrap().len();
        file.set_len(len.saturating_sub(spare * 4096)).unwrap();
        path
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}
