//! Per-client rate limiting: a GCRA limiter (the `governor` crate) keyed by the
//! client's address, as a tower layer ([`RateLimitLayer`]) in front of every
//! route except the health probes.
//!
//! The client's address is the connection's peer, or, when the peer is one
//! of `server.trusted_proxies`, the address it forwards ([`super::forwarded`]).
//!
//! A client is its IP address, except that IPv6 clients are keyed by their /64,
//! the block one host or site usually gets: otherwise a single client could
//! dodge its limit, and grow the limiter's table, by rotating addresses inside
//! it. IPv4-mapped IPv6 addresses count as the IPv4 address.
//!
//! Memory: the limiter keeps one small entry per client key, and a key whose
//! bucket has refilled is indistinguishable from a key never seen. [`RateLimit::sweep`]
//! drops those every [`SWEEP_INTERVAL`], so the table holds the clients seen in
//! the last `burst / rate` seconds plus one interval, not every client ever seen.

use std::future::{ready, Ready};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::http::Request;
use axum::response::{IntoResponse, Response};
use futures_util::future::Either;
use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use tokio_util::sync::CancellationToken;
use tower::{Layer, Service};

use crate::config::{IpNet, ServerConfig};
use crate::error::ApiError;

/// How often keys whose bucket has refilled are dropped.
pub(crate) const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// Routes never limited: probes and scrapes must keep answering while clients are throttled.
pub(crate) const EXEMPT: &[&str] = &["/healthz", "/readyz", "/metrics"];

type Limiter = RateLimiter<IpAddr, DefaultKeyedStateStore<IpAddr>, DefaultClock>;

/// The limiter shared by every connection.
pub(crate) struct RateLimit {
    limiter: Limiter,
    /// Peers whose forwarded client address is believed.
    trusted_proxies: Vec<IpNet>,
}

impl RateLimit {
    /// `None` when `server.rate_limit` is 0 (off).
    pub(crate) fn from_config(config: &ServerConfig) -> Option<Arc<Self>> {
        let (rate, burst) = config.rate_quota()?;
        let quota = Quota::per_second(rate).allow_burst(burst);
        Some(Arc::new(Self {
            limiter: RateLimiter::keyed(quota),
            trusted_proxies: config.trusted_proxies.clone(),
        }))
    }

    /// Counts one request from `peer`, or from the client a trusted proxy
    /// names in the request's headers.
    pub(crate) fn check_request<B>(
        &self,
        peer: IpAddr,
        request: &Request<B>,
    ) -> Result<(), Duration> {
        let client = super::forwarded::client_ip(peer, request.headers(), &self.trusted_proxies);
        self.check(client)
    }

    /// Counts one request of `client`; `Err` holds how long until one would be allowed.
    pub(crate) fn check(&self, client: IpAddr) -> Result<(), Duration> {
        self.limiter
            .check_key(&client_key(client))
            .map_err(|not_until| not_until.wait_time_from(self.limiter.clock().now()))
    }

    /// Clients currently tracked.
    pub(crate) fn tracked(&self) -> usize {
        self.limiter.len()
    }

    /// Forgets clients whose bucket has refilled.
    pub(crate) fn forget_idle(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    /// Runs [`RateLimit::forget_idle`] every [`SWEEP_INTERVAL`] until `stop` is cancelled.
    pub(crate) async fn sweep(self: Arc<Self>, stop: CancellationToken) {
        let mut every = tokio::time::interval(SWEEP_INTERVAL);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = every.tick() => {
                    self.forget_idle();
                    tracing::debug!(clients = self.tracked(), "rate limiter swept");
                }
            }
        }
    }
}

/// Refuses requests over the limit with 429 `rate_limited` and `Retry-After`.
/// Requests need the peer's `ConnectInfo<SocketAddr>` extension (the
/// connection loop adds it); those without one are not counted.
#[derive(Clone)]
pub(crate) struct RateLimitLayer {
    limit: Arc<RateLimit>,
}

impl RateLimitLayer {
    pub(crate) fn new(limit: Arc<RateLimit>) -> Self {
        Self { limit }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimited<S>;
    fn layer(&self, inner: S) -> RateLimited<S> {
        RateLimited {
            inner,
            limit: self.limit.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct RateLimited<S> {
    inner: S,
    limit: Arc<RateLimit>,
}

impl<S, B> Service<Request<B>> for RateLimited<S>
where
    S: Service<Request<B>, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if !EXEMPT.contains(&request.uri().path()) {
            let peer = request.extensions().get::<ConnectInfo<SocketAddr>>();
            if let Some(&ConnectInfo(peer)) = peer {
                if let Err(wait) = self.limit.check_request(peer.ip(), &request) {
                    return Either::Right(ready(Ok(ApiError::rate_limited(wait).into_response())));
                }
            }
        }
        Either::Left(self.inner.call(request))
    }
}

/// The key a client is counted under: IPv4 as is, IPv6 by its /64.
pub(crate) fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & !((1u128 << 64) - 1))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(rate: u32, burst: u32) -> Arc<RateLimit> {
        RateLimit::from_config(&ServerConfig {
            rate_limit: rate,
            rate_burst: burst,
            ..ServerConfig::default()
        })
        .expect("rate limiting is on")
    }

    #[test]
    fn off_when_the_rate_is_zero() {
        assert!(RateLimit::from_config(&ServerConfig::default()).is_none());
    }

    #[test]
    fn burst_then_refused_with_the_wait() {
        let limit = limit(1, 3);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..3 {
            limit.check(ip).unwrap();
        }
        let wait = limit.check(ip).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        // Another client has its own bucket.
        limit.check("192.0.2.2".parse().unwrap()).unwrap();
    }

    #[test]
    fn ipv6_clients_share_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_key(a), client_key(b));
        assert_ne!(client_key(a), client_key(other));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(client_key(mapped), "192.0.2.1".parse::<IpAddr>().unwrap());

        let limit = limit(1, 1);
        limit.check(a).unwrap();
        assert!(limit.check(b).is_err());
        limit.check(other).unwrap();
    }

    /// Keys are forgotten once their bucket has refilled, so memory follows the
    /// clients active recently, not every client ever seen.
    #[test]
    fn idle_clients_are_forgotten() {
        let limit = limit(1000, 1);
        for i in 0..=255u8 {
            limit.check(IpAddr::from([10, 0, 0, i])).unwrap();
        }
        assert_eq!(limit.tracked(), 256);
        // Buckets refill in 1 ms; poll rather than guess how long the sweep needs.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            limit.forget_idle();
            if limit.tracked() == 0 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} idle clients still tracked",
                limit.tracked()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}
