//! Overload: acks=0 producers push far faster than a throttled disk takes, and the broker's
//! memory stays near `queued.max.request.bytes` instead of growing with the backlog; it keeps
//! answering other requests meanwhile. The test prints the broker's peak memory.
//!
//! The disk is slowed with a cgroup-v1 blkio write throttle on the data directory's disk, which
//! needs root. Without one the test says so and skips, unless `SPATE_REQUIRE_FAULT_FS=1` (set by
//! `.ci/run`) makes that a failure.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use common::{connect, proc_status_kib, run, skip_without_privilege, Broker};
use spate::native::messages::Acks;
use spate::record::OwnedRecord;

const TOPIC: &str = "overload";
const PARTITIONS: u32 = 16;
/// What the producers send in all: four times the queue limit below.
const PRODUCED_BYTES: usize = 256 << 20;
const BATCH_BYTES: usize = 256 << 10;
const QUEUED_MAX_BYTES: usize = 64 << 20;
const THROTTLE_BYTES_PER_SEC: u64 = 20_000_000;

/// A blkio cgroup throttling writes to one disk; processes in it are moved out when dropped.
struct Throttle {
    group: PathBuf,
}

impl Throttle {
    fn new(data_dir: &Path, bytes_per_sec: u64) -> Result<Throttle, String> {
        let root = Path::new("/sys/fs/cgroup/blkio");
        if !root.join("blkio.throttle.write_bps_device").exists() {
            return Err("no cgroup-v1 blkio hierarchy at /sys/fs/cgroup/blkio".into());
        }
        let dev = std::fs::metadata(data_dir).map_err(|e| e.to_string())?.dev();
        let (major, minor) = (libc::major(dev), libc::minor(dev));
        // Throttles apply to whole disks: a partition's parent directory in sysfs is its disk.
        let sys = Path::new("/sys/dev/block").join(format!("{major}:{minor}"));
        let disk = match sys.join("partition").exists() {
            true => std::fs::read_to_string(sys.join("../dev")),
            false => std::fs::read_to_string(sys.join("dev")),
        }
        .map_err(|e| format!("{} is not on a block device: {e}", data_dir.display()))?;
        let group = root.join(format!("spate-test-{}", std::process::id()));
        std::fs::create_dir_all(&group).map_err(|e| format!("creating {group:?}: {e}"))?;
        let throttle = Throttle { group };
        std::fs::write(
            throttle.group.join("blkio.throttle.write_bps_device"),
            format!("{} {bytes_per_sec}", disk.trim()),
        )
        .map_err(|e| format!("setting the throttle: {e}"))?;
        Ok(throttle)
    }

    fn add(&self, pid: u32) {
        std::fs::write(self.group.join("cgroup.procs"), pid.to_string()).unwrap();
    }
}

impl Drop for Throttle {
    fn drop(&mut self) {
        let procs = std::fs::read_to_string(self.group.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines() {
            let _ = std::fs::write("/sys/fs/cgroup/blkio/cgroup.procs", pid);
        }
        let _ = std::fs::remove_dir(&self.group);
    }
}

fn status_mib(pid: u32, field: &str) -> u64 {
    proc_status_kib(pid, field) / 1024
}

#[test]
fn producers_outrunning_the_disk_are_held_back_and_memory_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let throttle = match Throttle::new(&data, THROTTLE_BYTES_PER_SEC) {
        Ok(throttle) => throttle,
        Err(why) => {
            skip_without_privilege("throttle the disk for the overload test", &why);
            return;
        }
    };
    let settings = [
        "--set".to_string(),
        format!("queued.max.request.bytes={QUEUED_MAX_BYTES}"),
        // Small tail caches, so what remains is the backlog the limit bounds.
        "--set".to_string(),
        "log.tail.cache.bytes=1048576".to_string(),
    ];
    let settings: Vec<&str> = settings.iter().map(String::as_str).collect();
    let broker = Broker::start(&data, &settings);
    let pid = broker.pid();
    throttle.add(pid);

    let before = status_mib(pid, "VmRSS:");
    run(|| async {
        let client = connect(&broker).await;
        client.create_topic(TOPIC, PARTITIONS, vec![]).await.unwrap();
        // One batch, built once and sent again and again: the client is not the bottleneck.
        let mut builder = spate::record::BatchBuilder::default();
        for i in 0..BATCH_BYTES / 1024 {
            builder.push(OwnedRecord {
                key: None,
                value: Some(vec![i as u8; 1000]),
                headers: Vec::new(),
                timestamp: 1_700_000_000_000,
            });
        }
        let (meta, archive) = builder.build();
        let payload = Bytes::from_owner(archive);
        let per_partition = PRODUCED_BYTES / BATCH_BYTES / PARTITIONS as usize;
        let producers: Vec<_> = (0..PARTITIONS)
            .map(|partition| {
                let (client, payload) = (client.clone(), payload.clone());
                glommio::spawn_local(async move {
                    for _ in 0..per_partition {
                        client
                            .produce_encoded(TOPIC, partition, Acks::None, meta, payload.clone())
                            .await
                            .expect("acks=0 produce");
                    }
                })
            })
            .collect();
        for producer in producers {
            producer.await;
        }
        // The broker still answers, once the disk has taken the backlog down to the limit.
        client.metadata(None, false).await.expect("metadata after the overload");
    });
    let peak = status_mib(pid, "VmHWM:");
    println!(
        "overload: {} MiB sent at acks=0 over {PARTITIONS} partitions to a disk throttled to \
         {} MB/s with queued.max.request.bytes {} MiB: broker RSS {before} MiB before, peak \
         {peak} MiB",
        PRODUCED_BYTES >> 20,
        THROTTLE_BYTES_PER_SEC / 1_000_000,
        QUEUED_MAX_BYTES >> 20
    );
    // Unbounded, the backlog would be most of the 256 MiB sent; bounded, growth stays near the
    // 64 MiB limit plus the partitions' 1 MiB tail caches and one request per connection.
    let grown = peak.saturating_sub(before);
    assert!(grown < 160, "the broker grew by {grown} MiB under overload");
}
