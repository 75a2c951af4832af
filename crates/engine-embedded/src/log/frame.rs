//! The framing shared by log segments and the state journal:
//! `[len u32 LE][crc32 u32 LE][payload; len]`.
//!
//! The checksum covers the length bytes as well as the payload, so a run of
//! zeros (what a file system may leave after a crash) never reads as a valid
//! empty frame.

use std::fs::File;
use std::io::{self, BufReader, Read};

use courier_core::{Error, Result};

/// Bytes before the payload.
pub(crate) const HEADER: usize = 8;

/// Reserves a frame header at the end of `buf`; returns where the frame starts.
pub(crate) fn begin(buf: &mut Vec<u8>) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&[0; HEADER]);
    start
}

/// Fills in the header of the frame begun at `start`, whose payload is the rest of `buf`.
pub(crate) fn finish(buf: &mut [u8], start: usize) -> Result<()> {
    let len = buf.len() - start - HEADER;
    let len = u32::try_from(len)
        .map_err(|_| Error::InvalidArgument(format!("record of {len} bytes is too large")))?;
    let len_bytes = len.to_le_bytes();
    let crc = checksum(len_bytes, &buf[start + HEADER..]);
    buf[start..start + 4].copy_from_slice(&len_bytes);
    buf[start + 4..start + HEADER].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

fn checksum(len_bytes: [u8; 4], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&len_bytes);
    h.update(payload);
    h.finalize()
}

/// Checks the frame at the start of `bytes` and returns its payload length, or
/// `None` when it is incomplete or its checksum does not match.
pub(crate) fn check(bytes: &[u8]) -> Option<usize> {
    let header = bytes.get(..HEADER)?;
    let len_bytes: [u8; 4] = header[..4].try_into().ok()?;
    let len = u32::from_le_bytes(len_bytes) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().ok()?);
    let payload = bytes.get(HEADER..HEADER + len)?;
    (checksum(len_bytes, payload) == crc).then_some(len)
}

/// Reads the intact frames of a file from its start, stopping at the end or at
/// the first torn or corrupt frame; `valid_len` is then where that frame starts.
pub(crate) struct Scanner {
    reader: BufReader<File>,
    file_len: u64,
    valid_len: u64,
    payload: Vec<u8>,
}

impl Scanner {
    pub(crate) fn new(file: File) -> io::Result<Scanner> {
        let file_len = file.metadata()?.len();
        Ok(Scanner {
            reader: BufReader::with_capacity(1 << 20, file),
            file_len,
            valid_len: 0,
            payload: Vec::new(),
        })
    }

    /// The next intact payload and the position of its frame, or `None` at the
    /// end of the intact prefix.
    pub(crate) fn next_frame(&mut self) -> io::Result<Option<(u64, &[u8])>> {
        let pos = self.valid_len;
        if self.file_len - pos < HEADER as u64 {
            return Ok(None);
        }
        let mut header = [0u8; HEADER];
        self.reader.read_exact(&mut header)?;
        let len_bytes: [u8; 4] = header[..4].try_into().expect("4 bytes");
        let len = u32::from_le_bytes(len_bytes) as u64;
        if (self.file_len - pos - HEADER as u64) < len {
            return Ok(None);
        }
        self.payload.resize(len as usize, 0);
        self.reader.read_exact(&mut self.payload)?;
        let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        if checksum(len_bytes, &self.payload) != crc {
            return Ok(None);
        }
        self.valid_len = pos + HEADER as u64 + len;
        Ok(Some((pos, &self.payload)))
    }

    /// End of the last intact frame returned.
    pub(crate) fn valid_len(&self) -> u64 {
        self.valid_len
    }

    /// Length of the file when scanning began.
    pub(crate) fn file_len(&self) -> u64 {
        self.file_len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_round_trip_and_damage() {
        let mut buf = Vec::new();
        let start = begin(&mut buf);
        buf.extend_from_slice(b"hello");
        finish(&mut buf, start).unwrap();
        assert_eq!(check(&buf), Some(5));
        assert_eq!(check(&buf[..buf.len() - 1]), None);
        let mut bad = buf.clone();
        bad[HEADER] ^= 1;
        assert_eq!(check(&bad), None);
        assert_eq!(check(&[0u8; HEADER]), None, "zeros are not an empty frame");
    }
}
