//! The `/metrics` endpoint: a deliberately small HTTP/1.0 responder (one
//! request per connection, bounded in size, time and connections), since
//! the daemon's job is governing, not serving.
//!
//! What Prometheus expects of a target: `GET` and `HEAD` of `/metrics`
//! with any query string (`?x=1`, which some relabelling adds), and the
//! format chosen from the `Accept` header — OpenMetrics when the scraper
//! prefers it (Prometheus 2.x asks for it first), the classic text format
//! otherwise (`curl`, `promtool check metrics`, older servers).
use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};

use super::{Exposition, Metrics};

/// Largest request read; anything longer is answered 400.
const MAX_REQUEST: usize = 8 * 1024;
/// A client has this long to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more wait in the kernel's backlog, so that
/// clients cannot take the file descriptors governing needs.
const MAX_CONNECTIONS: usize = 16;
/// The pause after a failed `accept` (at the fd limit it fails at once,
/// and a loop without a pause spun a core at 100 %).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(200);

const OPENMETRICS_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const CLASSIC_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Errors of the metrics endpoint.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MetricsError {
    #[error("listening on {addr} for --metrics-addr")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
enum Asked {
    /// The metrics; `body` false for `HEAD`.
    Metrics {
        format: Exposition,
        body: bool,
    },
    NotFound,
    MethodNotAllowed,
    BadRequest,
}

/// Reads the request head: its request line and its `Accept` header.
fn parse(head: &[u8]) -> Asked {
    let Ok(head) = std::str::from_utf8(head) else {
        return Asked::BadRequest;
    };
    let mut lines = head.lines();
    let mut parts = lines.next().unwrap_or_default().split(' ');
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Asked::BadRequest;
    };
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    if path != "/metrics" {
        return Asked::NotFound;
    }
    let body = match method {
        "GET" => true,
        "HEAD" => false,
        _ => return Asked::MethodNotAllowed,
    };
    let accept = lines
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .filter(|(name, _)| name.trim().eq_ignore_ascii_case("accept"))
        .map(|(_, value)| value)
        .collect::<Vec<_>>()
        .join(",");
    Asked::Metrics {
        format: negotiate(&accept),
        body,
    }
}

/// The format an `Accept` header prefers: the media type with the highest
/// `q` that is served (first listed on a tie); classic when none is.
fn negotiate(accept: &str) -> Exposition {
    let mut best: Option<(f32, Exposition)> = None;
    for range in accept.split(',') {
        let mut params = range.split(';').map(str::trim);
        let media = params.next().unwrap_or_default().to_ascii_lowercase();
        let q = params
            .filter_map(|p| p.strip_prefix("q="))
            .find_map(|q| q.parse::<f32>().ok())
            .unwrap_or(1.0);
        let format = match media.as_str() {
            "application/openmetrics-text" => Exposition::OpenMetrics,
            "text/plain" | "text/*" | "*/*" => Exposition::Classic,
            _ => continue,
        };
        if q > 0.0 && best.is_none_or(|(b, _)| q > b) {
            best = Some((q, format));
        }
    }
    best.map_or(Exposition::Classic, |(_, f)| f)
}

impl Metrics {
    /// Binds `addr` (so a bad address fails before the stream starts) and
    /// returns the server task to spawn.
    pub(crate) async fn serve(
        self,
        addr: SocketAddr,
    ) -> Result<impl Future<Output = ()> + Send + 'static, MetricsError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| MetricsError::Bind { addr, source })?;
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        Ok(async move {
            loop {
                let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                    return; // closed: never
                };
                let conn = match listener.accept().await {
                    Ok((conn, _)) => conn,
                    Err(e) => {
                        tracing::debug!(error = %e, "metrics: accept failed");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                };
                let metrics = self.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(REQUEST_TIMEOUT, metrics.answer(conn)).await;
                    drop(slot);
                });
            }
        })
    }

    async fn answer(&self, mut conn: TcpStream) -> std::io::Result<()> {
        let mut request = Vec::with_capacity(512);
        let mut buf = [0u8; 1024];
        // The end of the head: a blank line, CRLF or (tolerated) bare LF.
        let ended =
            |r: &[u8]| r.windows(4).any(|w| w == b"\r\n\r\n") || r.windows(2).any(|w| w == b"\n\n");
        let mut too_long = false;
        while !ended(&request) {
            let n = conn.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            if request.len() + n > MAX_REQUEST {
                too_long = true;
                break;
            }
            request.extend_from_slice(&buf[..n]);
        }
        let asked = if too_long {
            Asked::BadRequest
        } else {
            parse(&request)
        };
        let (status, content_type, body, send_body, allow) = match asked {
            Asked::Metrics { format, body } => {
                let content_type = match format {
                    Exposition::OpenMetrics => OPENMETRICS_TYPE,
                    Exposition::Classic => CLASSIC_TYPE,
                };
                // Off the event loop, which also governs: listing
                // /proc/self/fd grows with the descriptors held (up to
                // LimitNOFILE), and a scrape must not delay a new process.
                let metrics = self.clone();
                let text = tokio::task::spawn_blocking(move || metrics.render(format))
                    .await
                    .unwrap_or_default();
                ("200 OK", content_type, text, body, "")
            }
            Asked::NotFound => (
                "404 Not Found",
                "text/plain; charset=utf-8",
                "ffrtmp serves /metrics only\n".to_string(),
                true,
                "",
            ),
            Asked::MethodNotAllowed => (
                "405 Method Not Allowed",
                "text/plain; charset=utf-8",
                "ffrtmp's /metrics answers GET and HEAD\n".to_string(),
                true,
                "Allow: GET, HEAD\r\n",
            ),
            Asked::BadRequest => (
                "400 Bad Request",
                "text/plain; charset=utf-8",
                "bad request\n".to_string(),
                true,
                "",
            ),
        };
        let head = format!(
            "HTTP/1.0 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n",
            body.len()
        );
        conn.write_all(head.as_bytes()).await?;
        if send_body {
            conn.write_all(body.as_bytes()).await?;
        }
        conn.shutdown().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_get_and_head_of_metrics_with_any_query() {
        let m = |format, body| Asked::Metrics { format, body };
        assert_eq!(
            parse(b"GET /metrics HTTP/1.0\r\n\r\n"),
            m(Exposition::Classic, true)
        );
        assert_eq!(
            parse(b"HEAD /metrics HTTP/1.1\r\n\r\n"),
            m(Exposition::Classic, false)
        );
        assert_eq!(
            parse(b"GET /metrics?x=1 HTTP/1.1\n\n"),
            m(Exposition::Classic, true)
        );
        assert_eq!(parse(b"GET / HTTP/1.1\r\n\r\n"), Asked::NotFound);
        assert_eq!(parse(b"GET /metricsx HTTP/1.1\r\n\r\n"), Asked::NotFound);
        assert_eq!(
            parse(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Asked::MethodNotAllowed
        );
        assert_eq!(parse(b"GET\r\n\r\n"), Asked::BadRequest);
        assert_eq!(parse(b"GET /metrics \xff\r\n\r\n"), Asked::BadRequest);
    }

    #[test]
    fn serves_openmetrics_only_to_a_scraper_that_prefers_it() {
        // What Prometheus 2.42 sends.
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(negotiate(prometheus), Exposition::OpenMetrics);
        let head = format!("GET /metrics HTTP/1.1\r\nHost: x\r\naccept: {prometheus}\r\n\r\n");
        assert_eq!(
            parse(head.as_bytes()),
            Asked::Metrics {
                format: Exposition::OpenMetrics,
                body: true
            }
        );
        assert_eq!(negotiate("*/*"), Exposition::Classic);
        assert_eq!(negotiate(""), Exposition::Classic);
        assert_eq!(negotiate("text/plain;version=0.0.4"), Exposition::Classic);
        assert_eq!(
            negotiate("text/plain;q=0.9, application/openmetrics-text"),
            Exposition::OpenMetrics
        );
        assert_eq!(
            negotiate("application/openmetrics-text;q=0, */*"),
            Exposition::Classic
        );
        assert_eq!(negotiate("application/json"), Exposition::Classic);
    }
}
