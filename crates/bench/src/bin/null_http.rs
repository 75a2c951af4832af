//! The ceiling for the HTTP publish cases: an HTTP/1.1 server that answers
//! every request `201 Created` with a receipt like Courier's and stores
//! nothing. Driven by `http` with the same generator and connection counts, it
//! shows how many requests per second this machine's 2 cores allow once the
//! generator and the kernel's loopback TCP have had theirs, whatever a real
//! server does with the message.
//!
//! `cargo build --release -p courier-bench && ./target/release/http --only single-64 --courier-only --courier ./target/release/null_http`
//!
//! It takes `courier serve`'s flags (and ignores all but `--listen`) and prints
//! the same first line, so `http` starts it as it starts Courier. Like
//! Courier, it runs tokio's multi-threaded runtime, one task per connection,
//! and parses heads with `httparse`; it is what Courier's own publish fast
//! path would cost with an engine that took no time.

use std::net::SocketAddr;

use anyhow::{bail, Context, Result};
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const MAX_HEADERS: usize = 32;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let mut listen: SocketAddr = "127.0.0.1:0".parse()?;
    while let Some(arg) = args.next() {
        if arg == "--listen" {
            listen = args.next().context("--listen needs an address")?.parse()?;
        }
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(serve(listen))
}

async fn serve(listen: SocketAddr) -> Result<()> {
    let listener = TcpListener::bind(listen).await?;
    println!("courier listening on http://{}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        tokio::spawn(async move {
            if let Err(e) = connection(stream).await {
                eprintln!("null_http: {e:#}");
            }
        });
    }
}

async fn connection(mut stream: TcpStream) -> Result<()> {
    let mut buf = BytesMut::with_capacity(8 * 1024);
    let mut answer = Vec::with_capacity(256);
    let mut seq = 0u64;
    loop {
        let (head, body) = loop {
            if let Some(sizes) = parse(&buf)? {
                break sizes;
            }
            if stream.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
        };
        while buf.len() < head + body {
            if stream.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
        }
        buf.advance(head + body);
        seq += 1;
        let receipt =
            format!(r#"{{"seq":{seq},"id":"01KAKN8XW3RQ5E0Y6W8F1J2M3N","duplicate":false}}"#);
        answer.clear();
        answer.extend_from_slice(
            format!(
                "HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                receipt.len()
            )
            .as_bytes(),
        );
        answer.extend_from_slice(receipt.as_bytes());
        stream.write_all(&answer).await?;
    }
}

/// The head length and body length of a complete head at the start of `input`.
fn parse(input: &[u8]) -> Result<Option<(usize, usize)>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let head = match request.parse(input)? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return Ok(None),
    };
    let mut body = 0;
    for h in request.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            body = std::str::from_utf8(h.value)?.trim().parse()?;
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            bail!("chunked bodies are not supported");
        }
    }
    Ok(Some((head, body)))
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn heads_are_measured_and_bodies_sized() {
        let head = b"POST /v1/topics/t/messages HTTP/1.1\r\nhost: x\r\nContent-Length: 5\r\n\r\n";
        let mut request = head.to_vec();
        request.extend_from_slice(b"hello");
        assert_eq!(parse(&request).unwrap(), Some((head.len(), 5)));
        assert_eq!(parse(&head[..20]).unwrap(), None);
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\n\r\n").unwrap(),
            Some((18, 0)),
            "no Content-Length means no body"
        );
        assert!(parse(b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n").is_err());
    }
}
