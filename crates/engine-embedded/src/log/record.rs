//! The payload of a log record (inside a [`frame`](super::frame)):
//!
//! ```text
//! seq u64 | published_at u64 | deliver_at u64 (0 = none)
//! id_len u32 | key_len u32 (u32::MAX = none) | header_count u32
//! id | key | (name_len u32, name, value_len u32, value)* | body (the rest)
//! ```
//!
//! All integers little-endian. `seq` and `published_at` come first so a reader
//! can learn a record's time from a short read (see [`TIME_PREFIX`]).

use bytes::Bytes;
use courier_core::{Error, Headers, Message, Millis, Result, Seq};

use super::frame;
use super::AppendRecord;

const FIXED: usize = 36;
const NO_KEY: u32 = u32::MAX;

/// Bytes from the start of a frame that hold its seq and published_at.
pub(crate) const TIME_PREFIX: usize = frame::HEADER + 16;

/// Appends the framed record to `buf`.
pub(crate) fn encode(
    buf: &mut Vec<u8>,
    seq: Seq,
    published_at: Millis,
    rec: &AppendRecord,
) -> Result<()> {
    let start = frame::begin(buf);
    let headers_len: usize = rec.headers.iter().map(|(k, v)| 8 + k.len() + v.len()).sum();
    let key_len = rec.key.as_ref().map_or(0, |k| k.len());
    buf.reserve(FIXED + rec.id.len() + key_len + headers_len + rec.body.len());
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(&published_at.to_le_bytes());
    buf.extend_from_slice(&rec.deliver_at.unwrap_or(0).to_le_bytes());
    buf.extend_from_slice(&len32(rec.id.len())?.to_le_bytes());
    let key_field = match &rec.key {
        Some(k) if k.len() >= NO_KEY as usize => return Err(too_large(k.len())),
        Some(k) => k.len() as u32,
        None => NO_KEY,
    };
    buf.extend_from_slice(&key_field.to_le_bytes());
    buf.extend_from_slice(&len32(rec.headers.len())?.to_le_bytes());
    buf.extend_from_slice(rec.id.as_bytes());
    if let Some(k) = &rec.key {
        buf.extend_from_slice(k.as_bytes());
    }
    for (name, value) in &rec.headers {
        buf.extend_from_slice(&len32(name.len())?.to_le_bytes());
        buf.extend_from_slice(name.as_bytes());
        buf.extend_from_slice(&len32(value.len())?.to_le_bytes());
        buf.extend_from_slice(value.as_bytes());
    }
    buf.extend_from_slice(&rec.body);
    frame::finish(buf, start)
}

fn len32(len: usize) -> Result<u32> {
    u32::try_from(len).map_err(|_| too_large(len))
}

fn too_large(len: usize) -> Error {
    Error::InvalidArgument(format!("field of {len} bytes is too large"))
}

/// The seq of a checked payload, used by recovery to check continuity.
pub(crate) fn seq_of(payload: &[u8]) -> Option<Seq> {
    Some(u64::from_le_bytes(payload.get(..8)?.try_into().ok()?))
}

/// The published_at of a checked payload.
pub(crate) fn published_at_of(payload: &[u8]) -> Option<Millis> {
    Some(u64::from_le_bytes(payload.get(8..16)?.try_into().ok()?))
}

/// Decodes the frame at `buf[at..]`, checking its checksum; returns the message
/// and the frame's total length. The body is a slice of `buf`, not a copy.
pub(crate) fn decode(buf: &Bytes, at: usize) -> Result<(Message, usize)> {
    let len = frame::check(&buf[at..]).ok_or_else(|| corrupt("bad checksum or torn record"))?;
    let start = at + frame::HEADER;
    let end = start + len;
    let mut cur = Cursor {
        bytes: &buf[..end],
        pos: start,
    };
    let seq = cur.u64()?;
    let published_at = cur.u64()?;
    let deliver_at = match cur.u64()? {
        0 => None,
        t => Some(t),
    };
    let id_len = cur.u32()? as usize;
    let key_len = cur.u32()?;
    let header_count = cur.u32()?;
    let id = cur.string(id_len)?;
    let key = match key_len {
        NO_KEY => None,
        n => Some(cur.string(n as usize)?),
    };
    let mut headers = Headers::new();
    for _ in 0..header_count {
        let n = cur.u32()? as usize;
        let name = cur.string(n)?;
        let n = cur.u32()? as usize;
        let value = cur.string(n)?;
        headers.insert(name, value);
    }
    let body = buf.slice(cur.pos..end);
    let message = Message {
        seq,
        id,
        published_at,
        deliver_at,
        key,
        headers,
        body,
    };
    Ok((message, frame::HEADER + len))
}

fn corrupt(what: &str) -> Error {
    Error::Corrupt(format!("log record: {what}"))
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| corrupt("field runs past the record"))?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn string(&mut self, n: usize) -> Result<String> {
        let s = self.take(n)?;
        std::str::from_utf8(s)
            .map(str::to_owned)
            .map_err(|_| corrupt("invalid UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut headers = Headers::new();
        headers.insert("a".into(), "1".into());
        headers.insert("bb".into(), "".into());
        let rec = AppendRecord {
            id: "id-1".into(),
            key: Some(String::new()),
            headers,
            body: Bytes::from_static(b"body"),
            deliver_at: Some(42),
        };
        let mut buf = vec![9u8; 3];
        encode(&mut buf, 7, 1000, &rec).unwrap();
        let buf = Bytes::from(buf);
        let (m, len) = decode(&buf, 3).unwrap();
        assert_eq!(len, buf.len() - 3);
        assert_eq!(m.seq, 7);
        assert_eq!(m.published_at, 1000);
        assert_eq!(m.deliver_at, Some(42));
        assert_eq!(m.id, "id-1");
        assert_eq!(m.key.as_deref(), Some(""));
        assert_eq!(m.headers, rec.headers);
        assert_eq!(&m.body[..], b"body");
        assert_eq!(seq_of(&buf[3 + frame::HEADER..]), Some(7));
    }
}
