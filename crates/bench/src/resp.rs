//! A minimal Redis (RESP2) client: commands encoded once up front, written
//! as they are, and exactly as many replies read back. Enough for `XADD`,
//! pipelined or not, and `PING`, with the same cost profile as [`crate::http`].

use std::net::SocketAddr;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Encodes one command as a RESP array of bulk strings.
pub fn command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// `XADD <stream> * f <body>`, repeated `n` times back to back (a pipeline).
pub fn xadd(stream: &str, body: &[u8], n: usize) -> Bytes {
    command(&[b"XADD", stream.as_bytes(), b"*", b"f", body])
        .repeat(n)
        .into()
}

/// One connection to a Redis server.
pub struct Conn {
    stream: BufReader<TcpStream>,
    line: Vec<u8>,
    /// Bulk reply payloads are read into this and dropped.
    skip: Vec<u8>,
}

impl Conn {
    pub async fn connect(addr: SocketAddr) -> Result<Conn> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("cannot connect to redis at {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream: BufReader::with_capacity(64 << 10, stream),
            line: Vec::with_capacity(128),
            skip: Vec::with_capacity(128),
        })
    }

    /// Writes `commands` (already encoded) and reads `replies` replies, failing on an error reply.
    pub async fn round_trip(&mut self, commands: &[u8], replies: usize) -> Result<()> {
        self.stream.get_mut().write_all(commands).await?;
        for _ in 0..replies {
            self.reply().await?;
        }
        Ok(())
    }

    /// Reads one reply that is not an array.
    async fn reply(&mut self) -> Result<()> {
        self.line.clear();
        let n = self.stream.read_until(b'\n', &mut self.line).await?;
        if n < 3 {
            bail!("redis closed the connection");
        }
        let text = &self.line[1..n - 2];
        match self.line[0] {
            b'+' | b':' => Ok(()),
            b'-' => bail!("redis error: {}", String::from_utf8_lossy(text)),
            b'$' => {
                let len: i64 = std::str::from_utf8(text)?.parse()?;
                if len >= 0 {
                    self.skip.resize(len as usize + 2, 0);
                    self.stream.read_exact(&mut self.skip).await?;
                }
                Ok(())
            }
            other => bail!("unexpected redis reply type '{}'", other as char),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_commands() {
        assert_eq!(
            command(&[b"XADD", b"s", b"*", b"f", b"ab"]),
            b"*5\r\n$4\r\nXADD\r\n$1\r\ns\r\n$1\r\n*\r\n$1\r\nf\r\n$2\r\nab\r\n"
        );
        assert_eq!(
            xadd("s", b"x", 2).len(),
            2 * command(&[b"XADD", b"s", b"*", b"f", b"x"]).len()
        );
    }
}
