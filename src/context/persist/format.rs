//! The cache file's bytes: JSON lines framed by a header and a checksummed trailer.
//!
//! ```text
//! {"format":"tenant-edge/context-cache","version":1,"seq":42,"written_ms":1700000000000}
//! {"id":"acme","version":3,"realm":"us","hosts":["acme.example.test"],"placements":{...}}
//! ...                                     one IngressRecord per tenant
//! {"records":2,"hosts":3,"crc32":1234567890}
//! ```
//!
//! The trailer's CRC-32 covers every byte before it (header included), so a file cut short or
//! altered anywhere is rejected whole, before a single record is used. Records are parsed in
//! chunks split at line ends, on several threads.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::PersistError;
use crate::tenant::IngressRecord;

/// Identifies the file's kind in its header.
pub const FORMAT: &str = "tenant-edge/context-cache";
/// The layout version this code writes and reads.
pub const VERSION: u32 = 1;

/// Records are serialised into this much memory before being checksummed and written.
const WRITE_CHUNK: usize = 1 << 20;
/// Below this many body bytes, parsing on one thread is cheaper than starting others.
const PARALLEL_MIN: usize = 1 << 20;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    format: String,
    version: u32,
    seq: u64,
    written_ms: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Trailer {
    records: u64,
    hosts: u64,
    crc32: u32,
}

/// A cache file read whole and checked (framing, checksum, header, line count); its records
/// are parsed on demand, in chunks, so parsing can overlap inserting.
#[derive(Debug)]
pub struct CacheFile {
    bytes: Vec<u8>,
    body: std::ops::Range<usize>,
    /// The change-stream sequence the cache was current to when written.
    pub seq: u64,
    /// When the file was written (unix ms).
    pub written_ms: u64,
    /// Tenants in the file.
    pub records: u64,
    /// Hosts those tenants name, summed: how many cache entries restoring makes.
    pub hosts: u64,
}

/// Writes `records` to `path` atomically: temp file in the same directory, write, fsync,
/// rename, fsync the directory. A crash leaves the old file or the new one, never a torn one.
pub fn write_atomic(
    path: &Path,
    seq: u64,
    written_ms: u64,
    records: &[Arc<IngressRecord>],
) -> Result<(), PersistError> {
    crate::durable::replace_file(path, |file| write_records(file, path, seq, written_ms, records))
}

impl From<crate::durable::FileError> for PersistError {
    fn from(e: crate::durable::FileError) -> Self {
        PersistError::Io {
            step: e.step,
            path: e.path,
            source: e.source,
        }
    }
}

fn write_records(
    file: &mut std::fs::File,
    tmp: &Path,
    seq: u64,
    written_ms: u64,
    records: &[Arc<IngressRecord>],
) -> Result<(), PersistError> {
    let header = Header {
        format: FORMAT.into(),
        version: VERSION,
        seq,
        written_ms,
    };
    let mut crc = crc32fast::Hasher::new();
    let mut buf = Vec::with_capacity(WRITE_CHUNK + 4096);
    serde_json::to_writer(&mut buf, &header)?;
    buf.push(b'\n');
    for record in records {
        serde_json::to_writer(&mut buf, &**record)?;
        buf.push(b'\n');
        if buf.len() >= WRITE_CHUNK {
            crc.update(&buf);
            file.write_all(&buf).map_err(io_err("writing", tmp))?;
            buf.clear();
        }
    }
    crc.update(&buf);
    let trailer = Trailer {
        records: records.len() as u64,
        hosts: records.iter().map(|r| r.hosts.len() as u64).sum(),
        crc32: crc.finalize(),
    };
    serde_json::to_writer(&mut buf, &trailer)?;
    buf.push(b'\n');
    file.write_all(&buf).map_err(io_err("writing", tmp))?;
    Ok(())
}

/// Reads and checks a cache file. `Ok(None)`: there is none (a first start).
pub fn read(path: &Path) -> Result<Option<CacheFile>, PersistError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("reading", path)(e)),
    };
    check(bytes).map(Some).map_err(|reason| PersistError::Corrupt {
        path: path.to_owned(),
        reason,
    })
}

/// Checks the framing, checksum, header and line count of a whole file.
pub fn check(bytes: Vec<u8>) -> Result<CacheFile, String> {
    let body = bytes
        .strip_suffix(b"\n")
        .ok_or("does not end with a line end: truncated")?;
    let split = body
        .iter()
        .rposition(|&b| b == b'\n')
        .ok_or("no trailer line: truncated")?;
    let (covered, trailer) = (&bytes[..=split], &body[split + 1..]);
    let trailer: Trailer =
        serde_json::from_slice(trailer).map_err(|e| format!("trailer: {e} (truncated?)"))?;
    if crc32fast::hash(covered) != trailer.crc32 {
        return Err("checksum mismatch".into());
    }
    let header_end = covered.iter().position(|&b| b == b'\n').ok_or("no header line")?;
    let header: Header =
        serde_json::from_slice(&covered[..header_end]).map_err(|e| format!("header: {e}"))?;
    if header.format != FORMAT || header.version != VERSION {
        return Err(format!(
            "format {} version {}, expected {FORMAT} version {VERSION}",
            header.format, header.version
        ));
    }
    let lines = covered[header_end + 1..].iter().filter(|&&b| b == b'\n').count() as u64;
    if lines != trailer.records {
        return Err(format!("{lines} records, the trailer says {}", trailer.records));
    }
    Ok(CacheFile {
        body: header_end + 1..split + 1,
        bytes,
        seq: header.seq,
        written_ms: header.written_ms,
        records: trailer.records,
        hosts: trailer.hosts,
    })
}

impl CacheFile {
    /// The record lines split into about `n` pieces, each ending at a line end.
    pub fn chunks(&self, n: usize) -> Vec<&[u8]> {
        split_at_lines(&self.bytes[self.body.clone()], n)
    }

    /// Every record, parsed on one thread per core.
    pub fn parse(&self) -> Result<Vec<IngressRecord>, String> {
        let body = &self.bytes[self.body.clone()];
        let threads = if body.len() < PARALLEL_MIN {
            1
        } else {
            std::thread::available_parallelism().map_or(1, usize::from)
        };
        let parsed: Vec<Result<Vec<IngressRecord>, String>> = std::thread::scope(|s| {
            let handles: Vec<_> = self
                .chunks(threads)
                .into_iter()
                .map(|chunk| s.spawn(move || parse_chunk(chunk)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err("parser thread failed".into())))
                .collect()
        });
        let mut records = Vec::with_capacity(self.records as usize);
        for chunk in parsed {
            records.extend(chunk?);
        }
        Ok(records)
    }
}

/// Parses newline-terminated records.
pub fn parse_chunk(chunk: &[u8]) -> Result<Vec<IngressRecord>, String> {
    chunk
        .split(|&b| b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| serde_json::from_slice(line).map_err(|e| format!("record: {e}")))
        .collect()
}

/// Splits `body` into about `n` pieces, each ending at a line end.
fn split_at_lines(body: &[u8], n: usize) -> Vec<&[u8]> {
    let target = body.len() / n.max(1) + 1;
    let mut chunks = Vec::with_capacity(n);
    let mut rest = body;
    while !rest.is_empty() {
        let end = match rest
            .get(target..)
            .and_then(|r| r.iter().position(|&b| b == b'\n'))
        {
            Some(i) => target + i + 1,
            None => rest.len(),
        };
        let (chunk, tail) = rest.split_at(end);
        chunks.push(chunk);
        rest = tail;
    }
    chunks
}

fn io_err(step: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> PersistError {
    let path = path.to_owned();
    move |source| PersistError::Io { step, path, source }
}
