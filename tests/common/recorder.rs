//! A recording backend: a real loopback server that keeps the exact bytes of every request it
//! receives, answers each by what its `x-answer` field asks for (a well-formed answer by
//! default, after 300 ms for `slow`, or a malformed one, to test what the edge refuses on the way back), and answers
//! health checks without recording them.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The answers a request can ask for with `x-answer: NAME`.
pub fn answer(name: &str) -> &'static [u8] {
    match name {
        "two-lengths" => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
        "length-and-chunked" => {
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
        }
        "gzip-coding" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nok",
        "bad-length" => b"HTTP/1.1 200 OK\r\nContent-Length: 2x\r\n\r\nok",
        "bare-lf" => b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
        "obs-fold" => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: a\r\n b\r\n\r\nok",
        "space-before-colon" => b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nok",
        "nul-in-field" => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: a\0b\r\n\r\nok",
        "bad-version" => b"HTTP/1.2 200 OK\r\nContent-Length: 2\r\n\r\nok",
        "unasked-101" => b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
        "bad-chunk" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n",
        "chunked-ext" => {
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2;x=y\r\nok\r\n3\r\n!!!\r\n0\r\nX-T: 1\r\n\r\n"
        }
        "close-delimited" => b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil close",
        "http10" => b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
        "interim" => b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        "own-request-id" => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Request-Id: shard-made\r\nKeep-Alive: timeout=5\r\n\r\nok",
        "backend-headers" => {
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Served-By: jira-us-east-1/b1\r\nX-Tenant-Shard: jira-us-east-1\r\nX_Tenant_Id: acme\r\nX-Forwarded-For: 10.1.2.3\r\nServer: nginx/1.25\r\nX-Kept: yes\r\n\r\nok"
        }
        "no-answer" => b"",
        _ => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    }
}

/// Whether the connection stays open after the answer `name`.
fn keeps_open(name: &str) -> bool {
    matches!(
        name,
        "" | "ok" | "slow" | "own-request-id" | "backend-headers" | "interim" | "chunked-ext" | "stale"
    )
}

/// A running recording backend.
pub struct Recorder {
    pub port: u16,
    seen: Arc<Mutex<Vec<Vec<u8>>>>,
    accepted: Arc<Mutex<usize>>,
}

impl Recorder {
    pub async fn start() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(Mutex::new(0));
        let (s, a) = (seen.clone(), accepted.clone());
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                *a.lock().unwrap() += 1;
                tokio::spawn(serve(conn, s.clone()));
            }
        });
        Recorder { port, seen, accepted }
    }

    /// Every request recorded since the last call, in arrival order.
    pub fn take(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }

    /// Connections accepted so far (health checks included).
    pub fn connections(&self) -> usize {
        *self.accepted.lock().unwrap()
    }
}

async fn serve(mut conn: TcpStream, seen: Arc<Mutex<Vec<Vec<u8>>>>) {
    let mut buf = Vec::new();
    let mut served = 0;
    loop {
        let Some((len, answer_name, health)) = next_request(&mut conn, &mut buf).await else {
            return;
        };
        let raw: Vec<u8> = buf.drain(..len).collect();
        if !health {
            seen.lock().unwrap().push(raw);
        }
        served += 1;
        if answer_name == "stale" && served > 1 {
            // As a backend that timed out an idle connection just as a request arrived.
            return;
        }
        if answer_name == "slow" {
            // A request that takes a while: in flight when a test stops the edge.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let answer = if health {
            &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"[..]
        } else {
            answer(&answer_name)
        };
        if answer.is_empty() {
            return;
        }
        if conn.write_all(answer).await.is_err() {
            return;
        }
        if !health && !keeps_open(&answer_name) {
            // A malformed or close-delimited answer ends the connection.
            return;
        }
    }
}

/// Reads one whole request (head and body, as the edge framed it) into `buf`: its length, the
/// answer it asks for, and whether it is a health check.
async fn next_request(conn: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(usize, String, bool)> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        if let Ok(httparse::Status::Complete(head)) = req.parse(buf) {
            let field = |name: &str| {
                req.headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(name))
                    .map(|h| String::from_utf8_lossy(h.value).into_owned())
            };
            let health = req.path == Some("/healthz");
            let answer = field("x-answer").unwrap_or_default();
            let body_end = if let Some(n) = field("content-length") {
                head + n.trim().parse::<usize>().ok()?
            } else if field("transfer-encoding").is_some() {
                // The edge re-frames chunked bodies without trailers: the body ends at the last chunk.
                loop {
                    if let Some(end) = find(&buf[head..], b"0\r\n\r\n")
                        .filter(|&at| at == 0 || buf[head + at - 2..head + at] == *b"\r\n")
                    {
                        break head + end + 5;
                    }
                    read_more(conn, buf).await?;
                }
            } else {
                head
            };
            while buf.len() < body_end {
                read_more(conn, buf).await?;
            }
            return Some((body_end, answer, health));
        }
        read_more(conn, buf).await?;
    }
}

async fn read_more(conn: &mut TcpStream, buf: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 16 * 1024];
    match tokio::time::timeout(Duration::from_secs(10), conn.read(&mut chunk)).await {
        Ok(Ok(n)) if n > 0 => {
            buf.extend_from_slice(&chunk[..n]);
            Some(())
        }
        _ => None,
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A backend for large bodies that keeps none of them: `POST /sink` reads its body (length or
/// chunked) and answers how many bytes it got; `GET /source/N` answers N bytes, chunked.
pub struct Sink {
    pub port: u16,
}

impl Sink {
    pub async fn start() -> Sink {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(sink(conn));
            }
        });
        Sink { port }
    }
}

async fn sink(mut conn: TcpStream) {
    let mut buf = Vec::new();
    loop {
        let (head, path, length, chunked) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut headers);
            if let Ok(httparse::Status::Complete(head)) = req.parse(&buf) {
                let field = |name: &str| {
                    req.headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .map(|h| String::from_utf8_lossy(h.value).into_owned())
                };
                let length = field("content-length").and_then(|v| v.parse::<u64>().ok());
                break (
                    head,
                    req.path.unwrap_or("").to_owned(),
                    length,
                    field("transfer-encoding").is_some(),
                );
            }
            if read_more(&mut conn, &mut buf).await.is_none() {
                return;
            }
        };
        buf.drain(..head);
        let mut got = 0u64;
        if let Some(n) = length {
            while got < n {
                if buf.is_empty() && read_more(&mut conn, &mut buf).await.is_none() {
                    return;
                }
                let take = (n - got).min(buf.len() as u64) as usize;
                buf.drain(..take);
                got += take as u64;
            }
        } else if chunked {
            // Sizes and data, decoded just enough to count and find the end.
            loop {
                let line_end = loop {
                    if let Some(at) = find(&buf, b"\r\n") {
                        break at;
                    }
                    if read_more(&mut conn, &mut buf).await.is_none() {
                        return;
                    }
                };
                let size = usize::from_str_radix(std::str::from_utf8(&buf[..line_end]).unwrap(), 16).unwrap();
                buf.drain(..line_end + 2);
                let mut left = size + 2;
                while left > 0 {
                    if buf.is_empty() && read_more(&mut conn, &mut buf).await.is_none() {
                        return;
                    }
                    let take = left.min(buf.len());
                    buf.drain(..take);
                    left -= take;
                }
                got += size as u64;
                if size == 0 {
                    break;
                }
            }
        }
        if let Some(n) = path.strip_prefix("/source/") {
            let total: usize = n.parse().unwrap();
            let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
            if conn.write_all(head).await.is_err() {
                return;
            }
            let piece = vec![b'x'; 64 * 1024];
            let mut left = total;
            while left > 0 {
                let n = left.min(piece.len());
                let frame = [format!("{n:x}\r\n").as_bytes(), &piece[..n], b"\r\n"].concat();
                if conn.write_all(&frame).await.is_err() {
                    return;
                }
                left -= n;
            }
            if conn.write_all(b"0\r\n\r\n").await.is_err() {
                return;
            }
        } else {
            let body = got.to_string();
            let answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
            if conn.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
        }
    }
}
