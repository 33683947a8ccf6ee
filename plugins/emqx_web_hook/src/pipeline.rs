//! HTTP/1.1 pipelining (EMQX 4.3's `web.hook.enable_pipelining`, on by default there and
//! here). A lane keeps one connection to the service and writes its requests one after
//! another without waiting for each answer, up to `depth` unanswered; the service answers
//! them in the order it read them (RFC 9112 §9.3.2). In a burst, many requests leave in one
//! write and many answers arrive in one read, so the sending thread and the service make a few
//! system calls for a run of events instead of two or more for each.
//!
//! The rules this follows:
//! - a new connection carries one request until its answer shows that the connection
//!   persists (HTTP/1.1 without `connection: close`), as RFC 9112 §9.3.2 asks;
//! - an answer with `connection: close` (or one whose body ends with the connection) ends
//!   the connection after it: the service did not read the requests written after that one
//!   (RFC 9112 §9.6), so they are written again, in order, on a new connection;
//! - a connection that fails or closes otherwise fails its unanswered requests, and so does
//!   an oldest unanswered request older than `request_timeout`: counted as failed, not sent
//!   again (the service may have acted on them), as when requests go one at a time;
//! - a write that fails (a service that closed without reading what followed its
//!   `connection: close` answer makes the next write fail) ends the writing, not the
//!   connection: the answers the service sent before are still read;
//! - a service that says how long it keeps an idle connection (`keep-alive: timeout=N`, as
//!   Node.js does, 5 s by default) has it closed by this side first, once it has been idle
//!   [`idle_limit`] of that: a request written at the moment the service closes the
//!   connection would be lost (it fails, and a POST is not written again when it may have
//!   been read), and a request on a connection this side closed first is never in doubt.
//!
//! Over `https://`, each connection is TLS with the settings of `tls`.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::Write as _;
use std::time::{Duration, Instant};

use base64::Engine as _;
use http::header::HeaderMap;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// The most header lines an answer may have.
const MAX_HEADERS: usize = 64;

/// A connection to the service: TCP, or TLS over it.
pub(crate) trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}

impl<S: AsyncRead + AsyncWrite + Send + Unpin> Stream for S {}

/// Where the requests go, and the part of each request that never changes.
pub(crate) struct Target {
    /// The host to connect to (an IPv6 address without its brackets) and the port.
    host: String,
    port: u16,
    /// For `https://`: the TLS settings and the name the certificate must carry.
    tls: Option<(TlsConnector, ServerName<'static>)>,
    /// The most requests one connection has written and not yet had answered.
    depth: usize,
    /// The request line and the headers, up to and including `content-length: `.
    head: Vec<u8>,
}

impl Target {
    /// The target of `url` (`http://` or `https://`, with a host) with `headers` sent on
    /// every request, over TLS with `tls` for `https://`, up to `depth` requests at once on a
    /// connection. A user and password in the URL are sent as basic authentication, as
    /// HTTP clients do.
    pub(crate) fn new(
        url: &url::Url,
        headers: &HeaderMap,
        tls: &rustls::ClientConfig,
        depth: usize,
    ) -> Result<Target, String> {
        let no_host = || format!("{url} has no host");
        let host = match url.host().ok_or_else(no_host)? {
            url::Host::Domain(name) => name.to_owned(),
            url::Host::Ipv4(address) => address.to_string(),
            url::Host::Ipv6(address) => address.to_string(),
        };
        let port = url.port_or_known_default().ok_or_else(|| format!("{url} has no port"))?;
        let tls = match url.scheme() {
            "https" => Some((TlsConnector::from(std::sync::Arc::new(tls.clone())), crate::tls::server_name(&host)?)),
            _ => None,
        };
        let mut head = String::new();
        let path = &url[url::Position::BeforePath..url::Position::AfterQuery];
        let authority = match url.port() {
            Some(port) => format!("{}:{port}", url.host_str().ok_or_else(no_host)?),
            None => url.host_str().ok_or_else(no_host)?.to_owned(),
        };
        let _ = write!(head, "POST {path} HTTP/1.1\r\nhost: {authority}\r\n");
        let mut head = head.into_bytes();
        for (name, value) in headers {
            head.extend_from_slice(name.as_str().as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(value.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        if !url.username().is_empty() || url.password().is_some() {
            let decode = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned();
            let user = decode(url.username());
            let password = url.password().map(decode).unwrap_or_default();
            let credentials = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            head.extend_from_slice(format!("authorization: Basic {credentials}\r\n").as_bytes());
        }
        head.extend_from_slice(b"content-length: ");
        Ok(Target { host, port, tls, depth, head })
    }

    /// Appends the request that POSTs `body` to `out`.
    fn write_request(&self, out: &mut Vec<u8>, body: &[u8]) {
        out.extend_from_slice(&self.head);
        let _ = write!(out, "{}\r\n\r\n", body.len());
        out.extend_from_slice(body);
    }

    /// Opens a connection (and for `https://` makes the TLS handshake) within `timeout`.
    pub(crate) async fn connect(&self, timeout: Duration) -> Result<Connection, String> {
        let stream = match tokio::time::timeout(timeout, self.open()).await {
            Err(_) => return Err(format!("cannot connect to {}:{} within {timeout:?}", self.host, self.port)),
            Ok(Err(e)) => return Err(format!("cannot connect to {}:{}: {e}", self.host, self.port)),
            Ok(Ok(stream)) => stream,
        };
        let (reader, writer) = tokio::io::split(stream);
        Ok(Connection {
            reader,
            writer,
            out: Vec::new(),
            written: 0,
            input: Vec::new(),
            unanswered: VecDeque::new(),
            depth: self.depth,
            persists: false,
            broken: None,
            idle_limit: None,
            answered_at: Instant::now(),
        })
    }

    /// A new connection: TCP, and TLS over it for `https://`.
    async fn open(&self) -> std::io::Result<Box<dyn Stream>> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port)).await?;
        // Requests are written whole, many at a time: nothing gains from Nagle's delay.
        let _ = tcp.set_nodelay(true);
        Ok(match &self.tls {
            None => Box::new(tcp),
            Some((connector, name)) => Box::new(connector.connect(name.clone(), tcp).await?),
        })
    }
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// A request written (or being written) and not yet answered.
#[derive(Debug)]
pub(crate) struct Unanswered {
    /// When it was queued for writing: its `request_timeout` runs from then.
    pub(crate) since: Instant,
    /// Its body, to write it again on a new connection if the service closes this one
    /// before reading it.
    pub(crate) body: Vec<u8>,
}

/// One connection to the service.
pub(crate) struct Connection {
    pub(crate) reader: ReadHalf<Box<dyn Stream>>,
    pub(crate) writer: WriteHalf<Box<dyn Stream>>,
    /// Requests not yet written (from `written` on).
    pub(crate) out: Vec<u8>,
    pub(crate) written: usize,
    /// What was read and not yet parsed.
    pub(crate) input: Vec<u8>,
    /// Requests written or being written, oldest first.
    pub(crate) unanswered: VecDeque<Unanswered>,
    /// The most requests unanswered at once.
    depth: usize,
    /// An answer has shown that the connection persists: requests may be pipelined.
    persists: bool,
    /// Writing failed, for this reason: nothing more is written, and what the service
    /// answered before is still read (it may say `connection: close`).
    broken: Option<String>,
    /// How long the connection may stay idle before this side closes it (from the service's
    /// last `keep-alive: timeout=N`, see [`idle_limit`]); `None`: as long as the service
    /// keeps it.
    idle_limit: Option<Duration>,
    /// When the last answer arrived (or the connection was made): the service's idle timer
    /// runs from about then.
    answered_at: Instant,
}

/// What one read of answers came to.
#[derive(Debug, Default)]
pub(crate) struct Answers {
    /// The answered requests' outcomes, in order: `None` for a 2xx status, else why not.
    pub(crate) outcomes: Vec<Option<String>>,
    /// The connection is over.
    pub(crate) end: Option<End>,
}

/// Why a connection is over, and what becomes of its unanswered requests.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// The service said it reads nothing more (`connection: close`, or a body that ends
    /// with the connection): the requests still unanswered are written again.
    Unread,
    /// The connection failed, closed, timed out, or carried something that is not HTTP:
    /// the requests still unanswered failed, for this reason.
    Failed(String),
}

impl Connection {
    /// How many more requests may be written now.
    pub(crate) fn room(&self) -> usize {
        if self.broken.is_some() {
            return 0;
        }
        let depth = if self.persists { self.depth } else { 1 };
        depth.saturating_sub(self.unanswered.len())
    }

    /// Queues the request that POSTs `body` for writing.
    pub(crate) fn push(&mut self, target: &Target, body: Vec<u8>) {
        target.write_request(&mut self.out, &body);
        self.unanswered.push_back(Unanswered { since: Instant::now(), body });
    }

    /// Whether requests wait to be written (and can be).
    pub(crate) fn has_output(&self) -> bool {
        self.broken.is_none() && self.written < self.out.len()
    }

    /// Notes that writing failed for `why`. The connection is not over yet: answers the
    /// service sent before it closed may still be read, and one of them may say that the
    /// requests after it were not read (so they are written again, not failed).
    pub(crate) fn write_failed(&mut self, why: String) {
        self.broken = Some(why);
    }

    /// Notes that `n` more bytes of the requests were written.
    pub(crate) fn wrote(&mut self, n: usize) {
        self.written += n;
        if self.written == self.out.len() {
            self.out.clear();
            self.written = 0;
        }
    }

    /// When the oldest unanswered request runs out of time.
    pub(crate) fn deadline(&self, timeout: Duration) -> Option<tokio::time::Instant> {
        self.unanswered.front().map(|u| tokio::time::Instant::from_std(u.since + timeout))
    }

    /// When this side closes the connection, if it stays idle until then: only for a
    /// service that said how long it keeps an idle one, and only while no request waits
    /// to be written or answered.
    pub(crate) fn idle_deadline(&self) -> Option<tokio::time::Instant> {
        let idle = self.unanswered.is_empty() && self.out.is_empty();
        self.idle_limit.filter(|_| idle).map(|limit| tokio::time::Instant::from_std(self.answered_at + limit))
    }

    /// Parses the answers in what was read (`eof`: the service has closed its side), and
    /// matches them with the requests, oldest first.
    pub(crate) fn answers(&mut self, eof: bool) -> Answers {
        let mut answers = Answers::default();
        let mut at = 0;
        while answers.end.is_none() {
            match parse(&self.input[at..], eof) {
                Ok(Parsed::Incomplete) if eof && self.unanswered.is_empty() => answers.end = Some(End::Unread),
                Ok(Parsed::Incomplete) if eof => {
                    let why = self.broken.clone().unwrap_or_else(|| "the service closed the connection".to_owned());
                    answers.end = Some(End::Failed(why));
                }
                Ok(Parsed::Incomplete) => break,
                Ok(Parsed::Interim(n)) => at += n,
                Ok(Parsed::Answer { length, status, close, keep_alive }) => {
                    at += length;
                    if self.unanswered.pop_front().is_none() {
                        answers.end = Some(End::Failed("the service answered a request that was not sent".to_owned()));
                        break;
                    }
                    self.answered_at = Instant::now();
                    if let Some(kept) = keep_alive {
                        self.idle_limit = Some(idle_limit(kept));
                    }
                    answers.outcomes.push((!(200..300).contains(&status)).then(|| format!("HTTP {status}")));
                    if close {
                        answers.end = Some(End::Unread);
                    } else {
                        self.persists = true;
                    }
                }
                Err(why) => answers.end = Some(End::Failed(format!("the service's answer is not HTTP/1.1: {why}"))),
            }
        }
        self.input.drain(..at);
        answers
    }

    /// Reads more answers into the input buffer; `Ok(0)` at the end of the stream.
    pub(crate) async fn read(reader: &mut ReadHalf<Box<dyn Stream>>, input: &mut Vec<u8>) -> std::io::Result<usize> {
        input.reserve(4096);
        reader.read_buf(input).await
    }

    /// Writes some of the requests waiting; returns how many bytes went.
    pub(crate) async fn write(writer: &mut WriteHalf<Box<dyn Stream>>, out: &[u8]) -> std::io::Result<usize> {
        match writer.write(out).await? {
            0 => Err(std::io::ErrorKind::WriteZero.into()),
            n => Ok(n),
        }
    }
}

/// One step of reading answers.
#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    /// More bytes are needed.
    Incomplete,
    /// A 1xx answer of `n` bytes, not the final one.
    Interim(usize),
    /// A final answer of `length` bytes; `close`: the connection ends after it;
    /// `keep_alive`: how long the service keeps the connection idle, if it says
    /// (`keep-alive: timeout=N`).
    Answer { length: usize, status: u16, close: bool, keep_alive: Option<Duration> },
}

/// How long a connection may stay idle on this side when the service keeps an idle one
/// `kept`: a second less, or half of it when that is under two seconds. The margin covers
/// the time an answer takes to arrive and a request to reach the service, and timers
/// that fire late.
pub(crate) fn idle_limit(kept: Duration) -> Duration {
    kept.saturating_sub(Duration::from_secs(1).min(kept / 2))
}

/// The `timeout` of a `keep-alive` header's value (`timeout=5, max=1000`), in seconds.
fn keep_alive_timeout(value: &str) -> Option<Duration> {
    let (_, seconds) = value
        .split(',')
        .filter_map(|parameter| parameter.split_once('='))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("timeout"))?;
    seconds.trim().trim_matches('"').parse().ok().map(Duration::from_secs)
}

/// Parses the answer at the start of `input`; `eof`: no more bytes will come.
fn parse(input: &[u8], eof: bool) -> Result<Parsed, String> {
    if input.is_empty() {
        return Ok(Parsed::Incomplete);
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let head = match response.parse(input).map_err(|e| e.to_string())? {
        httparse::Status::Partial => return Ok(Parsed::Incomplete),
        httparse::Status::Complete(head) => head,
    };
    let status = response.code.unwrap_or_default();
    if (100..200).contains(&status) {
        return Ok(Parsed::Interim(head));
    }
    let mut content_length = None;
    let mut chunked = false;
    let mut close = response.version == Some(0);
    let mut keep_alive = None;
    for header in response.headers.iter() {
        let value = std::str::from_utf8(header.value).map_err(|_| format!("{} is not text", header.name))?;
        if header.name.eq_ignore_ascii_case("content-length") {
            let length: usize = value.trim().parse().map_err(|_| format!("content-length {value:?}"))?;
            if content_length.is_some_and(|l| l != length) {
                return Err("two different content-lengths".to_owned());
            }
            content_length = Some(length);
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.rsplit(',').next().is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
        } else if header.name.eq_ignore_ascii_case("keep-alive") {
            keep_alive = keep_alive_timeout(value).or(keep_alive);
        } else if header.name.eq_ignore_ascii_case("connection") {
            for option in value.split(',').map(str::trim) {
                if option.eq_ignore_ascii_case("close") {
                    close = true;
                } else if option.eq_ignore_ascii_case("keep-alive") && response.version == Some(0) {
                    close = false;
                }
            }
        }
    }
    let body = &input[head..];
    let body_length = if status == 204 || status == 304 {
        0
    } else if chunked {
        match chunked_length(body)? {
            Some(length) => length,
            None => return Ok(Parsed::Incomplete),
        }
    } else if let Some(length) = content_length {
        length
    } else {
        // The body runs to the end of the connection.
        return Ok(if eof {
            Parsed::Answer { length: input.len(), status, close: true, keep_alive }
        } else {
            Parsed::Incomplete
        });
    };
    if body.len() < body_length {
        return Ok(Parsed::Incomplete);
    }
    Ok(Parsed::Answer { length: head + body_length, status, close, keep_alive })
}

/// The length of the chunked body at the start of `body`, trailers included; `None` if it has
/// not all arrived.
fn chunked_length(body: &[u8]) -> Result<Option<usize>, String> {
    let mut at = 0;
    loop {
        let (size_line, size) = match httparse::parse_chunk_size(&body[at..]) {
            Ok(httparse::Status::Complete(chunk)) => chunk,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => return Err("a chunk size that is not hexadecimal".to_owned()),
        };
        at += size_line;
        if size == 0 {
            // Trailer lines, then an empty line.
            loop {
                let Some(end) = body[at..].windows(2).position(|w| w == b"\r\n") else {
                    return Ok(None);
                };
                at += end + 2;
                if end == 0 {
                    return Ok(Some(at));
                }
            }
        }
        let size = usize::try_from(size).map_err(|_| "a chunk too large".to_owned())?;
        at = match at.checked_add(size).and_then(|a| a.checked_add(2)) {
            Some(end) if end <= body.len() => end,
            Some(_) => return Ok(None),
            None => return Err("a chunk too large".to_owned()),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(text: &str) -> Result<Parsed, String> {
        parse(text.as_bytes(), false)
    }

    #[test]
    fn answers_are_framed_by_their_length() {
        let ok = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 500 Oops\r\n";
        assert_eq!(answer(ok), Ok(Parsed::Answer { length: 40, status: 200, close: false, keep_alive: None }));
        assert_eq!(answer(&ok[..39]), Ok(Parsed::Incomplete));
        assert_eq!(
            answer("HTTP/1.1 204 No Content\r\n\r\n"),
            Ok(Parsed::Answer { length: 27, status: 204, close: false, keep_alive: None })
        );
    }

    #[test]
    fn chunked_answers_and_their_trailers() {
        let text = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nx-t: 1\r\n\r\nnext";
        let length = text.len() - 4;
        assert_eq!(answer(text), Ok(Parsed::Answer { length, status: 200, close: false, keep_alive: None }));
        for cut in [48, 52, 55, length - 1] {
            assert_eq!(answer(&text[..cut]), Ok(Parsed::Incomplete), "cut at {cut}");
        }
        assert!(answer("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n").is_err());
    }

    #[test]
    fn what_ends_a_connection() {
        let close = "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(
            answer(close),
            Ok(Parsed::Answer { length: close.len(), status: 200, close: true, keep_alive: None })
        );
        let old = "HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(answer(old), Ok(Parsed::Answer { length: old.len(), status: 200, close: true, keep_alive: None }));
        let kept = "HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(
            answer(kept),
            Ok(Parsed::Answer { length: kept.len(), status: 200, close: false, keep_alive: None })
        );
        // No length: the body runs to the end of the connection.
        let open = "HTTP/1.1 200 OK\r\n\r\nbody";
        assert_eq!(answer(open), Ok(Parsed::Incomplete));
        assert_eq!(
            parse(open.as_bytes(), true),
            Ok(Parsed::Answer { length: open.len(), status: 200, close: true, keep_alive: None })
        );
    }

    #[test]
    fn a_keep_alive_timeout_is_read_and_a_connection_is_closed_before_it() {
        let hinted = "HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5, max=1000\r\ncontent-length: 0\r\n\r\n";
        let keep_alive = Some(Duration::from_secs(5));
        assert_eq!(answer(hinted), Ok(Parsed::Answer { length: hinted.len(), status: 200, close: false, keep_alive }));
        assert_eq!(keep_alive_timeout("max=3, TIMEOUT = \"2\""), Some(Duration::from_secs(2)));
        assert_eq!(keep_alive_timeout("max=3"), None);
        assert_eq!(keep_alive_timeout("timeout=soon"), None);
        assert_eq!(idle_limit(Duration::from_secs(5)), Duration::from_secs(4));
        assert_eq!(idle_limit(Duration::from_secs(1)), Duration::from_millis(500));
        assert_eq!(idle_limit(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn interim_answers_are_skipped_and_nonsense_is_an_error() {
        assert_eq!(answer("HTTP/1.1 100 Continue\r\n\r\n"), Ok(Parsed::Interim(25)));
        assert!(answer("SSH-2.0-OpenSSH\r\n\r\n").is_err());
        assert!(answer("HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n").is_err());
    }

    #[test]
    fn requests_carry_the_headers_and_their_length() {
        let url = url::Url::parse("http://user:p%40ss@example.com:8080/hook?a=1").unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("content-type", "application/json".parse().unwrap());
        let tls = crate::tls::client_config(&Default::default(), std::path::Path::new(".")).unwrap();
        let target = Target::new(&url, &headers, &tls, 100).unwrap();
        assert_eq!((target.host.as_str(), target.port), ("example.com", 8080));
        let mut out = Vec::new();
        target.write_request(&mut out, b"{}");
        let expected = "POST /hook?a=1 HTTP/1.1\r\nhost: example.com:8080\r\ncontent-type: application/json\r\n\
                        authorization: Basic dXNlcjpwQHNz\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(String::from_utf8(out).unwrap(), expected);
        let secure = Target::new(&url::Url::parse("https://example.com/").unwrap(), &headers, &tls, 100).unwrap();
        assert_eq!((secure.port, secure.tls.is_some()), (443, true));
        let v6 = Target::new(&url::Url::parse("http://[::1]/").unwrap(), &headers, &tls, 100).unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 80));
    }
}
