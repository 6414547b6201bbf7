//! The `/metrics` endpoint's HTTP: just enough HTTP/1.1 for Prometheus and `curl` to scrape
//! (GET and HEAD, keep-alive, Content-Length), bounded so a client can hold little: a request
//! head of at most [`HEAD_BYTES_MAX`] read within [`READ_WAIT`], no request body, a response
//! taken within [`WRITE_WAIT`], and [`CONNECTIONS_MAX`] connections.

use std::future::Future;
use std::io;
use std::time::{Duration, Instant};

use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The longest request head read; a longer one is refused with 431.
pub const HEAD_BYTES_MAX: usize = 8 * 1024;
/// How long a connection may take to send a whole request head (idle time before it counts).
pub const READ_WAIT: Duration = Duration::from_secs(30);
/// How long a client may take to read a response.
pub const WRITE_WAIT: Duration = Duration::from_secs(30);
/// Scrape connections served at once; more are closed at once.
pub const CONNECTIONS_MAX: usize = 16;

/// A request line, parsed.
#[derive(Debug, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    /// The path without its query string.
    pub path: String,
    /// The connection stays open after the response (HTTP/1.1 unless `Connection: close`).
    pub keep_alive: bool,
    /// The request says it sends a body, which this endpoint does not take.
    pub has_body: bool,
}

/// The head at the start of `buf`, and its length, once `buf` holds all of it.
pub fn parse_head(buf: &[u8]) -> Option<Result<(RequestHead, usize), String>> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let Ok(text) = std::str::from_utf8(&buf[..end]) else {
        return Some(Err("a request head that is not UTF-8".into()));
    };
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Some(Err(format!("a malformed request line {request_line:?}")));
    };
    if !version.starts_with("HTTP/1.") {
        return Some(Err(format!("HTTP version {version:?}: only HTTP/1.x is served")));
    }
    let mut keep_alive = version == "HTTP/1.1";
    let mut has_body = false;
    for line in lines.filter(|l| !l.is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            return Some(Err(format!("a malformed header line {line:?}")));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("connection") {
            keep_alive = match value.to_ascii_lowercase().as_str() {
                "close" => false,
                "keep-alive" => true,
                _ => keep_alive,
            };
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            || (name.eq_ignore_ascii_case("content-length") && value != "0")
        {
            has_body = true;
        }
    }
    let path = target.split('?').next().unwrap_or_default().to_string();
    Some(Ok((RequestHead { method: method.to_string(), path, keep_alive, has_body }, end)))
}

/// A complete response.
pub fn response(
    status: &str,
    content_type: &str,
    body: &str,
    head_only: bool,
    keep_alive: bool,
) -> Vec<u8> {
    let connection = if keep_alive { "keep-alive" } else { "close" };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: {connection}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

/// Serves one connection until it closes, answering `GET /metrics` with what `render` writes
/// (or 500 with its error). Each request head must arrive whole within [`READ_WAIT`] and each
/// response be taken within [`WRITE_WAIT`]: a client trickling bytes or never reading holds
/// its connection no longer than that.
pub async fn serve_connection<S, R, F>(
    mut stream: S,
    content_type: &str,
    render: R,
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
    R: Fn() -> F,
    F: Future<Output = Result<String, String>>,
{
    let mut buf = Vec::with_capacity(1024);
    loop {
        let deadline = Instant::now() + READ_WAIT;
        let (head, used) = loop {
            let refusal = match parse_head(&buf) {
                Some(Ok(parsed)) => break parsed,
                Some(Err(why)) => Some(("400 Bad Request", why)),
                None if buf.len() >= HEAD_BYTES_MAX => Some((
                    "431 Request Header Fields Too Large",
                    "the request head is too large".to_string(),
                )),
                None => None,
            };
            if let Some((status, why)) = refusal {
                let answer = response(status, "text/plain", &why, false, false);
                within(WRITE_WAIT, stream.write_all(&answer)).await?;
                return Err(io::Error::new(io::ErrorKind::InvalidData, why));
            }
            let mut chunk = [0u8; 1024];
            let left = deadline.saturating_duration_since(Instant::now());
            let n = within(left, stream.read(&mut chunk)).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        buf.drain(..used);
        let head_only = head.method == "HEAD";
        let keep_alive = head.keep_alive && !head.has_body;
        let answer = match (head.method.as_str(), head.path.as_str()) {
            _ if head.has_body => {
                response("400 Bad Request", "text/plain", "no body is taken\n", false, false)
            }
            ("GET" | "HEAD", "/metrics") => match render().await {
                Ok(body) => response("200 OK", content_type, &body, head_only, keep_alive),
                Err(why) => {
                    tracing::warn!("rendering /metrics: {why}");
                    response("500 Internal Server Error", "text/plain", &why, head_only, keep_alive)
                }
            },
            ("GET" | "HEAD", "/") => {
                let body = "spate: metrics at /metrics\n";
                response("200 OK", "text/plain", body, head_only, keep_alive)
            }
            ("GET" | "HEAD", _) => {
                response("404 Not Found", "text/plain", "not found\n", head_only, keep_alive)
            }
            _ => response(
                "405 Method Not Allowed",
                "text/plain",
                "only GET and HEAD are served\n",
                false,
                keep_alive,
            ),
        };
        within(WRITE_WAIT, async {
            stream.write_all(&answer).await?;
            stream.flush().await
        })
        .await?;
        if !keep_alive {
            return Ok(());
        }
    }
}

/// `io` if it completes within `wait`, else a `TimedOut` error.
async fn within<T>(wait: Duration, io: impl Future<Output = io::Result<T>>) -> io::Result<T> {
    let expired = async {
        glommio::timer::sleep(wait).await;
        Err(io::Error::new(io::ErrorKind::TimedOut, "the client took too long"))
    };
    futures_lite::future::or(io, expired).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_parse_whole_and_only_whole() {
        let head = b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\nrest";
        assert!(parse_head(&head[..20]).is_none());
        let (parsed, used) = parse_head(head).unwrap().unwrap();
        assert_eq!(
            parsed,
            RequestHead {
                method: "GET".into(),
                path: "/metrics".into(),
                keep_alive: false,
                has_body: false
            }
        );
        assert_eq!(&head[used..], b"rest");
        let old = parse_head(b"GET / HTTP/1.0\r\n\r\n").unwrap().unwrap().0;
        assert!(!old.keep_alive);
        let post = parse_head(b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\n").unwrap();
        assert!(post.unwrap().0.has_body);
        assert!(parse_head(b"GET /metrics\r\n\r\n").unwrap().is_err());
        assert!(parse_head(b"GET / HTTP/2\r\n\r\n").unwrap().is_err());
        assert!(parse_head(b"GET / HTTP/1.1\r\nno colon\r\n\r\n").unwrap().is_err());
    }

    #[test]
    fn responses_carry_their_length() {
        let full = response("200 OK", "text/plain", "hello", false, true);
        let text = String::from_utf8(full).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text.contains("Content-Length: 5\r\n") && text.ends_with("\r\n\r\nhello"));
        let head = String::from_utf8(response("200 OK", "text/plain", "hello", true, false));
        assert!(head.unwrap().ends_with("Connection: close\r\n\r\n"));
    }
}
