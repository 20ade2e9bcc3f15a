//! The alert webhook: one JSON POST per alert over HTTP/1.1 (TLS for
//! `https://`, the Mozilla root certificates), with a timeout per attempt
//! and retries with backoff. Only the status line of the answer is read.
//! The URL's path and query are never printed: chat webhooks keep their
//! token there.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::{Error, Result};

/// Seconds one delivery attempt may take (`ETL_ALERT_WEBHOOK_TIMEOUT_SECONDS`).
pub const DEFAULT_TIMEOUT_SECONDS: u32 = 10;
/// Attempts after the first (`ETL_ALERT_WEBHOOK_RETRIES`).
pub const DEFAULT_RETRIES: u32 = 3;
/// Wait before the first retry; doubled for each further one.
const BACKOFF: Duration = Duration::from_secs(1);

/// Where alerts are posted.
pub struct Webhook {
    tls: Option<Arc<rustls::ClientConfig>>,
    host: String,
    port: u16,
    path: String,
    timeout: Duration,
    retries: u32,
}

impl fmt::Display for Webhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        write!(f, "{scheme}://{}/…", self.authority())
    }
}

impl Webhook {
    /// Parses `http[s]://host[:port][/path][?query]`.
    pub fn new(url: &str, timeout: Duration, retries: u32) -> Result<Webhook> {
        let bad = |why: &str| Error::config(format!("ETL_ALERT_WEBHOOK_URL: {why}"));
        let lower = url.to_ascii_lowercase();
        let (tls, rest) = if lower.starts_with("https://") {
            (true, &url[8..])
        } else if lower.starts_with("http://") {
            (false, &url[7..])
        } else {
            return Err(bad("must start with http:// or https://"));
        };
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(split);
        let path = match path {
            "" => "/".to_string(),
            p if p.starts_with('?') => format!("/{p}"),
            p => p.to_string(),
        };
        if authority.contains('@') {
            return Err(bad(
                "user names and passwords in the URL are not supported; keep the token in the path or query",
            ));
        }
        let (host, port) = match authority.strip_prefix('[') {
            Some(v6) => {
                let (host, after) = v6
                    .split_once(']')
                    .ok_or_else(|| bad("an IPv6 host needs its closing `]`"))?;
                (host, after.strip_prefix(':'))
            }
            None => match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            },
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match port {
            None => {
                if tls {
                    443
                } else {
                    80
                }
            }
            Some(p) => p
                .parse()
                .map_err(|_| bad(&format!("`{p}` is not a port number")))?,
        };
        if timeout.is_zero() {
            return Err(Error::config(
                "ETL_ALERT_WEBHOOK_TIMEOUT_SECONDS must be at least 1",
            ));
        }
        let tls = if tls {
            let roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::config(format!("setting up TLS for the alert webhook: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
            Some(Arc::new(config))
        } else {
            None
        };
        Ok(Webhook {
            tls,
            host: host.to_string(),
            port,
            path,
            timeout,
            retries,
        })
    }

    fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let default_port = if self.tls.is_some() { 443 } else { 80 };
        if self.port == default_port {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    /// Posts `body` (JSON), retrying timeouts, connection failures and
    /// answers that may change (5xx, 408, 429); a 2xx answer delivers it.
    pub async fn post(&self, body: &[u8]) -> std::result::Result<(), String> {
        let mut wait = BACKOFF;
        let mut last = String::new();
        for attempt in 0..=self.retries {
            if attempt > 0 {
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            match tokio::time::timeout(self.timeout, self.post_once(body)).await {
                Ok(Ok(status)) if (200..300).contains(&status) => return Ok(()),
                Ok(Ok(status))
                    if (400..500).contains(&status) && status != 408 && status != 429 =>
                {
                    return Err(format!(
                        "{self} answered HTTP {status}; not retried (check the URL and its token)"
                    ));
                }
                Ok(Ok(status)) => last = format!("answered HTTP {status}"),
                Ok(Err(e)) => last = e,
                Err(_) => last = format!("no answer within {} s", self.timeout.as_secs()),
            }
        }
        Err(format!(
            "{self}: {last} (gave up after {} attempt(s); the alert is still in the run history)",
            self.retries + 1
        ))
    }

    async fn post_once(&self, body: &[u8]) -> std::result::Result<u16, String> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let head = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: etl-pipeline/{}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.path,
            self.authority(),
            env!("CARGO_PKG_VERSION"),
            body.len()
        );
        match &self.tls {
            None => exchange(tcp, head.as_bytes(), body).await,
            Some(config) => {
                let name = rustls::pki_types::ServerName::try_from(self.host.clone())
                    .map_err(|e| format!("`{}` is not a TLS server name: {e}", self.host))?;
                let stream = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS: {e}"))?;
                exchange(stream, head.as_bytes(), body).await
            }
        }
    }
}

/// Sends the request and reads the answer's status code.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    head: &[u8],
    body: &[u8],
) -> std::result::Result<u16, String> {
    let io = |e: std::io::Error| format!("sending: {e}");
    stream.write_all(head).await.map_err(io)?;
    stream.write_all(body).await.map_err(io)?;
    stream.flush().await.map_err(io)?;
    let mut answer = Vec::with_capacity(256);
    let mut chunk = [0u8; 1024];
    while !answer.windows(2).any(|w| w == b"\r\n") && answer.len() < 8192 {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("reading the answer: {e}"))?;
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&chunk[..n]);
    }
    status_code(&answer).ok_or_else(|| "the answer is not HTTP".to_string())
}

/// The code of an HTTP status line (`HTTP/1.1 204 No Content`).
fn status_code(answer: &[u8]) -> Option<u16> {
    let line = answer.split(|&b| b == b'\r').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split(' ');
    parts.next().filter(|v| v.starts_with("HTTP/"))?;
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(url: &str) -> Webhook {
        Webhook::new(url, Duration::from_secs(5), 0).unwrap()
    }

    #[test]
    fn urls_parse_and_print_without_their_token() {
        let w = hook("https://hooks.example.com/services/T000/B000/SECRET");
        assert_eq!((w.host.as_str(), w.port), ("hooks.example.com", 443));
        assert_eq!(w.path, "/services/T000/B000/SECRET");
        assert_eq!(w.to_string(), "https://hooks.example.com/…");
        let w = hook("http://127.0.0.1:8080?token=SECRET");
        assert_eq!(
            (w.host.as_str(), w.port, w.path.as_str()),
            ("127.0.0.1", 8080, "/?token=SECRET")
        );
        assert!(!w.to_string().contains("SECRET"));
        let w = hook("http://[::1]:9000/a");
        assert_eq!((w.host.as_str(), w.port), ("::1", 9000));
        assert_eq!(w.authority(), "[::1]:9000");
        for bad in ["ftp://x/", "http://", "http://u:p@x/", "http://x:port/"] {
            assert!(
                Webhook::new(bad, Duration::from_secs(1), 0).is_err(),
                "{bad}"
            );
        }
        assert!(Webhook::new("http://x/", Duration::ZERO, 0).is_err());
    }

    #[test]
    fn status_lines_parse() {
        assert_eq!(status_code(b"HTTP/1.1 204 No Content\r\n"), Some(204));
        assert_eq!(status_code(b"HTTP/1.0 500 Oops\r\nx"), Some(500));
        assert_eq!(status_code(b"SSH-2.0-OpenSSH\r\n"), None);
    }
}
