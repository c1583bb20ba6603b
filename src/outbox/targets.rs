//! Where webhook deliveries may go (DESIGN §9: webhook targets on private or metadata addresses
//! are refused unless allowed).
//!
//! An admin registers webhook URLs, but a URL is an instruction to the gateway to open a
//! connection from inside its network: without a check it reaches the cloud metadata service,
//! loopback services or the gateway's own admin API (server-side request forgery). So:
//! - [`classify`] names every address that is not an ordinary public one: loopback, unspecified,
//!   link-local, cloud metadata, private and shared (CGNAT) ranges, multicast, broadcast and
//!   other special-purpose ranges. IPv6 forms that carry an IPv4 address (mapped, compatible,
//!   NAT64, 6to4) are judged by that IPv4 address, so `[::ffff:127.0.0.1]` is loopback. Numeric
//!   spellings such as `0x7f000001` or `2130706433` never reach this code as names: the URL
//!   parser already turns them into 127.0.0.1.
//! - `TESSERA_WEBHOOK_ALLOWED_CIDRS` lets an operator allow ranges on purpose (a receiver on
//!   loopback or on the internal network). Nothing allows the gateway's own listener.
//! - The same check runs at registration (400 naming `url`) and before every delivery. A
//!   delivery resolves the host once, refuses it when *any* resolved address is refused (a name
//!   that answers with a metadata address among others is an attack, not a configuration), and
//!   then connects to exactly the addresses it checked: [`PinnedClients`] hands out a client
//!   whose resolver knows only those addresses, so a DNS answer that changes between the check
//!   and the connection (rebinding) is never used. Redirects and proxies are off for the same
//!   reason: either would take the request somewhere unchecked.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The setting that allows otherwise refused ranges.
pub const ALLOWED_CIDRS_SETTING: &str = "TESSERA_WEBHOOK_ALLOWED_CIDRS";

/// An address range such as `127.0.0.1/32` or `fd00::/8` (a bare address is a single host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` lies in the range (an IPv4-mapped IPv6 address counts as its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(ip) & mask == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(ip) & mask == u128::from(net)
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let network: IpAddr = addr.parse().map_err(|_| format!("'{s}' is not an address range like 10.0.0.0/8"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(p) if p <= max => p,
                _ => return Err(format!("'{s}': the prefix length must be 0 to {max}")),
            },
        };
        if network.to_canonical() != network {
            return Err(format!("'{s}': write IPv4 ranges in IPv4 form (mapped addresses match them anyway)"));
        }
        let cidr = Self { network, prefix };
        // Host bits set usually mean a typo (10.1.2.3/8 for 10.0.0.0/8): say so instead of guessing.
        let masked = cidr.mask_network();
        if masked != network {
            return Err(format!("'{s}' has bits set outside its prefix; did you mean {masked}/{prefix}?"));
        }
        Ok(cidr)
    }
}

impl Cidr {
    fn mask_network(&self) -> IpAddr {
        match self.network {
            IpAddr::V4(n) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(n) & mask))
            }
            IpAddr::V6(n) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(n) & mask))
            }
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// Parses the comma-separated value of [`ALLOWED_CIDRS_SETTING`] (empty items are ignored).
///
/// # Errors
/// The message of the first range that does not parse.
pub fn parse_cidrs<S: AsRef<str>>(items: &[S]) -> Result<Vec<Cidr>, String> {
    items
        .iter()
        .flat_map(|item| item.as_ref().split(','))
        .filter(|s| !s.trim().is_empty())
        .map(Cidr::from_str)
        .collect()
}

/// Why an address is not an ordinary public one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressClass {
    Loopback,
    Unspecified,
    LinkLocal,
    /// A cloud provider's instance metadata service.
    Metadata,
    /// RFC 1918, IPv6 unique-local and site-local.
    Private,
    /// 100.64.0.0/10 (carrier-grade NAT), not reachable from the internet.
    Shared,
    Multicast,
    Broadcast,
    /// Documentation, benchmarking, reserved and protocol-assignment ranges.
    SpecialPurpose,
}

impl AddressClass {
    pub fn describe(self) -> &'static str {
        match self {
            Self::Loopback => "a loopback address",
            Self::Unspecified => "an unspecified address",
            Self::LinkLocal => "a link-local address",
            Self::Metadata => "a cloud metadata address",
            Self::Private => "a private address",
            Self::Shared => "a shared (carrier-grade NAT) address",
            Self::Multicast => "a multicast address",
            Self::Broadcast => "the broadcast address",
            Self::SpecialPurpose => "a special-purpose address",
        }
    }
}

/// Metadata services on ordinary-looking addresses (the others are inside refused ranges anyway
/// but are named as metadata so the message says what was at stake).
const METADATA_V4: [Ipv4Addr; 3] = [
    Ipv4Addr::new(169, 254, 169, 254), // AWS, GCP, Azure, OCI, OpenStack...
    Ipv4Addr::new(100, 100, 100, 200), // Alibaba Cloud
    Ipv4Addr::new(168, 63, 129, 16),   // Azure WireServer (a public address)
];
const METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254); // AWS

fn in_v4(ip: Ipv4Addr, net: [u8; 4], prefix: u32) -> bool {
    let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(net)) & mask
}

fn in_v6(ip: Ipv6Addr, net: Ipv6Addr, prefix: u32) -> bool {
    let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
    u128::from(ip) & mask == u128::from(net) & mask
}

/// The class of a non-public address; `None` for an ordinary public unicast address.
pub fn classify(ip: IpAddr) -> Option<AddressClass> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<AddressClass> {
    use AddressClass::*;
    if METADATA_V4.contains(&ip) {
        return Some(Metadata);
    }
    let class = if in_v4(ip, [0, 0, 0, 0], 8) {
        Unspecified // 0.0.0.0 reaches the local host on Linux; the rest of 0/8 is "this network"
    } else if in_v4(ip, [127, 0, 0, 0], 8) {
        Loopback
    } else if in_v4(ip, [169, 254, 0, 0], 16) {
        LinkLocal
    } else if in_v4(ip, [10, 0, 0, 0], 8) || in_v4(ip, [172, 16, 0, 0], 12) || in_v4(ip, [192, 168, 0, 0], 16) {
        Private
    } else if in_v4(ip, [100, 64, 0, 0], 10) {
        Shared
    } else if in_v4(ip, [224, 0, 0, 0], 4) {
        Multicast
    } else if ip == Ipv4Addr::BROADCAST {
        Broadcast
    } else if in_v4(ip, [240, 0, 0, 0], 4)
        || in_v4(ip, [192, 0, 0, 0], 24)
        || in_v4(ip, [192, 0, 2, 0], 24)
        || in_v4(ip, [198, 18, 0, 0], 15)
        || in_v4(ip, [198, 51, 100, 0], 24)
        || in_v4(ip, [203, 0, 113, 0], 24)
    {
        SpecialPurpose
    } else {
        return None;
    };
    Some(class)
}

fn classify_v6(ip: Ipv6Addr) -> Option<AddressClass> {
    use AddressClass::*;
    if let Some(v4) = ip.to_ipv4_mapped() {
        return classify_v4(v4);
    }
    if ip == METADATA_V6 {
        return Some(Metadata);
    }
    if ip.is_unspecified() {
        return Some(Unspecified);
    }
    if ip.is_loopback() {
        return Some(Loopback);
    }
    let v6 = |s: [u16; 8]| Ipv6Addr::new(s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]);
    let low32 = Ipv4Addr::from((u128::from(ip) & 0xffff_ffff) as u32);
    // IPv4-compatible (::a.b.c.d, deprecated): some stacks still route it as IPv4; never public.
    if in_v6(ip, Ipv6Addr::UNSPECIFIED, 96) {
        return Some(classify_v4(low32).unwrap_or(SpecialPurpose));
    }
    // NAT64 (64:ff9b::/96) reaches the embedded IPv4 address through a translator.
    if in_v6(ip, v6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0]), 96) {
        return classify_v4(low32);
    }
    // 6to4 (2002::/16) carries the IPv4 address in bits 16..48.
    if in_v6(ip, v6([0x2002, 0, 0, 0, 0, 0, 0, 0]), 16) {
        let s = ip.segments();
        return classify_v4(Ipv4Addr::from((u32::from(s[1]) << 16) | u32::from(s[2])));
    }
    let class = if in_v6(ip, v6([0xfe80, 0, 0, 0, 0, 0, 0, 0]), 10) {
        LinkLocal
    } else if in_v6(ip, v6([0xfc00, 0, 0, 0, 0, 0, 0, 0]), 7)
        || in_v6(ip, v6([0xfec0, 0, 0, 0, 0, 0, 0, 0]), 10)
        || in_v6(ip, v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0]), 48)
    {
        Private
    } else if in_v6(ip, v6([0xff00, 0, 0, 0, 0, 0, 0, 0]), 8) {
        Multicast
    } else if in_v6(ip, v6([0x100, 0, 0, 0, 0, 0, 0, 0]), 64)
        || in_v6(ip, v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0]), 32)
        || in_v6(ip, v6([0x2001, 0, 0, 0, 0, 0, 0, 0]), 23)
    {
        SpecialPurpose
    } else {
        return None;
    };
    Some(class)
}

/// Why a webhook target was refused or could not be checked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error(
        "{} {}; such webhook targets are refused unless {ALLOWED_CIDRS_SETTING} allows them",
        subject(host, *addr),
        class.describe()
    )]
    Refused { host: String, addr: IpAddr, class: AddressClass },
    #[error("{} the gateway's own listener ({addr}); webhooks cannot target the gateway itself", subject(host, addr.ip()))]
    OwnListener { host: String, addr: SocketAddr },
    #[error("cannot resolve {host}: {cause}")]
    Unresolvable { host: String, cause: String },
    #[error("the URL has no host")]
    NoHost,
}

/// "127.0.0.1 is" for an address literal, "example.test resolves to 10.0.0.1, which is" for a name.
fn subject(host: &str, addr: IpAddr) -> String {
    match host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
        Ok(literal) if literal.to_canonical() == addr.to_canonical() => format!("{addr} is"),
        _ => format!("{host} resolves to {addr}, which is"),
    }
}

impl TargetError {
    /// True when the target was looked at and refused (as opposed to a lookup that failed).
    pub fn is_refusal(&self) -> bool {
        matches!(self, Self::Refused { .. } | Self::OwnListener { .. })
    }
}

/// The policy: allowed ranges and the gateway's own listener.
#[derive(Debug, Clone)]
pub struct WebhookTargets {
    allowed: Vec<Cidr>,
    listen: SocketAddr,
}

impl WebhookTargets {
    pub fn new(allowed: Vec<Cidr>, listen: SocketAddr) -> Self {
        Self { allowed, listen }
    }

    pub fn from_config(config: &crate::config::Config) -> Self {
        Self::new(config.webhook_allowed_cidrs.clone(), config.listen)
    }

    /// Checks one resolved address of `host`.
    ///
    /// # Errors
    /// [`TargetError::OwnListener`] or [`TargetError::Refused`].
    pub fn check(&self, host: &str, addr: SocketAddr) -> Result<(), TargetError> {
        if self.is_own_listener(addr) {
            return Err(TargetError::OwnListener { host: host.to_string(), addr });
        }
        let ip = addr.ip().to_canonical();
        match classify(ip) {
            Some(class) if !self.allowed.iter().any(|c| c.contains(ip)) => {
                Err(TargetError::Refused { host: host.to_string(), addr: ip, class })
            }
            _ => Ok(()),
        }
    }

    /// The gateway's own socket: same port, and the listen address itself, or (when listening on
    /// every interface) any address of this host. Connecting to 0.0.0.0 or :: reaches the local
    /// host too.
    fn is_own_listener(&self, addr: SocketAddr) -> bool {
        if addr.port() != self.listen.port() {
            return false;
        }
        let ip = addr.ip().to_canonical();
        let listen = self.listen.ip().to_canonical();
        if ip == listen || ip.is_unspecified() {
            return true;
        }
        listen.is_unspecified() && (ip.is_loopback() || is_local_address(ip))
    }

    /// Resolves the URL's host once (bounded by `within`) and checks every address; the
    /// addresses returned are the only ones a delivery may connect to.
    ///
    /// # Errors
    /// The first refused address, or a failed lookup.
    pub async fn resolve(&self, url: &reqwest::Url, within: Duration) -> Result<Vec<SocketAddr>, TargetError> {
        let host = url.host_str().filter(|h| !h.is_empty()).ok_or(TargetError::NoHost)?;
        let port = url.port_or_known_default().ok_or(TargetError::NoHost)?;
        let shown = host.to_string();
        // The URL parser has already turned every numeric spelling of an IPv4 address into its
        // dotted form, and brackets IPv6 literals, so what does not parse here is a name.
        let literal = host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>();
        let addrs = match literal {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => {
                let name = host;
                let unresolvable = |cause: String| TargetError::Unresolvable { host: shown.clone(), cause };
                let found = tokio::time::timeout(within, tokio::net::lookup_host((name, port)))
                    .await
                    .map_err(|_| unresolvable(format!("no answer within {within:?}")))?
                    .map_err(|e| unresolvable(e.to_string()))?;
                let mut addrs: Vec<SocketAddr> = Vec::new();
                for a in found {
                    if !addrs.contains(&a) {
                        addrs.push(a);
                    }
                }
                if addrs.is_empty() {
                    return Err(unresolvable("no address".into()));
                }
                addrs
            }
        };
        for addr in &addrs {
            self.check(&shown, *addr)?;
        }
        Ok(addrs)
    }
}

/// Whether `ip` is assigned to an interface of this host: binding to it succeeds only then.
fn is_local_address(ip: IpAddr) -> bool {
    std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// A resolver for names nobody checked: it refuses them all. Each pinned client knows its one
/// host through `resolve_to_addrs`, which reqwest consults before this.
struct NoUncheckedNames;

impl reqwest::dns::Resolve for NoUncheckedNames {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let message = format!("{} was not checked as a webhook target", name.as_str());
        Box::pin(std::future::ready(Err(message.into())))
    }
}

/// HTTP clients for deliveries, one per host, each pinned to the addresses last checked for it.
///
/// A client is reused (keeping its connection pool) while the host keeps resolving to the same
/// addresses, and replaced when the answer changes, so a request always goes to addresses that
/// were checked for that very delivery.
#[derive(Clone)]
pub struct PinnedClients {
    timeout: Duration,
    clients: Arc<Mutex<HashMap<String, PinnedClient>>>,
}

/// A client and the checked addresses it is pinned to.
struct PinnedClient {
    addrs: Vec<SocketAddr>,
    client: reqwest::Client,
}

/// More distinct hosts than this and the cache starts over (admins register a handful).
const MAX_PINNED_HOSTS: usize = 256;

impl PinnedClients {
    pub fn new(timeout: Duration) -> Self {
        Self { timeout, clients: Arc::default() }
    }

    /// A client that connects to `addrs` (already checked) for `url`'s host and to nothing else.
    ///
    /// # Errors
    /// The client cannot be built (TLS set-up).
    pub fn for_target(&self, url: &reqwest::Url, addrs: &[SocketAddr]) -> Result<reqwest::Client, reqwest::Error> {
        let host = url.host_str().unwrap_or_default().to_string();
        let mut clients = self.clients.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(pinned) = clients.get(&host)
            && pinned.addrs.as_slice() == addrs
        {
            return Ok(pinned.client.clone());
        }
        let client = reqwest::Client::builder()
            .tls_backend_rustls()
            .timeout(self.timeout)
            .redirect(reqwest::redirect::Policy::none())
            // A proxy would resolve and connect on our behalf, to places we did not check.
            .no_proxy()
            .dns_resolver(NoUncheckedNames)
            .resolve_to_addrs(&host, addrs)
            .user_agent(concat!("tessera-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()?;
        if clients.len() >= MAX_PINNED_HOSTS {
            clients.clear();
        }
        clients.insert(host, PinnedClient { addrs: addrs.to_vec(), client: client.clone() });
        Ok(client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn refused_ranges_are_classified() {
        use AddressClass::*;
        let cases = [
            ("127.0.0.1", Loopback),
            ("127.255.0.9", Loopback),
            ("::1", Loopback),
            ("0.0.0.0", Unspecified),
            ("::", Unspecified),
            ("169.254.169.254", Metadata),
            ("fd00:ec2::254", Metadata),
            ("100.100.100.200", Metadata),
            ("168.63.129.16", Metadata),
            ("169.254.1.1", LinkLocal),
            ("fe80::1", LinkLocal),
            ("10.1.2.3", Private),
            ("172.31.255.255", Private),
            ("192.168.0.1", Private),
            ("fd12:3456::1", Private),
            ("fec0::1", Private),
            ("100.64.0.1", Shared),
            ("224.0.0.1", Multicast),
            ("ff02::1", Multicast),
            ("255.255.255.255", Broadcast),
            ("240.0.0.1", SpecialPurpose),
            ("192.0.2.10", SpecialPurpose),
            ("2001:db8::1", SpecialPurpose),
            // IPv6 spellings of IPv4 addresses are judged by the IPv4 address.
            ("::ffff:127.0.0.1", Loopback),
            ("::ffff:169.254.169.254", Metadata),
            ("::127.0.0.1", Loopback),
            ("::8.8.8.8", SpecialPurpose),
            ("64:ff9b::a00:1", Private),
            ("64:ff9b::7f00:1", Loopback),
            ("2002:7f00:1::", Loopback),
            ("2002:a9fe:a9fe::1", Metadata),
        ];
        for (addr, class) in cases {
            assert_eq!(classify(ip(addr)), Some(class), "{addr}");
        }
        for public in ["8.8.8.8", "1.1.1.1", "172.32.0.1", "100.128.0.1", "2606:4700::1111", "64:ff9b::808:808"] {
            assert_eq!(classify(ip(public)), None, "{public}");
        }
    }

    #[test]
    fn numeric_host_spellings_parse_to_the_address_they_mean() {
        // The checks see the parsed host, so these never pass as "names".
        for url in ["http://0x7f000001/", "http://2130706433/", "http://0177.0.0.1/", "http://127.1/"] {
            let parsed = reqwest::Url::parse(url).unwrap();
            assert_eq!(parsed.host_str(), Some("127.0.0.1"), "{url}");
        }
    }

    #[test]
    fn cidrs_parse_strictly_and_match_mapped_addresses() {
        let c: Cidr = "127.0.0.1/32".parse().unwrap();
        assert!(c.contains(ip("127.0.0.1")));
        assert!(c.contains(ip("::ffff:127.0.0.1")));
        assert!(!c.contains(ip("127.0.0.2")));
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains(ip("10.200.1.1")) && !c.contains(ip("11.0.0.1")));
        let c: Cidr = "fd00::/8".parse().unwrap();
        assert!(c.contains(ip("fd00:ec2::254")) && !c.contains(ip("fe80::1")));
        assert_eq!("::1".parse::<Cidr>().unwrap().to_string(), "::1/128");
        assert!("0.0.0.0/0".parse::<Cidr>().unwrap().contains(ip("169.254.169.254")));
        let e = "10.1.2.3/8".parse::<Cidr>().unwrap_err();
        assert!(e.contains("did you mean 10.0.0.0/8"), "{e}");
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("localhost/32".parse::<Cidr>().is_err());
        assert!("::ffff:127.0.0.1/128".parse::<Cidr>().is_err(), "IPv4 ranges are written as IPv4");
        assert_eq!(parse_cidrs(&["127.0.0.1/32, ::1", ""]).unwrap().len(), 2);
    }

    fn targets(allowed: &[&str], listen: &str) -> WebhookTargets {
        WebhookTargets::new(parse_cidrs(allowed).unwrap(), listen.parse().unwrap())
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn allowed_ranges_open_refused_addresses_but_never_the_own_listener() {
        let strict = targets(&[], "127.0.0.1:8443");
        assert!(strict.check("h", sa("8.8.8.8:443")).is_ok());
        let e = strict.check("h", sa("127.0.0.1:9000")).unwrap_err();
        assert!(matches!(e, TargetError::Refused { class: AddressClass::Loopback, .. }), "{e}");
        assert!(e.to_string().contains(ALLOWED_CIDRS_SETTING), "{e}");
        let e = strict.check("h", sa("[::ffff:127.0.0.1]:80")).unwrap_err();
        assert!(matches!(e, TargetError::Refused { addr, .. } if addr == ip("127.0.0.1")), "{e}");

        let open = targets(&["127.0.0.1/32"], "127.0.0.1:8443");
        assert!(open.check("h", sa("127.0.0.1:9000")).is_ok());
        assert!(open.check("h", sa("[::ffff:127.0.0.1]:9000")).is_ok());
        assert!(open.check("h", sa("[::1]:9000")).is_err(), "only what is allowed");
        assert!(open.check("h", sa("169.254.169.254:80")).is_err());
        for own in ["127.0.0.1:8443", "0.0.0.0:8443", "[::ffff:127.0.0.1]:8443"] {
            let e = open.check("h", sa(own)).unwrap_err();
            assert!(matches!(e, TargetError::OwnListener { .. }), "{own}: {e}");
        }
        let everything = targets(&["0.0.0.0/0", "::/0"], "0.0.0.0:8443");
        assert!(everything.check("h", sa("169.254.169.254:80")).is_ok());
        assert!(everything.check("h", sa("127.0.0.1:8443")).is_err(), "any local address on the listen port");
        assert!(everything.check("h", sa("127.0.0.1:8444")).is_ok());
    }

    #[tokio::test]
    async fn resolve_checks_every_address_of_a_name() {
        let strict = targets(&[], "127.0.0.1:8443");
        let url = reqwest::Url::parse("http://localhost:9000/hook").unwrap();
        let e = strict.resolve(&url, Duration::from_secs(5)).await.unwrap_err();
        assert!(e.is_refusal(), "{e}");
        let url = reqwest::Url::parse("http://0x7f000001:9000/").unwrap();
        assert!(strict.resolve(&url, Duration::from_secs(5)).await.unwrap_err().is_refusal());
        let open = targets(&["127.0.0.0/8", "::1/128"], "127.0.0.1:8443");
        let addrs = open.resolve(&reqwest::Url::parse("http://localhost:9000/").unwrap(), Duration::from_secs(5)).await;
        let addrs = addrs.unwrap();
        assert!(addrs.iter().all(|a| a.port() == 9000 && a.ip().is_loopback()), "{addrs:?}");
        let url = reqwest::Url::parse("http://localhost:8443/api/admin/queues").unwrap();
        assert!(open.resolve(&url, Duration::from_secs(5)).await.is_err(), "the gateway itself");
    }
}
