//! A synthetic LDAPS "domain controller" that serves a generated domain of N users and G groups, for
//! measuring the agent's own cost per object far beyond what Samba can load in reasonable time.
//!
//! It answers exactly what forestsync's DC actor and reader send (actors/src/directory):
//! - simple bind with the configured DN and password (anything else: invalidCredentials);
//! - the rootDSE (`dnsHostName`, `defaultNamingContext`, `highestCommittedUSN`, `dsServiceName`, …);
//! - a base search on `dsServiceName` (the NTDS Settings object: `invocationId`, `objectGUID`);
//! - DirSync (1.2.840.113556.1.4.841) on the base DN, subtree: like Samba, every user and group on an
//!   empty cookie in one round (max-bytes ignored, `moreResults` 0), a group's members as
//!   `member;range=1-1` with INCREMENTAL_VALUES; nothing on the cookie it returned (the data never
//!   changes); an unknown cookie is refused with unavailableCriticalExtension (12), as Samba does;
//! - base searches by DN or by `<GUID=…>`, with ranged `member;range=low-high` reads labelled
//!   `low-*` on the last window (Samba's behaviour);
//! - a subtree search whose filter is `(objectGUID=…)` or an OR of them (the reader's kind lookup);
//!   Show Deleted and paged-results controls are accepted (all results in one page).
//!
//! Anything else is answered with an LDAP error (unwillingToPerform, protocolError…), never a panic.
//!
//! The data is generated, deterministic, and never materialised: every entry is computed from its
//! index when it is sent and encoded into one reusable buffer, so the server stays small at a million
//! users (the largest single message is the large group's DirSync entry with all its member DNs).
//!
//! Layout under `DC=synthetic,DC=test`: users `CN=synu{i},OU=Users,OU=Synthetic`; the root group
//! (the ADI group) `CN=JumpCloud,OU=ADI`; groups `CN=syng{j},OU=Groups,OU=Synthetic`: the root
//! holds the large group and G1 = max(1, G/10) first-level groups; each of the G2 = G − G1
//! second-level groups is in first-level group `m % G1`; user `i` is in second-level group `i % G2`
//! and in the large group (users `0..large`).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use forestsync_actors::model::ObjectGuid;
use ldap3::asn1::{parse_tag, StructureTag, TagClass, PL};
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

pub const BASE_DN: &str = "DC=synthetic,DC=test";
pub const ROOT_GROUP_DN: &str = "CN=JumpCloud,OU=ADI,DC=synthetic,DC=test";
pub const BIND_DN: &str = "CN=svc-forestsync,CN=Users,DC=synthetic,DC=test";
pub const BIND_PASSWORD: &str = "Synthetic-Bind-Pw1";
const DS_SERVICE_NAME: &str = "CN=NTDS Settings,CN=DC1,CN=Servers,CN=Default-First-Site-Name,CN=Sites,CN=Configuration,DC=synthetic,DC=test";
const USERS_SUFFIX: &str = ",ou=users,ou=synthetic,dc=synthetic,dc=test";
const GROUPS_SUFFIX: &str = ",ou=groups,ou=synthetic,dc=synthetic,dc=test";

const DIRSYNC_OID: &str = "1.2.840.113556.1.4.841";
const SHOW_DELETED_OID: &str = "1.2.840.113556.1.4.417";
const PAGED_OID: &str = "1.2.840.113556.1.4.319";
const INCREMENTAL_VALUES: i64 = 0x8000_0000u32 as i32 as i64;
const COOKIE_PREFIX: &[u8] = b"forestsync-synthetic-dirsync:";
/// The largest request accepted (requests are small; a bigger one closes the connection).
const MAX_REQUEST: usize = 1 << 20;
/// USN of the first generated object.
const FIRST_USN: u64 = 10_000;

// LDAP result codes.
const SUCCESS: u8 = 0;
const PROTOCOL_ERROR: u8 = 2;
const UNAVAILABLE_CRITICAL_EXTENSION: u8 = 12;
const NO_SUCH_OBJECT: u8 = 32;
const INVALID_CREDENTIALS: u8 = 49;
const INSUFFICIENT_ACCESS: u8 = 50;
const UNWILLING_TO_PERFORM: u8 = 53;

/// The generated domain's shape.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub users: u64,
    /// Groups besides the root group and the large group (at least 2: one of each level).
    pub groups: u64,
    /// Members of the large group (users `0..large`).
    pub large: u64,
}

impl Shape {
    pub fn new(users: u64, groups: u64, large: u64) -> Result<Shape> {
        if groups < 2 {
            bail!("--groups must be at least 2 (one first-level and one second-level group)");
        }
        if users > 100_000_000 || groups > 800_000 {
            bail!("too many objects for the synthetic GUID/RID scheme");
        }
        Ok(Shape {
            users,
            groups,
            large: large.min(users),
        })
    }
    fn g1(&self) -> u64 {
        (self.groups / 10).max(1)
    }
    fn g2(&self) -> u64 {
        self.groups - self.g1()
    }
    /// Group indices: 0 root, 1 large, 2.. first level, then second level.
    fn group_count(&self) -> u64 {
        self.groups + 2
    }
    pub fn highest_usn(&self) -> u64 {
        FIRST_USN + self.users + self.group_count()
    }
    /// The memberships JumpCloud should hold once synced: nesting flattened, the root group not synced.
    /// Each user is in its second-level group, that group's first-level group and (if among the
    /// first `large`) the large group.
    pub fn expected_memberships(&self) -> u64 {
        2 * self.users + self.large
    }
    /// Groups JumpCloud should hold (all but the root group).
    pub fn expected_groups(&self) -> u64 {
        self.groups + 1
    }
    pub fn username(i: u64) -> String {
        format!("synu{i}")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Obj {
    User(u64),
    Group(u64),
}

const KIND_USER: u8 = 1;
const KIND_GROUP: u8 = 2;

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Deterministic, random-looking and invertible: 8 mixed bytes, a marker, the kind, a 40-bit index.
fn guid_bytes(kind: u8, index: u64) -> [u8; 16] {
    let mut g = [0u8; 16];
    g[..8].copy_from_slice(&splitmix(((kind as u64) << 48) | index).to_le_bytes());
    g[8] = 0x5f;
    g[9] = 0x17;
    g[10] = kind;
    g[11..16].copy_from_slice(&index.to_be_bytes()[3..8]);
    g
}

fn guid_of(obj: Obj) -> [u8; 16] {
    match obj {
        Obj::User(i) => guid_bytes(KIND_USER, i),
        Obj::Group(j) => guid_bytes(KIND_GROUP, j),
    }
}

fn sid(rid: u32) -> Vec<u8> {
    let mut s = vec![1u8, 5, 0, 0, 0, 0, 0, 5];
    for sub in [21u32, 1_111_111_111, 2_222_222_222, 3_333_333_333, rid] {
        s.extend(sub.to_le_bytes());
    }
    s
}

struct Domain {
    shape: Shape,
    invocation_id: [u8; 16],
    dsa_guid: [u8; 16],
}

impl Domain {
    fn obj_of_guid(&self, g: &[u8]) -> Option<Obj> {
        if g.len() != 16 || g[8] != 0x5f || g[9] != 0x17 {
            return None;
        }
        let mut idx = [0u8; 8];
        idx[3..8].copy_from_slice(&g[11..16]);
        let index = u64::from_be_bytes(idx);
        let obj = match g[10] {
            KIND_USER if index < self.shape.users => Obj::User(index),
            KIND_GROUP if index < self.shape.group_count() => Obj::Group(index),
            _ => return None,
        };
        (guid_of(obj) == g).then_some(obj)
    }

    fn obj_of_dn(&self, dn: &str) -> Option<Obj> {
        let lower = dn.trim().to_ascii_lowercase();
        if lower == ROOT_GROUP_DN.to_ascii_lowercase() {
            return Some(Obj::Group(0));
        }
        if let Some(rest) = lower.strip_suffix(USERS_SUFFIX) {
            let i: u64 = rest.strip_prefix("cn=synu")?.parse().ok()?;
            return (i < self.shape.users && rest == format!("cn=synu{i}")).then_some(Obj::User(i));
        }
        if let Some(rest) = lower.strip_suffix(GROUPS_SUFFIX) {
            if rest == "cn=synlarge" {
                return Some(Obj::Group(1));
            }
            let j: u64 = rest.strip_prefix("cn=syng")?.parse().ok()?;
            return (j >= 2 && j < self.shape.group_count() && rest == format!("cn=syng{j}"))
                .then_some(Obj::Group(j));
        }
        None
    }

    fn dn(&self, obj: Obj) -> String {
        match obj {
            Obj::User(i) => format!("CN=synu{i},OU=Users,OU=Synthetic,{BASE_DN}"),
            Obj::Group(0) => ROOT_GROUP_DN.to_owned(),
            Obj::Group(1) => format!("CN=synlarge,OU=Groups,OU=Synthetic,{BASE_DN}"),
            Obj::Group(j) => format!("CN=syng{j},OU=Groups,OU=Synthetic,{BASE_DN}"),
        }
    }

    fn cn(&self, obj: Obj) -> String {
        match obj {
            Obj::User(i) => Shape::username(i),
            Obj::Group(0) => "JumpCloud".into(),
            Obj::Group(1) => "synlarge".into(),
            Obj::Group(j) => format!("syng{j}"),
        }
    }

    fn usn(&self, obj: Obj) -> u64 {
        match obj {
            Obj::User(i) => FIRST_USN + i,
            Obj::Group(j) => FIRST_USN + self.shape.users + j,
        }
    }

    /// How many `member` values group `j` has.
    fn member_count(&self, j: u64) -> u64 {
        let s = &self.shape;
        let (g1, g2) = (s.g1(), s.g2());
        match j {
            0 => 1 + g1,
            1 => s.large,
            j if j < 2 + g1 => {
                let k = j - 2;
                if k < g2 {
                    (g2 - k).div_ceil(g1)
                } else {
                    0
                }
            }
            j => {
                let m = j - 2 - g1;
                if m < s.users {
                    (s.users - m).div_ceil(g2)
                } else {
                    0
                }
            }
        }
    }

    /// The `nth` member of group `j` (`nth < member_count(j)`).
    fn member(&self, j: u64, nth: u64) -> Obj {
        let s = &self.shape;
        let (g1, g2) = (s.g1(), s.g2());
        match j {
            0 if nth == 0 => Obj::Group(1),
            0 => Obj::Group(2 + nth - 1),
            1 => Obj::User(nth),
            j if j < 2 + g1 => Obj::Group(2 + g1 + (j - 2) + nth * g1),
            j => Obj::User((j - 2 - g1) + nth * g2),
        }
    }

    /// The value(s) of a non-member attribute (lower-case name), `None` when the object has none.
    fn values(&self, obj: Obj, attr: &str) -> Option<Vec<Vec<u8>>> {
        let one = |s: String| Some(vec![s.into_bytes()]);
        match (attr, obj) {
            ("objectguid", _) => Some(vec![guid_of(obj).to_vec()]),
            ("distinguishedname", _) => one(self.dn(obj)),
            ("name" | "cn", _) => one(self.cn(obj)),
            ("samaccountname", _) => one(self.cn(obj)),
            ("instancetype", _) => one("4".into()),
            ("usnchanged" | "usncreated", _) => one(self.usn(obj).to_string()),
            ("whenchanged" | "whencreated", _) => one("20260101000000.0Z".into()),
            ("objectclass", Obj::User(_)) => Some(
                ["top", "person", "organizationalPerson", "user"]
                    .iter()
                    .map(|c| c.as_bytes().to_vec())
                    .collect(),
            ),
            ("objectclass", Obj::Group(_)) => Some(vec![b"top".to_vec(), b"group".to_vec()]),
            ("objectsid", Obj::User(i)) => Some(vec![sid(1_000_000 + i as u32)]),
            ("objectsid", Obj::Group(j)) => Some(vec![sid(100_000 + j as u32)]),
            ("userprincipalname", Obj::User(i)) => one(format!("synu{i}@synthetic.test")),
            ("mail", Obj::User(i)) => one(format!("synu{i}@synthetic.test")),
            ("givenname", Obj::User(i)) => one(format!("Given{i}")),
            ("sn", Obj::User(i)) => one(format!("Family{i}")),
            ("displayname", Obj::User(i)) => one(format!("Given{i} Family{i}")),
            ("useraccountcontrol", Obj::User(_)) => one("512".into()),
            ("primarygroupid", Obj::User(_)) => one("513".into()),
            ("pwdlastset", Obj::User(_)) => one("134000000000000000".into()),
            // Global security group.
            ("grouptype", Obj::Group(_)) => one("-2147483646".into()),
            _ => None,
        }
    }
}

/// The attribute names of the entries, as AD spells them (answers use these).
const ATTRIBUTES: [&str; 23] = [
    "objectGUID",
    "objectSid",
    "objectClass",
    "distinguishedName",
    "name",
    "cn",
    "sAMAccountName",
    "userPrincipalName",
    "givenName",
    "sn",
    "mail",
    "displayName",
    "userAccountControl",
    "primaryGroupID",
    "pwdLastSet",
    "groupType",
    "instanceType",
    "uSNChanged",
    "uSNCreated",
    "whenChanged",
    "whenCreated",
    "member",
    "invocationId",
];

// ---------------------------------------------------------------------------------------------
// BER encoding (definite lengths; the few tags LDAP answers need).

fn put_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = (len as u64).to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (8 - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

fn tlv(out: &mut Vec<u8>, tag: u8, content: &[u8]) {
    out.push(tag);
    put_len(out, content.len());
    out.extend_from_slice(content);
}

fn int_content(v: i64) -> Vec<u8> {
    let bytes = v.to_be_bytes();
    let mut start = 0;
    while start < 7 {
        let (b, next) = (bytes[start], bytes[start + 1]);
        if (b == 0 && next & 0x80 == 0) || (b == 0xff && next & 0x80 != 0) {
            start += 1;
        } else {
            break;
        }
    }
    bytes[start..].to_vec()
}

fn integer(out: &mut Vec<u8>, tag: u8, v: i64) {
    tlv(out, tag, &int_content(v));
}

/// One `PartialAttribute`: SEQUENCE { type, SET OF value }.
fn attribute<'a>(out: &mut Vec<u8>, name: &str, values: impl Iterator<Item = &'a [u8]>) {
    let mut set = Vec::new();
    for v in values {
        tlv(&mut set, 0x04, v);
    }
    let mut seq = Vec::with_capacity(set.len() + name.len() + 8);
    tlv(&mut seq, 0x04, name.as_bytes());
    tlv(&mut seq, 0x31, &set);
    tlv(out, 0x30, &seq);
}

/// An LDAPMessage around an encoded protocol op, with optional encoded controls ([0] content).
fn message(out: &mut Vec<u8>, id: i64, op: &[u8], controls: Option<&[u8]>) {
    let mut body = Vec::with_capacity(op.len() + 16);
    integer(&mut body, 0x02, id);
    body.extend_from_slice(op);
    if let Some(c) = controls {
        tlv(&mut body, 0xa0, c);
    }
    tlv(out, 0x30, &body);
}

/// An LDAPResult-shaped op (BindResponse, SearchResultDone, …) with application tag `app`.
fn result_op(app: u8, rc: u8, matched: &str, text: &str) -> Vec<u8> {
    let mut content = Vec::new();
    tlv(&mut content, 0x0a, &[rc]);
    tlv(&mut content, 0x04, matched.as_bytes());
    tlv(&mut content, 0x04, text.as_bytes());
    let mut op = Vec::new();
    tlv(&mut op, 0x60 | app, &content);
    op
}

/// One control: SEQUENCE { OID, value }.
fn control(out: &mut Vec<u8>, oid: &str, value: &[u8]) {
    let mut c = Vec::new();
    tlv(&mut c, 0x04, oid.as_bytes());
    tlv(&mut c, 0x04, value);
    tlv(out, 0x30, &c);
}

// ---------------------------------------------------------------------------------------------
// Request decoding (ldap3's BER parser; requests are small).

fn int_of(tag: &StructureTag) -> Option<i64> {
    match &tag.payload {
        PL::P(b) if !b.is_empty() && b.len() <= 8 => {
            let mut v: i64 = if b[0] & 0x80 != 0 { -1 } else { 0 };
            for x in b {
                v = (v << 8) | *x as i64;
            }
            Some(v)
        }
        _ => None,
    }
}

fn bytes_of(tag: &StructureTag) -> Option<&[u8]> {
    match &tag.payload {
        PL::P(b) => Some(b),
        _ => None,
    }
}

fn children(tag: &StructureTag) -> Option<&[StructureTag]> {
    match &tag.payload {
        PL::C(c) => Some(c),
        _ => None,
    }
}

struct Control {
    oid: String,
    critical: bool,
    value: Option<Vec<u8>>,
}

fn parse_controls(tag: &StructureTag) -> Option<Vec<Control>> {
    let mut out = Vec::new();
    for c in children(tag)? {
        let items = children(c)?;
        let oid = String::from_utf8(bytes_of(items.first()?)?.to_vec()).ok()?;
        let mut critical = false;
        let mut value = None;
        for item in &items[1..] {
            match item.id {
                1 => critical = bytes_of(item)?.first().is_some_and(|b| *b != 0),
                4 => value = Some(bytes_of(item)?.to_vec()),
                _ => return None,
            }
        }
        out.push(Control {
            oid,
            critical,
            value,
        });
    }
    Some(out)
}

/// The DirSync request value: SEQUENCE { flags INTEGER, maxBytes INTEGER, cookie OCTET STRING }.
fn parse_dirsync(value: &[u8]) -> Option<(i64, Vec<u8>)> {
    let (_, tag) = parse_tag(value).ok()?;
    let items = children(&tag)?;
    let [flags, _max, cookie] = items else {
        return None;
    };
    Some((int_of(flags)?, bytes_of(cookie)?.to_vec()))
}

/// The GUIDs of a filter that is `(objectGUID=…)` or an OR of such; `None` for any other filter.
fn guid_filter(filter: &StructureTag) -> Option<Vec<Vec<u8>>> {
    if filter.class != TagClass::Context {
        return None;
    }
    match filter.id {
        1 => {
            let mut all = Vec::new();
            for f in children(filter)? {
                all.extend(guid_filter(f)?);
            }
            Some(all)
        }
        3 => {
            let items = children(filter)?;
            let [desc, value] = items else { return None };
            if !bytes_of(desc)?.eq_ignore_ascii_case(b"objectGUID") {
                return None;
            }
            Some(vec![bytes_of(value)?.to_vec()])
        }
        _ => None,
    }
}

/// What a search asks for: `None` = every attribute, else lower-case names and an optional member range.
struct Wanted {
    all: bool,
    names: Vec<String>,
    member_range: Option<(u64, Option<u64>)>,
    plain_member: bool,
}

impl Wanted {
    fn parse(list: &[StructureTag]) -> Option<Wanted> {
        let mut w = Wanted {
            all: list.is_empty(),
            names: Vec::new(),
            member_range: None,
            plain_member: false,
        };
        for a in list {
            let name = String::from_utf8(bytes_of(a)?.to_vec()).ok()?;
            let lower = name.to_ascii_lowercase();
            if lower == "*" {
                w.all = true;
            } else if lower == "member" {
                w.plain_member = true;
            } else if let Some(spec) = name.strip_prefix("member;range=") {
                // Case-sensitive option, as on Samba (`Member;Range=…` is not a range request).
                let (low, high) = spec.split_once('-')?;
                let low = low.parse().ok()?;
                let high = if high == "*" {
                    None
                } else {
                    Some(high.parse().ok()?)
                };
                w.member_range = Some((low, high));
            } else if lower.starts_with("member;") {
                w.plain_member = true;
            } else {
                w.names.push(lower);
            }
        }
        if w.all {
            w.plain_member = true;
        }
        Some(w)
    }

    fn wants(&self, lower: &str) -> bool {
        self.all || self.names.iter().any(|n| n == lower)
    }
}

// ---------------------------------------------------------------------------------------------
// The server.

/// A running synthetic DC; stops when dropped.
pub struct SyntheticDc {
    addr: SocketAddr,
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    stop: watch::Sender<bool>,
}

impl SyntheticDc {
    /// Starts the DC on its own thread and single-threaded runtime, so the driver's work (the
    /// emulator, state polling) never delays its answers (the agent's probe allows 2 s).
    pub async fn start(shape: Shape) -> Result<SyntheticDc> {
        let (acceptor, ca_pem, ca_der) = tls_acceptor()?;
        let std_listener =
            std::net::TcpListener::bind("127.0.0.1:0").context("binding the synthetic DC")?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let domain = Arc::new(Domain {
            shape,
            invocation_id: guid_bytes(3, 1),
            dsa_guid: guid_bytes(3, 2),
        });
        let (stop, stop_rx) = watch::channel(false);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("the synthetic DC's runtime")?;
        std::thread::Builder::new()
            .name("synthetic-dc".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let Ok(listener) = TcpListener::from_std(std_listener) else {
                        return;
                    };
                    accept_loop(listener, acceptor, domain, stop_rx).await
                })
            })
            .context("starting the synthetic DC's thread")?;
        Ok(SyntheticDc {
            addr,
            ca_pem,
            ca_der,
            stop,
        })
    }

    pub fn url(&self) -> String {
        format!("ldaps://127.0.0.1:{}", self.addr.port())
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The CA certificate (DER), for a client's root store.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn ca_der(&self) -> CertificateDer<'static> {
        self.ca_der.clone()
    }
}

impl Drop for SyntheticDc {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    domain: Arc<Domain>,
    mut stop_rx: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = stop_rx.changed() => return,
            accepted = listener.accept() => {
                let Ok((tcp, _)) = accepted else { continue };
                let _ = tcp.set_nodelay(true);
                let (acceptor, domain, stop_rx) = (acceptor.clone(), domain.clone(), stop_rx.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let _ = serve(tls, &domain, stop_rx).await;
                });
            }
        }
    }
}

/// LDAPS with a throw-away CA (the emulator's certificate maker: names `127.0.0.1` and `localhost`).
fn tls_acceptor() -> Result<(TlsAcceptor, String, CertificateDer<'static>)> {
    let certs = jcemu::certs::generate(std::net::IpAddr::from([127, 0, 0, 1]))?;
    let ca_der = certs
        .chain
        .last()
        .context("the certificate chain ends with its CA")?
        .clone();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs.chain, certs.key)?;
    Ok((TlsAcceptor::from(Arc::new(cfg)), certs.ca_pem, ca_der))
}

/// The length of the first complete BER element in `buf`: `Ok(None)` when more bytes are needed.
fn frame_len(buf: &[u8]) -> Result<Option<usize>> {
    if buf.len() < 2 {
        return Ok(None);
    }
    if buf[0] != 0x30 {
        bail!("not an LDAPMessage");
    }
    let (header, len) = if buf[1] < 0x80 {
        (2, buf[1] as usize)
    } else {
        let n = (buf[1] & 0x7f) as usize;
        if n == 0 || n > 4 {
            bail!("unsupported BER length");
        }
        if buf.len() < 2 + n {
            return Ok(None);
        }
        let len = buf[2..2 + n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | *b as usize);
        (2 + n, len)
    };
    if header + len > MAX_REQUEST {
        bail!("request too large");
    }
    Ok((buf.len() >= header + len).then_some(header + len))
}

struct Conn<'a, W> {
    out: BufWriter<W>,
    domain: &'a Domain,
    bound: bool,
    /// Reusable encoding buffers.
    entry_buf: Vec<u8>,
    msg: Vec<u8>,
}

async fn serve<S>(stream: S, domain: &Domain, mut stop: watch::Receiver<bool>) -> Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut rd, wr) = tokio::io::split(stream);
    let mut conn = Conn {
        out: BufWriter::with_capacity(64 * 1024, wr),
        domain,
        bound: false,
        entry_buf: Vec::new(),
        msg: Vec::new(),
    };
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        while let Some(len) = frame_len(&buf)? {
            let frame: Vec<u8> = buf.drain(..len).collect();
            if !conn.handle(&frame).await? {
                return Ok(());
            }
        }
        let n = tokio::select! {
            _ = stop.changed() => return Ok(()),
            n = rd.read(&mut chunk) => n?,
        };
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

impl<W: AsyncWrite + Unpin> Conn<'_, W> {
    /// Handles one request; `false` ends the connection (unbind).
    async fn handle(&mut self, frame: &[u8]) -> Result<bool> {
        let Ok((_, msg)) = parse_tag(frame) else {
            return Ok(false); // undecodable: drop the connection, as a DC would
        };
        let Some(items) = children(&msg) else {
            return Ok(false);
        };
        let (Some(id), Some(op)) = (items.first().and_then(int_of), items.get(1)) else {
            return Ok(false);
        };
        let controls = match items.get(2) {
            Some(c) if c.class == TagClass::Context && c.id == 0 => parse_controls(c),
            Some(_) => None,
            None => Some(Vec::new()),
        };
        if op.class != TagClass::Application {
            return Ok(false);
        }
        let Some(controls) = controls else {
            self.reply(id, op.id, PROTOCOL_ERROR, "undecodable controls")
                .await?;
            return Ok(true);
        };
        match op.id {
            0 => self.bind(id, op).await?,
            2 => return Ok(false), // unbind
            3 => self.search(id, op, &controls).await?,
            16 => {} // abandon: every operation has already finished
            // modify, add, delete, modifyDN, compare, extended: answered with their response op.
            6 | 8 | 10 | 12 | 14 | 23 => {
                self.reply(
                    id,
                    op.id,
                    UNWILLING_TO_PERFORM,
                    "the synthetic DC is read-only",
                )
                .await?
            }
            _ => return Ok(false),
        }
        self.out.flush().await?;
        Ok(true)
    }

    /// The response op for request op `req` (`req + 1`) with result `rc`.
    async fn reply(&mut self, id: i64, req: u64, rc: u8, text: &str) -> Result<()> {
        let app = match req {
            23 => 24,
            3 => 5,
            r if r < 30 => (r + 1) as u8,
            _ => return Ok(()),
        };
        let op = result_op(app, rc, "", text);
        self.send(id, &op, None).await
    }

    async fn send(&mut self, id: i64, op: &[u8], controls: Option<&[u8]>) -> Result<()> {
        self.msg.clear();
        message(&mut self.msg, id, op, controls);
        self.out.write_all(&self.msg).await?;
        Ok(())
    }

    async fn bind(&mut self, id: i64, op: &StructureTag) -> Result<()> {
        let ok = children(op).and_then(|items| {
            let name = bytes_of(items.get(1)?)?;
            let auth = items.get(2)?;
            // Simple authentication only: [0] password.
            if auth.class != TagClass::Context || auth.id != 0 {
                return Some(false);
            }
            let pw = bytes_of(auth)?;
            Some(name.eq_ignore_ascii_case(BIND_DN.as_bytes()) && pw == BIND_PASSWORD.as_bytes())
        });
        let rc = match ok {
            Some(true) => SUCCESS,
            Some(false) => INVALID_CREDENTIALS,
            None => PROTOCOL_ERROR,
        };
        self.bound = rc == SUCCESS;
        let op = result_op(1, rc, "", if rc == SUCCESS { "" } else { "bind refused" });
        self.send(id, &op, None).await
    }

    async fn done(&mut self, id: i64, rc: u8, text: &str, controls: Option<&[u8]>) -> Result<()> {
        let op = result_op(5, rc, "", text);
        self.send(id, &op, controls).await
    }

    async fn search(&mut self, id: i64, op: &StructureTag, controls: &[Control]) -> Result<()> {
        let Some(items) = children(op) else {
            return self.done(id, PROTOCOL_ERROR, "bad search", None).await;
        };
        let parsed = (|| {
            let base = String::from_utf8(bytes_of(items.first()?)?.to_vec()).ok()?;
            let scope = int_of(items.get(1)?)?;
            let filter = items.get(6)?;
            let attrs = Wanted::parse(children(items.get(7)?)?)?;
            Some((base, scope, filter, attrs))
        })();
        let Some((base, scope, filter, wanted)) = parsed else {
            return self.done(id, PROTOCOL_ERROR, "bad search", None).await;
        };
        let mut dirsync = None;
        let mut paged = false;
        for c in controls {
            match c.oid.as_str() {
                DIRSYNC_OID => match c.value.as_deref().and_then(parse_dirsync) {
                    Some(d) => dirsync = Some(d),
                    None => {
                        return self
                            .done(id, PROTOCOL_ERROR, "bad DirSync control", None)
                            .await
                    }
                },
                SHOW_DELETED_OID => {}
                PAGED_OID => paged = true,
                _ if c.critical => {
                    return self
                        .done(
                            id,
                            UNAVAILABLE_CRITICAL_EXTENSION,
                            "unsupported critical control",
                            None,
                        )
                        .await
                }
                _ => {}
            }
        }
        if scope == 0 && base.is_empty() {
            return self.root_dse(id, &wanted).await;
        }
        if !self.bound {
            return self.done(id, INSUFFICIENT_ACCESS, "bind first", None).await;
        }
        if let Some((flags, cookie)) = dirsync {
            if scope != 2 || !base.eq_ignore_ascii_case(BASE_DN) {
                return self
                    .done(
                        id,
                        UNWILLING_TO_PERFORM,
                        "DirSync needs the naming context root, subtree",
                        None,
                    )
                    .await;
            }
            return self.dirsync(id, flags, &cookie, &wanted).await;
        }
        if scope == 0 {
            return self.base(id, &base, &wanted).await;
        }
        // Subtree/one-level: only the reader's kind lookup by objectGUID.
        let Some(guids) = guid_filter(filter) else {
            return self
                .done(
                    id,
                    UNWILLING_TO_PERFORM,
                    "the synthetic DC serves DirSync, base reads and objectGUID lookups only",
                    None,
                )
                .await;
        };
        let domain = self.domain;
        for g in guids {
            if let Some(obj) = domain.obj_of_guid(&g) {
                self.entry(id, obj, &wanted, MemberForm::Plain).await?;
            }
        }
        let ctrl = paged.then(|| {
            let mut v = Vec::new();
            let mut seq = Vec::new();
            integer(&mut seq, 0x02, 0);
            tlv(&mut seq, 0x04, b"");
            tlv(&mut v, 0x30, &seq);
            let mut c = Vec::new();
            control(&mut c, PAGED_OID, &v);
            c
        });
        self.done(id, SUCCESS, "", ctrl.as_deref()).await
    }

    async fn root_dse(&mut self, id: i64, wanted: &Wanted) -> Result<()> {
        let usn = self.domain.shape.highest_usn().to_string();
        let attrs: [(&str, &str); 6] = [
            ("dnsHostName", "dc1.synthetic.test"),
            ("defaultNamingContext", BASE_DN),
            ("highestCommittedUSN", &usn),
            ("dsServiceName", DS_SERVICE_NAME),
            ("supportedLDAPVersion", "3"),
            ("supportedControl", DIRSYNC_OID),
        ];
        let mut list = Vec::new();
        for (name, value) in attrs {
            if wanted.wants(&name.to_ascii_lowercase()) {
                attribute(&mut list, name, std::iter::once(value.as_bytes()));
            }
        }
        self.raw_entry(id, "", &list).await?;
        self.done(id, SUCCESS, "", None).await
    }

    async fn base(&mut self, id: i64, base: &str, wanted: &Wanted) -> Result<()> {
        let domain = self.domain;
        if base.eq_ignore_ascii_case(DS_SERVICE_NAME) {
            let mut list = Vec::new();
            if wanted.wants("invocationid") {
                attribute(
                    &mut list,
                    "invocationId",
                    std::iter::once(&domain.invocation_id[..]),
                );
            }
            if wanted.wants("objectguid") {
                attribute(
                    &mut list,
                    "objectGUID",
                    std::iter::once(&domain.dsa_guid[..]),
                );
            }
            if wanted.wants("objectclass") {
                attribute(
                    &mut list,
                    "objectClass",
                    [&b"top"[..], b"applicationSettings", b"nTDSDSA"].into_iter(),
                );
            }
            self.raw_entry(id, DS_SERVICE_NAME, &list).await?;
            return self.done(id, SUCCESS, "", None).await;
        }
        let obj = match base
            .strip_prefix("<GUID=")
            .and_then(|g| g.strip_suffix('>'))
        {
            Some(text) => text
                .parse::<ObjectGuid>()
                .ok()
                .and_then(|g| domain.obj_of_guid(&g.0)),
            None => domain.obj_of_dn(base),
        };
        let Some(obj) = obj else {
            let op = result_op(5, NO_SUCH_OBJECT, BASE_DN, "no such object");
            return self.send(id, &op, None).await;
        };
        let form = match wanted.member_range {
            Some((low, high)) => MemberForm::Range(low, high),
            None => MemberForm::Plain,
        };
        self.entry(id, obj, wanted, form).await?;
        self.done(id, SUCCESS, "", None).await
    }

    async fn dirsync(&mut self, id: i64, flags: i64, cookie: &[u8], wanted: &Wanted) -> Result<()> {
        let domain = self.domain;
        let current = [
            COOKIE_PREFIX,
            domain.shape.highest_usn().to_string().as_bytes(),
        ]
        .concat();
        if !cookie.is_empty() && cookie != current.as_slice() {
            return self
                .done(
                    id,
                    UNAVAILABLE_CRITICAL_EXTENSION,
                    "Unable to unmarshall cookie",
                    None,
                )
                .await;
        }
        if cookie.is_empty() {
            let form = if flags & INCREMENTAL_VALUES != 0 {
                MemberForm::Added
            } else {
                MemberForm::Plain
            };
            for j in 0..domain.shape.group_count() {
                self.entry(id, Obj::Group(j), wanted, form).await?;
            }
            for i in 0..domain.shape.users {
                self.entry(id, Obj::User(i), wanted, form).await?;
            }
        }
        // SEQUENCE { moreResults 0, unused 0, cookie }
        let mut seq = Vec::new();
        integer(&mut seq, 0x02, 0);
        integer(&mut seq, 0x02, 0);
        tlv(&mut seq, 0x04, &current);
        let mut value = Vec::new();
        tlv(&mut value, 0x30, &seq);
        let mut ctrl = Vec::new();
        control(&mut ctrl, DIRSYNC_OID, &value);
        self.done(id, SUCCESS, "", Some(&ctrl)).await
    }

    async fn raw_entry(&mut self, id: i64, dn: &str, attr_list: &[u8]) -> Result<()> {
        let mut content = Vec::with_capacity(attr_list.len() + dn.len() + 16);
        tlv(&mut content, 0x04, dn.as_bytes());
        tlv(&mut content, 0x30, attr_list);
        let mut op = Vec::with_capacity(content.len() + 8);
        tlv(&mut op, 0x64, &content);
        self.send(id, &op, None).await
    }

    /// Sends one SearchResultEntry for `obj` with the wanted attributes.
    async fn entry(&mut self, id: i64, obj: Obj, wanted: &Wanted, form: MemberForm) -> Result<()> {
        let domain = self.domain;
        let mut list = std::mem::take(&mut self.entry_buf);
        list.clear();
        for name in ATTRIBUTES {
            let lower = name.to_ascii_lowercase();
            if lower == "member" || !wanted.wants(&lower) {
                continue;
            }
            if let Some(values) = domain.values(obj, &lower) {
                attribute(&mut list, name, values.iter().map(Vec::as_slice));
            }
        }
        if let Obj::Group(j) = obj {
            let count = domain.member_count(j);
            let dns = |lo: u64, hi: u64| (lo..hi).map(move |n| domain.dn(domain.member(j, n)));
            match form {
                MemberForm::Plain | MemberForm::Added if count > 0 && wanted.plain_member => {
                    let desc = if form == MemberForm::Added {
                        "member;range=1-1"
                    } else {
                        "member"
                    };
                    let values: Vec<String> = dns(0, count).collect();
                    attribute(&mut list, desc, values.iter().map(|v| v.as_bytes()));
                }
                MemberForm::Range(low, high) if low < count => {
                    let last = count - 1;
                    let (end, desc) = match high {
                        Some(h) if h < last => (h, format!("member;range={low}-{h}")),
                        _ => (last, format!("member;range={low}-*")),
                    };
                    let values: Vec<String> = dns(low, end + 1).collect();
                    attribute(&mut list, &desc, values.iter().map(|v| v.as_bytes()));
                }
                _ => {}
            }
        }
        let dn = domain.dn(obj);
        let result = self.raw_entry(id, &dn, &list).await;
        self.entry_buf = list;
        result
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum MemberForm {
    /// Plain `member` (all values) when requested.
    Plain,
    /// DirSync with INCREMENTAL_VALUES: every value reported as added (`member;range=1-1`).
    Added,
    /// A ranged read window.
    Range(u64, Option<u64>),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn domain(users: u64, groups: u64, large: u64) -> Domain {
        Domain {
            shape: Shape::new(users, groups, large).unwrap(),
            invocation_id: guid_bytes(3, 1),
            dsa_guid: guid_bytes(3, 2),
        }
    }

    #[test]
    fn memberships_cover_every_user_once_per_level() {
        let d = domain(1003, 23, 500);
        let (g1, g2) = (d.shape.g1(), d.shape.g2());
        assert_eq!((g1, g2), (2, 21));
        let mut user_hits = vec![0u32; 1003];
        let mut l2_hits = vec![0u32; g2 as usize];
        for j in 2..2 + g1 {
            for n in 0..d.member_count(j) {
                let Obj::Group(m) = d.member(j, n) else {
                    panic!("a first-level group holds groups")
                };
                l2_hits[(m - 2 - g1) as usize] += 1;
            }
        }
        assert!(l2_hits.iter().all(|h| *h == 1));
        for j in 2 + g1..2 + g1 + g2 {
            for n in 0..d.member_count(j) {
                let Obj::User(i) = d.member(j, n) else {
                    panic!("a second-level group holds users")
                };
                user_hits[i as usize] += 1;
            }
        }
        assert!(user_hits.iter().all(|h| *h == 1));
        assert_eq!(d.member_count(0), 1 + g1);
        assert_eq!(d.member_count(1), 500);
    }

    #[test]
    fn guids_and_dns_round_trip() {
        let d = domain(100, 10, 100);
        for obj in [Obj::User(0), Obj::User(99), Obj::Group(0), Obj::Group(11)] {
            assert_eq!(d.obj_of_guid(&guid_of(obj)), Some(obj));
            assert_eq!(d.obj_of_dn(&d.dn(obj)), Some(obj));
            let text = ObjectGuid(guid_of(obj)).to_string();
            assert_eq!(
                d.obj_of_guid(&text.parse::<ObjectGuid>().unwrap().0),
                Some(obj)
            );
        }
        assert_eq!(d.obj_of_guid(&guid_bytes(KIND_USER, 100)), None);
        assert_eq!(
            d.obj_of_dn("CN=synu0100,OU=Users,OU=Synthetic,DC=synthetic,DC=test"),
            None
        );
    }

    /// forestsync's own reader against the server: bind, rootDSE, invocationId, DirSync full read with
    /// ranged member reads (windows of 7 over groups of up to 40 members), then nothing new on the cookie.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn forestsyncs_reader_reads_the_whole_domain() {
        use forestsync_actors::directory::{read, DcEndpoint, DcSession, ReadSpec, Timeouts};
        use forestsync_actors::model::{DirChange, MemberDelta, ObjectKind};
        use forestsync_actors::secret::Secret;

        let shape = Shape::new(40, 12, 40).unwrap();
        let dc = SyntheticDc::start(shape).await.unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(dc.ca_der()).unwrap();
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let endpoint = DcEndpoint::parse(&dc.url()).unwrap();
        let mut s = DcSession::connect(&endpoint, Arc::new(tls), Timeouts::default())
            .await
            .unwrap();
        assert!(s.bind(BIND_DN, &Secret::new("wrong")).await.is_err());
        s.bind(BIND_DN, &Secret::new(BIND_PASSWORD)).await.unwrap();
        let dse = s.root_dse().await.unwrap();
        assert_eq!(dse.highest_committed_usn, Some(shape.highest_usn()));
        let dsa = dse.ds_service_name.unwrap();
        assert!(read::invocation_id(&mut s, &dsa).await.is_ok());

        let mut spec = ReadSpec::new(BASE_DN);
        spec.range_size = 7;
        let (changes, cookie) = read::full_read(&mut s, &spec).await.unwrap();
        let objects: Vec<_> = changes
            .into_iter()
            .map(|c| match c {
                DirChange::Upsert(o) => o,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        let users = objects
            .iter()
            .filter(|o| o.kind == ObjectKind::User)
            .count();
        assert_eq!(users, 40);
        assert_eq!(objects.len() as u64, 40 + shape.group_count());
        let members = |dn: &str| match &objects.iter().find(|o| o.dn == dn).unwrap().members {
            MemberDelta::Replace(m) => m.clone(),
            other => panic!("{dn}: {other:?}"),
        };
        let large = members(&format!("CN=synlarge,OU=Groups,OU=Synthetic,{BASE_DN}"));
        assert_eq!(large.len(), 40);
        assert_eq!(
            large[39],
            format!("CN=synu39,OU=Users,OU=Synthetic,{BASE_DN}")
        );
        assert_eq!(members(ROOT_GROUP_DN).len() as u64, 1 + shape.g1());
        let u0 = objects
            .iter()
            .find(|o| o.dn.starts_with("CN=synu0,"))
            .unwrap();
        assert_eq!(u0.attrs["samaccountname"], vec!["synu0".to_string()]);
        assert_eq!(u0.attrs["useraccountcontrol"], vec!["512".to_string()]);
        assert!(u0.rid.is_some());

        let (again, same) = read::changes_since(&mut s, &spec, &cookie).await.unwrap();
        assert!(again.is_empty());
        assert_eq!(same, cookie);
        assert!(read::changes_since(&mut s, &spec, b"bogus").await.is_err());
    }

    #[test]
    fn integers_encode_minimally_and_signed() {
        assert_eq!(int_content(0), vec![0]);
        assert_eq!(int_content(127), vec![0x7f]);
        assert_eq!(int_content(128), vec![0, 0x80]);
        assert_eq!(int_content(-1), vec![0xff]);
        assert_eq!(int_content(INCREMENTAL_VALUES), vec![0x80, 0, 0, 0]);
    }
}
