//! A one-pass reader for the payloads Go's `encoding/json` writes, used before serde_json.
//!
//! Why: decoding `GetDomainStats` with serde's derived code cost about twice parsing the
//! same JSON (10 µs against 4–5 µs for the 123 keys of a real payload), and that decoding
//! was the largest part of what a collection adds to the launcher calls. The cost is
//! serde's work per value, not the parse. jiter and simd-json were no faster here, and
//! sonic-rs is fast only when built for the host CPU (`target-cpu=native`), which a shipped
//! image cannot assume.
//!
//! It reads only the plain case: keys in Go's field order (from a key out of that order on,
//! the rest of the object is found by key), strings without escapes or control characters,
//! integers without fraction or exponent that fit their field, nesting under [`MAX_DEPTH`],
//! each field once. On anything else it answers `None` and the caller asks serde_json, so
//! serde still decides every payload that is not plain, errors included; a property test
//! holds that whenever this reader answers, serde answers the same.

/// Deeper than any payload virt-launcher writes; beyond it serde decides.
const MAX_DEPTH: usize = 32;

/// Where the reader is in the payload.
pub(in crate::handler::launcher::payload) struct Reader<'a> {
    text: &'a str,
    bytes: &'a [u8],
    at: usize,
    depth: usize,
}

/// A value this reader can decode.
pub(in crate::handler::launcher::payload) trait Plain:
    Sized
{
    fn read(reader: &mut Reader<'_>) -> Option<Self>;
}

/// `json` as a `T` if it is plain (see the module); `None` means "ask serde".
pub(in crate::handler::launcher::payload) fn decode<T: Plain>(json: &str) -> Option<T> {
    let mut reader = Reader {
        text: json,
        bytes: json.as_bytes(),
        at: 0,
        depth: 0,
    };
    let value = T::read(&mut reader)?;
    reader.whitespace();
    (reader.at == reader.bytes.len()).then_some(value)
}

/// The eight bytes of `bytes` (eight long) as one word.
fn u64_at(bytes: &[u8]) -> u64 {
    let mut word = [0; 8];
    word.copy_from_slice(bytes);
    u64::from_ne_bytes(word)
}

/// The four bytes of `bytes` (four long) as one word.
fn u32_at(bytes: &[u8]) -> u32 {
    let mut word = [0; 4];
    word.copy_from_slice(bytes);
    u32::from_ne_bytes(word)
}

/// Where `key` (unquoted) is among `quoted`, the fields' keys in quotes; `quoted.len()`
/// when it is not a field.
fn field_index(quoted: &[&str], key: &[u8]) -> usize {
    quoted
        .iter()
        .position(|q| q.as_bytes().get(1..q.len() - 1) == Some(key))
        .unwrap_or(quoted.len())
}

impl<'a> Reader<'a> {
    fn whitespace(&mut self) {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.bytes.get(self.at) {
            self.at += 1;
        }
    }

    /// The next byte after whitespace, not consumed.
    fn peek(&mut self) -> Option<u8> {
        self.whitespace();
        self.bytes.get(self.at).copied()
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.at += 1)
    }

    fn literal(&mut self, literal: &[u8]) -> Option<()> {
        self.whitespace();
        let end = self.at + literal.len();
        (self.bytes.get(self.at..end)? == literal).then(|| self.at = end)
    }

    /// Consumes a `null` if one comes next.
    pub(in crate::handler::launcher::payload) fn null(&mut self) -> bool {
        self.peek() == Some(b'n') && self.literal(b"null").is_some()
    }

    /// A string's bytes, quotes excluded.
    fn string(&mut self) -> Option<&'a [u8]> {
        self.expect(b'"')?;
        let start = self.at;
        let rest = &self.bytes[start..];
        let len = rest
            .iter()
            .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
        if rest[len] != b'"' {
            return None;
        }
        self.at = start + len + 1;
        Some(&rest[..len])
    }

    /// A string: a slice of the payload, which is a `str`, between ASCII quotes.
    fn text(&mut self) -> Option<&'a str> {
        let len = self.string()?.len();
        let end = self.at - 1;
        self.text.get(end - len..end)
    }

    fn digits(&mut self) -> usize {
        let start = self.at;
        while self.bytes.get(self.at).is_some_and(u8::is_ascii_digit) {
            self.at += 1;
        }
        self.at - start
    }

    fn unsigned(&mut self) -> Option<u64> {
        self.whitespace();
        self.magnitude()
    }

    /// Digits here (no whitespace first) with nothing after them that makes a float.
    ///
    /// One pass that reads and adds up the digits, unchecked: nineteen digits stay below
    /// 10^19 < 2^64, and only longer numbers are added up again with checks. Counting the
    /// digits first and then adding them up with a checked multiply per digit cost about
    /// a hundred instructions per number.
    fn magnitude(&mut self) -> Option<u64> {
        let rest = &self.bytes[self.at..];
        let mut value = 0u64;
        let mut len = 0;
        while let Some(digit) = rest.get(len).map(|byte| byte.wrapping_sub(b'0')) {
            if digit > 9 {
                break;
            }
            value = value.wrapping_mul(10).wrapping_add(u64::from(digit));
            len += 1;
        }
        let plain = len > 0 && (len == 1 || rest[0] != b'0');
        if !plain || matches!(rest.get(len), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        if len > 19 {
            value = rest[..len].iter().try_fold(0u64, |value, digit| {
                value.checked_mul(10)?.checked_add(u64::from(digit - b'0'))
            })?;
        }
        self.at += len;
        Some(value)
    }

    fn signed(&mut self) -> Option<i64> {
        if self.peek()? != b'-' {
            return i64::try_from(self.unsigned()?).ok();
        }
        self.at += 1;
        // `-0` and anything past i64::MIN are serde's to decide.
        match self.magnitude()? {
            0 => None,
            magnitude => 0i64.checked_sub_unsigned(magnitude),
        }
    }

    /// A JSON number as serde_json reads it: an integer of at most fifteen digits is
    /// exactly an `f64` (below 2^53), as serde makes it; anything else is parsed by
    /// serde_json itself, so it has the same bits.
    fn float(&mut self) -> Option<f64> {
        self.whitespace();
        let start = self.at;
        self.number()?;
        let token = &self.bytes[start..self.at];
        let (negative, digits) = match token.split_first() {
            Some((b'-', digits)) => (true, digits),
            _ => (false, token),
        };
        if digits.len() <= 15 && digits.iter().all(u8::is_ascii_digit) {
            let magnitude = digits
                .iter()
                .fold(0u64, |value, digit| value * 10 + u64::from(digit - b'0'))
                as f64;
            return Some(if negative { -magnitude } else { magnitude });
        }
        serde_json::from_str(std::str::from_utf8(token).ok()?).ok()
    }

    /// Steps over a number that follows JSON's grammar.
    fn number(&mut self) -> Option<()> {
        if self.bytes.get(self.at) == Some(&b'-') {
            self.at += 1;
        }
        let first = *self.bytes.get(self.at)?;
        match self.digits() {
            0 => return None,
            1 => {}
            _ if first == b'0' => return None,
            _ => {}
        }
        if self.bytes.get(self.at) == Some(&b'.') {
            self.at += 1;
            (self.digits() > 0).then_some(())?;
        }
        if let Some(b'e' | b'E') = self.bytes.get(self.at) {
            self.at += 1;
            if let Some(b'+' | b'-') = self.bytes.get(self.at) {
                self.at += 1;
            }
            (self.digits() > 0).then_some(())?;
        }
        Some(())
    }

    fn boolean(&mut self) -> Option<bool> {
        self.whitespace();
        let rest = &self.bytes[self.at..];
        let (value, len) = if rest.starts_with(b"true") {
            (true, 4)
        } else if rest.starts_with(b"false") {
            (false, 5)
        } else {
            return None;
        };
        self.at += len;
        Some(value)
    }

    fn nested<T>(&mut self, read: impl FnOnce(&mut Self) -> Option<T>) -> Option<T> {
        if self.depth == MAX_DEPTH {
            return None;
        }
        self.depth += 1;
        let value = read(self);
        self.depth -= 1;
        value
    }

    /// An object of any keys, each member's value read by `member`.
    fn object(&mut self, mut member: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.object_with(|reader| {
            reader.string()?;
            reader.expect(b':')?;
            member(reader)
        })
    }

    /// An object, read by `members` inside (its braces and depth are this function's).
    pub(in crate::handler::launcher::payload) fn go_object(
        &mut self,
        members: impl FnOnce(&mut Self) -> Option<()>,
    ) -> Option<()> {
        self.expect(b'{')?;
        self.nested(members)
    }

    /// Whether the member key Go writes next comes next, given as `,"Key":`: all of it, or
    /// without the comma for the `first` member. When it does, it is consumed and `first`
    /// cleared; when not, nothing is. One comparison reads the comma, the key and the
    /// colon: Go writes no whitespace between them.
    #[inline]
    pub(in crate::handler::launcher::payload) fn member_key(
        &mut self,
        first: &mut bool,
        comma_quoted_colon: &str,
    ) -> Option<()> {
        let key = comma_quoted_colon.as_bytes();
        let key = if *first { key.get(1..)? } else { key };
        if !self.comes_next(key) {
            return None;
        }
        self.at += key.len();
        *first = false;
        Some(())
    }

    /// The rest of an object's members, up to and including its closing brace, after the
    /// `first` member or not. Their keys are among `quoted` (in quotes, in Go's order) and
    /// each member's value is read by `member` given the key's place (`quoted.len()` for
    /// another key). The key expected next in Go's order is compared in place, quotes
    /// included, without scanning it.
    pub(in crate::handler::launcher::payload) fn members_by_key(
        &mut self,
        mut first: bool,
        quoted: &[&str],
        mut expected: usize,
        mut member: impl FnMut(&mut Self, usize) -> Option<()>,
    ) -> Option<()> {
        loop {
            if self.peek()? == b'}' {
                self.at += 1;
                return Some(());
            }
            if !std::mem::take(&mut first) {
                self.expect(b',')?;
            }
            self.whitespace();
            let next = quoted.get(expected).map(|q| q.as_bytes());
            let at = match next {
                Some(q) if self.comes_next(q) => {
                    self.at += q.len();
                    expected
                }
                _ => field_index(quoted, self.string()?),
            };
            expected = at + 1;
            self.expect(b':')?;
            #[cfg(test)]
            tests::BY_KEY.with(|count| count.set(count.get() + 1));
            member(self, at)?;
        }
    }

    /// Whether `expected` comes next. Compared a word at a time, the last word overlapping
    /// the one before: keys are short, and a call to `memcmp` per key cost more than the
    /// comparison (a seventh of decoding).
    fn comes_next(&self, expected: &[u8]) -> bool {
        let len = expected.len();
        let Some(here) = self.bytes.get(self.at..self.at + len) else {
            return false;
        };
        if len >= 8 {
            let word = |bytes: &[u8], at: usize| bytes.get(at..at + 8).map(u64_at);
            let mut at = 0;
            while at + 8 < len {
                if word(here, at) != word(expected, at) {
                    return false;
                }
                at += 8;
            }
            word(here, len - 8) == word(expected, len - 8)
        } else if len >= 4 {
            let word = |bytes: &[u8], at: usize| bytes.get(at..at + 4).map(u32_at);
            word(here, 0) == word(expected, 0) && word(here, len - 4) == word(expected, len - 4)
        } else {
            here == expected
        }
    }

    /// An object, each member (key, colon and value) read by `member`.
    fn object_with(&mut self, mut member: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.expect(b'{')?;
        self.nested(|reader| {
            if reader.peek()? == b'}' {
                reader.at += 1;
                return Some(());
            }
            loop {
                reader.whitespace();
                member(reader)?;
                match reader.peek()? {
                    b',' => reader.at += 1,
                    b'}' => {
                        reader.at += 1;
                        return Some(());
                    }
                    _ => return None,
                }
            }
        })
    }

    fn array<T>(&mut self, mut item: impl FnMut(&mut Self) -> Option<T>) -> Option<Vec<T>> {
        self.expect(b'[')?;
        self.nested(|reader| {
            let mut items = Vec::new();
            if reader.peek()? == b']' {
                reader.at += 1;
                return Some(items);
            }
            loop {
                items.push(item(reader)?);
                match reader.peek()? {
                    b',' => reader.at += 1,
                    b']' => {
                        reader.at += 1;
                        return Some(items);
                    }
                    _ => return None,
                }
            }
        })
    }

    /// Steps over any plain value (an unknown field's).
    pub(in crate::handler::launcher::payload) fn skip(&mut self) -> Option<()> {
        match self.peek()? {
            b'{' => self.object(Self::skip),
            b'[' => self.array(Self::skip).map(drop),
            b'"' => self.string().map(drop),
            b't' | b'f' => self.boolean().map(drop),
            b'n' => self.literal(b"null"),
            _ => self.number(),
        }
    }
}

/// The scalars, each read by its [`Reader`] method.
macro_rules! plain_scalars {
    ($($ty:ty => $method:ident),* $(,)?) => {
        $(impl Plain for $ty {
            fn read(reader: &mut Reader<'_>) -> Option<Self> {
                reader.$method()
            }
        })*
    };
}

plain_scalars!(bool => boolean, u64 => unsigned, i64 => signed, f64 => float);

impl Plain for String {
    fn read(reader: &mut Reader<'_>) -> Option<Self> {
        reader.text().map(str::to_owned)
    }
}

impl<T: Plain> Plain for Vec<T> {
    fn read(reader: &mut Reader<'_>) -> Option<Self> {
        reader.array(T::read)
    }
}

/// `null` is `None`, as serde reads an `Option`.
impl<T: Plain> Plain for Option<T> {
    #[inline]
    fn read(reader: &mut Reader<'_>) -> Option<Self> {
        if reader.null() {
            return Some(None);
        }
        T::read(reader).map(Some)
    }
}

/// The Go mirror structs of `payload::go`: `Option` fields named by their Go keys, derived
/// `Deserialize` for serde, and [`Plain`] that reads the same. A known key given twice is an
/// error to serde's derived code, so it is not plain.
macro_rules! go_struct {
    (
        $vis:vis struct $name:ident {
            $( $(#[$field_meta:meta])* $key:literal => $field:ident: $ty:ty, )*
        }
    ) => {
        #[derive(Debug, Default, PartialEq, serde::Deserialize)]
        $vis struct $name {
            $( $(#[$field_meta])* #[serde(rename = $key)] $field: Option<$ty>, )*
        }

        impl $crate::handler::launcher::payload::fast::Plain for $name {
            /// Go's shape is read straight: every field once, in its order, each read in
            /// place. From the first key out of that order on (a field that a newer
            /// launcher added, an older one lacks, or whitespace or another order), the
            /// members are read by key, as they come; nothing is read twice.
            fn read(
                reader: &mut $crate::handler::launcher::payload::fast::Reader<'_>,
            ) -> Option<Self> {
                use $crate::handler::launcher::payload::fast::{Plain, Reader};
                type ReadField = fn(&mut $name, &mut Reader<'_>) -> Option<()>;
                const QUOTED: &[&str] = &[$(concat!("\"", $key, "\"")),*];
                const READ: &[ReadField] = &[$(|out, reader| {
                    out.$field = Plain::read(reader)?;
                    Some(())
                }),*];
                const _: () = assert!(QUOTED.len() <= 64, "one bit per field");
                let mut out = Self::default();
                let mut seen = 0u64;
                reader.go_object(|reader| {
                    let mut first = true;
                    let mut at = 0;
                    'in_order: {
                        $(
                            if reader
                                .member_key(&mut first, concat!(",\"", $key, "\":"))
                                .is_none()
                            {
                                break 'in_order;
                            }
                            out.$field = Plain::read(reader)?;
                            seen |= 1 << at;
                            at += 1;
                        )*
                    }
                    reader.members_by_key(first, QUOTED, at, |reader, at| {
                        let Some(read) = READ.get(at) else {
                            return reader.skip();
                        };
                        if seen & (1 << at) != 0 {
                            return None;
                        }
                        seen |= 1 << at;
                        read(&mut out, reader)
                    })
                })?;
                Some(out)
            }
        }
    };
}

pub(in crate::handler::launcher::payload) use go_struct;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::cell::Cell;

    use proptest::prelude::*;

    use super::decode;
    use crate::handler::launcher::payload::go::DomainStats;

    const CAPTURED: &[&str] = &[
        include_str!("../../../../../testdata/launcher-payloads/captured-domainstats-testvm.json"),
        include_str!("../../../../../testdata/launcher-payloads/captured-domainstats-db.json"),
    ];

    thread_local! {
        /// How many members this thread's readers read by key (see `go_struct!`).
        pub(super) static BY_KEY: Cell<usize> = const { Cell::new(0) };
    }

    /// What `json` decodes to, and how many of its members were read by key.
    fn by_key(json: &str) -> (Option<DomainStats>, usize) {
        BY_KEY.with(|count| count.set(0));
        let decoded = agreed(json);
        (decoded, BY_KEY.with(Cell::get))
    }

    /// The captured payloads are read straight in Go's order: a mirror struct whose fields
    /// drifted from Go's would still decode, by key, at about twice the cost; this is
    /// where that shows. A launcher that lacks fields or adds some reads the rest of that
    /// object by key, once.
    #[test]
    fn captured_payloads_are_read_in_gos_order() {
        for json in CAPTURED {
            let (decoded, by_key) = by_key(json);
            assert!(decoded.is_some());
            assert_eq!(by_key, 0, "{json}");
        }
        // An older launcher (v1.5 and before): no `DirtyRate` nor `Load` at the end.
        let older = r#"{"Name":"a","UUID":"u","Cpu":null,"Memory":null,"MigrateDomainJobInfo":null,"Vcpu":null,"Net":null,"Block":null,"CPUMapSet":false,"CPUMap":null}"#;
        assert_eq!(by_key(older), (by_serde(older), 0));
        // A newer one with a field of its own in the middle: the rest of `Cpu` by key.
        let newer = r#"{"Cpu":{"TimeSet":true,"Time":5,"Steal":7,"UserSet":true,"User":3}}"#;
        let (decoded, members) = by_key(newer);
        assert!(decoded.is_some());
        assert_eq!(
            members,
            3 + 1,
            "Steal, UserSet and User, then Cpu in the payload"
        );
        let shuffled = r#"{"Cpu":{"Time":5,"TimeSet":true},"Name":"a"}"#;
        let (decoded, members) = by_key(shuffled);
        assert!(decoded.is_some());
        assert_eq!(
            members, 4,
            "both objects out of Go's order from their first key"
        );
    }

    fn by_serde(json: &str) -> Option<DomainStats> {
        serde_json::from_str(json).ok()
    }

    /// What this reader answers, checked against serde: the same whenever it answers.
    fn agreed(json: &str) -> Option<DomainStats> {
        let plain = decode::<DomainStats>(json);
        if plain.is_some() {
            assert_eq!(plain, by_serde(json), "{json}");
        }
        plain
    }

    #[test]
    fn captured_payloads_are_plain_and_read_as_serde_reads_them() {
        for json in CAPTURED {
            assert!(agreed(json).is_some());
            // Whitespace anywhere JSON allows it, keys out of Go's order: still plain.
            let value: serde_json::Value = serde_json::from_str(json).unwrap();
            assert!(agreed(&serde_json::to_string_pretty(&value).unwrap()).is_some());
        }
    }

    #[test]
    fn edge_values_are_plain_when_serde_reads_them_alike() {
        let plain = [
            r#"{"Cpu":{"TimeSet":true,"Time":18446744073709551615}}"#,
            r#"{"DirtyRate":{"CalcStartTime":-9223372036854775808,"CalcPeriod":0}}"#,
            r#"{"Load":{"Load1m":0.25,"Load5m":1e2,"Load15m":-0.0}}"#,
            r#"{"Name":"a b/ü","Unknown":{"x":[1,-2.5e-3,true,null,"s",{}]},"Vcpu":[]}"#,
            r#"{"CPUMap":[[true,false],null,[]],"Net":null,"Block":[{"Alias":""}]}"#,
            " { } ",
        ];
        for json in plain {
            assert!(agreed(json).is_some(), "{json}");
        }
    }

    #[test]
    fn anything_unusual_is_left_to_serde() {
        let unusual = [
            r#"{"Cpu":{"Time":18446744073709551616}}"#,
            r#"{"Cpu":{"Time":1.0}}"#,
            r#"{"Cpu":{"Time":01}}"#,
            r#"{"Cpu":{"Time":-1}}"#,
            r#"{"DirtyRate":{"CalcPeriod":-0}}"#,
            r#"{"DirtyRate":{"CalcPeriod":- 5}}"#,
            r#"{"DirtyRate":{"CalcPeriod":-9223372036854775809}}"#,
            r#"{"Name":"a","Name":"b"}"#,
            r#"{"Na\u006de":"a"}"#,
            r#"{"Name":"tab	inside"}"#,
            r#"{"Name":"a",}"#,
            r#"{"Vcpu":[{},]}"#,
            r#"{"Cpu":{"TimeSet":tru}}"#,
            r#"{"Cpu":{"TimeSet":"true"}}"#,
            r#"{} x"#,
            r#"[]"#,
            "",
        ];
        for json in unusual {
            assert!(agreed(json).is_none(), "{json}");
        }
        let deep = format!("{{\"X\":{}{}}}", "[".repeat(40), "]".repeat(40));
        assert!(agreed(&deep).is_none());
    }

    /// A captured payload with one byte deleted, replaced or inserted.
    fn mutated() -> impl Strategy<Value = String> {
        let bytes = prop::sample::select(&b"\"\\,:{}[]-0.eE9 ntf\t"[..]);
        (
            prop::sample::select(CAPTURED),
            any::<prop::sample::Index>(),
            0..3u8,
            bytes,
        )
            .prop_map(|(json, at, how, byte)| {
                let mut bytes = json.as_bytes().to_vec();
                let at = at.index(bytes.len());
                match how {
                    0 => drop(bytes.remove(at)),
                    1 => bytes[at] = byte,
                    _ => bytes.insert(at, byte),
                }
                String::from_utf8_lossy(&bytes).into_owned()
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Whatever this reader answers, serde answers the same: the fast path changes
        /// no decoded value and accepts nothing serde would refuse.
        #[test]
        fn whenever_plain_serde_agrees(json in mutated()) {
            agreed(&json);
        }
    }
}
