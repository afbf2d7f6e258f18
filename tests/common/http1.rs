//! A raw HTTP/1.1 client for the tests of the edge's own HTTP/1.1 path: it sends exactly the
//! bytes it is given and reads answers as they come, with whether the edge closed afterwards.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One answer as the client read it.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

#[derive(Debug)]
pub struct Answers {
    pub responses: Vec<Response>,
    /// The edge closed the connection after them.
    pub closed: bool,
}

/// Sends `raw` and reads `want` answers, then whether the connection closed (within 300 ms).
pub async fn exchange(port: u16, raw: &[u8], want: usize) -> Answers {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    conn.write_all(raw).await.unwrap();
    read_answers(&mut conn, want).await
}

pub async fn read_answers(conn: &mut TcpStream, want: usize) -> Answers {
    let mut buf = Vec::new();
    let mut responses = Vec::new();
    let mut closed = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        while let Some((r, used)) = parse_response(&buf) {
            responses.push(r);
            buf.drain(..used);
        }
        if responses.len() >= want {
            break;
        }
        let mut chunk = [0u8; 64 * 1024];
        match tokio::time::timeout_at(deadline, conn.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => panic!("no answer in time; have {responses:?}"),
        }
    }
    if !closed {
        let mut chunk = [0u8; 1024];
        closed = matches!(
            tokio::time::timeout(Duration::from_millis(300), conn.read(&mut chunk)).await,
            Ok(Ok(0)) | Ok(Err(_))
        );
    }
    Answers { responses, closed }
}

/// One whole answer at the start of `buf` (content-length, chunked, or none for errors).
fn parse_response(buf: &[u8]) -> Option<(Response, usize)> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(head) = resp.parse(buf).ok()? else {
        return None;
    };
    let field = |name: &str| {
        resp.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).into_owned())
    };
    let status = resp.code?;
    let text = String::from_utf8_lossy(&buf[..head]).into_owned();
    if let Some(n) = field("content-length") {
        let end = head + n.parse::<usize>().ok()?;
        return (buf.len() >= end).then(|| {
            (
                Response {
                    status,
                    head: text,
                    body: buf[head..end].to_vec(),
                },
                end,
            )
        });
    }
    if field("transfer-encoding").is_some() {
        let rest = &buf[head..];
        let end = rest.windows(5).position(|w| w == b"0\r\n\r\n")? + 5;
        return Some((
            Response {
                status,
                head: text,
                body: rest[..end].to_vec(),
            },
            head + end,
        ));
    }
    Some((
        Response {
            status,
            head: text,
            body: Vec::new(),
        },
        head,
    ))
}

/// Reads exactly one answer (an interim one included) and nothing after it: for exchanges where
/// the client waits for each answer before it sends more.
pub async fn read_response(conn: &mut TcpStream) -> Response {
    let mut buf = Vec::new();
    loop {
        if let Some((r, _)) = parse_response(&buf) {
            return r;
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut chunk))
            .await
            .expect("an answer in time")
            .expect("a read");
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Sends `raw` and reads until the edge closes the connection (within 5 s): everything it sent.
pub async fn until_closed(port: u16, raw: &[u8]) -> String {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
    conn.write_all(raw).await.expect("write");
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut all))
        .await
        .expect("closed in time")
        .expect("a read");
    String::from_utf8_lossy(&all).into_owned()
}
