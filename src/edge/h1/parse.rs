//! Strict HTTP/1.1 message heads (RFC 9112 §2.2, §3, §5, §6; RFC 9110 §5.5).
//!
//! `httparse` reads the structure; this module adds what it leaves to its caller: the framing
//! rules (one `Transfer-Encoding: chunked` or one decimal `Content-Length`, never both), no bare
//! CR or LF anywhere in a head, the request-target forms, and which header lines the edge drops
//! on the way through. Everything is kept as byte ranges of the caller's buffer, so a head is
//! parsed once and forwarded as the bytes that arrived.

use std::mem::MaybeUninit;
use std::ops::Range;

/// Most header fields in one head; more is a 431.
pub const MAX_HEADERS: usize = 100;

/// Size limits of a request head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest request target; longer is a 414.
    pub max_target: usize,
    /// Longest head (request line, fields and the empty line); longer is a 431.
    pub max_head: usize,
}

/// How a message's body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the sender closes (responses only).
    Close,
}

/// A head the edge will not take: the status to answer and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// 400, 414 or 431 for requests; 502 for responses.
    pub status: u16,
    /// Said in the answer's JSON body.
    pub reason: &'static str,
}

const fn refuse(status: u16, reason: &'static str) -> Refusal {
    Refusal { status, reason }
}

/// A head is complete, or more bytes are needed.
#[derive(Debug)]
pub enum Parsed<T> {
    /// The head ends inside the buffer.
    Complete(T),
    /// Not yet.
    Partial,
}

/// Requests that are valid but rare, and go to the general proxy instead of the lean path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Special {
    /// An HTTP/1.0 client.
    Http10,
    /// `Expect` (100-continue).
    Expect,
    /// `Upgrade` named in `Connection` (WebSocket).
    Upgrade,
    /// `CONNECT` (authority form).
    Connect,
    /// `OPTIONS *`.
    Asterisk,
    /// A target that is not UTF-8 (forwarded byte for byte by the general proxy).
    NotUtf8,
}

/// A parsed request head; ranges index the buffer it was parsed from.
#[derive(Debug)]
pub struct RequestHead {
    /// Bytes of the head, the final empty line included.
    pub len: usize,
    /// The method.
    pub method: http::Method,
    /// Where the request line starts (empty lines before it are skipped) and where its CRLF is.
    pub line: Range<usize>,
    /// The path of the target (`/` when an absolute-form target has none: then empty).
    pub path: Range<usize>,
    /// The query, without its `?`.
    pub query: Option<Range<usize>>,
    /// The authority of an absolute-form target.
    pub authority: Option<Range<usize>>,
    /// The value of the one `Host` field.
    pub host: Option<Range<usize>>,
    /// More than one `Host` field.
    pub hosts: u8,
    /// How the body is delimited.
    pub framing: Framing,
    /// The client asked to close after this exchange.
    pub close: bool,
    /// Valid, but handed to the general proxy.
    pub special: Option<Special>,
    /// Where the header fields start.
    pub fields: usize,
}

/// A parsed response head; ranges index the buffer it was parsed from.
#[derive(Debug)]
pub struct ResponseHead {
    /// Bytes of the head, the final empty line included.
    pub len: usize,
    /// The status code.
    pub status: u16,
    /// The status line, without its CRLF.
    pub line: Range<usize>,
    /// Where the header fields start.
    pub fields: usize,
    /// How the body is delimited, given the request's method.
    pub framing: Framing,
    /// The connection can carry another request afterwards.
    pub keep_alive: bool,
    /// The value of `tenant-moved`, the shard's ownership fence.
    pub tenant_moved: Option<Range<usize>>,
}

/// Parses a request head from the start of `buf`. Header lines the edge must not forward are
/// appended to `drop` (cleared first) as ranges of `buf`, in order.
pub fn request(
    buf: &[u8],
    limits: Limits,
    drop: &mut Vec<Range<usize>>,
) -> Result<Parsed<RequestHead>, Refusal> {
    drop.clear();
    let mut storage = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut storage) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return partial_request(buf, limits),
        Err(httparse::Error::TooManyHeaders) => return Err(refuse(431, "too many header fields")),
        Err(httparse::Error::Version) => return Err(refuse(400, "unsupported HTTP version")),
        Err(httparse::Error::Token | httparse::Error::NewLine) if buf.len() > limits.max_head => {
            return Err(refuse(431, "request head too large"))
        }
        Err(httparse::Error::Token) if has_high_bytes_in_line(buf) => return not_utf8(buf, limits, drop),
        Err(_) => return Err(refuse(400, "malformed request head")),
    };
    if len > limits.max_head {
        return Err(refuse(431, "request head too large"));
    }
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(refuse(400, "malformed request line"));
    };
    if target.len() > limits.max_target {
        return Err(refuse(414, "request target too long"));
    }
    let at = |s: &[u8]| offset(buf, s);
    let target_at = at(target.as_bytes());
    let line_start = at(method.as_bytes());
    // httparse ends the line at its CRLF: the first field follows it.
    let fields = match req.headers.first() {
        Some(h) => at(h.name.as_bytes()),
        None => len - 2,
    };
    let names = req.headers.iter().map(|h| at(h.name.as_bytes()));
    crlf_only(buf, line_start, fields, names, len)
        .map_err(|()| refuse(400, "bare LF in the request head"))?;
    let method = http::Method::from_bytes(method.as_bytes()).map_err(|_| refuse(400, "malformed method"))?;
    let mut special = (version == 0).then_some(Special::Http10);
    let form = target_form(target.as_bytes(), &method)?;
    let (path, query, authority) = match form {
        Form::Origin { path, query } => (path, query, None),
        Form::Absolute {
            path,
            query,
            authority,
        } => (path, query, Some(authority)),
        Form::Asterisk => {
            special = special.or(Some(Special::Asterisk));
            (0..0, None, None)
        }
        Form::Authority => {
            special = special.or(Some(Special::Connect));
            (0..0, None, None)
        }
    };
    let shift = |r: Range<usize>| r.start + target_at..r.end + target_at;

    let mut fields_seen = Fields::default();
    for (i, h) in req.headers.iter().enumerate() {
        let name = h.name.as_bytes();
        let start = at(name);
        let end = req
            .headers
            .get(i + 1)
            .map_or(len - 2, |next| at(next.name.as_bytes()));
        match classify(name) {
            Field::Host => {
                fields_seen.hosts = fields_seen.hosts.saturating_add(1);
                let v = at(h.value);
                fields_seen.host = Some(v..v + h.value.len());
            }
            Field::ContentLength => {
                if fields_seen.length.is_some() {
                    return Err(refuse(400, "more than one Content-Length"));
                }
                fields_seen.length =
                    Some(content_length(h.value.trim_ascii()).ok_or(refuse(400, "invalid Content-Length"))?);
            }
            Field::TransferEncoding => {
                if fields_seen.chunked {
                    return Err(refuse(400, "more than one Transfer-Encoding"));
                }
                if !h.value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                    return Err(refuse(400, "Transfer-Encoding other than chunked"));
                }
                fields_seen.chunked = true;
                // The edge decodes and re-encodes the body; the field goes through as it came.
            }
            Field::Connection => {
                connection_tokens(h.value, &mut fields_seen)
                    .map_err(|()| refuse(400, "malformed Connection"))?;
                drop.push(start..end);
            }
            Field::Expect => special = special.or(Some(Special::Expect)),
            Field::Upgrade => {
                fields_seen.upgrade = true;
                drop.push(start..end);
            }
            Field::HopByHop | Field::RequestId | Field::Internal => drop.push(start..end),
            Field::ServedBy | Field::Server | Field::Other => {}
        }
    }
    if fields_seen.named {
        // Fields named by `Connection` are hop-by-hop too: a second pass, rare.
        drop_named(buf, &req.headers[..], len, drop);
    }
    if fields_seen.chunked && fields_seen.length.is_some() {
        return Err(refuse(400, "both Transfer-Encoding and Content-Length"));
    }
    if fields_seen.chunked && version == 0 {
        return Err(refuse(400, "Transfer-Encoding in an HTTP/1.0 request"));
    }
    if fields_seen.upgrade && fields_seen.conn_upgrade {
        special = special.or(Some(Special::Upgrade));
    }
    if version == 1 && fields_seen.hosts == 0 {
        return Err(refuse(400, "missing Host header"));
    }
    let framing = match (fields_seen.chunked, fields_seen.length) {
        (true, _) => Framing::Chunked,
        (false, Some(n)) if n > 0 => Framing::Length(n),
        _ => Framing::Empty,
    };
    Ok(Parsed::Complete(RequestHead {
        len,
        method,
        line: line_start..fields - 2,
        path: shift(path),
        query: query.map(shift),
        authority: authority.map(shift),
        host: fields_seen.host,
        hosts: fields_seen.hosts,
        framing,
        close: fields_seen.close || (version == 0 && !fields_seen.keep_alive),
        special,
        fields,
    }))
}

/// Whether the request line has bytes above 0x7f (httparse takes only UTF-8 targets).
fn has_high_bytes_in_line(buf: &[u8]) -> bool {
    let line = memchr::memchr(b'\n', buf).unwrap_or(buf.len());
    buf[..line].iter().any(|&b| b >= 0x80)
}

/// A target with bytes that are not UTF-8 (Latin-1 from old clients): the head is checked with
/// those bytes masked, and the request goes to the general proxy, which forwards the target
/// byte for byte. Rare, so the copy is fine.
fn not_utf8(
    buf: &[u8],
    limits: Limits,
    drop: &mut Vec<Range<usize>>,
) -> Result<Parsed<RequestHead>, Refusal> {
    let line = memchr::memchr(b'\n', buf).unwrap_or(buf.len());
    let mut masked = buf.to_vec();
    for b in &mut masked[..line] {
        if *b >= 0x80 {
            *b = b'x';
        }
    }
    // Same length, so every range found in the copy holds for `buf`.
    match request(&masked, limits, drop)? {
        Parsed::Complete(mut head) => {
            head.special = Some(Special::NotUtf8);
            Ok(Parsed::Complete(head))
        }
        Parsed::Partial => Ok(Parsed::Partial),
    }
}

/// A request head is incomplete: wait for more, unless it is already over a limit.
fn partial_request(buf: &[u8], limits: Limits) -> Result<Parsed<RequestHead>, Refusal> {
    if buf.len() <= limits.max_head {
        return Ok(Parsed::Partial);
    }
    // Still inside the request line: the target is what is too long.
    let line = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
    if line > limits.max_target {
        Err(refuse(414, "request target too long"))
    } else {
        Err(refuse(431, "request head too large"))
    }
}

/// Parses a response head from the start of `buf`, for a request with `method`. Header lines
/// the edge does not pass to the client are appended to `drop` (cleared first): hop-by-hop
/// ones, the shard's request id, the backend headers unless `show_backend`, and its `Server`
/// unless `keep_server`.
pub fn response(
    buf: &[u8],
    max_head: usize,
    method: &http::Method,
    drop: &mut Vec<Range<usize>>,
    show_backend: bool,
    keep_server: bool,
) -> Result<Parsed<ResponseHead>, Refusal> {
    drop.clear();
    let bad = |reason| refuse(502, reason);
    let mut storage = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut resp,
        buf,
        &mut storage,
    ) {
        Ok(httparse::Status::Complete(len)) if len <= max_head => len,
        Ok(httparse::Status::Partial) if buf.len() <= max_head => return Ok(Parsed::Partial),
        Ok(_) => return Err(bad("response head too large")),
        Err(_) => return Err(bad("malformed response head")),
    };
    let (Some(version), Some(status)) = (resp.version, resp.code) else {
        return Err(bad("malformed status line"));
    };
    let at = |s: &[u8]| offset(buf, s);
    let fields = match resp.headers.first() {
        Some(h) => at(h.name.as_bytes()),
        None => len - 2,
    };
    // Empty lines may precede the status line of a response only in a broken peer.
    if !buf.starts_with(b"HTTP/") {
        return Err(bad("malformed status line"));
    }
    let names = resp.headers.iter().map(|h| at(h.name.as_bytes()));
    crlf_only(buf, 0, fields, names, len).map_err(|()| bad("bare LF in the response head"))?;
    let mut seen = Fields::default();
    let mut tenant_moved = None;
    for (i, h) in resp.headers.iter().enumerate() {
        let name = h.name.as_bytes();
        let start = at(name);
        let end = resp
            .headers
            .get(i + 1)
            .map_or(len - 2, |next| at(next.name.as_bytes()));
        match classify(name) {
            Field::ContentLength => {
                if seen.length.is_some() {
                    return Err(bad("more than one Content-Length in the response"));
                }
                seen.length = Some(
                    content_length(h.value.trim_ascii())
                        .ok_or(bad("invalid Content-Length in the response"))?,
                );
            }
            Field::TransferEncoding => {
                if seen.chunked || !h.value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                    return Err(bad("Transfer-Encoding other than one chunked in the response"));
                }
                seen.chunked = true;
            }
            Field::Connection => {
                connection_tokens(h.value, &mut seen)
                    .map_err(|()| bad("malformed Connection in the response"))?;
                drop.push(start..end);
            }
            // The edge's own request id replaces any the shard sent.
            Field::Upgrade | Field::HopByHop | Field::RequestId => drop.push(start..end),
            Field::Internal | Field::ServedBy if !show_backend => drop.push(start..end),
            Field::Server if !keep_server => drop.push(start..end),
            Field::Host
            | Field::Expect
            | Field::Internal
            | Field::ServedBy
            | Field::Server
            | Field::Other => {
                if name.eq_ignore_ascii_case(b"tenant-moved") {
                    let v = at(h.value);
                    tenant_moved = Some(v..v + h.value.len());
                }
            }
        }
    }
    if seen.named {
        drop_named(buf, &resp.headers[..], len, drop);
    }
    if seen.chunked && seen.length.is_some() {
        return Err(bad("both Transfer-Encoding and Content-Length in the response"));
    }
    let bodiless =
        *method == http::Method::HEAD || (100..200).contains(&status) || status == 204 || status == 304;
    let framing = match (bodiless, seen.chunked, seen.length) {
        (true, _, _) => Framing::Empty,
        (false, true, _) => Framing::Chunked,
        (false, false, Some(0)) => Framing::Empty,
        (false, false, Some(n)) => Framing::Length(n),
        (false, false, None) => Framing::Close,
    };
    let keep_alive = version == 1 && !seen.close && framing != Framing::Close;
    Ok(Parsed::Complete(ResponseHead {
        len,
        status,
        line: 0..fields - 2,
        fields,
        framing,
        keep_alive,
        tenant_moved,
    }))
}

/// What a head's fields said about framing and the connection.
#[derive(Default)]
struct Fields {
    hosts: u8,
    host: Option<Range<usize>>,
    length: Option<u64>,
    chunked: bool,
    close: bool,
    keep_alive: bool,
    upgrade: bool,
    conn_upgrade: bool,
    /// `Connection` names a field other than close, keep-alive and upgrade.
    named: bool,
}

/// The fields the edge treats specially.
enum Field {
    Host,
    ContentLength,
    TransferEncoding,
    Connection,
    Expect,
    Upgrade,
    /// `keep-alive`, `proxy-connection`, `te`, `trailer`: hop by hop, never forwarded.
    HopByHop,
    /// `x-request-id`: the edge's own replaces it, both ways.
    RequestId,
    /// The edge's own request fields, which a client's copy must not reach a shard as:
    /// `x-tenant-*`, `x-forwarded-*`, `forwarded`, `x-real-ip` (and an `x_request_id`), with `_`
    /// read as `-` (CGI, WSGI, Rack and PHP read `x_tenant_id` as `HTTP_X_TENANT_ID`). Dropped
    /// from requests; from answers too, with `x-served-by`, unless the edge shows backend
    /// headers.
    Internal,
    /// `x-served-by`: which backend answered, for debugging only.
    ServedBy,
    /// `server`: the shard's, a backend header too (or replaced by the edge's own).
    Server,
    Other,
}

fn classify(name: &[u8]) -> Field {
    let is = |n: &[u8]| name.eq_ignore_ascii_case(n);
    match name.len() {
        4 if is(b"host") => Field::Host,
        14 if is(b"content-length") => Field::ContentLength,
        17 if is(b"transfer-encoding") => Field::TransferEncoding,
        10 if is(b"connection") => Field::Connection,
        10 if is(b"keep-alive") => Field::HopByHop,
        16 if is(b"proxy-connection") => Field::HopByHop,
        2 if is(b"te") => Field::HopByHop,
        7 if is(b"trailer") => Field::HopByHop,
        7 if is(b"upgrade") => Field::Upgrade,
        6 if is(b"expect") => Field::Expect,
        12 if is(b"x-request-id") => Field::RequestId,
        11 if alias_of(name, b"x-served-by") => Field::ServedBy,
        6 if is(b"server") => Field::Server,
        _ if internal(name) => Field::Internal,
        _ => Field::Other,
    }
}

/// Whether `name` is one of the edge's own request fields, with `_` read as `-` (see
/// [`Field::Internal`]): the one rule of both request paths.
pub fn internal(name: &[u8]) -> bool {
    match name.len() {
        9 => alias_of(name, b"forwarded") || alias_of(name, b"x-real-ip"),
        12 => alias_of(name, b"x-request-id"),
        n if n > 9 && alias_of(&name[..9], b"x-tenant-") => true,
        n if n > 12 && alias_of(&name[..12], b"x-forwarded-") => true,
        _ => false,
    }
}

/// `name` is `want` (lower case), case-insensitively and with `_` for `-`.
fn alias_of(name: &[u8], want: &[u8]) -> bool {
    name.len() == want.len()
        && name
            .iter()
            .zip(want)
            .all(|(&c, &w)| c.eq_ignore_ascii_case(&w) || (w == b'-' && c == b'_'))
}

/// Reads the tokens of one `Connection` field.
fn connection_tokens(value: &[u8], seen: &mut Fields) -> Result<(), ()> {
    for token in value.split(|&b| b == b',') {
        let token = token.trim_ascii();
        if token.is_empty() {
            continue;
        }
        if !token.iter().all(|&b| is_tchar(b)) {
            return Err(());
        }
        if token.eq_ignore_ascii_case(b"close") {
            seen.close = true;
        } else if token.eq_ignore_ascii_case(b"keep-alive") {
            seen.keep_alive = true;
        } else if token.eq_ignore_ascii_case(b"upgrade") {
            seen.conn_upgrade = true;
        } else {
            seen.named = true;
        }
    }
    Ok(())
}

/// Adds to `drop` every field line a `Connection` field names (those of a head of `len` bytes
/// parsed from `buf`), keeping `drop` in order.
fn drop_named(buf: &[u8], headers: &[httparse::Header<'_>], len: usize, drop: &mut Vec<Range<usize>>) {
    for (i, h) in headers.iter().enumerate() {
        let start = offset(buf, h.name.as_bytes());
        let end = headers
            .get(i + 1)
            .map_or(len - 2, |next| offset(buf, next.name.as_bytes()));
        if named_in_connection(headers, h.name.as_bytes()) && !drop.iter().any(|d| d.start == start) {
            drop.push(start..end);
        }
    }
    drop.sort_by_key(|r| r.start);
}

/// Whether a `Connection` field among `headers` names `name`.
fn named_in_connection(headers: &[httparse::Header<'_>], name: &[u8]) -> bool {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .flat_map(|h| h.value.split(|&b| b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(name))
}

/// One decimal number of at most 18 digits: no sign, no list, no space inside.
fn content_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 18 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(value.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0')))
}

/// RFC 9110 §5.6.2 token characters.
pub fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Every line of a head ends in CRLF, never a bare LF (httparse takes either, and refuses a
/// bare CR itself). httparse ends a line at every LF and field values cannot hold one, so the
/// LFs of a head are exactly: those of the empty lines before the start line (`start`), the
/// one before each field (`fields` is the first field, `names` where each starts), the
/// last field's, and the empty line's. Checking those bytes is all it takes, without a scan of the head.
fn crlf_only(
    buf: &[u8],
    start: usize,
    fields: usize,
    names: impl Iterator<Item = usize>,
    len: usize,
) -> Result<(), ()> {
    let crlf = |end: usize| end >= 2 && buf[end - 2..end] == *b"\r\n";
    let leading = &buf[..start];
    if leading.len() % 2 != 0 || leading.chunks(2).any(|pair| pair != b"\r\n") {
        return Err(());
    }
    if !crlf(fields) || !crlf(len - 2) || !crlf(len) {
        return Err(());
    }
    for name in names {
        if !crlf(name) {
            return Err(());
        }
    }
    Ok(())
}

/// The forms of a request target (RFC 9112 §3.2), as ranges of the target.
enum Form {
    Origin {
        path: Range<usize>,
        query: Option<Range<usize>>,
    },
    Absolute {
        authority: Range<usize>,
        path: Range<usize>,
        query: Option<Range<usize>>,
    },
    Authority,
    Asterisk,
}

fn target_form(target: &[u8], method: &http::Method) -> Result<Form, Refusal> {
    if target.contains(&b'#') {
        return Err(refuse(400, "fragment in the request target"));
    }
    if *method == http::Method::CONNECT {
        return Ok(Form::Authority);
    }
    if target == b"*" {
        return if *method == http::Method::OPTIONS {
            Ok(Form::Asterisk)
        } else {
            Err(refuse(400, "malformed request target"))
        };
    }
    let split = |from: usize| {
        let rest = &target[from..];
        match memchr::memchr(b'?', rest) {
            Some(q) => (from..from + q, Some(from + q + 1..target.len())),
            None => (from..target.len(), None),
        }
    };
    if target.first() == Some(&b'/') {
        let (path, query) = split(0);
        return Ok(Form::Origin { path, query });
    }
    let scheme = if target.len() > 7 && target[..7].eq_ignore_ascii_case(b"http://") {
        7
    } else if target.len() > 8 && target[..8].eq_ignore_ascii_case(b"https://") {
        8
    } else {
        return Err(refuse(400, "malformed request target"));
    };
    let rest = &target[scheme..];
    let end = rest
        .iter()
        .position(|&b| b == b'/' || b == b'?')
        .map_or(target.len(), |p| scheme + p);
    let authority = scheme..end;
    if authority.is_empty() || target[authority.clone()].contains(&b'@') {
        return Err(refuse(400, "malformed authority"));
    }
    let (path, query) = if target.get(end) == Some(&b'?') {
        (end..end, Some(end + 1..target.len()))
    } else {
        split(end)
    };
    Ok(Form::Absolute {
        authority,
        path,
        query,
    })
}

/// Where `part`, a slice of `buf`, starts in it.
fn offset(buf: &[u8], part: &[u8]) -> usize {
    (part.as_ptr() as usize).saturating_sub(buf.as_ptr() as usize)
}
