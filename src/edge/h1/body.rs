//! Bodies on the lean path: the connection's buffer, and a strict incremental decoder of the
//! chunked coding (RFC 9112 §7.1) that re-frames what it decodes.
//!
//! A chunked body is decoded and encoded again as it streams, never buffered whole: each run of
//! data that arrives goes out as one chunk. Chunk extensions are validated and dropped, and so
//! are trailer fields, so what the next hop reads is framed exactly as the edge read it.

use std::ops::Range;

/// Longest chunk-size line (size, extensions, CRLF) and trailer section the decoder accepts.
pub const MAX_CHUNK_LINE: usize = 4096;
/// Largest trailer section.
pub const MAX_TRAILERS: usize = 16 * 1024;

/// A read buffer that lives as long as its connection: `[start, end)` holds unread bytes.
#[derive(Debug)]
pub struct Buf {
    data: Vec<u8>,
    start: usize,
    end: usize,
}

impl Buf {
    /// A buffer of `capacity` bytes.
    pub fn new(capacity: usize) -> Self {
        Buf {
            data: vec![0; capacity],
            start: 0,
            end: 0,
        }
    }

    /// The unread bytes.
    pub fn filled(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    /// Whether no unread byte is left.
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Marks `n` bytes read.
    pub fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Room to read into, at least `want` bytes where the buffer allows (unread bytes are moved
    /// to the front first, and the buffer grows up to `max`).
    pub fn space(&mut self, want: usize, max: usize) -> &mut [u8] {
        if self.data.len() - self.end < want && self.start > 0 {
            self.data.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.data.len() - self.end < want && self.data.len() < max {
            let len = (self.end + want).max(self.data.len() * 2).min(max);
            self.data.resize(len, 0);
        }
        &mut self.data[self.end..]
    }

    /// Marks `n` bytes of [`Buf::space`] filled.
    pub fn filled_by(&mut self, n: usize) {
        self.end = (self.end + n).min(self.data.len());
    }

    /// The buffer's size now.
    pub fn capacity(&self) -> usize {
        self.data.len()
    }
}

/// The chunked body is malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed chunked body: {0}")]
pub struct ChunkError(pub &'static str);

/// Where the decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// In the size: its value so far and how many digits.
    Size { value: u64, digits: u8 },
    /// Whitespace after the size, before `;`.
    SizeSpace { value: u64 },
    /// In the extensions of a chunk of `value` bytes.
    Ext { value: u64 },
    /// After the CR of a size line.
    SizeLf { value: u64 },
    /// Data bytes left in this chunk.
    Data(u64),
    /// After a chunk's data: its CR.
    DataCr,
    /// Its LF.
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    /// Inside a trailer field's name.
    TrailerName,
    /// Inside its value.
    TrailerValue,
    /// After a trailer line's CR.
    TrailerLf,
    /// After the final empty line's CR.
    EndLf,
    /// The body is complete.
    Done,
}

/// One step of decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Bytes of the input used.
    pub consumed: usize,
    /// Data found, as a range of the input.
    pub data: Option<Range<usize>>,
}

/// A strict, incremental decoder of the chunked coding.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    /// Bytes of the current size line, or of the trailer section.
    line: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder {
            state: State::Size { value: 0, digits: 0 },
            line: 0,
        }
    }
}

impl ChunkedDecoder {
    /// Whether the last chunk and the trailer section have been read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Reads framing from the start of `input` up to the first data bytes, and returns them.
    /// Call again with the rest; it stops at the end of the body.
    pub fn step(&mut self, input: &[u8]) -> Result<Step, ChunkError> {
        let mut i = 0;
        while i < input.len() {
            if let State::Data(left) = self.state {
                let n = usize::try_from(left).unwrap_or(usize::MAX).min(input.len() - i);
                let left = left - n as u64;
                self.state = if left == 0 {
                    State::DataCr
                } else {
                    State::Data(left)
                };
                return Ok(Step {
                    consumed: i + n,
                    data: Some(i..i + n),
                });
            }
            if self.state == State::Done {
                break;
            }
            self.byte(input[i])?;
            i += 1;
        }
        Ok(Step {
            consumed: i,
            data: None,
        })
    }

    fn byte(&mut self, b: u8) -> Result<(), ChunkError> {
        self.line += 1;
        let in_size_line = matches!(
            self.state,
            State::Size { .. } | State::SizeSpace { .. } | State::Ext { .. } | State::SizeLf { .. }
        );
        if in_size_line && self.line > MAX_CHUNK_LINE {
            return Err(ChunkError("chunk-size line too long"));
        }
        if !in_size_line && self.line > MAX_TRAILERS {
            return Err(ChunkError("trailer section too large"));
        }
        self.state = match (self.state, b) {
            (State::Size { value, digits }, b) if b.is_ascii_hexdigit() => {
                if digits == 16 {
                    return Err(ChunkError("chunk size too large"));
                }
                let d = (b as char).to_digit(16).unwrap_or(0);
                State::Size {
                    value: value << 4 | u64::from(d),
                    digits: digits + 1,
                }
            }
            (State::Size { digits: 0, .. }, _) => return Err(ChunkError("chunk size expected")),
            (State::Size { value, .. }, b'\r') => State::SizeLf { value },
            (State::Size { value, .. } | State::SizeSpace { value }, b' ' | b'\t') => {
                State::SizeSpace { value }
            }
            (State::Size { value, .. } | State::SizeSpace { value }, b';') => State::Ext { value },
            (State::Ext { value }, b'\r') => State::SizeLf { value },
            (State::Ext { value }, b) if b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80 => {
                State::Ext { value }
            }
            (State::SizeLf { value: 0 }, b'\n') => {
                self.line = 0;
                State::TrailerStart
            }
            (State::SizeLf { value }, b'\n') => {
                self.line = 0;
                State::Data(value)
            }
            (State::DataCr, b'\r') => State::DataLf,
            (State::DataLf, b'\n') => {
                self.line = 0;
                State::Size { value: 0, digits: 0 }
            }
            (State::DataCr | State::DataLf, _) => return Err(ChunkError("CRLF expected after chunk data")),
            (State::TrailerStart, b'\r') => State::EndLf,
            (State::EndLf, b'\n') => State::Done,
            (State::TrailerStart | State::TrailerName, b) if super::parse::is_tchar(b) => State::TrailerName,
            (State::TrailerName, b':') => State::TrailerValue,
            (State::TrailerValue, b'\r') => State::TrailerLf,
            (State::TrailerValue, b) if b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80 => {
                State::TrailerValue
            }
            (State::TrailerLf, b'\n') => State::TrailerStart,
            (State::Size { .. } | State::SizeSpace { .. } | State::Ext { .. } | State::SizeLf { .. }, _) => {
                return Err(ChunkError("malformed chunk-size line"))
            }
            _ => return Err(ChunkError("malformed trailer section")),
        };
        Ok(())
    }
}

/// A chunk's size line for `len` data bytes: hex digits and CRLF, in `buf`.
pub fn chunk_head(len: usize, buf: &mut [u8; 18]) -> &[u8] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits = (usize::BITS - len.leading_zeros()).div_ceil(4).max(1) as usize;
    for i in 0..digits {
        buf[digits - 1 - i] = HEX[(len >> (4 * i)) & 0xf];
    }
    buf[digits] = b'\r';
    buf[digits + 1] = b'\n';
    &buf[..digits + 2]
}

/// The end of a chunked body as the edge writes it: the last chunk and no trailers.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";
