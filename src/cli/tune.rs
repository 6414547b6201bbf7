//! `spate tune disk`: measures the data directory's device with Spate's own I/O path (glommio
//! O_DIRECT reads and writes on io_uring, 4 KiB aligned) and recommends the segment writer's
//! largest write (`log.flush.write.bytes.max`) and how far to read ahead of a sequential reader
//! (`log.read.ahead.bytes`: the chunks of the read cache it keeps in flight reach the device's
//! best read throughput).
//!
//! Spate's writer keeps up to two writes in flight per partition (`log::write_plan`), so a shard
//! with N busy partitions drives the device at queue depth up to 2N; acks=all adds one fdatasync
//! in flight per partition.

use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use glommio::io::{DmaFile, OpenOptions};
use hdrhistogram::Histogram;

use crate::cli::run_client;
use crate::config::DATA_DIR_DEFAULT;

const WRITE_SIZES: [usize; 4] = [64 << 10, 256 << 10, 1 << 20, 4 << 20];
const QUEUE_DEPTHS: [usize; 4] = [1, 2, 4, 8];
/// The read cache's chunk: what a reader's reads ahead are made of.
const READ_SIZE: usize = crate::log::partition::READ_CHUNK_BYTES as usize;
const READ_DEPTHS: [usize; 5] = [1, 2, 4, 8, 16];
/// A write size is recommended when it reaches this share of the best throughput measured.
const GOOD_ENOUGH: f64 = 0.95;

#[derive(Subcommand, Debug)]
pub enum TuneCommand {
    /// Measure the data directory's device and recommend write sizes.
    Disk(DiskArgs),
}

#[derive(Args, Debug)]
pub struct DiskArgs {
    /// Directory on the device to measure (a scratch file is created there and removed).
    #[arg(long, default_value = DATA_DIR_DEFAULT)]
    pub data_dir: PathBuf,
    /// Size of the scratch file.
    #[arg(long, default_value_t = 1024)]
    pub file_mib: u64,
    /// Time spent on each measurement.
    #[arg(long, default_value_t = 1000)]
    pub millis_each: u64,
}

impl TuneCommand {
    pub fn run(self) -> Result<(), String> {
        let TuneCommand::Disk(args) = self;
        std::fs::create_dir_all(&args.data_dir)
            .map_err(|e| format!("creating {}: {e}", args.data_dir.display()))?;
        crate::log::probe::write_probe_file(&args.data_dir)
            .map_err(|e| format!("writing to {}: {e}", args.data_dir.display()))?;
        let path = args.data_dir.join(".spate-tune-scratch");
        let result = run_client(|| async {
            crate::log::probe::probe_device(&args.data_dir).await;
            measure(&args, path.clone()).await
        });
        let _ = std::fs::remove_file(&path);
        result
    }
}

/// One measurement: throughput and per-I/O latency.
struct Sample {
    mib_per_sec: f64,
    p99_us: f64,
}

async fn measure(args: &DiskArgs, path: PathBuf) -> Result<(), String> {
    let file_bytes = args.file_mib.max(64) << 20;
    let each = Duration::from_millis(args.millis_each.max(100));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .dma_open(&path)
        .await
        .map_err(|e| format!("opening {}: {e}", path.display()))?;
    file.pre_allocate(file_bytes, false).await.map_err(|e| format!("preallocating: {e}"))?;
    let file = Rc::new(file);
    println!(
        "device of {} (O_DIRECT through io_uring, {} MiB scratch file)\n",
        args.data_dir.display(),
        file_bytes >> 20
    );
    println!(
        "{:<28} {:>8} {:>8} {:>8} {:>8}",
        "sequential write MiB/s", "qd 1", "qd 2", "qd 4", "qd 8"
    );
    let mut best = (0.0f64, 0usize, 0usize);
    let mut by_size = Vec::new();
    for size in WRITE_SIZES {
        let mut row = format!("{:<28}", format!("  {} KiB writes", size >> 10));
        let mut row_best = 0.0f64;
        for depth in QUEUE_DEPTHS {
            let sample = run_io(&file, file_bytes, size, depth, each, Io::Write).await?;
            row.push_str(&format!(" {:>8.0}", sample.mib_per_sec));
            row_best = row_best.max(sample.mib_per_sec);
            if sample.mib_per_sec > best.0 {
                best = (sample.mib_per_sec, size, depth);
            }
        }
        println!("{row}");
        by_size.push((size, row_best));
    }
    println!();
    for size in [256 << 10, 1 << 20] {
        let sample = run_io(&file, file_bytes, size, 1, each, Io::WriteSync).await?;
        println!(
            "write {:>4} KiB + fdatasync, qd 1: {:>6.0} MiB/s, p99 {:>7.0} µs per write+sync",
            size >> 10,
            sample.mib_per_sec,
            sample.p99_us
        );
    }
    println!();
    let mut reads = Vec::new();
    for depth in READ_DEPTHS {
        let sample = run_io(&file, file_bytes, READ_SIZE, depth, each, Io::Read).await?;
        println!(
            "sequential read {} KiB, qd {depth}: {:>6.0} MiB/s, p99 {:>7.0} µs",
            READ_SIZE >> 10,
            sample.mib_per_sec,
            sample.p99_us
        );
        reads.push((depth, sample.mib_per_sec));
    }
    let _ = file.close_rc().await;
    let best_read = reads.iter().map(|r| r.1).fold(0.0, f64::max);
    let read_depth = reads
        .iter()
        .find(|(_, mib)| *mib >= GOOD_ENOUGH * best_read)
        .map_or(1, |(depth, _)| *depth);
    let recommended = by_size
        .iter()
        .find(|(_, mib)| *mib >= GOOD_ENOUGH * best.0)
        .map_or(best.1, |(size, _)| *size);
    println!(
        "\nbest: {:.0} MiB/s with {} KiB writes at queue depth {}.\n\
         recommend: \"log.flush.write.bytes.max\" = {recommended}  (smallest write within {:.0}% of the best;\n\
         Spate's writer keeps up to two writes in flight per partition, so a shard needs about {}\n\
         busy partitions to reach that queue depth)",
        best.0,
        best.1 >> 10,
        best.2,
        GOOD_ENOUGH * 100.0,
        best.2.div_ceil(crate::log::write_plan::WRITES_IN_FLIGHT_MAX),
    );
    // Two chunks at least: one being read while the reader takes the other.
    let read_ahead = read_depth.max(2) * READ_SIZE;
    println!(
        "\nbest read: {best_read:.0} MiB/s; {read_depth} reads of {} KiB in flight reach {:.0}% of it.\n\
         recommend: \"log.read.ahead.bytes\" = {read_ahead}  (what one sequential reader may have\n\
         read ahead, in {} KiB chunks: up to eight of its fetches, within this)",
        READ_SIZE >> 10,
        GOOD_ENOUGH * 100.0,
        READ_SIZE >> 10,
    );
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Io {
    Write,
    WriteSync,
    Read,
}

/// Sequential I/O of `size` bytes at `depth` in flight for `each`, wrapping around the file.
async fn run_io(
    file: &Rc<DmaFile>,
    file_bytes: u64,
    size: usize,
    depth: usize,
    each: Duration,
    io: Io,
) -> Result<Sample, String> {
    let started = Instant::now();
    let next_position = Rc::new(std::cell::Cell::new(0u64));
    let latency = Rc::new(std::cell::RefCell::new(crate::metrics::new_histogram()));
    let mut workers = Vec::new();
    for _ in 0..depth {
        let (file, next_position, latency) = (file.clone(), next_position.clone(), latency.clone());
        workers.push(glommio::spawn_local(async move {
            let mut bytes = 0u64;
            while started.elapsed() < each {
                let position = next_position.get();
                next_position.set(if position + 2 * size as u64 > file_bytes {
                    0
                } else {
                    position + size as u64
                });
                let began = Instant::now();
                let done = match io {
                    Io::Read => file.read_at_aligned(position, size).await.map(|r| r.len()),
                    Io::Write | Io::WriteSync => {
                        let mut buf = file.alloc_dma_buffer(size);
                        buf.as_bytes_mut().fill(0x5a);
                        let written = file.write_at(buf, position).await;
                        match (io, written) {
                            (Io::WriteSync, Ok(n)) => file.fdatasync().await.map(|()| n),
                            (_, result) => result,
                        }
                    }
                };
                let n = done.map_err(|e| format!("I/O at {position}: {e}"))?;
                record(&mut latency.borrow_mut(), began.elapsed());
                bytes += n as u64;
            }
            Ok::<u64, String>(bytes)
        }));
    }
    let mut bytes = 0;
    for worker in workers {
        bytes += worker.await?;
    }
    let secs = started.elapsed().as_secs_f64();
    let p99_us = latency.borrow().value_at_quantile(0.99) as f64 / 1000.0;
    Ok(Sample { mib_per_sec: bytes as f64 / secs / (1024.0 * 1024.0), p99_us })
}

fn record(histogram: &mut Histogram<u64>, elapsed: Duration) {
    histogram.saturating_record(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX).max(1));
}
