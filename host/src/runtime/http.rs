//! Outbound HTTP for functions (`wasi:http/outgoing-handler`), deny by default.
//!
//! A request goes through three checks, each on what is really used:
//! 1. **The grant.** The URL's host and port must be in the function's `allowed_hosts`
//!    (`host` for ports 80 and 443, `host:port`, or `host:*`; hosts compare case-insensitively
//!    and exactly: `api.example.com` does not grant `evil.api.example.com`).
//! 2. **The address.** The host is resolved here, once, the way the OS resolves it (so
//!    `2130706433`, `0x7f.1` and `0.0.0.0` are the addresses they are to a socket), and
//!    *every* address it resolves to must be public: loopback, private (RFC 1918), link-local
//!    (the cloud metadata service), CGNAT, unique-local, multicast, unspecified, reserved and
//!    documentation ranges, and IPv6 forms embedding such an IPv4 address, are refused whatever
//!    the tenant granted, unless the operator lists the range in `[outbound] allow_ranges`.
//!    The connection goes to an address that was checked: there is no second lookup, so a name
//!    that re-resolves (DNS rebinding) cannot move it.
//! 3. **The call's budget.** Requests and bytes (sent and received) per call are capped by the
//!    plan and metered (`http_requests`, `http_bytes`); connect, first-byte and between-bytes
//!    waits are capped by `[outbound]`, and the whole exchange by the call's timeout.
//!
//! Redirects are the guest's to follow: each hop is a new request, checked again. A refused
//! request fails with a WIT error value (`http-request-denied` for the grant and the budget,
//! `destination-ip-prohibited` for the address), never a crash, and is recorded as a denial.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt as _;
use ipnet::IpNet;
use tokio::io::{AsyncRead, AsyncWrite};
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

use super::Denials;

/// Checks a grant entry's form; the error says what is wrong. An IPv6 literal is written in
/// brackets, as in a URL: `[2001:db8::1]:8080`.
pub fn check_entry(entry: &str) -> Result<(), String> {
    let (host, port) = split_entry(entry);
    let host_ok = if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        inner.parse::<Ipv6Addr>().is_ok()
    } else {
        !host.is_empty()
            && host.len() <= 253
            && host.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
            && !host.starts_with('.')
            && !host.starts_with('-')
    };
    let port_ok = match port {
        None | Some("*") => true,
        Some(p) => p.parse::<u16>().is_ok_and(|p| p > 0),
    };
    if host_ok && port_ok {
        Ok(())
    } else {
        Err(format!("`{entry}` is not `host`, `host:port` or `host:*` (no scheme, path or wildcard host)"))
    }
}

/// `host[:port]`, where an IPv6 host keeps its brackets.
fn split_entry(entry: &str) -> (&str, Option<&str>) {
    if entry.starts_with('[') {
        return match entry.find(']') {
            Some(end) => {
                let (host, rest) = entry.split_at(end + 1);
                (host, rest.strip_prefix(':'))
            }
            None => (entry, None),
        };
    }
    entry.rsplit_once(':').map_or((entry, None), |(h, p)| (h, Some(p)))
}

/// Whether `host`:`port` is granted by `allowed` (`host` as in the URL: an IPv6 literal in
/// brackets).
pub fn is_allowed(allowed: &[String], host: &str, port: u16) -> bool {
    allowed.iter().any(|entry| {
        let (h, p) = split_entry(entry);
        h.eq_ignore_ascii_case(host)
            && match p {
                None => port == 80 || port == 443,
                Some("*") => true,
                Some(p) => p.parse::<u16>() == Ok(port),
            }
    })
}

/// What kind of non-public address `ip` is, or `None` for a public unicast address. IPv6
/// addresses that embed an IPv4 address (mapped, compatible, NAT64, 6to4) are judged by the
/// embedded address too.
pub fn non_public(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => non_public_v4(v4),
        IpAddr::V6(v6) => non_public_v6(v6),
    }
}

fn non_public_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        (0, ..) => "unspecified (0.0.0.0/8)",
        (10, ..) => "private (10.0.0.0/8)",
        (100, 64..=127, _) => "shared CGNAT (100.64.0.0/10)",
        (127, ..) => "loopback (127.0.0.0/8)",
        (169, 254, _) => "link-local (169.254.0.0/16, the cloud metadata service)",
        (172, 16..=31, _) => "private (172.16.0.0/12)",
        (192, 0, 0) => "IETF protocol (192.0.0.0/24)",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "documentation",
        (192, 88, 99) => "6to4 relay anycast (192.88.99.0/24)",
        (192, 168, _) => "private (192.168.0.0/16)",
        (198, 18..=19, _) => "benchmarking (198.18.0.0/15)",
        (224..=239, ..) => "multicast (224.0.0.0/4)",
        (240..=255, ..) => "reserved or broadcast (240.0.0.0/4)",
        _ => return None,
    })
}

fn non_public_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    let embedded = |hi: usize| Ipv4Addr::new((s[hi] >> 8) as u8, s[hi] as u8, (s[hi + 1] >> 8) as u8, s[hi + 1] as u8);
    if ip.is_unspecified() {
        return Some("unspecified (::)");
    }
    if ip.is_loopback() {
        return Some("loopback (::1)");
    }
    if let Some(v4) = ip.to_ipv4_mapped() {
        return non_public_v4(v4);
    }
    Some(match s {
        // IPv4-compatible (deprecated, ::a.b.c.d): never public.
        [0, 0, 0, 0, 0, 0, _, _] => "IPv4-compatible (::/96)",
        // NAT64 well-known prefix: the embedded IPv4 address decides.
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => return non_public_v4(embedded(6)),
        [0x64, 0xff9b, 1, ..] => "local-use NAT64 (64:ff9b:1::/48)",
        [0x100, 0, 0, 0, ..] => "discard-only (100::/64)",
        [0x2001, 0x0db8, ..] => "documentation (2001:db8::/32)",
        [0x2001, 0, ..] => "Teredo tunnel (2001::/32)",
        [0x2002, ..] => return non_public_v4(embedded(1)).map(|_| "6to4 embedding a non-public IPv4 address"),
        [x, ..] if x & 0xfe00 == 0xfc00 => "unique-local (fc00::/7, including fd00:ec2::254, a metadata service)",
        [x, ..] if x & 0xffc0 == 0xfe80 => "link-local (fe80::/10)",
        [x, ..] if x & 0xffc0 == 0xfec0 => "site-local (fec0::/10)",
        [x, ..] if x & 0xff00 == 0xff00 => "multicast (ff00::/8)",
        [x, ..] if x & 0xe000 != 0x2000 => "not global unicast (outside 2000::/3)",
        _ => return None,
    })
}

/// The operator's outbound policy (`[outbound]` in the server config) and the plan's per-call
/// caps: what a function's granted requests may still not do.
#[derive(Debug, Clone)]
pub struct Network {
    /// Ranges reachable although they are not public (empty: none).
    pub allow_ranges: Vec<IpNet>,
    pub connect_timeout: Duration,
    pub first_byte_timeout: Duration,
    pub between_bytes_timeout: Duration,
    /// Outbound requests one call may make.
    pub max_requests: u64,
    /// Bytes one call may send and receive in bodies, together.
    pub max_bytes: u64,
}

impl Default for Network {
    fn default() -> Self {
        Self {
            allow_ranges: Vec::new(),
            connect_timeout: Duration::from_secs(10),
            first_byte_timeout: Duration::from_secs(30),
            between_bytes_timeout: Duration::from_secs(30),
            max_requests: 0,
            max_bytes: 0,
        }
    }
}

impl Network {
    /// Why a connection to `ip` is refused, or `None` when it may be made.
    pub fn refuses(&self, ip: IpAddr) -> Option<&'static str> {
        let ip = ip.to_canonical();
        let why = non_public(ip)?;
        (!self.allow_ranges.iter().any(|range| range.contains(&ip))).then_some(why)
    }
}

/// What one call's outbound HTTP used, read when the call ends.
#[derive(Debug, Default)]
pub struct OutboundMeter {
    requests: AtomicU64,
    bytes: AtomicU64,
}

impl OutboundMeter {
    /// Requests sent and body bytes moved (both ways).
    pub fn usage(&self) -> (u64, u64) {
        (self.requests.load(Ordering::Relaxed), self.bytes.load(Ordering::Relaxed))
    }
}

/// The per-call `wasi:http` hooks: the grant, the network policy, the call's meter, and where
/// its denials go (the call's list, shared with its other capabilities).
#[derive(Default)]
pub struct HttpGuard {
    pub allowed: Arc<Vec<String>>,
    pub network: Arc<Network>,
    pub meter: Arc<OutboundMeter>,
    pub denials: Denials,
}

type SendResult = Result<(http::Response<WasiBody>, Box<dyn Future<Output = Result<(), HttpError>> + Send>), HttpError>;

impl WasiHttpHooks for HttpGuard {
    fn send_request(
        &mut self,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        _ = fut;
        let uri = request.uri();
        let host = uri.host().unwrap_or_default().to_string();
        let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let target = format!("{host}:{port}");
        if !is_allowed(&self.allowed, &host, port) {
            self.denials.push("allowed_hosts", &target, "not in the manifest's capabilities.allowed_hosts");
            return Box::new(async { Err(HttpError::HttpRequestDenied) });
        }
        let (sent, _) = self.meter.usage();
        if sent >= self.network.max_requests {
            let reason =
                format!("more than {} outbound requests in one call (the plan's cap)", self.network.max_requests);
            self.denials.push("outbound_requests", &target, &reason);
            return Box::new(async { Err(HttpError::HttpRequestDenied) });
        }
        self.meter.requests.fetch_add(1, Ordering::Relaxed);
        // The services a function calls join its caller's trace.
        crate::telemetry::inject(request.headers_mut());
        let exchange = Exchange {
            network: self.network.clone(),
            meter: self.meter.clone(),
            denials: self.denials.clone(),
            options: options.unwrap_or_default(),
            host,
            port,
            https,
        };
        Box::new(exchange.send(request))
    }
}

/// One granted request on its way: resolve, check, connect, send.
struct Exchange {
    network: Arc<Network>,
    meter: Arc<OutboundMeter>,
    denials: Denials,
    options: RequestOptions,
    host: String,
    port: u16,
    https: bool,
}

trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

impl Exchange {
    /// The guest's own timeout when it asks for less than the platform's.
    fn wait(&self, asked: Option<Duration>, cap: Duration) -> Duration {
        asked.map_or(cap, |asked| asked.min(cap))
    }

    async fn send(self, mut request: http::Request<WasiBody>) -> SendResult {
        let connect_timeout = self.wait(self.options.connect_timeout, self.network.connect_timeout);
        let addrs = self.resolve(connect_timeout).await?;
        let tcp = connect(&addrs, connect_timeout).await?;
        _ = tcp.set_nodelay(true);
        let stream: Box<dyn Stream> =
            if self.https { Box::new(self.tls(tcp, connect_timeout).await?) } else { Box::new(tcp) };
        let (mut sender, conn) = tokio::time::timeout(
            connect_timeout,
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)),
        )
        .await
        .map_err(|_| HttpError::ConnectionTimeout)??;

        // The request line carries the path only (the authority went into the Host header).
        let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
        *request.uri_mut() = http::Uri::try_from(path).map_err(|_| HttpError::HttpRequestUriInvalid)?;
        let budget = Budget { meter: self.meter.clone(), max: self.network.max_bytes };
        let request = request.map(|body| Metered::new(body, budget.clone(), None, HttpError::HttpRequestBodySize));

        let first_byte = self.wait(self.options.first_byte_timeout, self.network.first_byte_timeout);
        let mut conn = Box::pin(conn);
        let mut conn_done = false;
        let response = {
            let send = tokio::time::timeout(first_byte, sender.send_request(request));
            tokio::pin!(send);
            loop {
                tokio::select! {
                    response = &mut send => break response.map_err(|_| HttpError::ConnectionReadTimeout)??,
                    done = &mut conn, if !conn_done => {
                        conn_done = true;
                        done?;
                    }
                }
            }
        };
        let between = self.wait(self.options.between_bytes_timeout, self.network.between_bytes_timeout);
        let response = response
            .map(|body| Metered::new(body, budget, Some(between), HttpError::HttpResponseBodySize).boxed_unsync());
        let io = async move {
            if !conn_done {
                conn.await?;
            }
            Ok(())
        };
        Ok((response, Box::new(io) as Box<dyn Future<Output = _> + Send>))
    }

    /// Every address the host resolves to, each one checked.
    async fn resolve(&self, timeout: Duration) -> Result<Vec<SocketAddr>, HttpError> {
        let bare = self.host.trim_start_matches('[').trim_end_matches(']');
        let lookup = tokio::net::lookup_host((bare, self.port));
        let addrs: Vec<SocketAddr> = match tokio::time::timeout(timeout, lookup).await {
            Err(_) => return Err(HttpError::DnsTimeout),
            Ok(Err(e)) => return Err(HttpError::DnsError { rcode: Some(e.to_string()), info_code: None }),
            Ok(Ok(addrs)) => addrs.map(|a| SocketAddr::new(a.ip().to_canonical(), a.port())).collect(),
        };
        if addrs.is_empty() {
            return Err(HttpError::DestinationNotFound);
        }
        if let Some((ip, why)) = addrs.iter().find_map(|a| self.network.refuses(a.ip()).map(|why| (a.ip(), why))) {
            let target = format!("{}:{}", self.host, self.port);
            let reason = format!("resolves to {ip}, a {why} address, which functions may not reach");
            self.denials.push("network", &target, &reason);
            return Err(HttpError::DestinationIpProhibited);
        }
        Ok(addrs)
    }

    async fn tls(
        &self,
        tcp: tokio::net::TcpStream,
        timeout: Duration,
    ) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, HttpError> {
        static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
        let config = CONFIG.get_or_init(|| {
            let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.into() };
            Arc::new(rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth())
        });
        let bare = self.host.trim_start_matches('[').trim_end_matches(']');
        let name = match bare.parse::<IpAddr>() {
            Ok(ip) => rustls::pki_types::ServerName::IpAddress(ip.into()),
            Err(_) => {
                rustls::pki_types::ServerName::try_from(bare.to_string()).map_err(HttpError::InvalidDnsNameError)?
            }
        };
        let connect = tokio_rustls::TlsConnector::from(config.clone()).connect(name, tcp);
        match tokio::time::timeout(timeout, connect).await {
            Err(_) => Err(HttpError::ConnectionTimeout),
            Ok(stream) => stream.map_err(HttpError::Tls),
        }
    }
}

/// Connects to the first of `addrs` that answers: only addresses that were checked.
async fn connect(addrs: &[SocketAddr], timeout: Duration) -> Result<tokio::net::TcpStream, HttpError> {
    let mut last = HttpError::ConnectionRefused;
    for addr in addrs {
        match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => last = HttpError::ConnectionRefused,
            Ok(Err(e)) => last = HttpError::Connect(e),
            Err(_) => last = HttpError::ConnectionTimeout,
        }
    }
    Err(last)
}

/// The call's byte budget, shared by the bodies of all its requests and responses.
#[derive(Clone)]
struct Budget {
    meter: Arc<OutboundMeter>,
    max: u64,
}

/// A body whose frames count against the call's byte budget; past it the body fails with
/// `over`. A response body also fails when no frame arrives within `between`.
struct Metered<B> {
    inner: B,
    budget: Budget,
    between: Option<(Duration, Pin<Box<tokio::time::Sleep>>)>,
    over: fn(Option<u64>) -> HttpError,
}

impl<B> Metered<B> {
    fn new(inner: B, budget: Budget, between: Option<Duration>, over: fn(Option<u64>) -> HttpError) -> Self {
        let between = between.map(|d| (d, Box::pin(tokio::time::sleep(d))));
        Self { inner, budget, between, over }
    }
}

impl<B> Body for Metered<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<HttpError>,
{
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let used =
                        this.budget.meter.bytes.fetch_add(data.len() as u64, Ordering::Relaxed) + data.len() as u64;
                    if used > this.budget.max {
                        return Poll::Ready(Some(Err((this.over)(Some(this.budget.max)))));
                    }
                }
                if let Some((wait, sleep)) = &mut this.between {
                    sleep.as_mut().reset(tokio::time::Instant::now() + *wait);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match &mut this.between {
                Some((_, sleep)) => match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(HttpError::ConnectionReadTimeout))),
                    Poll::Pending => Poll::Pending,
                },
                None => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_match_hosts_and_ports_exactly() {
        let allowed = vec![
            "api.example.com".to_string(),
            "127.0.0.1:8080".to_string(),
            "localhost:*".to_string(),
            "[::1]:9000".to_string(),
        ];
        assert!(is_allowed(&allowed, "api.example.com", 443));
        assert!(is_allowed(&allowed, "API.example.com", 80));
        assert!(!is_allowed(&allowed, "api.example.com", 8443));
        assert!(!is_allowed(&allowed, "evil.api.example.com", 443));
        assert!(!is_allowed(&allowed, "example.com", 443));
        assert!(is_allowed(&allowed, "127.0.0.1", 8080));
        assert!(!is_allowed(&allowed, "127.0.0.1", 8081));
        assert!(is_allowed(&allowed, "localhost", 1));
        assert!(is_allowed(&allowed, "[::1]", 9000));
        assert!(!is_allowed(&allowed, "[::1]", 9001));
        for bad in [
            "https://api.example.com",
            "api.example.com/v1",
            "*.example.com",
            "",
            "h:0",
            "h:99999",
            ".x",
            "[::g]:1",
            "[::1",
        ] {
            assert!(check_entry(bad).is_err(), "{bad}");
        }
        for good in ["api.example.com", "127.0.0.1:8080", "localhost:*", "[::1]:9000", "[2001:db8::1]"] {
            assert!(check_entry(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn only_public_unicast_addresses_are_reachable() {
        let denied = [
            "127.0.0.1",
            "127.1.2.3",
            "0.0.0.0",
            "10.0.0.5",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.100.100.200",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "192.0.2.1",
            "198.18.0.1",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::7f00:1",
            "64:ff9b::a00:5",
            "2002:7f00:1::",
            "2002:a9fe:a9fe::1",
            "fd00:ec2::254",
            "fc00::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
            "2001::1",
            "100::1",
        ];
        for ip in denied {
            assert!(non_public(ip.parse().unwrap()).is_some(), "{ip} must be refused");
        }
        let public = [
            "93.184.215.14",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ];
        for ip in public {
            assert_eq!(non_public(ip.parse().unwrap()), None, "{ip} is public");
        }
    }

    #[test]
    fn the_operator_allows_ranges_on_the_canonical_address() {
        let network = Network { allow_ranges: vec!["127.0.0.0/8".parse().unwrap()], ..Network::default() };
        assert_eq!(network.refuses("127.0.0.1".parse().unwrap()), None);
        assert_eq!(network.refuses("::ffff:127.0.0.1".parse().unwrap()), None, "mapped is the IPv4 address");
        assert!(network.refuses("::1".parse().unwrap()).is_some(), "only the listed range");
        assert!(network.refuses("10.0.0.1".parse().unwrap()).is_some());
        assert!(Network::default().refuses("127.0.0.1".parse().unwrap()).is_some());
    }
}
