//! Kafka's four compression codecs as its record batches use them: reading bounded, so a batch
//! cannot decompress into gigabytes, and writing at a level (KIP-390's settings), with the
//! framings Kafka's clients read (xerial-framed snappy, LZ4 frames of independent 64 KiB
//! blocks).

use std::io::{Read, Write};

/// A batch's codec (its attributes' low bits): 1 gzip, 2 snappy, 3 lz4, 4 zstd.
pub const GZIP: i16 = 1;
pub const SNAPPY: i16 = 2;
pub const LZ4: i16 = 3;
pub const ZSTD: i16 = 4;

/// Levels to compress at, by codec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Levels {
    /// -1 for zlib's default.
    pub gzip: i32,
    pub lz4: i32,
    pub zstd: i32,
}

/// Why a section did not decompress.
#[derive(Debug, PartialEq, Eq)]
pub enum DecompressError {
    /// It would hold more than the limit: refused before that much was produced.
    TooLarge {
        limit: usize,
    },
    Corrupt(String),
}

impl std::fmt::Display for DecompressError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TooLarge { limit } => write!(f, "more than {limit} bytes once decompressed"),
            Self::Corrupt(why) => f.write_str(why),
        }
    }
}

impl From<String> for DecompressError {
    fn from(why: String) -> Self {
        Self::Corrupt(why)
    }
}

impl From<&str> for DecompressError {
    fn from(why: &str) -> Self {
        Self::Corrupt(why.to_string())
    }
}

/// Kafka's codecs, with the output bounded by `limit` before it is produced.
pub fn decompress(codec: i16, input: &[u8], limit: usize) -> Result<Vec<u8>, DecompressError> {
    let bounded = |reader: Box<dyn Read + '_>| -> Result<Vec<u8>, DecompressError> {
        let mut out = Vec::new();
        reader.take(limit as u64 + 1).read_to_end(&mut out).map_err(|e| e.to_string())?;
        if out.len() > limit {
            return Err(DecompressError::TooLarge { limit });
        }
        Ok(out)
    };
    match codec {
        GZIP => bounded(Box::new(flate2::read::GzDecoder::new(input))),
        SNAPPY => snappy(input, limit),
        LZ4 => bounded(Box::new(lz4::Decoder::new(input).map_err(|e| e.to_string())?)),
        ZSTD => {
            let decoder = zstd::stream::read::Decoder::new(input).map_err(|e| e.to_string())?;
            bounded(Box::new(decoder))
        }
        other => Err(format!("unknown compression codec {other}").into()),
    }
}

/// The magic that starts xerial-framed snappy, which Kafka's Java client writes.
const XERIAL_MAGIC: &[u8] = b"\x82SNAPPY\x00";
const XERIAL_HEADER_BYTES: usize = 16;

/// Snappy, xerial-framed or raw: each block's claimed length is checked against what is left of
/// `limit` before anything is allocated for it.
fn snappy(input: &[u8], limit: usize) -> Result<Vec<u8>, DecompressError> {
    let block = |compressed: &[u8], out: &mut Vec<u8>| -> Result<(), DecompressError> {
        let len = snap::raw::decompress_len(compressed).map_err(|e| e.to_string())?;
        if out.len() + len > limit {
            return Err(DecompressError::TooLarge { limit });
        }
        let start = out.len();
        out.resize(start + len, 0);
        snap::raw::Decoder::new()
            .decompress(compressed, &mut out[start..])
            .map_err(|e| e.to_string())?;
        Ok(())
    };
    let mut out = Vec::new();
    if !input.starts_with(XERIAL_MAGIC) {
        block(input, &mut out)?;
        return Ok(out);
    }
    let mut rest = input.get(XERIAL_HEADER_BYTES..).ok_or("truncated xerial header")?;
    while !rest.is_empty() {
        let (len, after) = rest.split_at_checked(4).ok_or("truncated xerial block length")?;
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let (compressed, after) = after.split_at_checked(len).ok_or("truncated xerial block")?;
        block(compressed, &mut out)?;
        rest = after;
    }
    Ok(out)
}

/// Xerial's block size, as Kafka's Java client writes it.
const XERIAL_BLOCK_BYTES: usize = 32 * 1024;
/// Xerial's header: the magic, then its version 1 and compatible version 1.
const XERIAL_HEADER: &[u8; XERIAL_HEADER_BYTES] = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01";

/// `input` compressed with `codec` at its level in `levels`.
pub fn compress(codec: i16, input: &[u8], levels: Levels) -> Result<Vec<u8>, String> {
    let failed = |e: std::io::Error| format!("compressing: {e}");
    match codec {
        GZIP => {
            let level = match u32::try_from(levels.gzip) {
                Ok(level) => flate2::Compression::new(level),
                Err(_) => flate2::Compression::default(),
            };
            let mut encoder = flate2::write::GzEncoder::new(Vec::new(), level);
            encoder.write_all(input).map_err(failed)?;
            encoder.finish().map_err(failed)
        }
        SNAPPY => {
            let mut out = XERIAL_HEADER.to_vec();
            let mut encoder = snap::raw::Encoder::new();
            for block in input.chunks(XERIAL_BLOCK_BYTES) {
                let compressed = encoder.compress_vec(block).map_err(|e| e.to_string())?;
                let len = u32::try_from(compressed.len()).map_err(|e| e.to_string())?;
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(&compressed);
            }
            Ok(out)
        }
        LZ4 => {
            // Frames as Kafka writes them: independent 64 KiB blocks (its Java client reads no
            // other kind), no block or content checksums.
            let mut encoder = lz4::EncoderBuilder::new()
                .level(u32::try_from(levels.lz4).unwrap_or(9))
                .block_size(lz4::BlockSize::Max64KB)
                .block_mode(lz4::BlockMode::Independent)
                .block_checksum(lz4::liblz4::BlockChecksum::NoBlockChecksum)
                .checksum(lz4::ContentChecksum::NoChecksum)
                .build(Vec::new())
                .map_err(failed)?;
            encoder.write_all(input).map_err(failed)?;
            let (out, finished) = encoder.finish();
            finished.map_err(failed)?;
            Ok(out)
        }
        ZSTD => zstd::bulk::compress(input, levels.zstd).map_err(failed),
        other => Err(format!("unknown compression codec {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_codec_reads_back_what_it_wrote_and_bounds_what_it_reads() {
        let input: Vec<u8> = (0..200_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
        let levels = Levels { gzip: -1, lz4: 9, zstd: 3 };
        for codec in [GZIP, SNAPPY, LZ4, ZSTD] {
            let compressed = compress(codec, &input, levels).unwrap();
            assert!(compressed.len() < input.len(), "codec {codec} compressed nothing");
            assert_eq!(decompress(codec, &compressed, input.len()).unwrap(), input);
            let bounded = decompress(codec, &compressed, input.len() - 1);
            assert_eq!(bounded, Err(DecompressError::TooLarge { limit: input.len() - 1 }));
        }
        assert!(compress(7, &input, levels).is_err());
        // LZ4 frames as Kafka writes them: FLG version 01, independent blocks, no block or
        // content checksum, no content size (0x60); BD 64 KiB blocks (0x40).
        let frame = compress(LZ4, &input, levels).unwrap();
        assert_eq!((frame[4], frame[5]), (0x60, 0x40));
    }
}
