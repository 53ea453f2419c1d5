//! Typed keys and the stored key format.
//!
//! A cache key is a typed value ([`CacheKey`]), never a string assembled at a call site. The
//! stored key is `namespace:v<schema>:<encoded key>`. The encoding is injective: string
//! components escape `%`, `:` and the braces `{` `}` (which Redis Cluster reads as a hash tag),
//! and components are joined with `:`, so `("a:b", "c")` and
//! `("a", "b:c")` can never share an entry — the "one user's data served to another" outage is
//! ruled out by construction. Bumping the schema version makes a new value shape never read
//! bytes written by the old one.

/// Longest stored key accepted by default (bytes, including the namespace prefix).
pub const DEFAULT_MAX_KEY_BYTES: usize = 512;

/// Why a key was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The stored key would be longer than the limit.
    #[error("key is {len} bytes, longer than the limit of {limit}")]
    TooLong {
        /// Length of the stored key.
        len: usize,
        /// The configured limit.
        limit: usize,
    },
    /// A string component contains a control character.
    #[error("key contains a control character (U+{0:04X})")]
    ControlCharacter(u32),
    /// The key encoded to nothing.
    #[error("key is empty")]
    Empty,
    /// The namespace is not `[A-Za-z0-9_.-]{1,64}`.
    #[error("namespace {0:?} must be 1-64 characters of [A-Za-z0-9_.-]")]
    InvalidNamespace(String),
    /// The namespace is tenant-scoped (`CacheBuilder::require_tenant`): keys are used through
    /// `cache.for_tenant(tenant)`, never without a tenant.
    #[error("namespace {0:?} is tenant-scoped: use cache.for_tenant(tenant)")]
    TenantRequired(String),
    /// A key given in its stored form (`KeyParts::parse`) holds a `%` that is not followed by
    /// two hex digits, or escapes that do not decode to UTF-8.
    #[error("key part {0:?}: a % must start an escape (%25, %3A, ...) of UTF-8 text")]
    BadEscape(String),
}

/// A typed cache key.
///
/// Implemented for integers, `bool`, `char`, `str`, `String`, references, tuples of up to four
/// keys and (with the `uuid` feature) `uuid::Uuid`. Implement it for your own key types by
/// writing each field as a component:
///
/// ```
/// use herdwise::{CacheKey, KeyEncoder};
///
/// struct RecsKey { user_id: u64, locale: String }
///
/// impl CacheKey for RecsKey {
///     fn encode_key(&self, out: &mut KeyEncoder) {
///         out.u64(self.user_id);
///         out.str(&self.locale);
///     }
/// }
///
/// let k = RecsKey { user_id: 7, locale: "en:GB".into() };
/// assert_eq!(herdwise::encode_key(&k).unwrap(), "7:en%3AGB");
/// ```
pub trait CacheKey {
    /// Writes this key's components, in a fixed order, into `out`.
    fn encode_key(&self, out: &mut KeyEncoder);
}

/// Collects key components into the stored-key buffer, escaping and validating as it goes.
#[derive(Debug)]
pub struct KeyEncoder<'a> {
    buf: &'a mut String,
    start: usize,
    components: usize,
    error: Option<KeyError>,
}

impl KeyEncoder<'_> {
    fn separator(&mut self) {
        if self.components > 0 {
            self.buf.push(':');
        }
        self.components += 1;
    }

    /// Appends a string component (escaped; control characters are rejected).
    pub fn str(&mut self, s: &str) {
        self.separator();
        for ch in s.chars() {
            match ch {
                '%' => self.buf.push_str("%25"),
                ':' => self.buf.push_str("%3A"),
                // Braces would form a Redis Cluster hash tag and split a key from its lease.
                '{' => self.buf.push_str("%7B"),
                '}' => self.buf.push_str("%7D"),
                c if c.is_control() => {
                    self.error
                        .get_or_insert(KeyError::ControlCharacter(c as u32));
                }
                c => self.buf.push(c),
            }
        }
    }

    /// Appends an unsigned integer component.
    pub fn u64(&mut self, n: u64) {
        self.integer(n);
    }

    /// Appends a signed integer component.
    pub fn i64(&mut self, n: i64) {
        self.integer(n);
    }

    /// Appends a 128-bit unsigned integer component.
    pub fn u128(&mut self, n: u128) {
        self.integer(n);
    }

    /// Appends a 128-bit signed integer component.
    pub fn i128(&mut self, n: i128) {
        self.integer(n);
    }

    /// Decimal digits via `itoa` (no formatting machinery on the hot path).
    fn integer<I: itoa::Integer>(&mut self, n: I) {
        self.separator();
        self.buf.push_str(itoa::Buffer::new().format(n));
    }

    /// Appends any nested key's components.
    pub fn key<K: CacheKey + ?Sized>(&mut self, key: &K) {
        key.encode_key(self);
    }
}

/// The prefix and limits that turn a typed key into the stored key.
///
/// The namespace generation is part of the prefix: generation 0 is `namespace:v<schema>:`, a
/// later one `namespace:v<schema>%g<generation>:`. `%` never appears unescaped in an encoded key,
/// so the two forms cannot collide; bumping the generation makes every old entry unreachable at
/// once (a namespace clear in O(1)), and the old entries die by their TTL.
#[derive(Debug)]
pub(crate) struct KeySpace {
    /// `namespace:v<schema>`.
    base: String,
    namespace: String,
    generation: std::sync::atomic::AtomicU64,
    max_len: usize,
    /// Keys must carry a tenant (see `KeyError::TenantRequired`).
    tenant_required: bool,
}

impl KeySpace {
    pub(crate) fn new(namespace: &str, schema: u32, max_len: usize) -> Result<Self, KeyError> {
        validate_namespace(namespace)?;
        Ok(KeySpace {
            base: format!("{namespace}:v{schema}"),
            namespace: namespace.to_string(),
            generation: std::sync::atomic::AtomicU64::new(0),
            max_len,
            tenant_required: false,
        })
    }

    /// Every key must carry a tenant from now on.
    pub(crate) fn require_tenant(mut self) -> Self {
        self.tenant_required = true;
        self
    }

    /// Whether keys (and tags) must carry a tenant.
    pub(crate) fn tenant_required(&self) -> bool {
        self.tenant_required
    }

    /// A tenant id as the key component it becomes (escaped like any string component).
    pub(crate) fn tenant_component(&self, tenant: &str) -> Result<String, KeyError> {
        let component = encode_key(tenant)?;
        if self.base.len() + component.len() + 2 > self.max_len {
            return Err(KeyError::TooLong {
                len: self.base.len() + component.len() + 2,
                limit: self.max_len,
            });
        }
        Ok(component)
    }

    /// The stored key under which all of `tenant`'s keys sit (`tenant` as made by
    /// [`KeySpace::tenant_component`]): `<prefix><tenant>`.
    pub(crate) fn tenant_root(&self, tenant: &str) -> String {
        let mut buf = String::with_capacity(self.base.len() + tenant.len() + 24);
        self.push_prefix(&mut buf);
        buf.push_str(tenant);
        buf
    }

    /// The namespace generation in use.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Moves to `generation` if it is newer; `true` if it changed.
    pub(crate) fn advance_generation(&self, generation: u64) -> bool {
        self.generation
            .fetch_max(generation, std::sync::atomic::Ordering::AcqRel)
            < generation
    }

    fn push_prefix(&self, buf: &mut String) {
        buf.push_str(&self.base);
        let generation = self.generation();
        if generation > 0 {
            buf.push_str("%g");
            buf.push_str(itoa::Buffer::new().format(generation));
        }
        buf.push(':');
    }

    pub(crate) fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Whether `text` could be one of this space's stored keys (its namespace, within the
    /// length bound): what another instance names in a message is checked with it.
    pub(crate) fn could_be_stored_key(&self, text: &str) -> bool {
        text.len() <= self.max_len
            && text
                .strip_prefix(self.namespace.as_str())
                .is_some_and(|rest| rest.starts_with(':'))
    }

    /// Writes the full stored key for `key` of `tenant` (a component made by
    /// [`KeySpace::tenant_component`]; `None`: no tenant) into `buf` (cleared first): the
    /// tenant is the key's first component, so `(tenant, key)` and a tenant's key are the
    /// same stored key.
    pub(crate) fn write_in<K: CacheKey + ?Sized>(
        &self,
        tenant: Option<&str>,
        key: &K,
        buf: &mut String,
    ) -> Result<(), KeyError> {
        buf.clear();
        self.push_prefix(buf);
        match tenant {
            Some(tenant) => {
                buf.push_str(tenant);
                buf.push(':');
            }
            None if self.tenant_required => {
                return Err(KeyError::TenantRequired(self.namespace.clone()))
            }
            None => {}
        }
        let start = buf.len();
        let mut enc = KeyEncoder {
            buf,
            start,
            components: 0,
            error: None,
        };
        key.encode_key(&mut enc);
        if let Some(err) = enc.error {
            return Err(err);
        }
        if enc.buf.len() == enc.start {
            return Err(KeyError::Empty);
        }
        if buf.len() > self.max_len {
            return Err(KeyError::TooLong {
                len: buf.len(),
                limit: self.max_len,
            });
        }
        Ok(())
    }

    /// The stored key for `key`, as a new string.
    #[cfg(test)]
    pub(crate) fn stored_key<K: CacheKey + ?Sized>(&self, key: &K) -> Result<String, KeyError> {
        self.stored_key_in(None, key)
    }

    /// The stored key for `key` of `tenant` (see [`KeySpace::write_in`]).
    pub(crate) fn stored_key_in<K: CacheKey + ?Sized>(
        &self,
        tenant: Option<&str>,
        key: &K,
    ) -> Result<String, KeyError> {
        let mut buf = String::with_capacity(self.base.len() + 32);
        self.write_in(tenant, key, &mut buf)?;
        Ok(buf)
    }
}

/// Encodes a key the way the cache does, without the namespace prefix (for tests and tooling).
///
/// ```
/// assert_eq!(herdwise::encode_key(&(42u32, "a:b")).unwrap(), "42:a%3Ab");
/// assert!(herdwise::encode_key("tab\there").is_err());
/// ```
pub fn encode_key<K: CacheKey + ?Sized>(key: &K) -> Result<String, KeyError> {
    let mut buf = String::new();
    let mut enc = KeyEncoder {
        buf: &mut buf,
        start: 0,
        components: 0,
        error: None,
    };
    key.encode_key(&mut enc);
    match enc.error {
        Some(err) => Err(err),
        None if buf.is_empty() => Err(KeyError::Empty),
        None => Ok(buf),
    }
}

fn validate_namespace(ns: &str) -> Result<(), KeyError> {
    let ok = !ns.is_empty()
        && ns.len() <= 64
        && ns
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(KeyError::InvalidNamespace(ns.to_string()))
    }
}

macro_rules! unsigned_key {
    ($($t:ty),*) => {$(
        impl CacheKey for $t {
            fn encode_key(&self, out: &mut KeyEncoder) { out.u64(u64::from(*self)); }
        }
    )*};
}
macro_rules! signed_key {
    ($($t:ty),*) => {$(
        impl CacheKey for $t {
            fn encode_key(&self, out: &mut KeyEncoder) { out.i64(i64::from(*self)); }
        }
    )*};
}
unsigned_key!(u8, u16, u32, u64);
signed_key!(i8, i16, i32, i64);

impl CacheKey for usize {
    fn encode_key(&self, out: &mut KeyEncoder) {
        out.u128(*self as u128);
    }
}
impl CacheKey for isize {
    fn encode_key(&self, out: &mut KeyEncoder) {
        out.i128(*self as i128);
    }
}
impl CacheKey for u128 {
    fn encode_key(&self, out: &mut KeyEncoder) {
        out.u128(*self);
    }
}
impl CacheKey for i128 {
    fn encode_key(&self, out: &mut KeyEncoder) {
        out.i128(*self);
    }
}
impl CacheKey for bool {
    fn encode_key(&self, out: &mut KeyEncoder) {
        out.str(if *self { "true" } else { "false" });
    }
}
impl CacheKey for char {
    fn encode_key(&self, out: &mut KeyEncoder) {
        let mut tmp = [0u8; 4];
        out.str(self.encode_utf8(&mut tmp));
    }
}
impl CacheKey for str {
    fn encode_key(&self, out: &mut KeyEncoder) {
        out.str(self);
    }
}
impl CacheKey for String {
    fn encode_key(&self, out: &mut KeyEncoder) {
        out.str(self);
    }
}
impl<K: CacheKey + ?Sized> CacheKey for &K {
    fn encode_key(&self, out: &mut KeyEncoder) {
        (**self).encode_key(out);
    }
}
impl<K: CacheKey + ?Sized> CacheKey for Box<K> {
    fn encode_key(&self, out: &mut KeyEncoder) {
        (**self).encode_key(out);
    }
}
impl<K: CacheKey + ?Sized> CacheKey for std::sync::Arc<K> {
    fn encode_key(&self, out: &mut KeyEncoder) {
        (**self).encode_key(out);
    }
}
#[cfg(feature = "uuid")]
impl CacheKey for uuid::Uuid {
    fn encode_key(&self, out: &mut KeyEncoder) {
        let mut tmp = uuid::Uuid::encode_buffer();
        out.str(self.as_hyphenated().encode_lower(&mut tmp));
    }
}

macro_rules! tuple_key {
    ($($name:ident),+) => {
        impl<$($name: CacheKey),+> CacheKey for ($($name,)+) {
            #[allow(non_snake_case)]
            fn encode_key(&self, out: &mut KeyEncoder) {
                let ($($name,)+) = self;
                $( $name.encode_key(out); )+
            }
        }
    };
}
tuple_key!(A);
tuple_key!(A, B);
tuple_key!(A, B, C);
tuple_key!(A, B, C, D);

#[cfg(test)]
mod tests {
    use super::*;

    fn space() -> KeySpace {
        KeySpace::new("catalog", 3, 64).unwrap()
    }

    #[test]
    fn stored_key_has_namespace_and_schema() {
        assert_eq!(space().stored_key(&42u64).unwrap(), "catalog:v3:42");
        assert_eq!(space().stored_key(&-7i32).unwrap(), "catalog:v3:-7");
        assert_eq!(space().stored_key("x").unwrap(), "catalog:v3:x");
    }

    #[test]
    fn composite_keys_are_injective() {
        let a = encode_key(&("a:b", "c")).unwrap();
        let b = encode_key(&("a", "b:c")).unwrap();
        assert_ne!(a, b);
        let c = encode_key(&("a%3Ab", "c")).unwrap();
        assert_ne!(
            a, c,
            "an escaped-looking input must not collide with an escaped one"
        );
        assert_eq!(encode_key("{tag}").unwrap(), "%7Btag%7D");
    }

    #[test]
    fn rejects_bad_keys_with_typed_errors() {
        assert_eq!(
            space().stored_key("a\u{7}b"),
            Err(KeyError::ControlCharacter(7))
        );
        assert_eq!(space().stored_key(""), Err(KeyError::Empty));
        let long = "x".repeat(100);
        assert!(matches!(
            space().stored_key(long.as_str()),
            Err(KeyError::TooLong { limit: 64, .. })
        ));
    }

    #[cfg(feature = "uuid")]
    #[test]
    fn uuids_encode_hyphenated_lowercase() {
        let id = uuid::Uuid::from_u128(0xA1B2_C3D4_0000_0000_0000_0000_0000_0001);
        assert_eq!(
            encode_key(&id).unwrap(),
            "a1b2c3d4-0000-0000-0000-000000000001"
        );
    }

    #[test]
    fn generations_change_the_prefix_without_colliding_with_keys() {
        let space = space();
        space.advance_generation(3);
        assert_eq!(space.stored_key(&42u64).unwrap(), "catalog:v3%g3:42");
        assert!(!space.advance_generation(2), "generations never go back");
        // a user key that looks like a generation stays distinct
        let plain = KeySpace::new("catalog", 3, 64).unwrap();
        assert_eq!(plain.stored_key("%g3:42").unwrap(), "catalog:v3:%25g3%3A42");
    }

    #[test]
    fn rejects_bad_namespaces() {
        assert!(KeySpace::new("has space", 1, 64).is_err());
        assert!(KeySpace::new("", 1, 64).is_err());
        assert!(KeySpace::new("has:colon", 1, 64).is_err());
        assert!(KeySpace::new("ok-name_1.x", 1, 64).is_ok());
    }
}
